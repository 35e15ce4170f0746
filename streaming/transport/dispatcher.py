"""The dispatcher: the one owner of the design cursor and of the in-flight table, shared by every transport.

A transport (Ray actors, MPI ranks, the in-process worker) only moves tasks out and messages back; it
asks the dispatcher what to do at each event:

- :meth:`next_task` — a worker is free: the next task of the design (or None: nothing left; or :data:`HOLD`:
  not now, pacing waits for the trainer's losses, :mod:`streaming.adaptive`; the dispatcher remembers the worker,
  which stays idle until :meth:`released` hands it back, once :meth:`report_losses` or a requeue lets a task go;
  :meth:`holding` says whether any worker waits so);
- :meth:`on_message` — a message came from a worker: a finished or dropped simulation's report marks
  it done in the design;
- :meth:`task_done` — a worker finished its task;
- :meth:`report_losses` — the trainer's per-simulation losses, handed to the design (adaptive sampling);
- :meth:`worker_lost` — a worker died or its task failed: the task's unfinished simulations go back
  to the front of the design (they are re-run in full; the buffer's (simulation id, frame)
  de-duplication drops what had already arrived) and the failure counts against ``max_failures``;
  past it the job stops with :class:`~streaming.errors.JobFailed`. The count is checkpointed
  (:meth:`checkpoint_state`) and restored on resume (:meth:`load_failures`): a budget for the whole job.

All of it under one lock, so the trainer's checkpoint (:meth:`checkpoint_state`, another thread) reads a
cursor and an in-flight table that agree with each other.
"""

from __future__ import annotations

import threading
from collections.abc import Hashable

import numpy as np

from streaming.chunk import Chunk, SimReport
from streaming.design import DesignCursor, Task
from streaming.errors import JobFailed

FINISHED = ("done", "nan")  # report statuses after which a simulation is never run again


class Hold:
    """:meth:`Dispatcher.next_task`'s answer while pacing holds the next task back: not now, ask again later."""

    def __repr__(self) -> str:
        return "HOLD"


HOLD = Hold()


class Dispatcher:
    """Hands out ``cursor``'s tasks to workers (any hashable id) and takes them back when a worker is lost.

    ``paced``: hold new tasks back while the design says so (``cursor.holds()``); set for a trainer that consumes
    the stream in the background, never for one that pulls it between its steps (it could not report the losses
    the design waits for)."""

    def __init__(self, cursor: DesignCursor, max_failures: int = 0, paced: bool = False) -> None:
        self.cursor, self.max_failures, self.paced = cursor, max_failures, paced
        self.failures = 0
        self._running: dict[Hashable, Task] = {}
        self._held: list[Hashable] = []  # workers answered HOLD, in order, until released() hands them back
        self._lock = threading.Lock()
        self._may_go = threading.Condition(self._lock)  # notified when losses or a requeue may let a task go

    def _holds(self) -> bool:
        return self.paced and self.cursor.holds()

    def next_task(self, worker: Hashable) -> Task | Hold | None:
        """The next task for ``worker`` (recorded as in flight), :data:`HOLD` while pacing holds it back, or None
        when the design is exhausted."""
        with self._lock:
            if worker in self._running:
                raise RuntimeError(f"worker {worker!r} asked for a task while it still runs one")
            if self._holds():
                if worker not in self._held:
                    self._held.append(worker)
                return HOLD
            if worker in self._held:  # asked again by the transport before released() handed it back
                self._held.remove(worker)
            task = self.cursor.next_task()
            if task is not None:
                self._running[worker] = task
            return task

    def on_message(self, msg: Chunk | SimReport) -> None:
        """Bookkeeping of one message from a worker: a finished simulation is marked done."""
        if isinstance(msg, SimReport) and msg.status in FINISHED:
            with self._lock:
                self.cursor.mark_done([msg.sim_id])

    def report_losses(self, sim_ids: np.ndarray, losses: np.ndarray) -> None:
        """The trainer's upward message: per-simulation training losses ``(n,)`` of ``sim_ids`` ``(n,)``, passed
        to the design (a loss-steered design draws the next parameters from them; a fixed one ignores them)."""
        with self._lock:
            self.cursor.observe(sim_ids, losses)
            self._may_go.notify_all()

    def no_loss(self, sim_ids: np.ndarray) -> None:
        """The trainer's word that ``sim_ids`` ``(n,)`` will have no loss to report (finished with none of their
        samples admitted to the buffer): pacing stops waiting for them."""
        with self._lock:
            self.cursor.no_loss(sim_ids)
            self._may_go.notify_all()

    def holding(self) -> bool:
        """Whether a worker waits because :meth:`next_task` answered it :data:`HOLD`."""
        with self._lock:
            return bool(self._held)

    def released(self, timeout: float = 0.0) -> list[Hashable]:
        """The workers held back, in the order they were, once a task may go: waits up to ``timeout`` s for that
        (woken by :meth:`report_losses` and by a requeue, without polling); [] if none is held or none may go yet.
        Ask :meth:`next_task` for each again (it may answer :data:`HOLD` again)."""
        with self._lock:
            if not self._held or not self._may_go.wait_for(lambda: not self._holds(), timeout):
                return []
            held, self._held = self._held, []
            return held

    def design_histograms(self) -> dict[str, np.ndarray]:
        """``{"design/NAME": values (n,)}``: each parameter of the simulations handed out since the last call."""
        with self._lock:
            recent = self.cursor.take_recent()
        names = self.cursor.solver.param_space.names
        return {f"design/{name}": recent[:, j] for j, name in enumerate(names)} if len(recent) else {}

    def task_done(self, worker: Hashable) -> None:
        with self._lock:
            self._running.pop(worker, None)

    def worker_lost(self, worker: Hashable, reason: str, hint: str = "check the worker logs") -> Task | None:
        """Requeue ``worker``'s task (returned) and count a failure; :class:`JobFailed` past ``max_failures``."""
        with self._lock:
            task = self._running.pop(worker, None)
            if task is not None:
                self.cursor.requeue(task)
                self._may_go.notify_all()
            self.failures += 1
            failures = self.failures
        if failures > self.max_failures:
            raise JobFailed(f"solver workers failed {failures} times, more than workers.max_failures="
                            f"{self.max_failures} (last: worker {worker}: {reason}); {hint} or raise "
                            "workers.max_failures")
        return task

    def finished(self) -> bool:
        """True once every simulation of a finite design is done or dropped and no task is out (never while tasks
        are only held back: the design is not exhausted)."""
        with self._lock:
            return not self._running and self.cursor.exhausted()

    def running(self) -> dict[Hashable, Task]:
        """Worker -> the task it runs (a copy)."""
        with self._lock:
            return dict(self._running)

    def in_flight(self) -> list[Task]:
        """Tasks handed out and not finished (their unfinished simulations are re-run after a resume)."""
        with self._lock:
            return list(self._running.values())

    def state_dict(self) -> dict:
        """The design cursor's state with the in-flight tasks' unfinished simulations pending (for checkpoints)."""
        with self._lock:
            return self.cursor.state_dict(list(self._running.values()))

    def checkpoint_state(self) -> dict:
        """What a checkpoint saves of the design: :meth:`state_dict` plus ``worker_failures`` (the failures counted
        so far), read together, so that ``max_failures`` is a budget for the whole job across resumes."""
        with self._lock:
            return {**self.cursor.state_dict(list(self._running.values())), "worker_failures": self.failures}

    def load_failures(self, state: dict) -> None:
        """Continue counting from a checkpoint's :meth:`checkpoint_state` (one written without it counts 0)."""
        with self._lock:
            self.failures = int(state.get("worker_failures", 0))
