"""The shared transport contract (``tests/test_transport_contract.py``) run by real ``mpiexec`` ranks.

``mpiexec -disable-auto-cleanup -n 3 python tests/mpi_contract_driver.py OUT.json WORKDIR CASE [CASE ...]``:
rank 0 calls each contract case with the backend ``mpi`` (its source built through the registry from a
config, as a job builds it) and writes ``{case: "ok" or the failure}`` to ``OUT.json``; ranks 1 and 2
are solver workers, and build for each source the worker class the case asked for. ``lost_worker``
(MPI's own case) SIGKILLs worker rank 1 in the middle of a task. A case after which the workers leave
(``failures_past_the_budget_stop_the_job``, ``lost_worker``) must come last.
"""

from __future__ import annotations

import faulthandler
import json
import os
import signal
import sys
import threading
import time
import traceback
from pathlib import Path

from streaming.transport import mpi_ranks

COMM = mpi_ranks.mpi_world(trainers=1)  # before JAX starts: worker ranks run under their supervisor
# a hang prints every thread's stack and ends the rank before the test's own timeout (300 s) kills mpiexec
faulthandler.dump_traceback_later(float(os.environ.get("PDESTREAM_DRIVER_HANG_S", "240")), exit=True)

import test_transport_contract as contract  # noqa: E402  (after MPI and the supervisor)

from streaming.chunk import SimReport  # noqa: E402
from streaming.transport import make_source  # noqa: E402
from streaming.worker import SolverWorker  # noqa: E402

SETUP = 21  # rank 0 -> worker ranks: (worker_args, worker class) of the next source, or None: the end
WORKERS = [1, 2]


class StallingWorker(SolverWorker):
    """On MPI rank 1 the first task writes this process's id to ``marker`` and then sleeps until it is killed."""

    marker: str = ""

    def run(self, task):
        if os.environ.get("PMI_RANK") == "1" and not Path(self.marker).exists():
            Path(self.marker).write_text(str(os.getpid()))
            time.sleep(3600)
        yield from super().run(task)


def _class_spec(cls: type) -> tuple | None:
    """A worker class the worker ranks can rebuild: None for SolverWorker, else (name, bases, plain attributes)."""
    if cls is SolverWorker:
        return None
    return cls.__name__, cls.__bases__, {k: v for k, v in vars(cls).items() if not k.startswith("__")}


class MPIHook:
    """``contract.SOURCE_HOOKS["mpi"]``: tell every worker rank which worker to build, then build the source."""

    def __init__(self) -> None:
        self.last = None

    def __call__(self, cfg, cursor, args, worker_cls):
        for rank in WORKERS:
            COMM.send((args, _class_spec(worker_cls)), dest=rank, tag=SETUP)
        self.last = make_source(cfg, cursor, args, worker_cls=worker_cls)
        return self.last


def case_lost_worker(tmp_path: Path) -> None:
    """Requeue on a lost worker: rank 1 is SIGKILLed mid-task; its simulations are re-run by rank 2, the loss is
    noticed within seconds and counted once, and every simulation is reported."""
    marker = tmp_path / "rank1.pid"
    worker = type("Stalling", (StallingWorker,), {"marker": str(marker)})
    source = contract._source("mpi", tmp_path, worker_cls=worker)
    killed_at: list[float] = []
    stop = threading.Event()

    def kill_rank_1() -> None:  # as soon as rank 1 stalls in its task, whether or not other messages come
        while not stop.wait(0.05):
            if marker.exists() and marker.read_text():
                os.kill(int(marker.read_text()), signal.SIGKILL)
                killed_at.append(time.monotonic())
                return

    killer = threading.Thread(target=kill_rank_1, daemon=True)
    killer.start()
    reports, noticed_after = [], None
    try:
        for msg in source:
            if isinstance(msg, SimReport):
                reports.append(msg.sim_id)
            if killed_at and noticed_after is None and source.lost:
                noticed_after = time.monotonic() - killed_at[0]
    finally:
        stop.set()
        source.close()
    assert killed_at, "rank 1 never started its task"
    assert source.lost == [1] and source.dispatcher.failures == 1, (source.lost, source.dispatcher.failures)
    assert noticed_after is not None and noticed_after < mpi_ranks.LOST_AFTER + 10, noticed_after
    assert sorted(reports) == list(range(contract.N_SIMS)), reports  # rank 1 reported nothing: each once
    assert source.dispatcher.state_dict()["done"] == list(range(contract.N_SIMS))
    assert source.report()["ranks_lost"] == [1]


def run_cases(out: Path, workdir: Path, cases: list[str]) -> None:
    hook = MPIHook()
    contract.SOURCE_HOOKS["mpi"] = hook
    results = {}
    for case in cases:
        tmp = workdir / case
        tmp.mkdir(parents=True, exist_ok=True)
        t0 = time.monotonic()
        try:
            if case == "lost_worker":
                case_lost_worker(tmp)
            else:
                getattr(contract, f"test_{case}")("mpi", tmp, None)
            results[case] = "ok"
        except BaseException:  # noqa: BLE001  (reported to the test, which fails with it)
            results[case] = traceback.format_exc()[-3000:]
        if hook.last is not None:
            hook.last.release()  # the workers' last word: FIN, and they wait for the next source
        print(f"mpi contract: {case}: {'ok' if results[case] == 'ok' else 'FAILED'} ({time.monotonic() - t0:.1f} s)",
              file=sys.stderr, flush=True)
    out.write_text(json.dumps(results, indent=1))
    source = hook.last
    workers_left = source is not None and (source._job_failed or mpi_ranks._peer_lost)  # sent ABORT / LEAVE
    if not workers_left:
        for rank in WORKERS:
            COMM.send(None, dest=rank, tag=SETUP)
    mpi_ranks.finish(COMM, barrier=not workers_left)


def serve() -> None:
    """Worker rank: build the worker each source asks for and serve it; leave when rank 0 says so."""
    while True:
        mpi_ranks.wait_message(COMM, 0, SETUP)
        setup = COMM.recv(source=0, tag=SETUP)
        if setup is None:
            mpi_ranks.finish(COMM)
        args, spec = setup
        cls = SolverWorker if spec is None else type(*spec)
        mpi_ranks.run_worker(COMM, cls(**args), 0)  # returns after FIN; leaves the process after ABORT / LEAVE


if __name__ == "__main__":
    if COMM.Get_rank() == 0:
        run_cases(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:])
    else:
        serve()
