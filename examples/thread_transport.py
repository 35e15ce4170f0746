"""A transport in one file: ``workers.count`` solver workers on threads of the trainer's own process.

The worked example of docs/transports.md. Register it and name it in a config:

    from streaming.transport import Backend, register
    register(Backend("threads", "examples.thread_transport:from_config",
                     "solver workers on threads of the trainer process", several_trainers=True))
    # then workers.backend = "threads"

JAX releases the GIL while a compiled solver runs, so the threads solve in parallel. Everything about
the design (which task next, requeue after a failure, the failure budget, checkpoint state, pacing) is the
dispatcher's; this file only moves tasks out and messages back, with a bounded queue for backpressure.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import Any

from streaming.config import JobConfig
from streaming.design import DesignCursor, Task
from streaming.transport.dispatcher import HOLD, Dispatcher
from streaming.transport.source import Message
from streaming.worker import SolverWorker

_END = object()  # a worker thread has no task left


class ThreadSource:
    """``count`` threads, each with its own :class:`SolverWorker`; at most ``max_inflight`` messages
    wait in the queue, so workers pause while the trainer is busy. The consuming thread talks to the
    dispatcher (in stream order: a simulation is done once the trainer has its data) and hands each
    thread its next task through the thread's inbox."""

    def __init__(self, cursor: DesignCursor, worker_args: dict[str, Any], count: int, max_inflight: int,
                 max_failures: int, worker_cls: type = SolverWorker) -> None:
        self.cursor, self.dispatcher = cursor, Dispatcher(cursor, max_failures)
        self._queue: queue.Queue = queue.Queue(maxsize=max_inflight)
        self._inbox = [queue.Queue() for _ in range(count)]
        self._closed = threading.Event()
        self._threads = [threading.Thread(target=self._work, args=(i, worker_cls(**worker_args)), daemon=True)
                         for i in range(count)]

    def _put(self, item: Any) -> bool:
        while not self._closed.is_set():
            try:
                self._queue.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def _work(self, idx: int, worker: SolverWorker) -> None:
        while (task := self._inbox[idx].get()) is not None:
            try:
                for msg in worker.run(task):
                    if not self._put(msg):
                        return
            except Exception as e:  # noqa: BLE001  (a failed task is the dispatcher's to requeue or give up on)
                self._put(("lost", idx, f"{type(e).__name__}: {e}"))
                continue
            self._put(("done", idx))
        self._put(_END)

    def _assign(self, idx: int) -> None:
        task = None if self._closed.is_set() else self.dispatcher.next_task(idx)
        if task is not HOLD:  # HOLD: the dispatcher keeps the thread until it releases it
            self._inbox[idx].put(task)

    def __iter__(self) -> Iterator[Message]:
        for idx, t in enumerate(self._threads):
            t.start()
            self._assign(idx)
        running = len(self._threads)
        while running and not self._closed.is_set():
            for idx in self.dispatcher.released():  # the trainer's losses let held tasks go
                self._assign(idx)
            try:
                item = self._queue.get(timeout=0.2)
            except queue.Empty:
                continue
            if item is _END:
                running -= 1
            elif isinstance(item, tuple) and item[0] == "done":
                self.dispatcher.task_done(item[1])
                self._assign(item[1])
            elif isinstance(item, tuple) and item[0] == "lost":
                self.dispatcher.worker_lost(item[1], item[2])  # JobFailed past workers.max_failures
                self._assign(item[1])
            else:
                self.dispatcher.on_message(item)
                yield item

    def in_flight(self) -> list[Task]:
        return self.dispatcher.in_flight()

    def close(self) -> None:
        self._closed.set()
        for inbox in self._inbox:
            inbox.put(None)
        for t in self._threads:
            if t.ident is not None:
                t.join(timeout=30)


def from_config(cfg: JobConfig, cursor: DesignCursor, worker_args: dict[str, Any], *,
                worker_cls: type = SolverWorker, **_: Any) -> ThreadSource:
    w = cfg.workers
    return ThreadSource(cursor, worker_args, w.count, w.max_inflight, w.max_failures, worker_cls)
