"""Sources: iterables of messages (chunks and simulation reports) that feed the trainer.

A source owns the design cursor (the upstream end of the stream) and one or more
:class:`~streaming.worker.SolverWorker` s. The trainer only iterates; it never calls back up.
``LocalSource`` runs one worker in this process (deterministic order: for tests, debugging and
``--backend local``); Ray and MPI sources live in their own modules.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from streaming.chunk import Chunk
from streaming.design import DesignCursor, Task
from streaming.worker import SimReport, SolverWorker

Message = Chunk | SimReport


class Source(Protocol):
    cursor: DesignCursor

    def __iter__(self) -> Iterator[Message]: ...

    def in_flight(self) -> list[Task]:
        """Tasks issued to workers and not finished (re-run after a resume)."""
        ...

    def close(self) -> None: ...


class LocalSource:
    """Runs tasks one after the other with an in-process worker."""

    def __init__(self, cursor: DesignCursor, worker: SolverWorker) -> None:
        self.cursor, self.worker = cursor, worker
        self._current: Task | None = None
        self._closed = False

    def __iter__(self) -> Iterator[Message]:
        while not self._closed and (task := self.cursor.next_task()) is not None:
            self._current = task
            for msg in self.worker.run(task):
                if isinstance(msg, SimReport):
                    self.cursor.mark_done([msg.sim_id])
                yield msg
                if self._closed:
                    return
            self._current = None

    def in_flight(self) -> list[Task]:
        return [self._current] if self._current is not None else []

    def close(self) -> None:
        self._closed = True


class MemorySource:
    """Replays messages already in memory (benchmarks: training from arrays, no solver running)."""

    def __init__(self, cursor: DesignCursor, messages: list[Message]) -> None:
        self.cursor, self.messages = cursor, messages
        self._closed = False

    def __iter__(self) -> Iterator[Message]:
        for msg in self.messages:
            if self._closed:
                return
            yield msg

    def in_flight(self) -> list[Task]:
        return []

    def close(self) -> None:
        self._closed = True
