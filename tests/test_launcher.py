"""The launcher: solver programs declared in the job config (C, Fortran, py-pde, Python) started once per simulation.

Every job here trains a small surrogate through the real listener on real processes; the checks are the
summary's accounting (every launched simulation done, retries counted, no duplicate sample kept) and that no
process the launcher started outlives the job.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from streaming.assembly import build_solver, sample_spec, worker_args
from streaming.config import ConfigError, load_config
from streaming.design import DesignCursor
from streaming.errors import JobFailed
from streaming.job import run_job
from streaming.transport.launcher import LauncherError
from streaming.transport.launcher import from_config as launcher_source

ROOT = Path(__file__).resolve().parents[1]
FRAMES = 6
N_SIMS = 3

# a tiny numpy heat solver with the Python client. mode "flaky": on their first attempt simulation 1 dies with status 3
# after 3 frames and simulation 2 closes properly after 2 frames; "kill_parent": the same, and simulation 1 first
# SIGKILLs the process that started it; "always": every run exits 5 after connecting;
# "hang": from simulation 2 on, every run starts a child in its process group, sends 2 frames and sleeps
FLAKY = textwrap.dedent("""
    import sys, time, subprocess
    import numpy as np
    from streaming.client import connect
    sim_id, address, frames, kappa, mode, attempt = sys.argv[1:7]
    sim_id, frames, kappa, attempt = int(sim_id), int(frames), float(kappa), int(attempt)
    design_id = sim_id % (1 << 40)
    first = attempt == 0 and mode in ("flaky", "kill_parent")
    hang = mode == "hang" and 2 <= design_id < 2**30  # simulations 0, 1 and the validation runs finish
    if hang:
        subprocess.Popen(["sleep", "300"])  # a child in the same process group
    u = np.zeros((16, 16)); u[4:12, 4:12] = 1.0
    c = connect(address, sim_id=sim_id, params=[kappa], fields=["u"], grid=(16, 16), batch_frames=1)
    for k in range(frames):
        if first and design_id == 1 and k == 3:
            c.flush()
            if mode == "kill_parent":                   # the process that started it dies (a Ray actor: OOM)
                import os, signal                       # (its parent is the launcher's watcher: kill the one above)
                os.kill(int(open(f"/proc/{os.getppid()}/stat").read().rsplit(")", 1)[1].split()[1]), signal.SIGKILL)
            sys.exit(3)                                 # dies with status 3 after sending 3 frames
        if first and design_id == 2 and k == 2:
            break                                       # closes properly but sends too few frames
        if mode == "always":
            sys.exit(5)
        c.send("u", u, k)
        if hang and k == 1:
            c.flush(); time.sleep(300)
        u = u + 0.2 * kappa * (np.roll(u, 1, 0) + np.roll(u, -1, 0) + np.roll(u, 1, 1) + np.roll(u, -1, 1) - 4 * u)
    c.close()
""")


def _pdestream() -> str:
    exe = Path(sys.executable).parent / "pdestream"
    return str(exe) if exe.exists() else "pdestream"


def _make(folder: str, compiler: str) -> None:
    """Build an example with its Makefile; a missing tool fails with what to install."""
    for tool in ("make", compiler):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool!r} is not installed: the {folder} example needs it (e.g. apt-get install -y make "
                        f"{'gcc' if compiler == 'cc' else compiler})")
    proc = subprocess.run(["make", "-C", str(ROOT / folder), f"PDESTREAM={_pdestream()}"], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, f"make -C {folder} failed:\n{proc.stdout}\n{proc.stderr}"


def _small(tmp_path: Path, config: str | None, **overrides: str):
    """A config cut down to seconds: few simulations and frames, a tiny FNO, one validation simulation."""
    base = {"optim.steps": "6", "optim.batch_size": "4", "model.hparams": "{ modes = 4, width = 8, depth = 1 }",
            "buffer.capacity": "256", "buffer.watermark": "8", "validation.n_sims": "1", "validation.interval": "1000",
            "validation.rollout_steps": "2", "checkpoint.interval": "1000", "logging.run_dir": f'"{tmp_path}"',
            "logging.progress": "false", "logging.tensorboard": "false", "solver.n_sims": str(N_SIMS),
            "solver.external.frames": str(FRAMES), "workers.count": "2", "workers.sims_per_task": "1",
            "workers.backend": "local", "workers.listen": '"127.0.0.1:0"', "buffer.ingest_ratio": "none"}
    return load_config(config, {**base, **overrides})


def _flaky_config(tmp_path: Path, mode: str, **overrides: str):
    script = tmp_path / "flaky.py"
    script.write_text(FLAKY)
    cfg = tmp_path / "flaky.toml"
    cfg.write_text(textwrap.dedent(f"""
        [solver]
        name = "external"
        [solver.external]
        channels = ["u"]
        grid = [16, 16]
        dt = 0.01
        frames = {FRAMES}
        command = "{{python}} {script} {{sim_id}} {{address}} {{frames}} {{kappa}} {mode} {{attempt}}"
        [solver.external.params]
        kappa = {{ low = 0.2, high = 1.0 }}
    """))
    return _small(tmp_path, str(cfg), **overrides)


def _our_processes(before: set[int] | None = None) -> list[psutil.Process]:
    """This test process's live descendants (those not in ``before``: started since)."""
    return [p for p in _alive(psutil.Process().children(recursive=True)) if p.pid not in (before or set())]


def _run(cfg) -> tuple[dict, list[psutil.Process]]:
    """run_job, and the processes started during it that are still alive after it."""
    before = {p.pid for p in _our_processes()}
    summary = run_job(cfg)
    return summary, _our_processes(before)


def _alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    out = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.NoSuchProcess:
            pass
    return out


def _check_accounting(summary: dict, left: list[psutil.Process], n_sims: int, failed: int = 0) -> None:
    w = summary["workers"]
    assert summary["sims_done"] == n_sims and summary["sims_dropped"] == 0, summary
    assert w["succeeded"] == n_sims and w["failed"] == failed and w["launched"] == n_sims + failed, w
    assert w["retries"] == failed, w
    # every next-step target of every simulation arrived exactly once: FRAMES - 1 samples each
    assert summary["samples_received"] == n_sims * (FRAMES - 1), summary
    assert not left, f"processes started by the launcher outlived the job: {left}"


# ---------------------------------------------------------------------------------------------- the examples
def test_c_example_trains_through_the_launcher(tmp_path: Path) -> None:
    _make("examples/c", "cc")
    cfg = _small(tmp_path, str(ROOT / "configs/external_c_heat.toml"),
                 **{"solver.external.cwd": f'"{ROOT / "examples/c"}"'})
    summary, left = _run(cfg)
    _check_accounting(summary, left, N_SIMS)
    assert summary["duplicates"] == 0
    assert summary["steps"] == 6 and summary["best_val_one_step_rel_l2"] is not None


def test_fortran_example_trains_through_the_launcher(tmp_path: Path) -> None:
    _make("examples/fortran", "gfortran")
    cfg = _small(tmp_path, str(ROOT / "configs/external_fortran_heat.toml"),
                 **{"solver.external.cwd": f'"{ROOT / "examples/fortran"}"'})
    summary, left = _run(cfg)
    _check_accounting(summary, left, N_SIMS)
    assert summary["duplicates"] == 0


def test_c_and_fortran_examples_solve_the_same_problem(tmp_path: Path) -> None:
    """Same parameters, same frames (the Fortran array reaches the job in C order, hot wall in column 0)."""
    from streaming.transport.launcher import validation_runs

    _make("examples/c", "cc")
    _make("examples/fortran", "gfortran")
    out = []
    for lang in ("c", "fortran"):
        cfg = _small(tmp_path, str(ROOT / f"configs/external_{lang}_heat.toml"),
                     **{"solver.external.cwd": f'"{ROOT / "examples" / lang}"', "validation.n_sims": "2"})
        out.append(validation_runs(cfg, build_solver(cfg), first_id=0))
    (c_frames, c_params), (f_frames, f_params) = out
    np.testing.assert_array_equal(c_params, f_params)
    assert c_frames.shape == (2, FRAMES, 1, 32, 32) and np.ptp(c_frames[:, -1]) > 0.5
    np.testing.assert_allclose(f_frames, c_frames, rtol=0, atol=1e-5)
    hot_wall = np.broadcast_to(c_params[:, None, 1:2], (2, FRAMES, 32))  # t_hot, in column 0 at every frame
    np.testing.assert_array_equal(c_frames[:, :, 0, :, 0], hot_wall)


def test_pypde_adapter_trains(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    proc = subprocess.run([sys.executable, "-c", "import pde"], capture_output=True, text=True)
    assert proc.returncode == 0, f"py-pde is not installed (pip install -e '.[dev]'): {proc.stderr[-300:]}"
    monkeypatch.chdir(ROOT)  # the config's command names examples/pypde_adapter.py from the repository root
    cfg = _small(tmp_path, str(ROOT / "configs/external_pypde.toml"),
                 **{"solver.external.grid": "[16, 16]", "solver.n_sims": "2"})
    summary, left = _run(cfg)
    _check_accounting(summary, left, 2)


# ---------------------------------------------------------------------------------------------- failures
def test_failed_runs_are_retried_and_counted(tmp_path: Path) -> None:
    """First attempts that fail: simulation 1 exits 3 mid-way, simulation 2 exits 0 with frames missing."""
    summary, left = _run(_flaky_config(tmp_path, "flaky"))
    _check_accounting(summary, left, N_SIMS, failed=2)
    crash, short = sorted(summary["workers"]["failures"])
    assert crash.startswith("simulation 1 (attempt 0") and "exited with status 3; sent 3 of 6 frames" in crash
    assert short.startswith("simulation 2 (attempt 0") and "exited 0 but sent 2 of 6 frames" in short
    # the retries re-sent the frames that had arrived (targets 1, 2 of simulation 1, target 1 of simulation 2):
    # dropped as duplicates, so every sample is kept once
    assert summary["duplicates"] == 3


def test_failures_past_the_budget_stop_the_job(tmp_path: Path) -> None:
    before = {p.pid for p in _our_processes()}
    with pytest.raises(JobFailed, match=r"more than workers.max_failures=1 .*exited with status 5"):
        run_job(_flaky_config(tmp_path, "always", **{"workers.max_failures": "1"}))
    assert not _our_processes(before)


def test_close_kills_every_process_group(tmp_path: Path) -> None:
    """A job stopped mid-simulation (end of training, Ctrl-C) leaves no program nor any child of one."""
    cfg = _flaky_config(tmp_path, "hang", **{"solver.n_sims": "0"})
    solver = build_solver(cfg)
    cursor = DesignCursor(solver, 0, "lhs", 0, 1)
    before = {p.pid for p in _our_processes()}
    source = launcher_source(cfg, cursor, worker_args(cfg, sample_spec(cfg, solver)))
    got: list = []
    thread = threading.Thread(target=lambda: got.extend(source), daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while len(_our_processes(before)) < 4 and time.monotonic() < deadline:  # 2 programs, each with a sleeping child
        time.sleep(0.1)
    procs = _our_processes(before)
    assert len(procs) >= 4, procs
    source.close()
    thread.join(10)
    assert not thread.is_alive()
    deadline = time.monotonic() + 10
    while _alive(procs) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(procs)


SLAB = textwrap.dedent("""
    import sys
    import numpy as np
    from mpi4py import MPI
    from streaming.client import connect
    sim_id, address, frames, kappa = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    rank, size = MPI.COMM_WORLD.Get_rank(), MPI.COMM_WORLD.Get_size()
    rows = slice(16 * rank // size, 16 * (rank + 1) // size)
    u = np.zeros((16, 16)); u[4:12, 4:12] = 1.0    # every rank steps the whole (tiny) field, sends its rows
    with connect(address, sim_id=sim_id, params=[kappa], fields=["u"], grid=(16, 16), offset=(rows.start, 0),
                 ranks=size, batch_frames=2) as c:
        for k in range(frames):
            c.send("u", u[rows], k)
            u = u + 0.2 * kappa * (np.roll(u, 1, 0) + np.roll(u, -1, 0) + np.roll(u, 1, 1) + np.roll(u, -1, 1) - 4 * u)
""")


def test_mpi_run_sending_slabs_with_a_token(tmp_path: Path) -> None:
    """`mpiexec -n 2 ...` as the command: each rank sends half of the grid and the listener assembles them.
    Listening beyond loopback, the listener wants a token; the launcher hands it to the ranks."""
    mpiexec = Path(sys.executable).parent / "mpiexec"
    if not mpiexec.exists():
        mpiexec = shutil.which("mpiexec")
        assert mpiexec, "no mpiexec: install pdestream's dependencies (the mpich wheel) or an MPI"
    script = tmp_path / "slab.py"
    script.write_text(SLAB)
    command = f"{mpiexec} -n 2 {{python}} {script} {{sim_id}} {{address}} {{frames}} {{kappa}}"
    cfg = _flaky_config(tmp_path, "plain", **{"solver.external.command": json.dumps(command),
                                             "workers.listen": '"0.0.0.0:0"'})
    summary, left = _run(cfg)
    _check_accounting(summary, left, N_SIMS)
    assert summary["duplicates"] == 0
    assert summary["external"]["token_required"] is True


def test_validation_from_a_trajectory_file(tmp_path: Path) -> None:
    from benchmarks.trajectories import TrajectoryWriter
    from streaming.transport.launcher import launched_validation, validation_runs

    cfg = _flaky_config(tmp_path, "plain", **{"validation.n_sims": "2"})
    solver = build_solver(cfg)
    frames, params = validation_runs(cfg, solver, first_id=1000)  # the same command, held-out parameters
    assert frames.shape == (2, FRAMES, 1, 16, 16) and params.shape == (2, 1)
    path = tmp_path / "val.h5"
    with TrajectoryWriter.for_solver(solver, path, 2, FRAMES - 1, 1) as w:
        w.write(0, frames, params, [1000, 1001])
    # what build_validation reads for a job with validation_file set (and no command to run)
    cfg = _flaky_config(tmp_path, "plain", **{"solver.external.validation_file": f'"{path}"',
                                              "solver.external.command": '""', "workers.backend": '"external"'})
    read_frames, read_params = launched_validation(cfg, build_solver(cfg), 0)
    np.testing.assert_array_equal(read_frames, frames)
    np.testing.assert_allclose(read_params, params)
    assert np.isfinite(frames).all() and frames[:, 1:].std() > 0  # real, evolving fields
    bad = _flaky_config(tmp_path, "plain", **{"solver.external.validation_file": f'"{path}"',
                                              "solver.external.grid": "[8, 8]"})
    with pytest.raises(ConfigError, match=r"validation_file=.*the job trains on \(1, 8, 8\)"):
        launched_validation(bad, build_solver(bad), 0)
    nothing = _flaky_config(tmp_path, "plain", **{"solver.external.command": '""', "workers.backend": '"external"'})
    with pytest.raises(ConfigError, match=r"needs solver.external.validation_file"):
        launched_validation(nothing, build_solver(nothing), 0)


def test_ctrl_c_kills_every_process_group(tmp_path: Path) -> None:
    """SIGINT to `pdestream train` (Ctrl-C) while the launched programs run: the job ends and takes them along."""
    cfg = tmp_path / "hang.toml"
    _flaky_config(tmp_path, "hang")  # writes flaky.py
    (tmp_path / "flaky.toml").rename(cfg)
    cmd = [_pdestream(), "train", str(cfg), "--set", "solver.n_sims=0", "--set", "workers.backend=local",
           "--set", "workers.listen=127.0.0.1:0", "--set", f"logging.run_dir={tmp_path}", "--set",
           "logging.progress=false", "--set", "validation.n_sims=1", "--set", "solver.external.frames=6",
           "--set", "model.hparams={ modes = 4, width = 8, depth = 1 }", "--set", "optim.steps=100000",
           "--set", "buffer.watermark=8", "--set", "optim.batch_size=4"]
    job = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        parent = psutil.Process(job.pid)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and job.poll() is None:
            kids = [p for p in _alive(parent.children(recursive=True)) if "sleep" in p.name()]
            if len(kids) == 2:  # training (on simulations 0, 1) goes on while two runs sleep mid-simulation
                break
            time.sleep(0.2)
        assert job.poll() is None, job.communicate()[0][-2000:]
        procs = _alive(parent.children(recursive=True))
        assert len(procs) >= 4, procs
        job.send_signal(signal.SIGINT)
        out = job.communicate(timeout=60)[0]
    finally:
        if job.poll() is None:
            job.kill()
    deadline = time.monotonic() + 10
    while _alive(procs) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(procs), out[-2000:]
    assert job.returncode == 130 and "interrupted" in out, out[-2000:]


@pytest.mark.slow
def test_ray_backend_runs_the_programs_inside_actors(tmp_path: Path) -> None:
    """workers.backend = "ray": each run is a subprocess of a Ray actor; a failed first attempt is retried there."""
    summary = run_job(_flaky_config(tmp_path, "flaky", **{"workers.backend": '"ray"'}))
    w = summary["workers"]
    assert w["launcher"] == "ray" and w["succeeded"] == N_SIMS and w["failed"] == 2 and w["launched"] == N_SIMS + 2
    assert summary["sims_done"] == N_SIMS and summary["samples_received"] == N_SIMS * (FRAMES - 1)


@pytest.mark.slow
def test_ray_actor_that_dies_is_restarted_and_its_run_retried(tmp_path: Path) -> None:
    """A run's Ray actor SIGKILLed: that run fails and is retried once Ray has restarted the actor; the job ends
    with every simulation done (training starts once every sample is in: the watermark is all of them)."""
    summary = run_job(_flaky_config(tmp_path, "kill_parent", **{"workers.backend": '"ray"',
                                                                 "buffer.watermark": str(N_SIMS * (FRAMES - 1))}))
    w = summary["workers"]
    assert w["launcher"] == "ray" and w["succeeded"] == N_SIMS and w["failed"] == 2 and w["launched"] == N_SIMS + 2
    assert summary["sims_done"] == N_SIMS and summary["samples_received"] == N_SIMS * (FRAMES - 1)


# ---------------------------------------------------------------------------------------------- configuration
def test_config_errors_name_the_key_and_the_fix(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"solver.external.command=.*unknown placeholder \{nu\}.*\{kappa\}"):
        _flaky_config(tmp_path, "flaky", **{"solver.external.command": '"./x {nu}"'})
    with pytest.raises(ConfigError, match=r"without a \[solver.external\] section"):
        load_config(None, {"solver.name": '"external"'})
    with pytest.raises(ConfigError, match=r"log = true needs low > 0"):
        _flaky_config(tmp_path, "flaky", **{"solver.external.params.kappa.log": "true",
                                            "solver.external.params.kappa.low": "0"})
    cfg = _flaky_config(tmp_path, "flaky", **{"workers.backend": '"external"'})
    solver = build_solver(cfg)
    args = worker_args(cfg, sample_spec(cfg, solver))
    with launcher_source(cfg, DesignCursor(solver, 1, "lhs", 0, 1), args) as source:  # launched here, as by 'local'
        assert source.runner.where == "local" and source.address.startswith("127.0.0.1:")
    cfg = _flaky_config(tmp_path, "flaky", **{"workers.backend": '"mpi"'})
    with pytest.raises(LauncherError, match=r"workers.backend='mpi' cannot launch"):
        launcher_source(cfg, DesignCursor(solver, 1, "lhs", 0, 1), args)


def test_log_scaled_parameters_in_the_design(tmp_path: Path) -> None:
    """The external solver's design is the usual one (solvers.params): a log-scaled parameter is uniform in log10."""
    cfg = _flaky_config(tmp_path, "flaky", **{"solver.external.params.kappa": "{ low = 1e-3, high = 1.0, log = true }"})
    solver = build_solver(cfg)
    import jax

    p = solver.sample_params(jax.random.key(0), 256, "sobol")[:, 0]
    assert p.min() >= 1e-3 and p.max() <= 1.0
    assert 0.2 < (p < 10**-1.5).mean() < 0.8  # uniform in log10: half the draws below the log-midpoint


@pytest.mark.parametrize("backend", ["local", "external"])
def test_the_adaptive_design_steers_the_launched_runs(tmp_path: Path, backend: str,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """solver.design = "adaptive" through the launcher: the trainer's per-simulation losses reach the design, which
    draws later runs' parameters from its proposal (simulations stream until the step budget, one new sample per
    step), and the launcher leaves nothing running; the checkpoint holds the design's state. Unpaced on a background
    backend, the job says how to pace it."""
    cfg = _flaky_config(tmp_path, "plain", **{
        "workers.backend": f'"{backend}"', "solver.n_sims": "0", "solver.design": '"adaptive"',
        "solver.adaptive": "{ warmup = 4, loss_every = 1, report_every = 1 }", "optim.steps": "60",
        "buffer.ingest_ratio": "0.25", "checkpoint.interval": "60"})
    summary, left = _run(cfg)
    assert not left and summary["workers"]["failed"] == 0
    cursor = json.loads((Path(summary["run_dir"]) / "checkpoints/60/meta/metadata").read_text())["cursor"]
    origins = [r[1] for r in cursor["adaptive"]["drawn"]]
    assert origins[:4] == ["base"] * 4 and "proposal" in origins, origins
    assert cursor["adaptive"]["reports"] > 0 and cursor["adaptive"]["losses"]  # what the trainer reported
    hint = "set solver.adaptive.ahead (e.g. 2) to pace them" in capsys.readouterr().err
    assert hint == (backend == "external")
