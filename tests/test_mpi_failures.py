"""Failures under real ``mpiexec`` ranks: a solver that raises, and a worker rank that is SIGKILLed (plain
``mpiexec``: the job ends and ``--resume`` completes it; ``mpiexec -disable-auto-cleanup``: the job goes on).

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
import threading
import time
from pathlib import Path

import psutil
import pytest

from streaming.transport.mpi_ranks import LOST_AFTER

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
            "optim.unroll={ start = 1, end = 1 }",
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
    assert summary["workers"] == {"backend": "mpi", "worker_failures": 2, "ranks_lost": []}


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
    """Process id of MPI rank ``rank`` among ``mpiexec``'s descendants: the process running MPI, whose parent
    (the supervisor Hydra started, ``streaming.transport.mpi_ranks.supervise``) has the same ``PMI_RANK``."""
    def is_rank(p: psutil.Process) -> bool:
        return p.environ().get("PMI_RANK") == str(rank) and "raising_solver.py" in " ".join(p.cmdline())

    for child in mpiexec.children(recursive=True):
        try:
            if is_rank(child) and is_rank(child.parent()):
                return child.pid
        except (psutil.NoSuchProcess, psutil.AccessDenied, AttributeError):
            continue
    return None


def start_and_kill_rank_1(cmd: list[str], run: Path, stall: Path, checkpoint: bool = True
                          ) -> tuple[subprocess.Popen, int, float, list, threading.Thread]:
    """Start ``cmd``; once worker rank 1 is stuck in its first task (the ``stall`` file exists) and, with
    ``checkpoint``, the run's first checkpoint exists, SIGKILL rank 1. Returns the process, the killed pid, the
    kill's time and the list that a thread (the last item) fills with ``(time, line)`` of the job's output."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV)
    lines: list[tuple[float, str]] = []
    reader = threading.Thread(target=lambda: lines.extend((time.monotonic(), line) for line in proc.stdout),
                              daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 240
        def ready() -> bool:
            return stall.exists() and (not checkpoint or any(p.name.isdigit() for p in (run / "checkpoints").glob("*")))

        while not ready():
            assert proc.poll() is None and time.monotonic() < deadline, ("no checkpoint before the job ended", lines)
            time.sleep(0.05)
        pid = worker_rank_pid(psutil.Process(proc.pid), 1)
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        return proc, pid, time.monotonic(), lines, reader
    except BaseException:
        proc.kill()
        raise


def test_mpi_killed_worker_rank_then_resume(tmp_path):
    """SIGKILL worker rank 1 in its first task, after the first checkpoint: under Hydra's default auto-cleanup
    the whole job ends at once (no hang), and ``--resume`` completes the design from the last checkpoint with
    no sample lost or counted twice."""
    run, stall = tmp_path / "kill", tmp_path / "stalled"
    cmd = train_cmd("configs/quickstart.toml", "--backend", "mpi",
                    *job_set(tmp_path, "kill", f'stall_file = "{stall}"', "checkpoint.interval=2", "checkpoint.keep=3"))
    proc, pid, killed_at, lines, reader = start_and_kill_rank_1(cmd, run, stall)
    try:
        proc.wait(timeout=60)
        ended_after = time.monotonic() - killed_at
    finally:
        if proc.poll() is None:
            proc.kill()
    reader.join(30)
    out = "".join(line for _, line in lines)
    assert proc.returncode != 0 and ended_after < 15, (proc.returncode, ended_after)
    assert "BAD TERMINATION" in out, out[-3000:]
    assert not (run / "summary.json").exists()  # killed mid-run, not after the job had finished
    proc = subprocess.run(train_cmd("--resume", str(run)), capture_output=True, text=True, timeout=300, env=ENV)
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-3000:])
    check_complete(run)


def test_mpi_killed_worker_rank_job_goes_on(tmp_path):
    """``mpiexec -disable-auto-cleanup``: SIGKILL worker rank 1 in its first task. The trainer notices within
    seconds (no heartbeat for LOST_AFTER s), re-runs its task on rank 2 and finishes the design: exit 0, every
    simulation done once, no sample lost or counted twice, the lost rank named once and in summary.json."""
    run, stall = tmp_path / "goon", tmp_path / "stalled"
    cmd = train_cmd("configs/quickstart.toml", "--backend", "mpi",
                    *job_set(tmp_path, "goon", f'stall_file = "{stall}"'))
    cmd.insert(1, "-disable-auto-cleanup")
    proc, pid, killed_at, lines, reader = start_and_kill_rank_1(cmd, run, stall, checkpoint=False)
    try:
        proc.wait(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
    reader.join(30)
    err = "".join(line for _, line in lines)
    assert proc.returncode == 0, err[-3000:]
    lost = [(t, line) for t, line in lines if "MPI worker rank 1 lost" in line]
    assert len(lost) == 1, err[-3000:]
    detected_after = lost[0][0] - killed_at
    assert 0 < detected_after < LOST_AFTER + 10, detected_after  # within seconds, not a hang
    assert "MPI worker rank 1 lost on simulation(s) [0, 1]" in lost[0][1] and "a missed heartbeat" in lost[0][1]
    assert re.search(r"going on with rank\(s\) \[2\] \(failure 1, at most 5\)", lost[0][1]), lost[0][1]
    assert f"pdestream: MPI rank 1 (pid {pid}) was killed by SIGKILL" in err, err[-3000:]
    summary = check_complete(run)
    assert summary["workers"] == {"backend": "mpi", "worker_failures": 1, "ranks_lost": [1]}


@pytest.mark.slow
def test_mpi_every_worker_rank_lost_checkpoints_then_resume(tmp_path):
    """``mpiexec -disable-auto-cleanup -n 2``: the only worker rank is SIGKILLed mid-task. The trainer writes a
    checkpoint and stops with one line naming the rank (exit 2); ``--resume`` on 3 ranks completes the design
    with no sample lost or counted twice."""
    run, stall = tmp_path / "alllost", tmp_path / "stalled"
    cmd = train_cmd("configs/quickstart.toml", "--backend", "mpi",
                    *job_set(tmp_path, "alllost", f'stall_file = "{stall}"'))
    cmd[1:3] = ["-disable-auto-cleanup", "-n", "2"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        deadline = time.monotonic() + 240
        while not stall.exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.05)
        pid = worker_rank_pid(psutil.Process(proc.pid), 1)
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 2, err[-3000:]
    errors = [line for line in err.splitlines() if line.startswith("pdestream train: error:")]
    assert len(errors) == 1 and "every MPI worker rank is lost (rank(s) [1]; last: MPI worker rank 1 lost on " \
        "simulation(s) [0, 1]" in errors[0], err[-3000:]
    assert "Traceback" not in err and not (run / "summary.json").exists()
    assert any(p.name.isdigit() for p in (run / "checkpoints").glob("*"))  # written when the rank was lost
    proc = subprocess.run(train_cmd("--resume", str(run)), capture_output=True, text=True, timeout=300, env=ENV)
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-3000:])
    check_complete(run)
