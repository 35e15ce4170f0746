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
from streaming.dispatcher import Dispatcher
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
        self.dispatcher = Dispatcher(cursor)
        self._closed = False

    def __iter__(self) -> Iterator[Message]:
        while not self._closed and (task := self.dispatcher.next_task(0)) is not None:
            for msg in self.worker.run(task):
                self.dispatcher.on_message(msg)
                yield msg
                if self._closed:
                    return
            self.dispatcher.task_done(0)

    def in_flight(self) -> list[Task]:
        return self.dispatcher.in_flight()

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
