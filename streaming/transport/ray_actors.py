"""Ray transport: solver workers are Ray actors whose ``run`` is a streaming generator of messages.

- With no address a local Ray cluster starts on this machine; ``address`` joins a running one
  (:mod:`streaming.transport.ray_cluster`). ``placement="spread"`` spreads the actors over the cluster's nodes
  (Ray's SPREAD strategy) instead of filling the driver's node first.
- Each actor runs one task at a time and yields its messages in bundles of about ``bundle_bytes``
  (several chunks, several simulations per Ray object: Ray costs milliseconds per object, so
  one-chunk objects cap a worker at a few hundred chunks/s); its generator is created with Ray's
  generator backpressure (at most ``max_inflight`` bundles generated and not yet consumed), so when
  training is slower than generation the actors pause and memory stays flat.
- ``ray.wait`` multiplexes the actors' generators.
- A dead actor (SIGKILL, OOM, its node lost) is restarted by Ray (``max_restarts``), on another node if
  its own is gone, while the other actors stream on; a simulation that raises leaves the actor running.
  Either way the dispatcher puts the task's unfinished simulations back in the design, to be re-run in
  full (the buffer's (sim id, step) de-duplication drops what had already arrived), and counts a failure; after
  ``max_failures`` failures the job stops with :class:`~streaming.errors.JobFailed`.
- :meth:`RaySource.report` says which node each actor ran on, restarts included.
- An actor whose task the dispatcher holds back (pacing, :mod:`streaming.adaptive`) stays idle until the
  trainer's next loss report lets a task go: with every actor idle the stream sleeps on the dispatcher, which the
  report wakes; otherwise it asks again between messages (at least every :data:`HOLD_POLL_S`).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import ray
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError, RayTaskError, WorkerCrashedError

from streaming.config import JobConfig
from streaming.design import DesignCursor, Task
from streaming.errors import JobFailed
from streaming.transport.dispatcher import HOLD, Dispatcher
from streaming.transport.ray_cluster import ensure_ray, logs_dir
from streaming.transport.source import Message
from streaming.worker import SolverWorker

_ACTOR_ERRORS = (RayActorError, ActorDiedError, ActorUnavailableError, WorkerCrashedError)
RESTART_TIMEOUT_S = 300.0  # how long a dead actor may take to come back (Ray restarts it, on another node if need be)
_TASK_ERRORS = (*_ACTOR_ERRORS, RayTaskError)  # RayTaskError: the simulation raised; the actor lives on
HOLD_POLL_S = 0.1  # while actors are held back and others stream: how often at least the design is asked again


class _RayWorker:
    """Actor body: a worker (a :class:`SolverWorker` unless ``worker_cls`` says otherwise) whose ``run`` streams."""

    def __init__(self, worker_args: dict[str, Any], nice: int, worker_cls: type = SolverWorker) -> None:
        if nice:
            os.nice(nice)  # solvers yield the CPU to the trainer on a shared machine
        self.worker = worker_cls(**worker_args)

    def run(self, task: Task, bundle_bytes: int) -> Iterator[list[Message]]:
        bundle: list[Message] = []
        size = 0
        for msg in self.worker.run(task):
            bundle.append(msg)
            size += getattr(msg, "nbytes", 0)
            if size >= bundle_bytes:
                yield bundle
                bundle, size = [], 0
        if bundle:
            yield bundle

    def where(self) -> tuple[int, str]:
        """(process id, Ray node id) of this actor."""
        return os.getpid(), ray.get_runtime_context().get_node_id()


def worker_env(device: str, gpu_fraction: float) -> dict[str, str]:
    """Environment of a worker process: CPU-only JAX, or a capped share of a GPU next to the trainer."""
    if device == "gpu":
        return {"XLA_PYTHON_CLIENT_PREALLOCATE": "false", "XLA_CLIENT_MEM_FRACTION": f"{gpu_fraction:.3f}",
                "XLA_PYTHON_CLIENT_MEM_FRACTION": f"{gpu_fraction:.3f}"}
    return {"JAX_PLATFORMS": "cpu", "CUDA_VISIBLE_DEVICES": ""}


class RaySource:
    """Multiplexes ``count`` Ray actors into one stream of messages.

    ``worker_cls(**worker_args)`` builds each actor's worker (anything with ``run(task)`` yielding
    messages; :class:`SolverWorker` by default). Messages travel in bundles of about ``bundle_bytes``.
    """

    def __init__(self, cursor: DesignCursor, worker_args: dict[str, Any], count: int, max_inflight: int,
                 max_failures: int, address: str | None = None, device: str = "cpu",
                 gpu_fraction: float = 0.1, nice: int = 0, worker_cls: type = SolverWorker,
                 bundle_bytes: int = 4 << 20, placement: str = "default") -> None:
        self.cursor, self.dispatcher = cursor, Dispatcher(cursor, max_failures)
        self.max_inflight = max_inflight
        self.bundle_bytes = bundle_bytes
        self._started_ray = ensure_ray(address, count)
        options: dict[str, Any] = {
            "max_restarts": max(max_failures, 1),
            "max_task_retries": 0,
            "max_concurrency": 2,  # one task streams while control calls (where) are answered
            "num_cpus": 1 if device == "cpu" else 0,
            "runtime_env": {"env_vars": worker_env(device, gpu_fraction)},
        }
        if device == "gpu":
            options["num_gpus"] = gpu_fraction
        if placement == "spread":
            options["scheduling_strategy"] = "SPREAD"
        actor_cls = ray.remote(_RayWorker)
        self.actors = [actor_cls.options(**options).remote(worker_args, nice, worker_cls) for _ in range(count)]
        self._where_refs: dict[int, Any] = {i: a.where.remote() for i, a in enumerate(self.actors)}
        self.nodes: list[list[str]] = [[] for _ in range(count)]  # the Ray nodes each actor ran on, in order
        self.restarts = 0  # actors that died and answered again after Ray restarted them
        self._restarting: dict[Any, tuple[int, float]] = {}  # `where` call to a dead actor -> (index, deadline)
        self._ask_again: list[tuple[float, int, float]] = []  # (when, index, deadline): dead actors to call again
        self._active: dict[Any, int] = {}  # streaming generator -> index of the actor running it
        self._closed = False
        self._iter_thread: threading.Thread | None = None  # the thread inside __iter__, if any

    def worker_pids(self) -> list[int]:
        """Process ids of the actors (for fault-injection tests)."""
        return [pid for pid, _ in ray.get([a.where.remote() for a in self.actors])]

    def _placed(self, idx: int, node: str) -> None:
        if not self.nodes[idx] or self.nodes[idx][-1] != node:
            self.nodes[idx].append(node)

    def _resolve_placements(self, idxs: list[int], timeout: float) -> None:
        """Record where the first incarnations of actors ``idxs`` answered from (asked at their creation)."""
        refs = {i: self._where_refs.pop(i) for i in idxs if i in self._where_refs}
        ready, _ = ray.wait(list(refs.values()), num_returns=len(refs), timeout=timeout) if refs else ([], [])
        for idx, ref in refs.items():
            if ref in ready:
                try:
                    self._placed(idx, ray.get(ref)[1])
                except _ACTOR_ERRORS:  # died before it answered
                    pass

    def report(self) -> dict[str, Any]:
        """For the job's summary: failures survived, actors restarted and the node of each actor (ids, in order
        of incarnation)."""
        return {"backend": "ray", "worker_failures": self.failures, "actor_restarts": self.restarts,
                "actor_nodes": [list(n) for n in self.nodes], "n_nodes": len({n for ns in self.nodes for n in ns})}

    @property
    def failures(self) -> int:
        return self.dispatcher.failures

    def _start(self, idx: int) -> None:
        task = self.dispatcher.next_task(idx)  # HOLD: the dispatcher keeps the actor until released()
        if task is None or task is HOLD:
            return
        gen = self.actors[idx].run.options(_generator_backpressure_num_objects=self.max_inflight).remote(
            task, self.bundle_bytes)
        self._active[gen] = idx

    def _failed(self, gen: Any, err: BaseException) -> None:
        """The task of ``gen`` failed: requeued by the dispatcher. A live actor takes its next task; a dead one
        is called again (:meth:`_restarted` hands it a task once Ray has restarted it), while the other actors
        stream on."""
        idx = self._active.pop(gen)
        actor_died = isinstance(err, _ACTOR_ERRORS)
        reason = str(err.cause if isinstance(err, RayTaskError) and err.cause is not None else err)
        try:
            self.dispatcher.worker_lost(idx, f"{type(err).__name__}: {reason[:300]}",
                                        hint=f"check the worker logs under {logs_dir()}")
        except JobFailed as e:
            raise e from err
        if actor_died:
            self._resolve_placements([idx], timeout=1.0)
            self._restarting[self.actors[idx].where.remote()] = (idx, time.monotonic() + RESTART_TIMEOUT_S)
        else:
            self._start(idx)

    def _restarted(self, ref: Any) -> None:
        """The ``where`` call to a dead actor answered: restarted, it takes the next task; still unavailable, it is
        asked again; gone for good (or past :data:`RESTART_TIMEOUT_S`), the job stops."""
        idx, deadline = self._restarting.pop(ref)
        try:
            self._placed(idx, ray.get(ref)[1])
        except ActorDiedError as e:
            raise JobFailed(f"solver worker {idx} died for good ({str(e)[:200]}); check the worker logs") from e
        except ActorUnavailableError:  # still restarting: asked again in a while, the other actors stream on
            self._ask_again.append((time.monotonic() + 0.5, idx, deadline))
            return
        self.restarts += 1
        self._start(idx)

    def _call_restarting(self) -> float:
        """Call the dead actors whose time to be asked again has come; :class:`JobFailed` for one past its
        deadline. Returns how long the stream may wait for a message before the next of these (s)."""
        now = time.monotonic()
        late = [idx for idx, deadline in self._restarting.values() if now > deadline]
        late += [idx for _, idx, deadline in self._ask_again if now > deadline]
        if late:
            raise JobFailed(f"solver worker {late[0]} did not come back within {RESTART_TIMEOUT_S:.0f} s after a "
                            "failure; check the worker logs")
        due = [(idx, deadline) for when, idx, deadline in self._ask_again if when <= now]
        self._ask_again = [a for a in self._ask_again if a[0] > now]
        for idx, deadline in due:
            self._restarting[self.actors[idx].where.remote()] = (idx, deadline)
        return min([1.0, *(when - now for when, _, _ in self._ask_again)])

    def __iter__(self) -> Iterator[Message]:
        self._iter_thread = threading.current_thread()
        try:
            yield from self._messages()
        finally:  # the generator's frame (and its Ray object refs) is gone before close() shuts Ray down
            self._iter_thread = None

    def _messages(self) -> Iterator[Message]:
        for idx in range(len(self.actors)):
            self._start(idx)
        # the stream ends with every actor back
        while not self._closed:
            held = self.dispatcher.holding()
            if not (self._active or self._restarting or self._ask_again or held):
                break
            wait = self._call_restarting()
            if held:  # with nothing else to wait for, sleep until the trainer's losses let a task go
                for idx in self.dispatcher.released(0.0 if self._active or self._restarting else wait):
                    self._start(idx)
                wait = min(wait, HOLD_POLL_S)
            refs = [*self._active, *self._restarting]
            if not refs:
                if not held:
                    time.sleep(wait)
                continue
            ready, _ = ray.wait(refs, num_returns=1, timeout=wait)
            if not ready:
                continue
            if ready[0] in self._restarting:
                self._restarted(ready[0])
                continue
            gen = ready[0]
            try:
                ref = next(gen)
                bundle = ray.get(ref)
            except StopIteration:
                if self._closed:
                    return
                idx = self._active.pop(gen)
                self.dispatcher.task_done(idx)
                self._start(idx)
                continue
            except _TASK_ERRORS as e:
                if self._closed:  # close() killed the actors under us
                    return
                self._failed(gen, e)
                continue
            for msg in bundle:
                self.dispatcher.on_message(msg)
                yield msg
                if self._closed:
                    return

    def in_flight(self) -> list[Task]:
        return self.dispatcher.in_flight()

    def close(self, timeout: float = 10.0) -> None:
        """Kill the actors; with a Ray this source started, wait (up to ``timeout`` s) for the consuming
        thread to leave the stream, then shut Ray down: a Ray object ref released after
        ``ray.shutdown`` makes Ray end the whole process."""
        self._closed = True
        self._resolve_placements(list(range(len(self.actors))), timeout=2.0)
        restarting = list(self._restarting.items())  # dead actors not heard from since: where they came back, if so
        refs = [r for r, _ in restarting]
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=2.0) if refs else ([], [])
        for ref, (idx, _) in restarting:
            if ref in ready:
                with contextlib.suppress(*_ACTOR_ERRORS):
                    self._placed(idx, ray.get(ref)[1])
        for a in self.actors:
            ray.kill(a, no_restart=True)
        deadline = time.monotonic() + timeout
        while self._iter_thread not in (None, threading.current_thread()) and time.monotonic() < deadline:
            time.sleep(0.02)
        self._active.clear()  # after the consuming thread left: it owns the table while it iterates
        self._restarting.clear()
        self._ask_again.clear()
        if self._started_ray:
            time.sleep(0.1)
            ray.shutdown()


def from_config(cfg: JobConfig, cursor: DesignCursor, worker_args: dict[str, Any], *,
                worker_cls: type = SolverWorker, **_: Any) -> RaySource:
    """Backend ``ray``: ``workers.count`` actors on the cluster at ``workers.address`` (or a new local one)."""
    w = cfg.workers
    return RaySource(cursor, worker_args, w.count, w.max_inflight, w.max_failures, w.address, w.device,
                     w.gpu_fraction, w.nice, worker_cls, placement=w.placement)
