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

- ``TASK`` (trainer -> worker): a pickled :class:`~streaming.design.Task`, or None to stop;
- ``HEADER``: a small pickled dict: a chunk's wire header, a simulation report, ``failed`` (the solver raised:
  the trainer puts the task's unfinished simulations back in the design cursor, see below), or
  ``task_done``/``bye``;
- ``DATA``: the chunk's fields as a raw float32 buffer (uppercase ``Isend``/``Recv``, no pickling);
- ``CREDIT`` (trainer -> worker): flow control. A worker starts with ``max_inflight`` credits and
  spends one per chunk; the trainer returns the credit once the chunk is in the buffer, so a
  slow trainer stops the workers rather than filling memory. A credit of -1 asks the worker to
  abandon its task; ``FIN`` (-2) answers the worker's ``bye`` and is the last message it receives, or
  ``ABORT`` (-3) once the job has failed: the trainer will not reach :func:`finish`, so the worker
  finalises MPI and exits without waiting for it there.

Failures. A simulation that raises (a Python exception in the solver) costs its worker nothing: the
worker sends ``failed`` and asks for its next task; the trainer counts the failure, requeues the
task's unfinished simulations (they are re-run in full; the buffer's (sim id, step) de-duplication
drops samples that had already arrived) and, past ``max_failures``, stops the job with
:class:`~streaming.errors.JobFailed`. A worker rank that dies cannot be survived under MPICH's Hydra
launcher: its proxy SIGKILLs every other rank within milliseconds (even with ``-disable-auto-cleanup``,
which first sends the others SIGUSR1), so the job ends and ``pdestream train --resume RUN_DIR``
continues from the last checkpoint; tasks in flight at that checkpoint are re-run and nothing is
lost or counted twice.
"""

from __future__ import annotations

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
from streaming.transport.dispatcher import Dispatcher
from streaming.transport.source import Message
from streaming.transport.wire import report_from_header, report_header
from streaming.worker import SimReport, SolverWorker

TASK, HEADER, DATA, CREDIT = 11, 12, 13, 14
FIN = -2  # last CREDIT message, the answer to ``bye``: nothing unmatched is left when MPI finalises
ABORT = -3  # FIN of a failed job: the worker leaves without meeting the trainer in finish()'s barrier


class MPILayoutError(ValueError):
    """A launch whose ranks do not fit the job (too few workers, a trainer command on a worker rank, ...)."""


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


def mpi_world() -> Any:
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


class MPISource:
    """Trainer side: hands tasks to this trainer's worker ranks and yields what they send."""

    def __init__(self, cursor: DesignCursor, comm: Any, max_inflight: int, layout: MPILayout | None = None,
                 max_failures: int = 5) -> None:
        from mpi4py import MPI

        self._mpi = MPI
        self.cursor, self.comm = cursor, comm
        self.dispatcher = Dispatcher(cursor, max_failures)
        self.max_inflight = max_inflight
        self._job_failed = False
        layout = layout or MPILayout(comm.Get_size())
        self.workers = layout.workers_of(comm.Get_rank())
        if not self.workers:
            raise MPILayoutError("--backend mpi needs worker ranks: launch with mpiexec -n 1+W (W >= 1 workers)")
        self._closing = False
        self._started = False
        self._iter_thread: threading.Thread | None = None
        self._alive = set(self.workers)
        self.bytes_received = 0

    @property
    def failures(self) -> int:
        return self.dispatcher.failures

    def _assign(self, rank: int) -> None:
        task = None if self._closing else self.dispatcher.next_task(rank)
        self.comm.send(task, dest=rank, tag=TASK)

    def _receive(self) -> tuple[int, dict, np.ndarray | None]:
        status = self._mpi.Status()
        wait_message(self.comm, self._mpi.ANY_SOURCE, HEADER, status)
        src = status.Get_source()
        header = self.comm.recv(source=src, tag=HEADER)
        data = None
        if header["type"] == "chunk":
            data = np.empty(header["shape"], dtype=np.float32)
            self.comm.Recv([data, self._mpi.FLOAT], source=src, tag=DATA)
            self.bytes_received += data.nbytes
        return src, header, data

    def __iter__(self) -> Iterator[Message]:
        self._iter_thread = threading.current_thread()
        if not self._started:
            self._started = True
            for rank in self.workers:
                self.comm.send({"max_inflight": self.max_inflight}, dest=rank, tag=TASK)
                self._assign(rank)
        while self._alive:
            src, header, data = self._receive()
            kind = header["type"]
            if kind == "chunk":
                chunk = Chunk.from_wire(header["wire"], data)
                if not self._closing:
                    yield chunk
                self.comm.send(1, dest=src, tag=CREDIT)
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
            elif kind == "bye":
                self._alive.discard(src)
                self.comm.send(ABORT if self._job_failed else FIN, dest=src, tag=CREDIT)

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
        """For the job's summary: worker failures survived."""
        return {"backend": "mpi", "worker_failures": self.failures}

    def close(self, timeout: float = 120.0) -> None:
        """Stop the workers: abandon running tasks, answer every ``task_done`` with None, wait for ``bye``.

        Only one thread may receive at a time: if another thread is still iterating (the trainer's
        receiver), it drains the remaining messages itself and this call waits for it to finish.
        """
        if self._closing or not self._alive or not self._started:
            return
        self._closing = True
        for rank in self._alive:
            self.comm.send(-1, dest=rank, tag=CREDIT)
        other = self._iter_thread
        deadline = time.monotonic() + timeout
        while other is not None and other is not threading.current_thread() and other.is_alive():
            if time.monotonic() > deadline:
                raise RuntimeError("MPI receiver thread did not stop; workers may be hung")
            time.sleep(0.05)
        for _ in self:  # drain until every worker said bye
            pass


def run_worker(comm: Any, worker: SolverWorker, trainer: int = 0) -> None:
    """Worker rank main loop: receive tasks from rank ``trainer``, stream their messages back with credits."""
    from mpi4py import MPI

    def receive(tag: int) -> Any:
        wait_message(comm, trainer, tag)
        return comm.recv(source=trainer, tag=tag)

    hello = receive(TASK)
    credits = int(hello["max_inflight"])
    pending: list[Any] = []
    stop = False

    def take_credits(block: bool) -> None:
        nonlocal credits, stop
        while block or comm.Iprobe(source=trainer, tag=CREDIT):
            value = receive(CREDIT)
            if value < 0:
                stop = True
                return
            credits += value
            block = False

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
    comm.send({"type": "bye"}, dest=trainer, tag=HEADER)
    while (last := receive(CREDIT)) not in (FIN, ABORT):  # credits still on the way: match them all
        pass
    if last == ABORT:
        finish(comm, barrier=False)


def finish(comm: Any, code: int = 0, barrier: bool = True) -> NoReturn:
    """End an MPI rank after a clean job: meet every rank, finalise MPI, and leave through C's ``exit``.

    ``barrier=False``: a worker of a failed job, whose trainer leaves through Python's exit instead
    (mpi4py finalises MPI there); ``MPI_Finalize`` itself waits for every rank.

    MPICH (4.x, 5.x) sends the process manager its PMI ``finalize`` from a C ``atexit`` hook, not from
    ``MPI_Finalize``. A rank that skips C's exit handlers (``os._exit``) closes its PMI socket without
    that message, which Hydra reads as a crashed rank: it SIGKILLs every rank still alive, and
    ``mpiexec`` exits with 9 after a job that finished (seen with several trainer ranks, whose worker
    ranks take longest to tear MPI down). ``libc.exit`` runs the hook (and the other C handlers) but
    not the Python interpreter's teardown, which can wait on JAX's and the receivers' threads.
    """
    import ctypes

    from mpi4py import MPI

    if barrier:
        comm.Barrier()
    sys.stdout.flush()
    sys.stderr.flush()
    MPI.Finalize()
    ctypes.CDLL(None).exit(code)
    os._exit(code)  # not reached: exit() does not return


def run_worker_for(cfg: Any, comm: Any, layout: MPILayout) -> None:
    """Worker rank of a job: build the job's :class:`SolverWorker` and serve its trainer until it stops us."""
    from streaming.assembly import build_solver, sample_spec, worker_args

    if cfg.workers.nice:
        os.nice(cfg.workers.nice)
    worker = SolverWorker(**worker_args(cfg, sample_spec(cfg, build_solver(cfg))))
    run_worker(comm, worker, layout.trainer_of(comm.Get_rank()))


def from_config(cfg: JobConfig, cursor: DesignCursor, worker_args: dict[str, Any], *, comm: Any = None,
                layout: MPILayout | None = None, **_: Any) -> MPISource:
    """Backend ``mpi``: this trainer rank's worker ranks in ``comm`` (default ``COMM_WORLD``)."""
    w = cfg.workers
    return MPISource(cursor, comm if comm is not None else mpi_world(), w.max_inflight, layout, w.max_failures)
