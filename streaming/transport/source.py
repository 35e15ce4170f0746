"""What every transport gives the trainer: a :class:`Source`, an iterable of messages (chunks and
simulation reports). The trainer only iterates; it never calls back up the stream."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Protocol

from streaming.chunk import Chunk, SimReport

if TYPE_CHECKING:  # annotations only: a listener imports this without JAX
    from streaming.design import Task
    from streaming.transport.dispatcher import Dispatcher

Message = Chunk | SimReport


class Source(Protocol):
    """A running transport. ``dispatcher`` owns the design (None where external solvers choose their own
    simulations); checkpoints read ``dispatcher.state_dict()``."""

    dispatcher: Dispatcher | None

    def __iter__(self) -> Iterator[Message]: ...

    def in_flight(self) -> list[Task]:
        """Tasks issued to workers and not finished (re-run after a resume)."""
        ...

    def close(self) -> None: ...
