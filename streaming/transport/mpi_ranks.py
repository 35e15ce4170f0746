"""MPI transport: the first ranks train, every other rank runs a solver worker.

Launch either way (both put the trainers on the first ranks of ``MPI.COMM_WORLD``):

- ``mpiexec -n 1 pdestream train cfg.toml --backend mpi : -n 8 pdestream worker cfg.toml`` (MPMD);
- ``mpiexec -n 9 pdestream train cfg.toml --backend mpi`` (ranks > 0 of ``train`` become workers).

With ``--num-processes T`` (e.g. one trainer per node: ``mpiexec -n 2 pdestream train cfg.toml
--backend mpi --num-processes 2 : -n 16 pdestream worker cfg.toml``) ranks ``0 .. T-1`` are T
data-parallel trainer processes joined by ``jax.distributed`` (:mod:`streaming.distributed`; rank 0
picks the coordinator address unless ``--coordinator`` gives one) and worker rank ``r`` serves
trainer ``(r - T) mod T``. :func:`agree_layout` gives every rank rank 0's choice; ``COMM_WORLD`` is
split into a trainer group and a worker group (``split_roles``); solver ranks are never counted as
JAX processes.

Protocol (worker -> trainer unless noted), with tags:

- ``TASK`` (trainer -> worker): a pickled :class:`~streaming.design.Task`, or None to stop (sent once the
  design is finished: a rank with nothing left to run waits, since a lost rank's task may come back). The answer to
  a rank whose task the dispatcher holds back (pacing, :mod:`streaming.adaptive`) is deferred: the trainer asks
  the design again while it waits for messages, and sends the task once the trainer's losses let it go;
- ``HEADER``: a small pickled dict: a chunk's wire header, a simulation report, ``failed`` (the solver raised:
  the trainer puts the task's unfinished simulations back in the design cursor, see below),
  ``task_done``/``bye``, or ``pong``;
- ``DATA``: the chunk's fields as a raw float32 buffer (uppercase ``Isend``/``Irecv``, no pickling);
- ``CREDIT`` (trainer -> worker): flow control. A worker starts with ``max_inflight`` credits and
  spends one per chunk; the trainer returns the credit once the chunk is in the buffer, so a
  slow trainer stops the workers rather than filling memory. A credit of -1 asks the worker to
  abandon its task. When the stream ends (:meth:`MPISource.close`) every rank that said ``bye`` gets
  ``PING`` (-6, answered with ``pong``: it is still there), and later its last message
  (:meth:`MPISource.release`): ``FIN`` (-2) from the trainer's :func:`finish`, or ``ABORT`` (-3) when the
  job failed or the trainer ends with an exception (sent at exit: the trainer will not reach
  :func:`finish`, so the worker finalises MPI and exits without waiting for it there), or ``LEAVE`` (-4)
  once a rank is lost.

Liveness (worker -> trainer): ``HEARTBEAT``, a small message every :data:`HEARTBEAT_EVERY` seconds from a
thread of each worker rank, whatever its main thread is doing (a long rollout included). ``DROPPED``
(-5, trainer -> worker) tells a rank that the trainer has given up on it: it leaves at once.

Failures. A simulation that raises (a Python exception in the solver) costs its worker nothing: the
worker sends ``failed`` and asks for its next task; the trainer counts the failure, requeues the
task's unfinished simulations (they are re-run in full; the buffer's (sim id, step) de-duplication
drops samples that had already arrived) and, past ``max_failures``, stops the job with
:class:`~streaming.errors.JobFailed`.

A worker rank that dies (SIGKILL, the OOM killer, a crash): under Hydra's default auto-cleanup
``mpiexec`` ends every rank at once and ``pdestream train --resume RUN_DIR`` continues from the last
checkpoint. Launched with ``mpiexec -disable-auto-cleanup`` the job goes on. Two things make that
possible: each worker rank runs under a small supervising parent (:func:`mpi_world` forks before MPI
starts), because Hydra's proxy SIGKILLs every rank as soon as one of its direct children dies of a
signal; and every rank ignores the SIGUSR1 that Hydra sends the survivors. The trainer declares a rank
lost when nothing (chunk, report or heartbeat) has come from it for :data:`LOST_AFTER` seconds, or when
an MPI call to it fails; the rank's task goes back to the design through the dispatcher's worker-lost
path (counted against ``max_failures``), nothing more is sent to it, and the other ranks go on. Once a
rank is lost no process calls ``MPI_Finalize`` (it would wait forever for the dead rank in MPICH's PMI
barrier): every rank leaves through C's ``exit`` instead (``LEAVE``, -4, as the last CREDIT message).
If every worker rank of a trainer is lost, or the losses pass ``max_failures``, the source raises
:class:`RanksLost`: the job writes a checkpoint and stops with one line naming the ranks (exit 2).
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, NoReturn

import numpy as np

from streaming.chunk import Chunk
from streaming.config import JobConfig
from streaming.design import DesignCursor, Task
from streaming.errors import JobFailed
from streaming.transport.dispatcher import HOLD, Dispatcher
from streaming.transport.source import Message
from streaming.transport.wire import report_from_header, report_header
from streaming.worker import SimReport, SolverWorker

TASK, HEADER, DATA, CREDIT, HEARTBEAT = 11, 12, 13, 14, 15
FIN = -2  # last CREDIT message, the answer to ``bye``: nothing unmatched is left when MPI finalises
ABORT = -3  # FIN of a failed job: the worker leaves without meeting the trainer in finish()'s barrier
LEAVE = -4  # FIN once a rank is lost: leave through C's exit without MPI_Finalize (it would wait for the dead rank)
DROPPED = -5  # the trainer declared this rank lost: stop at once and leave as for LEAVE
PING = -6  # after ``bye``, at the end of the job: answer ``pong`` (the trainer checks every rank is alive)
HEARTBEAT_EVERY = 0.5  # seconds between a worker rank's heartbeats
LOST_AFTER = 5.0  # seconds without any message after which the trainer declares a worker rank lost

_peer_lost = False  # this process knows a rank of the job died: finish() must not call MPI_Finalize
_unreleased: list = []  # closed MPISources whose workers still wait for their last word (release())


class MPILayoutError(ValueError):
    """A launch whose ranks do not fit the job (too few workers, a trainer command on a worker rank, ...)."""


class RanksLost(JobFailed):
    """Worker ranks died and the job cannot go on with the others (none left, or past ``max_failures``).

    The trainer is unharmed: the job writes a checkpoint (``checkpoint`` is true) before it stops, and
    ``pdestream train --resume RUN_DIR`` continues from it.
    """

    checkpoint = True


@dataclass(frozen=True)
class MPILayout:
    """Roles in ``COMM_WORLD``: ranks ``0 .. trainers-1`` train, the rest solve.

    ``coordinator``: trainer 0's ``HOST:PORT`` for ``jax.distributed`` (None with one trainer).
    """

    size: int
    trainers: int = 1
    coordinator: str | None = None

    def is_trainer(self, rank: int) -> bool:
        return rank < self.trainers

    def trainer_of(self, rank: int) -> int:
        """The trainer rank that worker rank ``rank`` serves."""
        return (rank - self.trainers) % self.trainers

    def workers_of(self, trainer: int) -> list[int]:
        """The worker ranks that serve trainer rank ``trainer``."""
        return list(range(self.trainers + trainer, self.size, self.trainers))


def _free_address() -> str:
    """``HOST:PORT`` of this host with a port free now (trainer 0's ``jax.distributed`` coordinator)."""
    import socket

    with socket.socket() as s:
        s.bind(("", 0))
        return f"{socket.gethostname()}:{s.getsockname()[1]}"


def agree_layout(comm: Any, trainers: int | None = None, coordinator: str | None = None) -> MPILayout:
    """Collective over ``comm`` (every rank calls it): rank 0's layout on every rank.

    Rank 0 takes ``trainers`` (default 1) and ``coordinator`` (default: a free port on its host);
    other ranks may pass None (workers) or must pass the same count.
    """
    layout = None
    if comm.Get_rank() == 0:
        t = trainers or 1
        workers = comm.Get_size() - t
        if workers < t:
            layout = MPILayoutError(
                f"mpiexec started {comm.Get_size()} ranks: {t} trainer rank(s) need at least {t} worker rank(s) "
                f"(one or more each); launch with mpiexec -n {2 * t} or more, or lower --num-processes")
        else:
            layout = MPILayout(comm.Get_size(), t, (coordinator or _free_address()) if t > 1 else None)
    layout = comm.bcast(layout, root=0)
    if isinstance(layout, MPILayoutError):
        raise layout
    if trainers is not None and trainers != layout.trainers:
        raise MPILayoutError(f"rank {comm.Get_rank()} was started with --num-processes {trainers} but rank 0 with "
                             f"{layout.trainers}; give every trainer command the same --num-processes")
    return layout


def _trainer_count_hint() -> int:
    """Trainer ranks of this launch as this process's command line or environment gives them (default 1)."""
    argv = sys.argv
    for i, arg in enumerate(argv):
        value = arg.partition("=")[2] if arg.startswith("--num-processes=") else (
            argv[i + 1] if arg == "--num-processes" and i + 1 < len(argv) else None)
        if value is not None and value.isdigit():
            return int(value)
    env = os.environ.get("PDESTREAM_NUM_PROCESSES", "")
    return int(env) if env.isdigit() else 1


def supervise() -> None:
    """Run the rest of this process as a child, while this process waits for it (worker ranks only).

    Hydra's proxy SIGKILLs every rank it started as soon as one of them dies of a signal (whatever
    ``-disable-auto-cleanup`` says). Forked before MPI starts, the child is the MPI rank; the parent,
    which Hydra started, exits normally when the child dies: killed by a signal, it prints one line and
    exits 0 (the trainer reports the lost rank; under auto-cleanup Hydra ends the job anyway), otherwise
    with the child's status. The parent ignores SIGINT and SIGUSR1 and passes SIGTERM on.
    """
    import signal

    from jax._src import xla_bridge

    if xla_bridge.backends_are_initialized():  # a forked child cannot use a JAX backend started by its parent
        raise RuntimeError("supervise() must run before JAX starts its backend")
    rank = os.environ.get("PMI_RANK", "?")
    sys.stdout.flush()
    sys.stderr.flush()
    child = os.fork()
    if child == 0:
        return
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda sig, _: os.kill(child, sig))
    if os.environ.get("PMI_FD", "").isdigit():  # the child's PMI socket closes when the child dies
        os.close(int(os.environ["PMI_FD"]))
    _, status = os.waitpid(child, 0)
    if os.WIFSIGNALED(status):
        name = signal.Signals(os.WTERMSIG(status)).name
        print(f"pdestream: MPI rank {rank} (pid {child}) was killed by {name}", file=sys.stderr, flush=True)
        os._exit(0)
    os._exit(os.waitstatus_to_exitcode(status))


def mpi_world(trainers: int | None = None) -> Any:
    """``MPI.COMM_WORLD``, MPI started. Call before anything starts a JAX backend or a thread of one.

    Under MPICH's Hydra (``PMI_RANK`` set) a worker rank (rank >= ``trainers``, default: the
    ``--num-processes`` of the command line or ``PDESTREAM_NUM_PROCESSES``, else 1) runs under
    :func:`supervise`; every rank ignores SIGUSR1 (Hydra's notice to the survivors of a lost rank under
    ``-disable-auto-cleanup``, which would end a Python process).
    """
    import signal

    rank = os.environ.get("PMI_RANK", "")
    if rank.isdigit() and int(rank) >= (trainers or _trainer_count_hint()):
        supervise()
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    from mpi4py import MPI

    return MPI.COMM_WORLD


def wait_message(comm: Any, source: int, tag: int, status: Any = None) -> None:
    """Return once a message from ``source`` with ``tag`` has arrived, sleeping while none has.

    MPICH's blocking receive busy-polls a core; on a machine where solver ranks share cores with the
    trainer, waiting ranks would take the CPU the others need. The sleep grows from 50 us to 2 ms
    while nothing arrives, so a busy stream is picked up at once and an idle one costs nothing.
    """
    pause = 5e-5
    while not comm.Iprobe(source=source, tag=tag, status=status):
        time.sleep(pause)
        pause = min(2 * pause, 2e-3)


def split_roles(comm: Any, layout: MPILayout) -> Any:
    """Split ``comm`` into the trainer group and the worker group; returns this rank's group."""
    return comm.Split(0 if layout.is_trainer(comm.Get_rank()) else 1, comm.Get_rank())


def _mark_peer_lost() -> None:
    """From now on this process leaves without ``MPI_Finalize``; an exception that ends the trainer with a lost
    rank would otherwise reach mpi4py's ``MPI_Finalize`` at exit and wait forever."""
    global _peer_lost
    if not _peer_lost:
        import atexit

        _peer_lost = True
        atexit.register(_leave_without_finalize)


def _release_at_exit() -> None:
    """At interpreter exit without :func:`finish` (the trainer raised): ABORT to the waiting workers, which then
    finalise MPI with this process instead of waiting for it in :func:`finish`'s barrier."""
    for source in list(_unreleased):
        source.release(failed=True)


def _leave_without_finalize() -> None:
    """At interpreter exit after a lost rank: end the process before mpi4py's ``MPI_Finalize`` (status 1 after an
    uncaught exception, else 2: the command line's status for the one-line error of :class:`RanksLost`)."""
    import ctypes

    _release_at_exit()
    sys.stdout.flush()
    sys.stderr.flush()
    ctypes.CDLL(None).exit(1 if getattr(sys, "last_value", None) is not None else 2)


class MPISource:
    """Trainer side: hands tasks to this trainer's worker ranks and yields what they send.

    ``lost_after``: seconds of silence after which a worker rank is declared lost.
    """

    def __init__(self, cursor: DesignCursor, comm: Any, max_inflight: int, layout: MPILayout | None = None,
                 max_failures: int = 5, lost_after: float = LOST_AFTER) -> None:
        from mpi4py import MPI

        self._mpi = MPI
        self.cursor, self.comm = cursor, comm
        self.dispatcher = Dispatcher(cursor, max_failures)
        self.max_inflight = max_inflight
        self.lost_after = lost_after
        self._job_failed = False
        layout = layout or MPILayout(comm.Get_size())
        self.workers = layout.workers_of(comm.Get_rank())
        if not self.workers:
            raise MPILayoutError("--backend mpi needs worker ranks: launch with mpiexec -n 1+W (W >= 1 workers)")
        self._closing = False
        self._started = False
        self._iter_thread: threading.Thread | None = None
        self._alive = set(self.workers)
        self._last_seen: dict[int, float] = {}
        self._finished: set[int] = set()  # ranks that said bye and wait for the final word
        self._idle: list[int] = []  # ranks waiting for a task while others finish theirs, or held back (pacing)
        self._said_goodbye = False
        self._to_release: list[int] = []  # ranks that answered the last PING and wait for release()
        self.lost: list[int] = []  # worker ranks declared lost, in order
        self._orphans: list[tuple[Any, np.ndarray | None]] = []  # requests abandoned to a dead rank, their buffers
        self._sends: list[tuple[int, Any]] = []  # (rank, request) of sends not yet complete
        self.bytes_received = 0

    @property
    def failures(self) -> int:
        return self.dispatcher.failures

    def _send(self, obj: Any, rank: int, tag: int) -> None:
        """Send to worker ``rank`` without waiting for it; an MPI error declares it lost.

        Never a blocking send: between ranks of one node MPI moves messages through shared memory, where a
        send to a rank that died gets no error and may wait forever for the dead rank to free its slots.
        Requests are kept until complete (:meth:`_settle_sends`); one to a lost rank is abandoned.
        """
        try:
            self._sends.append((rank, self.comm.isend(obj, dest=rank, tag=tag)))
        except self._mpi.Exception as e:
            self._lose(rank, f"MPI error: {e}")
        self._settle_sends()

    def _settle_sends(self) -> None:
        """Forget completed sends; a send that failed declares its rank lost; one to a lost rank is orphaned."""
        pending, failed = [], []
        for rank, req in self._sends:
            try:
                if req.Test():
                    continue
            except self._mpi.Exception as e:
                failed.append((rank, e))
                continue
            if rank in self.lost:
                self._orphans.append((req, None))  # it may never complete: keep its buffer alive, never wait
            else:
                pending.append((rank, req))
        self._sends = pending
        for rank, e in failed:
            self._lose(rank, f"MPI error: {e}")

    def _wait_sends(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for the sends still pending (the final words before MPI ends)."""
        deadline = time.monotonic() + timeout
        self._settle_sends()
        while self._sends and time.monotonic() < deadline:
            time.sleep(1e-3)
            self._settle_sends()

    def _assign(self, rank: int) -> None:
        """Hand ``rank`` its next task; with none left while other ranks still run theirs, keep it waiting (a
        lost rank's task may come back to the design); None (stop) once the design is finished or closing."""
        task = None if self._closing else self.dispatcher.next_task(rank)
        if task is HOLD or (task is None and not self._closing and not self.dispatcher.finished()):
            self._idle.append(rank)
            return
        self._send(task, rank, TASK)

    def _wake_idle(self) -> None:
        """Give waiting ranks the tasks that came back to the design, or None once there will be no more."""
        idle, self._idle = self._idle, []
        for rank in idle:
            if rank in self._alive:
                self._assign(rank)

    # ------------------------------------------------------------------ liveness
    def _heard(self, rank: int) -> None:
        self._last_seen[rank] = time.monotonic()

    def _drain_heartbeats(self, source: int | None = None) -> None:
        MPI, status = self._mpi, self._mpi.Status()
        source = MPI.ANY_SOURCE if source is None else source
        while self.comm.Iprobe(source=source, tag=HEARTBEAT, status=status):
            src = status.Get_source()
            self.comm.recv(source=src, tag=HEARTBEAT)
            self._heard(src)

    def _silent(self, rank: int) -> float:
        """Seconds since anything came from ``rank`` (0 when something waits to be received: it is alive and we
        were busy)."""
        if self.comm.Iprobe(source=rank, tag=self._mpi.ANY_TAG):
            self._drain_heartbeats(rank)
            self._heard(rank)
        return time.monotonic() - self._last_seen.setdefault(rank, time.monotonic())

    def _check_alive(self) -> None:
        for rank in sorted(self._alive):
            silent = self._silent(rank)
            if silent > self.lost_after:
                self._lose(rank, f"nothing from it for {silent:.1f} s: a missed heartbeat")

    def _lose(self, rank: int, why: str) -> None:
        """Declare worker ``rank`` lost: requeue its task, count the failure, send it nothing more."""
        if rank not in self._alive:
            return
        _mark_peer_lost()
        self._alive.discard(rank)
        self.lost.append(rank)
        with contextlib.suppress(self._mpi.Exception):  # a rank alive after all (frozen, not dead) leaves
            self._orphans.append((self.comm.isend(DROPPED, dest=rank, tag=CREDIT), None))  # never waited for
        if self._closing:
            print(f"pdestream train: MPI worker rank {rank} lost while the job ended ({why})", file=sys.stderr,
                  flush=True)
            return
        task = self.dispatcher.running().get(rank)
        sims = f" on simulation(s) {task.sim_ids.tolist()}" if task is not None else ""
        what = f"MPI worker rank {rank} lost{sims} ({why})"
        try:
            self.dispatcher.worker_lost(rank, what, hint="check that rank's node and log")
        except JobFailed as e:
            self._job_failed = True
            raise RanksLost(f"{e}; the trainer writes a checkpoint: continue with `mpiexec ... pdestream train "
                            "--resume RUN_DIR`") from None
        others = sorted(self._alive)
        if not others and not self.dispatcher.finished():
            self._job_failed = True
            raise RanksLost(f"every MPI worker rank is lost (rank(s) {self.lost}; last: {what}); the trainer writes a "
                            "checkpoint: continue with `mpiexec ... pdestream train --resume RUN_DIR`")
        print(f"pdestream train: {what}; {'re-running them, ' if sims else ''}going on with rank(s) {others} "
              f"(failure {self.failures}, at most {self.dispatcher.max_failures})", file=sys.stderr, flush=True)
        self._wake_idle()

    # ------------------------------------------------------------------ receiving
    def _wait_header(self, status: Any) -> bool:
        """Wait for a HEADER from any rank (into ``status``), watching every rank's liveness; False once no
        rank is left to wait for."""
        pause, check_at = 5e-5, time.monotonic() + 0.25
        while self._alive:
            if self.dispatcher.released():  # the trainer's losses let the held tasks go (held ranks are idle)
                self._wake_idle()
            self._drain_heartbeats()
            if self.comm.Iprobe(source=self._mpi.ANY_SOURCE, tag=HEADER, status=status):
                return True
            if time.monotonic() >= check_at:
                self._check_alive()
                check_at = time.monotonic() + 0.25
            time.sleep(pause)
            pause = min(2 * pause, 2e-3)
        return False

    def _receive_data(self, src: int, shape: tuple) -> np.ndarray | None:
        """A chunk's fields from ``src`` (after its header); None where ``src`` died before sending them."""
        MPI = self._mpi
        data = np.empty(shape, dtype=np.float32)
        req = self.comm.Irecv([data, MPI.FLOAT], source=src, tag=DATA)
        pause, check_at = 5e-5, time.monotonic() + 0.25
        while not req.Test():
            if time.monotonic() >= check_at:
                self._drain_heartbeats(src)
                if src not in self._alive or time.monotonic() - self._last_seen[src] > self.lost_after:
                    with contextlib.suppress(MPI.Exception):
                        req.Cancel()
                    self._orphans.append((req, data))  # MPI may still write into it: keep it alive
                    if src in self._alive:
                        self._lose(src, "its chunk's data never came")
                    return None
                check_at = time.monotonic() + 0.25
            time.sleep(pause)
            pause = min(2 * pause, 2e-3)
        self.bytes_received += data.nbytes
        return data

    def _receive(self) -> tuple[int, dict, np.ndarray | None] | None:
        status = self._mpi.Status()
        if not self._wait_header(status):
            return None
        src = status.Get_source()
        header = self.comm.recv(source=src, tag=HEADER)
        self._heard(src)
        data = None
        if header["type"] == "chunk":
            data = self._receive_data(src, header["shape"])
        return src, header, data

    def __iter__(self) -> Iterator[Message]:
        self._iter_thread = threading.current_thread()
        if not self._started:
            self._started = True
            for rank in self.workers:
                self._heard(rank)  # the clock of each rank starts now (messages already queued count)
                self._send({"max_inflight": self.max_inflight}, rank, TASK)
                self._assign(rank)
        while self._alive:
            got = self._receive()
            if got is None:
                break
            src, header, data = got
            kind = header["type"]
            if src not in self._alive:  # a rank declared lost that still talks: its messages no longer count
                continue
            if kind == "chunk":
                if data is None:
                    continue
                chunk = Chunk.from_wire(header["wire"], data)
                if not self._closing:
                    yield chunk
                self._send(1, src, CREDIT)
            elif kind == "report":
                report = report_from_header(header)
                self.dispatcher.on_message(report)
                if not self._closing:
                    yield report
            elif kind == "failed":
                self._failed(src, header["message"])
            elif kind == "task_done":
                self.dispatcher.task_done(src)
                self._assign(src)
                self._wake_idle()
            elif kind == "bye":  # the final word comes from close(), once the job ends
                self._alive.discard(src)
                self._finished.add(src)
                self._drain_heartbeats(src)  # its last heartbeats: nothing unmatched is left

    def _failed(self, rank: int, message: str) -> None:
        """Worker ``rank``'s solver raised ``message``: requeue its task, or stop past ``max_failures``."""
        task = self.dispatcher.running().get(rank)
        if task is None or self._closing:
            return
        what = f"MPI worker rank {rank} failed on simulation(s) {task.sim_ids.tolist()} ({message[:300]})"
        try:
            self.dispatcher.worker_lost(rank, what, hint="fix the solver")
        except JobFailed:
            self._job_failed = True
            raise
        print(f"pdestream train: {what}; re-running them (failure {self.failures}, at most "
              f"{self.dispatcher.max_failures})", file=sys.stderr, flush=True)

    def in_flight(self) -> list[Task]:
        return self.dispatcher.in_flight()

    def report(self) -> dict[str, Any]:
        """For the job's summary: worker failures survived and the worker ranks lost."""
        return {"backend": "mpi", "worker_failures": self.failures, "ranks_lost": list(self.lost)}

    def close(self, timeout: float = 120.0) -> None:
        """Stop the workers: abandon running tasks, answer every ``task_done`` with None, wait for ``bye``;
        then check that every rank that said ``bye`` is still there and send each its final word.

        Only one thread may receive at a time: if another thread is still iterating (the trainer's
        receiver), it drains the remaining messages itself and this call waits for it to finish.
        """
        if not self._started or self._said_goodbye:
            return
        if self._alive and not self._closing:
            self._closing = True
            for rank in sorted(self._alive):
                self._send(-1, rank, CREDIT)
            self._wake_idle()  # None to the ranks waiting for a task
            other = self._iter_thread
            deadline = time.monotonic() + timeout
            while other is not None and other is not threading.current_thread() and other.is_alive():
                if time.monotonic() > deadline:
                    raise RuntimeError("MPI receiver thread did not stop; workers may be hung")
                time.sleep(0.05)
            for _ in self:  # drain until every worker said bye
                pass
        self._closing = True
        self._said_goodbye = True
        self._goodbye()

    def _goodbye(self) -> None:
        """PING every rank that said ``bye``; one that does not answer within ``lost_after`` seconds died while it
        waited for the job to end (it had nothing left to run). The others get their last word from
        :meth:`release`."""
        MPI, status = self._mpi, self._mpi.Status()
        waiting = set()
        for rank in sorted(self._finished):
            try:
                self._sends.append((rank, self.comm.isend(PING, dest=rank, tag=CREDIT)))
                waiting.add(rank)
            except MPI.Exception:
                pass
        answered = set()
        deadline = time.monotonic() + self.lost_after
        while waiting - answered and time.monotonic() < deadline:
            if self.comm.Iprobe(source=MPI.ANY_SOURCE, tag=HEADER, status=status):
                src = status.Get_source()
                if self.comm.recv(source=src, tag=HEADER).get("type") == "pong":
                    answered.add(src)
            else:
                time.sleep(1e-3)
        for rank in sorted(self._finished - answered):
            _mark_peer_lost()
            self.lost.append(rank)
            print(f"pdestream train: MPI worker rank {rank} lost after its last task (no answer at the end of the "
                  "job)", file=sys.stderr, flush=True)
        self._to_release = sorted(answered)
        _unreleased.append(self)
        if len(_unreleased) == 1:
            import atexit

            atexit.register(_release_at_exit)

    def release(self, failed: bool = False) -> None:
        """The workers' last word after :meth:`close`: FIN (they meet this process in :func:`finish`), ABORT
        (``failed``, or the job failed: this process leaves through Python's exit) or LEAVE (a rank is lost).
        :func:`finish` calls it; a trainer that ends with an exception calls it at exit, with ``failed``."""
        final = LEAVE if _peer_lost else ABORT if (failed or self._job_failed) else FIN
        ranks, self._to_release = self._to_release, []
        for rank in ranks:
            with contextlib.suppress(self._mpi.Exception):
                self._sends.append((rank, self.comm.isend(final, dest=rank, tag=CREDIT)))
        self._wait_sends(self.lost_after)
        if self in _unreleased:
            _unreleased.remove(self)


class _Heartbeat:
    """A worker rank's thread that sends its trainer a heartbeat every ``every`` seconds until :meth:`stop`."""

    def __init__(self, comm: Any, trainer: int, every: float = HEARTBEAT_EVERY) -> None:
        self.comm, self.trainer, self.every = comm, trainer, every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="mpi-heartbeat")
        self._thread.start()

    def _run(self) -> None:
        while True:
            self.comm.send(None, dest=self.trainer, tag=HEARTBEAT)
            if self._stop.wait(self.every):
                return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


class _Dropped(Exception):
    """The trainer declared this worker rank lost."""


def run_worker(comm: Any, worker: SolverWorker, trainer: int = 0, heartbeat: _Heartbeat | None = None) -> None:
    """Worker rank main loop: receive tasks from rank ``trainer``, stream their messages back with credits.

    Sends heartbeats from a thread throughout (``heartbeat``: one already started). Returns after a clean
    ``FIN``; leaves the process itself (:func:`finish`) after ``ABORT``, ``LEAVE`` or ``DROPPED``.
    """
    from mpi4py import MPI

    beat = heartbeat if heartbeat is not None else _Heartbeat(comm, trainer)
    credits, stop, last = 0, False, None

    def on_credit(value: int) -> None:
        nonlocal credits, stop, last
        if value == DROPPED:
            raise _Dropped
        if value == PING:
            comm.send({"type": "pong"}, dest=trainer, tag=HEADER)
        elif value in (FIN, ABORT, LEAVE):
            last = value
        elif value < 0:
            stop = True
        else:
            credits += value

    def receive(tag: int) -> Any:
        """The next message with ``tag`` from the trainer, reading credits (and a DROPPED) while waiting."""
        pause = 5e-5
        while True:
            if comm.Iprobe(source=trainer, tag=tag):
                return comm.recv(source=trainer, tag=tag)
            if tag != CREDIT and comm.Iprobe(source=trainer, tag=CREDIT):
                on_credit(comm.recv(source=trainer, tag=CREDIT))
                continue
            time.sleep(pause)
            pause = min(2 * pause, 2e-3)

    def take_credits(block: bool) -> None:
        while block or comm.Iprobe(source=trainer, tag=CREDIT):
            on_credit(receive(CREDIT))
            if stop:
                return
            block = False

    pending: list[Any] = []
    try:
        credits = int(receive(TASK)["max_inflight"])
        while True:
            task = receive(TASK)
            if task is None:
                break
            messages = worker.run(task)
            while True:
                try:
                    msg = next(messages)
                except StopIteration:
                    break
                except Exception as e:  # the solver raised: the trainer requeues the task, this rank goes on
                    comm.send({"type": "failed", "message": f"{type(e).__name__}: {e}"}, dest=trainer, tag=HEADER)
                    break
                take_credits(block=False)
                if stop:
                    break
                if isinstance(msg, SimReport):
                    comm.send(report_header(msg), dest=trainer, tag=HEADER)
                    continue
                while credits <= 0 and not stop:
                    take_credits(block=True)
                if stop:
                    break
                header, fields = msg.to_wire()
                comm.send({"type": "chunk", "wire": header, "shape": fields.shape}, dest=trainer, tag=HEADER)
                pending.append((comm.Isend([np.ascontiguousarray(fields, np.float32), MPI.FLOAT], dest=trainer,
                                           tag=DATA), fields))
                credits -= 1
                pending = [(r, f) for r, f in pending if not r.Test()]
            MPI.Request.Waitall([r for r, _ in pending])
            pending = []
            comm.send({"type": "task_done"}, dest=trainer, tag=HEADER)
        beat.stop()  # every heartbeat goes before bye
        comm.send({"type": "bye"}, dest=trainer, tag=HEADER)
        while last is None:  # credits still on the way (match them all), a PING, then the final word
            on_credit(receive(CREDIT))
    except _Dropped:
        print(f"pdestream worker: MPI rank {comm.Get_rank()}: the trainer declared this rank lost; leaving",
              file=sys.stderr, flush=True)
        last = LEAVE
    if last == LEAVE:
        _mark_peer_lost()
    if last in (ABORT, LEAVE):
        finish(comm, barrier=False)


def finish(comm: Any, code: int = 0, barrier: bool = True) -> NoReturn:
    """End an MPI rank after a clean job: meet every rank, finalise MPI, and leave through C's ``exit``.

    ``barrier=False``: a worker of a failed job, whose trainer leaves through Python's exit instead
    (mpi4py finalises MPI there); ``MPI_Finalize`` itself waits for every rank. Once a rank of the job is
    lost there is neither barrier nor ``MPI_Finalize`` (both would wait for the dead rank forever).

    MPICH (4.x, 5.x) sends the process manager its PMI ``finalize`` from a C ``atexit`` hook, not from
    ``MPI_Finalize``. A rank that skips C's exit handlers (``os._exit``) closes its PMI socket without
    that message, which Hydra reads as a crashed rank: it SIGKILLs every rank still alive, and
    ``mpiexec`` exits with 9 after a job that finished (seen with several trainer ranks, whose worker
    ranks take longest to tear MPI down). ``libc.exit`` runs the hook (and the other C handlers) but
    not the Python interpreter's teardown, which can wait on JAX's and the receivers' threads.
    """
    import ctypes

    from mpi4py import MPI

    for source in list(_unreleased):
        source.release()
    if barrier and not _peer_lost:
        comm.Barrier()
    sys.stdout.flush()
    sys.stderr.flush()
    if not _peer_lost:
        MPI.Finalize()
    ctypes.CDLL(None).exit(code)
    os._exit(code)  # not reached: exit() does not return


def run_worker_for(cfg: Any, comm: Any, layout: MPILayout) -> None:
    """Worker rank of a job: build the job's :class:`SolverWorker` and serve its trainer until it stops us."""
    from streaming.assembly import build_solver, sample_spec, worker_args

    trainer = layout.trainer_of(comm.Get_rank())
    beat = _Heartbeat(comm, trainer)  # from now on: building the solver can take a while
    if cfg.workers.nice:
        os.nice(cfg.workers.nice)
    worker = SolverWorker(**worker_args(cfg, sample_spec(cfg, build_solver(cfg))))
    run_worker(comm, worker, trainer, beat)


def from_config(cfg: JobConfig, cursor: DesignCursor, worker_args: dict[str, Any], *, comm: Any = None,
                layout: MPILayout | None = None, **_: Any) -> MPISource:
    """Backend ``mpi``: this trainer rank's worker ranks in ``comm`` (default ``COMM_WORLD``)."""
    w = cfg.workers
    return MPISource(cursor, comm if comm is not None else mpi_world(), w.max_inflight, layout, w.max_failures)
