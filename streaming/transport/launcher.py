"""The launcher: starts an external solver program once per simulation of the design and trains on what it sends.

For ``solver.name = "external"`` with a ``solver.external.command`` (:mod:`streaming.external_solver`). The
data path is the external backend's TCP listener (:class:`~streaming.transport.listener.ClientSource`); the
launcher adds what the listener lacks, the design:

- one :class:`~streaming.transport.dispatcher.Dispatcher` over the job's design cursor (the listener has
  none: hand-started clients choose their own simulations). ``workers.count`` slots each take a task
  (``workers.sims_per_task`` simulations) and run its simulations one after the other, one process each;
  at most ``workers.count`` processes run at a time, each with ``workers.max_inflight`` messages
  unacknowledged (the listener's flow control). A slot whose task the dispatcher holds back (pacing,
  :mod:`streaming.adaptive`) stays free and asks again between messages (at least every :data:`_POLL_S`);
- where processes run is ``workers.backend``: ``local`` or ``external`` (subprocesses of the trainer's process) or
  ``ray`` (a subprocess inside a Ray actor per slot, on any node; the data still comes over TCP, so set
  ``workers.listen`` to an address the nodes reach);
- a run succeeds when the program exits 0 after closing its connection with all ``frames`` frames sent.
  A non-zero exit, an exit without close, missing frames, parameters other than those it was started
  with, a dropped connection or ``solver.external.timeout`` make it a failure: the dispatcher requeues the
  simulation and counts it against ``workers.max_failures``. A simulation that sent NaN/Inf is dropped
  (not retried), as on every transport;
- every attempt connects under its own id, ``{sim_id}`` = design id + attempt * :data:`ATTEMPT_STRIDE`
  (the listener never takes a finished id twice); the launcher maps chunks back to the design id, so the
  buffer's (simulation, frame) de-duplication drops what a failed attempt had already delivered;
- every process runs in its own process group, under a small watcher (:mod:`streaming.transport.reaper`);
  :meth:`LaunchSource.close` (job end, failure, Ctrl-C) and an ``atexit`` hook kill the groups, and a process
  that started one and died without cleaning up (a Ray actor SIGKILLed, a trainer OOM-killed) has its group
  killed by the watcher within a second.

MPI solvers: put ``mpiexec -n R ...`` in the command; each rank connects with the slab API and the
listener assembles the slabs (the launcher sees one process group).

Not a transport of its own: the data always travel over the listener, and ``workers.backend`` only
says where the programs start. ``run_job`` calls :func:`from_config` for ``solver.name = "external"``; it
also serves backend ``external`` without a command (the bare listener), so it can stand as that backend's
factory. The launcher owns the job's one dispatcher; the listener under it has none, as with hand-started
clients.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from streaming.chunk import Chunk, SimReport
from streaming.config import ConfigError, JobConfig
from streaming.design import DesignCursor, Task
from streaming.external_solver import ExternalSolver, command_argv, fill_command
from streaming.transport.dispatcher import HOLD, Dispatcher
from streaming.transport.listener import ClientSource
from streaming.transport.listener_process import ListenerProcess
from streaming.transport.reaper import reaped_argv
from streaming.transport.source import Message

ATTEMPT_STRIDE = 2**40  # connection id of attempt a of simulation i: i + a * ATTEMPT_STRIDE
EXIT_GRACE_S = 2.0  # after a run exits, how long (with nothing else coming in) its last messages may take
KILL_GRACE_S = 2.0  # SIGTERM, then SIGKILL after this long
ACTOR_RESTART_S = 120.0  # how long a dead Ray actor of the launcher may take to come back before its next run fails
_POLL_S = 0.05
_TAIL_CHARS = 1500
_END = object()


class LauncherError(ConfigError):
    """A launcher setting that cannot work (backend, command, cwd); the message names the fix."""


# ---------------------------------------------------------------------------------------------- process runners
def _kill_group(proc: subprocess.Popen) -> None:
    """SIGTERM the process group of ``proc``, SIGKILL it after :data:`KILL_GRACE_S`; reap ``proc``."""
    pgid = proc.pid  # started with start_new_session: the group outlives its leader while members remain
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(KILL_GRACE_S)
    with contextlib.suppress(ProcessLookupError, PermissionError):  # children that outlived the leader, or ignore TERM
        os.killpg(pgid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(KILL_GRACE_S)


def _unstartable(program: str, cwd: str | None) -> str | None:
    """Why ``program`` (a name on PATH, or a path relative to ``cwd``) cannot be executed; None when it can."""
    path = Path(cwd or ".") / program if os.sep in program else shutil.which(program)
    if path is None or not Path(path).is_file():
        return "no such file" if os.sep in program else "not found on PATH"
    return None if os.access(path, os.X_OK) else "not executable"


def _tail(path: Path) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(f.tell() - _TAIL_CHARS, 0))
            return f.read().decode(errors="replace").strip()
    except OSError:
        return ""


class LocalRunner:
    """Runs commands as subprocesses of this process, each in a new session (its own process group)."""

    where = "local"

    def __init__(self, nice: int = 0) -> None:
        self.nice = nice

    def start(self, slot: int, argv: list[str], env: dict[str, str], cwd: str | None, log: Path) -> Any:
        why = _unstartable(argv[0], cwd)
        if why:
            raise LauncherError(f"solver.external.command: cannot start {argv[0]!r} in {cwd or os.getcwd()!r} "
                                f"({why}); check the program path (relative to solver.external.cwd) and that it is "
                                "built and executable")
        with open(log, "wb") as out:
            proc = subprocess.Popen(reaped_argv(argv, self.nice), cwd=cwd, env={**os.environ, **env},
                                    stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        return (proc, log)

    def poll(self, handle: Any) -> int | None:
        return handle[0].poll()

    def kill(self, handle: Any) -> None:
        _kill_group(handle[0])

    def output(self, handle: Any) -> str:
        return _tail(handle[1])

    def forget(self, handle: Any) -> None:
        handle[1].unlink(missing_ok=True)

    def close(self) -> None:
        pass


class _ProcessActor:
    """A Ray actor that runs one command at a time as a subprocess (own process group) and can kill it."""

    def __init__(self, nice: int) -> None:
        self.proc: subprocess.Popen | None = None
        self.nice = nice

    def run(self, argv: list[str], env: dict[str, str], cwd: str | None) -> tuple[int, str]:
        with tempfile.TemporaryFile() as out:  # the output, deleted once its tail is read
            why = _unstartable(argv[0], cwd)
            if why:
                return 127, f"cannot start {argv[0]!r} in {cwd or os.getcwd()!r} on this node: {why}"
            self.proc = subprocess.Popen(reaped_argv(argv, self.nice), cwd=cwd, env={**os.environ, **env},
                                         stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)
            rc = self.proc.wait()
            out.seek(max(out.seek(0, os.SEEK_END) - _TAIL_CHARS, 0))
            return rc, out.read().decode(errors="replace").strip()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            _kill_group(self.proc)

    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid


_RAY_KEPT = {"by_validation": False}  # a Ray started for the validation runs, left up for the job's runs


class RayRunner:
    """Runs commands inside Ray actors (one per slot), on the cluster at ``address`` (None: a local one)."""

    where = "ray"

    def __init__(self, count: int, address: str | None, nice: int = 0, keep_ray: bool = False) -> None:
        import ray

        from streaming.transport.ray_cluster import ensure_ray

        self._ray = ray
        # a Ray the validation runs started (keep_ray) is handed on to the job's runner, which shuts it down
        self._started_ray = ensure_ray(address, count) or _RAY_KEPT["by_validation"]
        _RAY_KEPT["by_validation"] = keep_ray and self._started_ray
        self._started_ray = self._started_ray and not keep_ray
        # an actor that dies (OOM, its node lost) is restarted by Ray: its run counts as failed and is retried
        # (max_task_retries 0: the launcher, not Ray, retries and counts); later runs on its slot wait for it
        actor = ray.remote(_ProcessActor).options(max_concurrency=2, num_cpus=1, max_restarts=-1, max_task_retries=0)
        self.actors = [actor.remote(nice) for _ in range(count)]
        self._results: dict[int, tuple[int, str]] = {}
        self._died: set[int] = set()  # slots whose actor died: Ray restarts it

    def start(self, slot: int, argv: list[str], env: dict[str, str], cwd: str | None, log: Path) -> Any:
        if slot in self._died:
            self._wait_restarted(slot)
        return (slot, self.actors[slot].run.remote(argv, env, cwd))

    def _wait_restarted(self, slot: int) -> None:
        """Wait until slot's actor, which died, answers again (Ray refuses calls while it restarts), at most
        :data:`ACTOR_RESTART_S`; past that the next run fails with Ray's message and counts as a failure."""
        from ray.exceptions import ActorDiedError, ActorUnavailableError, GetTimeoutError

        deadline = time.monotonic() + ACTOR_RESTART_S
        while time.monotonic() < deadline:
            try:
                self._ray.get(self.actors[slot].pid.remote(), timeout=5)
            except (ActorUnavailableError, GetTimeoutError):
                time.sleep(0.2)
                continue
            except ActorDiedError:
                break
            self._died.discard(slot)
            return

    def poll(self, handle: Any) -> int | None:
        slot, ref = handle
        if id(ref) in self._results:
            return self._results[id(ref)][0]
        ready, _ = self._ray.wait([ref], timeout=0)
        if not ready:
            return None
        try:
            result = self._ray.get(ref)
        except Exception as e:  # noqa: BLE001  (the actor died: the run failed)
            result = (-1, f"the Ray actor running it died ({type(e).__name__}: {e})")
            self._died.add(slot)
        self._results[id(ref)] = result
        return result[0]

    def kill(self, handle: Any) -> None:
        slot, ref = handle
        with contextlib.suppress(Exception):
            self._ray.get(self.actors[slot].stop.remote(), timeout=KILL_GRACE_S * 3)

    def output(self, handle: Any) -> str:
        if id(handle[1]) not in self._results:  # killed: the actor's run returns once its process is gone
            with contextlib.suppress(Exception):
                self._results[id(handle[1])] = self._ray.get(handle[1], timeout=KILL_GRACE_S * 3)
        return self._results.get(id(handle[1]), (0, ""))[1]

    def forget(self, handle: Any) -> None:
        self._results.pop(id(handle[1]), None)

    def close(self) -> None:
        for a in self.actors:
            with contextlib.suppress(Exception):
                self._ray.get(a.stop.remote(), timeout=KILL_GRACE_S * 3)
            with contextlib.suppress(Exception):
                self._ray.kill(a, no_restart=True)
        if self._started_ray:
            time.sleep(0.1)
            self._ray.shutdown()


# ---------------------------------------------------------------------------------------------- the source
@dataclasses.dataclass(eq=False)
class _Run:
    """One attempt of one simulation: a process that connects as ``wire_id``."""

    slot: int
    sim_id: int
    attempt: int
    wire_id: int
    params: np.ndarray  # float32 (P,): what the program is started with and must send
    handle: Any
    started: float
    frames: set[int] = dataclasses.field(default_factory=set)
    reported: str | None = None  # the listener's report: done | nan | error
    error: str = ""
    rc: int | None = None
    exited: float = 0.0  # when the exit (or the listener's error report) was seen
    quiet_at_exit: float = 0.0  # the source's quiet time then


@dataclasses.dataclass(eq=False)
class _Slot:
    task: Task | None = None
    next_index: int = 0  # the task's next simulation to start
    run: _Run | None = None


_LIVE: weakref.WeakSet = weakref.WeakSet()


@atexit.register
def _close_all() -> None:  # a job that ends without close() (a crash) leaves no solver processes behind
    for source in list(_LIVE):
        with contextlib.suppress(Exception):
            source.close()


class LaunchSource:
    """Starts ``solver``'s command for each simulation of ``cursor`` and yields what the programs send.

    listener: the :class:`ClientSource` they stream to (its address and token go into the commands).
    runner: :class:`LocalRunner` or :class:`RayRunner`. count: processes at a time. See the module docstring.
    """

    def __init__(self, cursor: DesignCursor, solver: ExternalSolver, listener: ClientSource | ListenerProcess,
                 runner: Any, *,
                 count: int, max_failures: int, exit_grace: float = EXIT_GRACE_S) -> None:
        section = solver.config
        if not section.command:
            raise LauncherError("solver.external.command is empty: nothing to launch; set it, or use "
                                "workers.backend = 'external' and start the clients by hand")
        self.cursor, self.solver, self.listener, self.runner = cursor, solver, listener, runner
        self.dispatcher = Dispatcher(cursor, max_failures)
        self.argv = command_argv(section.command, section.placeholder_names())
        self.cwd = str(Path(section.cwd).resolve()) if section.cwd else None
        if self.cwd is not None and not Path(self.cwd).is_dir():
            raise LauncherError(f"solver.external.cwd={section.cwd!r}: no such directory (relative paths start where "
                                "pdestream runs)")
        self.address = listener.address
        self.token = getattr(listener, "token", None) or ""
        self.exit_grace = exit_grace
        self.timeout = section.timeout
        self.frames = section.frames
        self._slots = [_Slot() for _ in range(count)]
        self._runs: dict[int, _Run] = {}  # wire id -> the live run
        self._attempts: dict[int, int] = {}  # sim id -> attempts started
        self._tmp = Path(tempfile.mkdtemp(prefix="pdestream-launch-"))
        self._queue: queue.Queue = queue.Queue(maxsize=2)  # listener -> iterating thread (acks follow the takes)
        self._pump_thread: threading.Thread | None = None
        self._iter_thread: threading.Thread | None = None  # the thread inside __iter__, if any
        self._lock = threading.Lock()  # the run table, between the iterating thread and close()
        self._closed = False
        self._quiet = 0.0  # seconds spent waiting on an empty queue: the clock of the exit grace
        self.launched = self.succeeded = self.failed = self.nan = self.stale_messages = 0
        self.failures: list[str] = []
        _LIVE.add(self)

    # ------------------------------------------------------------------ the stream
    def __iter__(self) -> Iterator[Message]:
        self._iter_thread = threading.current_thread()
        try:
            yield from self._messages()
        finally:
            self._iter_thread = None

    def _messages(self) -> Iterator[Message]:
        self._pump_thread = threading.Thread(target=self._pump, daemon=True, name="launcher-pump")
        self._pump_thread.start()
        for i in range(len(self._slots)):
            self._assign(i)
        while not self._closed and (self.dispatcher.holding() or any(s.task is not None for s in self._slots)):
            for i in self.dispatcher.released():  # the trainer's losses let the held slots' tasks go
                self._assign(i)
            try:
                item = self._queue.get(timeout=_POLL_S)
            except queue.Empty:
                item = None
                self._quiet += _POLL_S  # nothing came through the listener for this long
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            out = [] if item is None else self._on_message(item)
            if not self._closed:
                out += self._poll()
            for msg in out:  # reports went to the dispatcher already
                yield msg
                if self._closed:
                    return

    def _pump(self) -> None:
        """Listener thread: its messages into the queue; the listener acknowledges one once the next is asked for."""
        try:
            for msg in self.listener:
                while not self._closed:
                    with contextlib.suppress(queue.Full):
                        self._queue.put(msg, timeout=_POLL_S)
                        break
                if self._closed:
                    return
        except BaseException as e:  # noqa: BLE001  (handed to the iterating thread)
            self._put_final(e)
            return
        self._put_final(_END)

    def _put_final(self, item: Any) -> None:
        while not self._closed:
            with contextlib.suppress(queue.Full):
                self._queue.put(item, timeout=_POLL_S)
                return

    # ------------------------------------------------------------------ slots and runs
    def _assign(self, i: int) -> None:
        """Give slot ``i`` its next simulation: the rest of its task, or a new task (None: nothing left; held back
        by pacing: the dispatcher keeps the slot until it releases it)."""
        slot = self._slots[i]
        while True:
            if slot.task is not None and slot.next_index < len(slot.task.sim_ids):
                j = slot.next_index
                slot.next_index += 1
                self._start(i, int(slot.task.sim_ids[j]), slot.task.params[j], int(slot.task.ic_seeds[j]))
                return
            if slot.task is not None:
                self.dispatcher.task_done(i)
            task = self.dispatcher.next_task(i)
            slot.task, slot.next_index = None if task is HOLD else task, 0
            if slot.task is None:
                return

    def _start(self, i: int, sim_id: int, params: np.ndarray, seed: int) -> None:
        attempt = self._attempts.get(sim_id, 0)
        self._attempts[sim_id] = attempt + 1
        wire_id = sim_id + attempt * ATTEMPT_STRIDE
        p32 = np.asarray(params, np.float32)
        named = {n: float(v) for n, v in zip(self.solver.param_space.names, p32.tolist(), strict=True)}
        params_file = self._tmp / f"sim-{wire_id}.json"
        params_file.write_text(json.dumps({"sim_id": wire_id, "design_id": sim_id, "attempt": attempt, "seed": seed,
                                           "address": self.address, "frames": self.frames, "dt": self.solver.dt,
                                           "channels": list(self.solver.channels), "grid": list(self.solver.grid),
                                           "params": named}, indent=1))
        values = {"sim_id": wire_id, "address": self.address, "token": self.token, "params_file": str(params_file),
                  "frames": self.frames, "dt": self.solver.dt, "seed": seed, "attempt": attempt,
                  "python": sys.executable, **named}
        env = {**self.solver.config.env, "PDESTREAM_ADDRESS": self.address, "PDESTREAM_SIM_ID": str(wire_id)}
        if self.token:
            env["PDESTREAM_TOKEN"] = self.token
        argv = fill_command(self.argv, values)
        handle = self.runner.start(i, argv, env, self.cwd, self._tmp / f"sim-{wire_id}.log")
        run = _Run(i, sim_id, attempt, wire_id, p32, handle, time.monotonic())
        with self._lock:
            self._runs[wire_id] = run
            self._slots[i].run = run
        self.launched += 1

    def _on_message(self, msg: Message) -> list[Message]:
        run = self._runs.get(msg.sim_id)
        if run is None:  # a failed attempt's last messages, or a client the launcher did not start
            self.stale_messages += 1
            return []
        if isinstance(msg, SimReport):
            run.reported = msg.status
            if msg.status == "nan":  # dropped for good, as on every transport: not retried
                report = SimReport(run.sim_id, "nan", msg.message)
                self.dispatcher.on_message(report)
                return [report]
            if msg.status not in ("done", "nan"):
                run.error = msg.message
                run.exited = run.exited or time.monotonic()  # give the process the exit grace to end by itself
            return []
        if msg.params.shape != run.params.shape or not np.allclose(msg.params, run.params, rtol=1e-4, atol=0):
            run.error = (f"it sent parameters {msg.params.tolist()} but was started with {run.params.tolist()} "
                         f"({', '.join(self.solver.param_space.names)}); send them in the order of "
                         "[solver.external.params]")
            run.reported = "error"
            return []
        run.frames.update(int(s) for s in msg.frame_index.tolist() if 0 <= s < self.frames)
        return [dataclasses.replace(msg, sim_id=run.sim_id, params=run.params)]

    def _poll(self) -> list[Message]:
        """Check the running processes; finished runs end (a report, a retry or the next simulation)."""
        out: list[Message] = []
        now = time.monotonic()
        for i, slot in enumerate(self._slots):
            run = slot.run
            if run is None or self._closed:  # close() kills the runs: not failures
                continue
            if run.rc is None:
                run.rc = self.runner.poll(run.handle)
                if run.rc is not None:
                    run.exited, run.quiet_at_exit = now, self._quiet
            verdict = self._verdict(run, now)
            if verdict is None:
                continue
            ok, reason = verdict
            self._end_run(run)
            output = "" if ok else self.runner.output(run.handle)
            self.runner.forget(run.handle)
            if run.reported == "nan":
                self.nan += 1
            elif ok:
                self.succeeded += 1
                report = SimReport(run.sim_id, "done")
                self.dispatcher.on_message(report)  # done in the design before the slot's task is let go
                out.append(report)
            else:
                self.failed += 1
                self._fail(i, run, reason, output)
                slot.task, slot.next_index = None, 0  # the dispatcher requeued its unfinished simulations
            self._assign(i)
        return out

    def _verdict(self, run: _Run, now: float) -> tuple[bool, str] | None:
        """None while the run goes on; else (succeeded, why not)."""
        if run.reported == "nan":  # dropped for good: the process is stopped if it still runs
            return True, ""
        if run.rc is None:
            if run.reported == "error" and now - run.exited > self.exit_grace:
                return False, f"{run.error} (the process was still running {self.exit_grace:g} s later)"
            if self.timeout and now - run.started > self.timeout:
                return False, f"ran longer than solver.external.timeout={self.timeout:g} s"
            return None
        if run.reported is None and self._quiet - run.quiet_at_exit <= self.exit_grace:
            return None  # its last messages may still be on the way (counted while nothing else comes in: a
            # trainer busy between two messages, as with backend local, holds them in the listener)
        sent = f"sent {len(run.frames)} of {self.frames} frames"
        if run.rc != 0:
            return False, f"exited with status {run.rc}; {sent}" + (f" ({run.error})" if run.error else "")
        if run.reported == "error":
            return False, f"exited 0 but the job dropped its data: {run.error}"
        if run.reported == "done":
            if len(run.frames) < self.frames:
                missing = sorted(set(range(self.frames)) - run.frames)[:5]
                return False, (f"exited 0 but {sent} (first missing: {missing}); send frames 0..{self.frames - 1} "
                               "(solver.external.frames)")
            return True, ""
        return False, f"exited 0 without closing its connection (pds_close / client.close()); {sent}"

    def _end_run(self, run: _Run) -> None:
        """The run is over: its process group is killed (children left behind included), its id retired."""
        self.runner.kill(run.handle)
        (self._tmp / f"sim-{run.wire_id}.json").unlink(missing_ok=True)
        with self._lock:
            self._runs.pop(run.wire_id, None)
            self._slots[run.slot].run = None

    def _fail(self, i: int, run: _Run, reason: str, output: str) -> None:
        cmd = " ".join(self.argv)
        message = f"simulation {run.sim_id} (attempt {run.attempt}, `{cmd}`): {reason}"
        if output:
            message += f"; its output ends with: {output[-400:]!r}"
        self.failures.append(message)
        self.dispatcher.worker_lost(i, message, hint="run the command by hand to see why")

    # ------------------------------------------------------------------ the rest of the Source protocol
    def in_flight(self) -> list[Task]:
        return self.dispatcher.in_flight()

    def report(self) -> dict[str, Any]:
        """What the launcher did, for the job summary."""
        return {"launcher": self.runner.where, "address": self.address, "launched": self.launched,
                "succeeded": self.succeeded, "failed": self.failed, "nan": self.nan,
                "retries": self.launched - len(self._attempts), "failures": self.failures[:20]}

    def external_report(self) -> dict[str, Any]:
        report = getattr(self.listener, "external_report", None)
        return report() if report is not None else {"address": self.address}

    def close(self) -> None:
        """Kill every process started (their process groups), stop listening, remove the parameter files."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            runs = list(self._runs.values())
            self._runs.clear()
        for run in runs:
            self.runner.kill(run.handle)
        self.listener.close()
        if self._pump_thread is not None:
            self._pump_thread.join(2.0)
        deadline = time.monotonic() + 5.0  # let a consuming thread leave the stream before Ray goes down
        while self._iter_thread not in (None, threading.current_thread()) and time.monotonic() < deadline:
            time.sleep(0.02)
        self.runner.close()
        shutil.rmtree(self._tmp, ignore_errors=True)
        _LIVE.discard(self)

    def __enter__(self) -> LaunchSource:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# ---------------------------------------------------------------------------------------------- assembly
def make_listener(cfg: JobConfig, solver: Any, overlap: int, listen: str | None = None, *,
                  expected_sims: int | None = None, own_process: bool = False) -> ClientSource | ListenerProcess:
    """The TCP listener the programs stream to (``workers.listen`` unless ``listen`` is given), for ``solver``'s
    channels, grid and parameters; with ``own_process`` (and ``workers.listener_ring_mb`` > 0) in a process of
    its own (:class:`ListenerProcess`), else in this one."""
    w = cfg.workers
    args = (listen or w.listen, expected_sims, w.max_inflight)
    kwargs = {"overlap": overlap, "channels": solver.channels, "grid": solver.grid,
              "n_params": len(solver.param_space), "token": w.token, "client_timeout": w.client_timeout,
              "max_message_bytes": int(w.max_message_mb * 2**20), "chunk_frames": w.chunk_frames}
    if own_process and w.listener_ring_mb > 0:
        return ListenerProcess(*args, ring_mb=w.listener_ring_mb, nice=w.nice, **kwargs)
    return ClientSource(*args, **kwargs)


def make_runner(cfg: JobConfig, keep_ray: bool = False) -> LocalRunner | RayRunner:
    """Where the command's runs start: subprocesses here (``workers.backend`` ``local`` or ``external``) or Ray
    actors (``ray``)."""
    w = cfg.workers
    if w.backend in ("local", "external"):
        return LocalRunner(w.nice)
    if w.backend == "ray":
        return RayRunner(w.count, w.address, w.nice, keep_ray)
    raise LauncherError(f"workers.backend={w.backend!r} cannot launch solver.external.command; use 'local' or "
                        "'external' (subprocesses here) or 'ray' (inside Ray actors), or 'external' without a command "
                        "to start the clients by hand")


def from_config(cfg: JobConfig, cursor: DesignCursor, worker_args: dict[str, Any], **_: Any) -> Any:
    """The source of a job whose solver is external, and of backend ``external``: the launcher when
    ``solver.external.command`` is set (its runs start here for backend ``local`` or ``external``, in Ray actors
    for ``ray``), else, with ``workers.backend = 'external'``, the bare listener that hand-started clients
    stream to."""
    overlap = worker_args["window"] + worker_args["targets"] - 1
    if cfg.workers.backend == "external" and (cfg.solver.external is None or not cfg.solver.external.command):
        from streaming.assembly import build_solver

        return make_listener(cfg, build_solver(cfg), overlap, expected_sims=cfg.solver.n_sims or None,
                             own_process=True)
    solver = ExternalSolver(cfg.solver.external)
    runner = make_runner(cfg)
    try:
        listener = make_listener(cfg, solver, overlap, own_process=True)
    except BaseException:
        runner.close()
        raise
    try:
        return LaunchSource(cursor, solver, listener, runner, count=cfg.workers.count,
                            max_failures=cfg.workers.max_failures)
    except BaseException:
        listener.close()
        runner.close()
        raise


def validation_runs(cfg: JobConfig, solver: ExternalSolver, first_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Run the command for ``validation.n_sims`` held-out simulations (ids from ``first_id``, a uniform design
    with ``validation.seed``) on a listener of their own; returns their frames ``(N, T, C, *grid)`` float32 and
    parameters ``(N, P)``. Simulations that sent NaN/Inf are left out."""
    v, w = cfg.validation, cfg.workers
    cursor = DesignCursor(solver, v.n_sims, "uniform", v.seed, 1, first_id=first_id, fixed=cfg.solver.fixed)
    host = w.listen.rpartition(":")[0] or "127.0.0.1"
    runner = make_runner(cfg, keep_ray=True)  # the training runs start next: no second Ray start
    source = LaunchSource(cursor, solver, make_listener(cfg, solver, 0, f"{host}:0"), runner, count=w.count,
                          max_failures=w.max_failures)
    frames: dict[int, dict[int, np.ndarray]] = {}
    params: dict[int, np.ndarray] = {}
    done: list[int] = []
    with source:
        for msg in source:
            if isinstance(msg, Chunk):
                got = frames.setdefault(msg.sim_id, {})
                for s, f in zip(msg.frame_index.tolist(), msg.fields, strict=True):
                    got.setdefault(int(s), f)
                params[msg.sim_id] = msg.params
            elif msg.status == "done":
                done.append(msg.sim_id)
    done.sort()
    if not done:
        raise ConfigError("no validation simulation finished (all sent NaN/Inf); check the program or its parameter "
                          "ranges")
    stack = np.stack([np.stack([frames[i][s] for s in range(solver.frames)]) for i in done]).astype(np.float32)
    return stack, np.stack([params[i] for i in done]).astype(np.float64)


def validation_file(path: str, solver: ExternalSolver) -> tuple[np.ndarray, np.ndarray]:
    """Frames ``(N, T, C, *grid)`` and parameters ``(N, P)`` of a ``pdestream solve`` trajectory file, checked
    against the external solver's channels, grid and parameters."""
    from benchmarks.trajectories import read_trajectories

    traj = read_trajectories(path)
    fields = traj.fields()
    want = (len(solver.channels), *solver.grid)
    if tuple(fields.shape[2:]) != want or traj.params.shape[1] != len(solver.param_space):
        raise ConfigError(f"solver.external.validation_file={path!r}: simulations of shape {fields.shape[2:]} with "
                          f"{traj.params.shape[1]} parameters, but the job trains on {want} (channels, *grid) with "
                          f"{len(solver.param_space)}; write the file with the same program and settings")
    return fields, np.asarray(traj.params, np.float64)


def launched_validation(cfg: JobConfig, solver: ExternalSolver, first_id: int) -> tuple[np.ndarray, np.ndarray]:
    """The validation simulations of an external solver: ``solver.external.validation_file`` if set, else
    :func:`validation_runs` (the command with held-out parameters); without either, a :class:`ConfigError`."""
    section = solver.config
    if section.validation_file:
        return validation_file(section.validation_file, solver)
    if not section.command:
        raise ConfigError("an external solver without solver.external.command needs solver.external.validation_file "
                          "(a `pdestream solve`-format file of held-out simulations) to validate; set one of them")
    return validation_runs(cfg, solver, first_id)
