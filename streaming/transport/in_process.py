"""In-process sources: ``LocalSource`` runs one :class:`~streaming.worker.SolverWorker` in this process
(deterministic order: for tests, debugging and ``--backend local``); ``MemorySource`` replays messages
already in memory (offline training, benchmarks)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from streaming.config import JobConfig
from streaming.design import DesignCursor, Task
from streaming.transport.dispatcher import Dispatcher
from streaming.transport.source import Message
from streaming.worker import SolverWorker


class LocalSource:
    """Runs tasks one after the other with an in-process worker. A task that raises is requeued and
    counts against ``max_failures`` (the dispatcher's rule, as on every transport). Never paced
    (``solver.adaptive.ahead``): the trainer pulls this stream between its steps, a batch's worth of samples
    (``buffer.ingest_ratio`` batches') per step, and could not report the losses a held task would wait for."""

    def __init__(self, cursor: DesignCursor, worker: SolverWorker, max_failures: int = 0) -> None:
        self.cursor, self.worker = cursor, worker
        self.dispatcher = Dispatcher(cursor, max_failures)
        self._closed = False

    def __iter__(self) -> Iterator[Message]:
        while not self._closed and (task := self.dispatcher.next_task(0)) is not None:
            try:
                for msg in self.worker.run(task):
                    self.dispatcher.on_message(msg)
                    yield msg
                    if self._closed:
                        return
            except Exception as e:  # noqa: BLE001  (the dispatcher requeues it or stops the job)
                self.dispatcher.worker_lost(0, f"{type(e).__name__}: {e}", hint="fix the solver or its parameter range")
                continue
            self.dispatcher.task_done(0)

    def in_flight(self) -> list[Task]:
        return self.dispatcher.in_flight()

    def close(self) -> None:
        self._closed = True


class MemorySource:
    """Replays messages already in memory (benchmarks: training from arrays, no solver running)."""

    def __init__(self, cursor: DesignCursor, messages: list[Message]) -> None:
        self.cursor, self.messages = cursor, messages
        self.dispatcher = Dispatcher(cursor)  # hands nothing out: checkpoints read the cursor through it
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


def from_config(cfg: JobConfig, cursor: DesignCursor, worker_args: dict[str, Any], *,
                worker_cls: type = SolverWorker, **_: Any) -> LocalSource:
    """Backend ``local``: one worker in this process."""
    return LocalSource(cursor, worker_cls(**worker_args), cfg.workers.max_failures)
