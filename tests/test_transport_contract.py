"""One contract, every in-process-reachable transport: the in-process worker, Ray actors on a real local
cluster, and the thread transport of examples/ (the worked example of docs/transports.md). Each is built
through the registry from a config, as a job builds it.

- a finite design arrives whole: every simulation reported once, the dispatcher's state all done;
- a simulation that raises once: its task is requeued, re-run, and counted as one failure;
- one that always raises: the job stops with JobFailed past workers.max_failures;
- close() while another thread iterates: the iteration ends promptly;
- checkpoint state mid-stream: in-flight simulations are pending, never lost;
- a paced design (``solver.adaptive.ahead``; not ``local``, which runs in step with the trainer): workers wait
  while the dispatcher holds tasks back, and go on once the losses are reported;
- a worker process SIGKILLed mid-task (``ray`` and ``external`` only: the ``local`` and ``threads`` workers live in
  the trainer's own process, so there is no worker to lose apart from the job): the loss is noticed within
  LOSS_NOTICED_S, the task requeued and counted as one failure, every simulation reported once.

``external``: the launcher starting a small Python client program (``CLIENT``, numpy + streaming.client) per
simulation of an external solver, streaming through the real TCP listener (``workers.backend = "external"``
with ``[solver.external] command``). Its failure is the program's: the failing cases' worker class
(``RaisingWorker``'s marker and ``always``) goes into the command line, and the program raises the same
RuntimeError on simulation 3 (exit status 1), so every case runs unchanged. ``SleepingWorker`` (``mode =
"sleep"``) makes the program's first attempt at simulation 3 send two frames, write its pid and sleep.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from solvers import get_solver
from streaming.adaptive import AdaptiveCursor
from streaming.assembly import build_solver, sample_spec, worker_args
from streaming.chunk import SimReport
from streaming.config import AdaptiveSection, load_config
from streaming.design import DesignCursor
from streaming.errors import JobFailed
from streaming.transport import BACKENDS, Backend, make_source, register
from streaming.worker import SolverWorker

register(Backend("threads", "examples.thread_transport:from_config", "solver workers on threads of the trainer",
                 several_trainers=True))
KINDS = ["local", "threads", "ray", "external"]
N_SIMS, STEPS = 6, 8
# kind -> hook(cfg, cursor, worker_args, worker_cls) returning the source, for a transport whose workers this
# process cannot start (MPI ranks: tests/mpi_contract_driver.py runs these cases under mpiexec)
SOURCE_HOOKS: dict = {}


class RaisingWorker(SolverWorker):
    """Raises on simulation 3: once (a marker file remembers it, across processes), or always."""

    marker: str = ""
    always: bool = False

    def run(self, task):
        if 3 in task.sim_ids.tolist() and (self.always or not Path(self.marker).exists()):
            Path(self.marker).touch()
            raise RuntimeError("solver diverged on simulation 3")
        yield from super().run(task)


class SleepingWorker(SolverWorker):
    """The first task of any process (once, across processes: ``marker`` is created exclusively) writes the
    process id to ``marker`` and sleeps until the process is killed; every other task runs normally."""

    marker: str = ""
    mode: str = "sleep"

    def run(self, task):
        try:
            fd = os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            yield from super().run(task)
            return
        os.write(fd, f"{os.getpid()}\n".encode())
        os.close(fd)
        time.sleep(600)
        raise RuntimeError("the sleeping worker was not killed")


def _cursor(solver, n_sims, ahead):
    """The cases' design (tasks of 2): lhs, or with ``ahead`` the loss-steered one, paced (warmup 2)."""
    if not ahead:
        return DesignCursor(solver, n_sims, "lhs", 0, 2)
    return AdaptiveCursor(solver, n_sims, 0, 2, AdaptiveSection(warmup=2, ahead=ahead))


def _source(kind, tmp_path, n_sims=N_SIMS, max_failures=2, worker_cls=SolverWorker, ahead=0):
    if kind == "external":
        source = _external_source(tmp_path, n_sims, max_failures, worker_cls, ahead)
        source.dispatcher.paced = bool(ahead)
        return source
    cfg = load_config("configs/quickstart.toml", {
        "solver.config": "{ n = 6 }", "solver.steps": str(STEPS), "solver.n_sims": str(n_sims),
        "workers.backend": kind, "workers.count": "2", "workers.sims_per_task": "2", "workers.chunk_frames": "4",
        "workers.max_failures": str(max_failures), "workers.max_inflight": "2"})
    solver = get_solver("heat2d", n=6)
    cursor = _cursor(solver, n_sims, ahead)
    args = worker_args(cfg, sample_spec(cfg, solver))
    hook = SOURCE_HOOKS.get(kind)
    source = hook(cfg, cursor, args, worker_cls) if hook else make_source(cfg, cursor, args, worker_cls=worker_cls)
    source.dispatcher.paced = bool(ahead)  # as a job whose trainer consumes in the background sets it
    return source


CLIENT = '''
import os
import sys
import time
from pathlib import Path
import numpy as np
from streaming.client import connect
sim_id, address, frames, kappa, marker, mode = sys.argv[1:7]
chosen = int(sim_id) % (1 << 40) == 3 and marker != "-"
if chosen and mode != "sleep" and (mode == "always" or not Path(marker).exists()):
    Path(marker).touch()
    raise RuntimeError("solver diverged on simulation 3")
sleep = chosen and mode == "sleep" and int(sim_id) == 3  # the first attempt only
u = np.zeros((6, 6)); u[2:4, 2:4] = 1.0
with connect(address, sim_id=int(sim_id), params=[float(kappa)], fields=["T"], grid=(6, 6)) as c:
    for k in range(int(frames)):
        c.send("T", u, k)
        if sleep and k == 1:
            c.flush()
            Path(marker + ".tmp").write_text(f"{os.getpid()}\\n")
            os.replace(marker + ".tmp", marker)
            time.sleep(600)
        lap = np.roll(u, 1, 0) + np.roll(u, -1, 0) + np.roll(u, 1, 1) + np.roll(u, -1, 1) - 4 * u
        u = u + 0.2 * float(kappa) * lap
'''


def _external_source(tmp_path, n_sims, max_failures, worker_cls, ahead):
    """Backend external with a command: CLIENT per simulation (STEPS + 1 frames of a 6 x 6 field), through the
    registry; worker_cls's marker / always become the program's arguments."""
    script = tmp_path / "contract_client.py"
    script.write_text(CLIENT)
    marker = getattr(worker_cls, "marker", "") or "-"
    mode = getattr(worker_cls, "mode", "always" if getattr(worker_cls, "always", False) else "once")
    command = f"{{python}} {script} {{sim_id}} {{address}} {{frames}} {{kappa}} {marker} {mode}"
    cfg = load_config("configs/quickstart.toml", {
        "solver.name": '"external"', "solver.config": "none", "solver.n_sims": str(n_sims),
        "solver.external": f'{{ channels = ["T"], grid = [6, 6], dt = 0.01, frames = {STEPS + 1}, '
                           f'command = "{command}", params = {{ kappa = {{ low = 0.2, high = 1.0 }} }} }}',
        "workers.backend": '"external"', "workers.listen": '"127.0.0.1:0"', "workers.count": "2",
        "workers.sims_per_task": "2", "workers.chunk_frames": "4", "workers.max_failures": str(max_failures),
        "workers.max_inflight": "2"})
    solver = build_solver(cfg)
    return make_source(cfg, _cursor(solver, n_sims, ahead), worker_args(cfg, sample_spec(cfg, solver)),
                       worker_cls=worker_cls)


@pytest.fixture(scope="module")
def ray_up():
    import ray
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the actors cannot import this test file
    yield

    if ray.is_initialized():
        ray.shutdown()


def _drain(source):
    reports = []
    try:
        for msg in source:
            if isinstance(msg, SimReport):
                reports.append(msg.sim_id)
    finally:
        source.close()
    return reports


def test_registry_lists_every_backend():
    assert {"ray", "mpi", "local", "external", "threads"} <= set(BACKENDS)
    for b in BACKENDS.values():
        assert callable(b.factory()), b.name  # every target imports


@pytest.mark.parametrize("kind", KINDS)
def test_a_finite_design_arrives_whole(kind, tmp_path, ray_up):
    source = _source(kind, tmp_path)
    assert sorted(_drain(source)) == list(range(N_SIMS))
    assert source.dispatcher.state_dict() == {"next_id": N_SIMS, "pending": [], "done": list(range(N_SIMS))}
    assert source.dispatcher.failures == 0


@pytest.mark.parametrize("kind", KINDS)
def test_a_raising_simulation_is_requeued_and_counted(kind, tmp_path, ray_up):
    worker = type("Once", (RaisingWorker,), {"marker": str(tmp_path / "raised")})
    source = _source(kind, tmp_path, worker_cls=worker)
    reports = _drain(source)
    assert (tmp_path / "raised").exists() and source.dispatcher.failures == 1
    assert sorted(set(reports)) == list(range(N_SIMS))  # 2 (its task partner) may report twice, 3 once
    assert source.dispatcher.state_dict()["done"] == list(range(N_SIMS))


@pytest.mark.parametrize("kind", KINDS)
def test_failures_past_the_budget_stop_the_job(kind, tmp_path, ray_up):
    worker = type("Always", (RaisingWorker,), {"marker": str(tmp_path / "raised"), "always": True})
    source = _source(kind, tmp_path, max_failures=1, worker_cls=worker)
    expected = r"failed 2 times, more than workers.max_failures=1 \(last: .*solver diverged on simulation 3"
    with pytest.raises(JobFailed, match=expected):
        _drain(source)


@pytest.mark.parametrize("kind", KINDS)
def test_close_while_another_thread_iterates(kind, tmp_path, ray_up):
    source = _source(kind, tmp_path, n_sims=0)  # unlimited design
    got, done = [], threading.Event()

    def consume():
        for msg in source:
            got.append(msg)
        done.set()

    t = threading.Thread(target=consume, daemon=True)
    t.start()
    deadline = time.monotonic() + 120
    while len(got) < 5 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(got) >= 5
    t0 = time.monotonic()
    source.close()
    assert done.wait(30), "the iterating thread did not stop after close()"
    assert time.monotonic() - t0 < 30


@pytest.mark.parametrize("kind", KINDS)
def test_checkpoint_state_mid_stream_loses_nothing(kind, tmp_path, ray_up):
    source = _source(kind, tmp_path, n_sims=0)
    states = []
    try:
        for i, msg in enumerate(source):
            if isinstance(msg, SimReport) and i > 4:
                states.append((source.dispatcher.state_dict(), [t.sim_ids.tolist() for t in source.in_flight()]))
                if len(states) == 3:
                    break
    finally:
        source.close()
    for state, in_flight in states:
        accounted = sorted(state["done"] + state["pending"])
        assert accounted == list(range(state["next_id"])), state  # every issued id: done or to be re-run
        assert {i for ids in in_flight for i in ids} - set(state["done"]) <= set(state["pending"])


@pytest.mark.parametrize("kind", [k for k in KINDS if k != "local"])  # local: in step with the trainer, not paced
def test_a_paced_design_holds_the_workers_until_losses_come(kind, tmp_path, ray_up):
    """Warmup 2, ahead 1, tasks of 2: 4 simulations go out, then the workers wait (nothing more comes while no loss
    is reported, and the stream does not end); a loss for simulation 3 lets the last task go."""
    source = _source(kind, tmp_path, ahead=1)
    done, ended = [], threading.Event()

    def consume():  # the trainer's receiver thread; this test's thread reports the losses, as the train loop does
        for msg in source:
            if isinstance(msg, SimReport):
                done.append(msg.sim_id)
        ended.set()

    t = threading.Thread(target=consume, daemon=True)
    try:
        t.start()
        deadline = time.monotonic() + 120
        while len(done) < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1.0)  # unpaced, the last task would be out by now
        assert sorted(done) == [0, 1, 2, 3] and not ended.is_set(), done
        assert source.dispatcher.state_dict()["next_id"] == 4 and not source.dispatcher.finished()
        source.dispatcher.report_losses(np.asarray([3]), np.asarray([1.0]))
        assert ended.wait(120), f"the stream did not end after the losses were reported: {done}"
    finally:
        source.close()
    state = source.dispatcher.state_dict()
    assert sorted(done) == list(range(N_SIMS)) and source.dispatcher.failures == 0
    assert (state["next_id"], state["pending"], state["done"]) == (N_SIMS, [], list(range(N_SIMS)))


LOSS_NOTICED_S = 60.0  # from the SIGKILL to the failure counted; headroom for a loaded 2-core machine


def _kill_when_marked(marker: Path, source, seen: dict, stop: threading.Event,
                      timeout: float = 120.0) -> threading.Thread:
    """A watcher thread: once ``marker`` holds a pid, SIGKILL it and time how long until the dispatcher counts a
    failure (``seen``: pid, marked_s, noticed_s). Past ``timeout`` (unless ``stop`` is set) it closes ``source``, so
    a backend that never notices fails the test instead of hanging it."""

    def watch():
        t_start = time.monotonic()
        deadline = t_start + timeout
        while time.monotonic() < deadline and not stop.is_set():
            text = marker.read_text() if marker.exists() else ""
            if text.endswith("\n"):
                seen["pid"], seen["marked_s"] = int(text), time.monotonic() - t_start
                os.kill(seen["pid"], signal.SIGKILL)
                killed = time.monotonic()
                while source.dispatcher.failures == 0 and time.monotonic() < deadline and not stop.wait(0.01):
                    pass
                if source.dispatcher.failures:
                    seen["noticed_s"] = time.monotonic() - killed
                    return
                break
            stop.wait(0.01)
        if not stop.is_set():
            source.close()

    t = threading.Thread(target=watch, daemon=True, name="contract-killer")
    t.start()
    return t


@pytest.mark.parametrize("kind", ["ray", "external"])  # local, threads: the workers are the trainer's process
def test_a_lost_worker_is_replaced_and_its_task_requeued(kind, tmp_path, ray_up):
    marker = tmp_path / "sleeping.pid"
    worker = type("Sleeping", (SleepingWorker,), {"marker": str(marker)})
    source = _source(kind, tmp_path, worker_cls=worker)
    seen: dict = {}
    stop = threading.Event()
    watcher = _kill_when_marked(marker, source, seen, stop)
    t0 = time.monotonic()
    reports, pids = [], []
    try:
        for msg in source:
            if isinstance(msg, SimReport):
                reports.append(msg.sim_id)
        if kind == "ray" and "noticed_s" in seen:  # the dead actor answers again, from a new process
            pids = source.worker_pids()
    finally:
        stop.set()
        source.close()
    watcher.join(5)
    print(f"{kind}: drained in {time.monotonic() - t0:.1f} s, {seen}")
    assert "pid" in seen, f"no worker wrote its pid to the marker within {time.monotonic() - t0:.0f} s"
    assert seen.get("noticed_s", np.inf) < LOSS_NOTICED_S, f"the SIGKILLed worker was not noticed: {seen}"
    assert sorted(reports) == list(range(N_SIMS))
    assert source.dispatcher.state_dict() == {"next_id": N_SIMS, "pending": [], "done": list(range(N_SIMS))}
    assert source.dispatcher.failures == 1
    if kind == "ray":  # Ray restarted the dead actor: both answer, neither from the killed process
        assert len(pids) == 2 and seen["pid"] not in pids, (pids, seen)
