"""Failures under real ``mpiexec`` ranks: a solver that raises, and a worker rank that is SIGKILLed.

Every job runs ``tests/raising_solver.py`` (``pdestream`` with the test solver ``raising_heat2d``
registered) on 3 ranks: rank 0 trains, ranks 1-2 solve 12 simulations of 10 samples each, two per
task. The FIRO buffer (each sample drawn once) ends training when the stream has ended, so every
finished job must report all 12 simulations and exactly 120 new samples: none lost, none counted twice.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

BIN = Path(sys.executable).parent
HELPER = Path(__file__).parent / "raising_solver.py"
N_SIMS, SAMPLES_PER_SIM = 12, 10  # solver.steps=10 frames after the first: targets 1..10 of each simulation
ENV = {**os.environ, "JAX_PLATFORMS": "cpu"}

pytestmark = pytest.mark.skipif(not (BIN / "mpiexec").exists(), reason="needs mpiexec (the mpich wheel)")


def job_set(tmp_path: Path, name: str, solver_config: str, *extra: str) -> list[str]:
    sets = ["solver.name=raising_heat2d", f"solver.config={{ n = 14, {solver_config} }}", "solver.steps=10",
            f"solver.n_sims={N_SIMS}", "workers.sims_per_task=2", "workers.chunk_frames=5",
            "model.hparams={ modes = 4, width = 8, depth = 1 }", "optim.steps=1000", "optim.batch_size=8",
            "buffer.kind=firo", "buffer.capacity=64", "buffer.watermark=32", "buffer.ingest_ratio=none",
            "validation.n_sims=2", "validation.interval=1000", "logging.progress=false",
            "logging.tensorboard=false", f"logging.run_dir={tmp_path}", f"logging.name={name}", *extra]
    return [arg for s in sets for arg in ("--set", s)]


def train_cmd(*args: str) -> list[str]:
    return [str(BIN / "mpiexec"), "-n", "3", sys.executable, str(HELPER), "train", *args]


def check_complete(run: Path) -> dict:
    summary = json.loads((run / "summary.json").read_text())
    assert summary["sims_done"] == N_SIMS and summary["sims_dropped"] == 0, summary
    assert summary["samples_received"] == N_SIMS * SAMPLES_PER_SIM, summary  # nothing lost, nothing twice
    return summary


def test_mpi_raising_simulation_is_requeued(tmp_path):
    """Each worker rank's first rollout raises: both tasks are re-run and the job completes."""
    cmd = train_cmd("configs/quickstart.toml", "--backend", "mpi", *job_set(tmp_path, "raise", "fail_times = 1"))
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=ENV)
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-3000:])
    for rank, sims in ((1, "[0, 1]"), (2, "[2, 3]")):  # the first task of each worker rank
        assert (f"MPI worker rank {rank} failed on simulation(s) {sims} (RuntimeError: injected solver failure 1 "
                f"on rank {rank}); re-running them") in proc.stderr, proc.stderr[-3000:]
    summary = check_complete(tmp_path / "raise")
    assert summary["workers"] == {"backend": "mpi", "worker_failures": 2}


def test_mpi_failures_past_max_failures_stop_the_job(tmp_path):
    """A solver that always raises: the second failure exceeds workers.max_failures=1 and every rank exits."""
    cmd = train_cmd("configs/quickstart.toml", "--backend", "mpi",
                    *job_set(tmp_path, "fail", "fail_times = 100", "workers.max_failures=1"))
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=ENV)
    assert proc.returncode == 2, (proc.stdout[-2000:], proc.stderr[-3000:])
    errors = [line for line in proc.stderr.splitlines() if line.startswith("pdestream train: error:")]
    assert len(errors) == 1 and re.search(r"MPI worker rank [12] failed on simulation\(s\) \[\d+, \d+\] "
                                          r"\(RuntimeError: injected solver failure", errors[0]), proc.stderr[-3000:]
    assert "failed 2 times, more than workers.max_failures=1" in errors[0]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "fail" / "summary.json").exists()


def worker_rank_pid(mpiexec: psutil.Process, rank: int) -> int | None:
    """Process id of MPI rank ``rank`` among ``mpiexec``'s descendants (Hydra gives each rank PMI_RANK)."""
    for child in mpiexec.children(recursive=True):
        try:
            if child.environ().get("PMI_RANK") == str(rank) and "raising_solver.py" in " ".join(child.cmdline()):
                return child.pid
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return None


def test_mpi_killed_worker_rank_then_resume(tmp_path):
    """SIGKILL worker rank 1 after the first checkpoint: Hydra ends the whole job at once (no hang), and
    ``--resume`` completes the design from the last checkpoint with no sample lost or counted twice."""
    run = tmp_path / "kill"
    # 1.5 s per task: the first checkpoint (step 2) comes while each worker still has tasks to run
    cmd = train_cmd("configs/quickstart.toml", "--backend", "mpi",
                    *job_set(tmp_path, "kill", "delay = 1.5", "checkpoint.interval=2", "checkpoint.keep=3"))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        deadline = time.monotonic() + 240
        while not any(p.name.isdigit() for p in (run / "checkpoints").glob("*")):
            assert proc.poll() is None and time.monotonic() < deadline, "no checkpoint before the job ended"
            time.sleep(0.05)
        pid = worker_rank_pid(psutil.Process(proc.pid), 1)
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        killed_at = time.monotonic()
        out, err = proc.communicate(timeout=60)
        ended_after = time.monotonic() - killed_at
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0 and ended_after < 15, (proc.returncode, ended_after)
    assert "BAD TERMINATION" in out + err and f"PID {pid} " in out + err, (out[-2000:], err[-2000:])
    assert not (run / "summary.json").exists()  # killed mid-run, not after the job had finished
    proc = subprocess.run(train_cmd("--resume", str(run)), capture_output=True, text=True, timeout=300, env=ENV)
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-3000:])
    check_complete(run)
