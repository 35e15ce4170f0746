"""Real transports: a local Ray cluster (shared by the session) and real mpiexec ranks."""

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import ray

from solvers import get_solver
from streaming.buffers import make_buffer
from streaming.design import DesignCursor
from streaming.samples import SampleSpec, cut
from streaming.transport.ray_actors import RaySource
from streaming.transport.ray_cluster import ensure_ray
from streaming.worker import SimReport

BIN = Path(sys.executable).parent


@pytest.fixture(scope="session")
def ray_cluster():
    ensure_ray(None, 2)  # the local cluster exactly as a job starts it
    yield
    ray.shutdown()


def test_ray_exactly_once_with_a_killed_worker(ray_cluster):
    solver = get_solver("heat2d", n=6)
    n_sims, steps = 6, 12
    cursor = DesignCursor(solver, n_sims=n_sims, design="lhs", seed=0, sims_per_task=2)
    args = dict(name="heat2d", config={"n": 6}, steps=steps, every=1, chunk_frames=3, window=1, targets=1)
    # one chunk per Ray object (bundle_bytes=1): the kill must land while the task is half delivered
    source = RaySource(cursor, args, count=2, max_inflight=2, max_failures=2, bundle_bytes=1)
    spec = SampleSpec("next_step", 1, 1, True, solver.dt)
    buf = make_buffer("reservoir", capacity=1000, watermark=1)
    killed = False
    try:
        for msg in source:
            if isinstance(msg, SimReport):
                continue
            keys, samples = cut(msg, spec)
            buf.put_many(keys, samples)
            if not killed and buf.n_put >= 6:
                # SIGKILL the actor whose task sent this chunk, in the middle of that task
                idx = next(i for i, t in source.dispatcher.running().items() if msg.sim_id in t.sim_ids)
                os.kill(source.worker_pids()[idx], signal.SIGKILL)
                killed = True
    finally:
        source.close()
    expected = {(s, j) for s in range(n_sims) for j in range(1, steps + 1)}
    got = {tuple(k) for k in buf.keys().tolist()}
    assert killed and source.failures == 1
    assert got == expected  # nothing lost
    assert buf.n_put == len(expected)  # nothing counted twice ...
    assert buf.n_duplicates > 0  # ... although the re-run task sent some samples again
    assert sorted(cursor.done) == list(range(n_sims))


def test_ray_job_end_to_end(ray_cluster, tmp_path):
    from streaming.config import load_config
    from streaming.job import run_job

    cfg = load_config("configs/quickstart.toml", {
        "solver.config": "{ n = 14 }", "solver.steps": "10", "model.hparams": "{ modes = 4, width = 8, depth = 1 }",
        "optim.steps": "30", "optim.batch_size": "8", "buffer.watermark": "32", "workers.count": "2",
        "workers.chunk_frames": "5", "validation.n_sims": "2", "validation.interval": "30",
        "logging.progress": "false", "logging.tensorboard": "false", "logging.run_dir": str(tmp_path),
        "logging.name": "ray"})
    summary = run_job(cfg)
    assert summary["steps"] == 30 and summary["samples_received"] >= 32 and summary["duplicates"] == 0
    assert np.isfinite(summary["best_val_one_step_rel_l2"])
    # the trainer's threads end with the job: one left running at interpreter exit would drop the last reference
    # to the trainer there, after JAX has shut down, and abort the process
    assert not [t.name for t in threading.enumerate() if t.name in ("receiver", "prefetch")]


def test_ray_job_rate_matched_ingest(ray_cluster, tmp_path):
    """buffer.ingest_ratio: once the buffer is full, the receiver takes at most that many new samples per drawn
    sample (the workers wait); without it two workers on this grid send thousands of samples in that time."""
    from streaming.config import load_config
    from streaming.job import run_job

    cap, ratio, steps, batch, frames = 64, 2, 30, 8, 5
    cfg = load_config("configs/quickstart.toml", {
        "solver.config": "{ n = 14 }", "solver.steps": "10", "model.hparams": "{ modes = 4, width = 8, depth = 1 }",
        "optim.steps": str(steps), "optim.batch_size": str(batch), "buffer.capacity": str(cap),
        "buffer.watermark": "32", "buffer.ingest_ratio": str(ratio), "workers.count": "2",
        "workers.chunk_frames": str(frames), "validation.n_sims": "2", "validation.interval": str(steps),
        "logging.progress": "false", "logging.tensorboard": "false", "logging.run_dir": str(tmp_path),
        "logging.name": "matched"})
    summary = run_job(cfg)
    drawn = summary["buffer"]["n_drawn"]
    assert summary["steps"] == steps and summary["duplicates"] == 0
    assert steps * batch <= drawn <= (steps + 3) * batch  # the prefetcher draws up to 3 batches ahead
    # the allowance, plus at most one chunk (frames samples) taken before the receiver stopped
    assert cap <= summary["samples_received"] <= cap + ratio * drawn + frames, summary["samples_received"]


MPI_SET = ["--set", "solver.config={ n = 14 }", "--set", "solver.steps=10", "--set", "optim.steps=20",
           "--set", "model.hparams={ modes = 4, width = 8, depth = 1 }", "--set", "optim.batch_size=8",
           "--set", "buffer.watermark=32", "--set", "validation.n_sims=2", "--set", "validation.interval=20",
           "--set", "logging.progress=false", "--set", "logging.tensorboard=false", "--set", "workers.chunk_frames=5"]


def _check_mpi_summary(run: Path) -> dict:
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 20 and summary["samples_received"] >= 32 and summary["duplicates"] == 0
    assert summary["sims_done"] >= 4
    return summary


def test_mpi_job_with_three_ranks_mpmd(tmp_path):
    """``mpiexec -n 1 pdestream train : -n 2 pdestream worker``; the single-command layout (``-n 3 pdestream
    train``) is the first run of :func:`test_mpi_job_resumes_under_mpiexec`."""
    train = [str(BIN / "pdestream"), "train", "configs/quickstart.toml", "--backend", "mpi", *MPI_SET,
             "--set", f"logging.run_dir={tmp_path}", "--set", "logging.name=mpi"]
    worker = [str(BIN / "pdestream"), "worker", "configs/quickstart.toml", *MPI_SET]
    cmd = [str(BIN / "mpiexec"), "-n", "1", *train, ":", "-n", "2", *worker]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=400, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-3000:])
    _check_mpi_summary(tmp_path / "mpi")


def test_mpi_job_resumes_under_mpiexec(tmp_path):
    """``mpiexec -n 3 pdestream train`` runs a job (rank 0 trains, ranks 1-2 solve); then ``mpiexec -n 3 pdestream
    train --resume RUN``: the saved config's MPI backend puts rank 0 back in charge of two worker ranks, and the
    run continues from its last checkpoint to optim.steps."""
    run_set = ["--set", f"logging.run_dir={tmp_path}", "--set", "logging.name=mpires",
               "--set", "checkpoint.interval=10", "--set", "checkpoint.keep=3", "--set", "logging.interval=1"]
    train = [str(BIN / "pdestream"), "train", "configs/quickstart.toml", "--backend", "mpi", *MPI_SET, *run_set]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([str(BIN / "mpiexec"), "-n", "3", *train], capture_output=True, text=True, timeout=400,
                          env=env)
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-3000:])
    run = tmp_path / "mpires"
    _check_mpi_summary(run)
    shutil.rmtree(run / "checkpoints" / "20")  # as if it had stopped between steps 10 and 20
    (run / "metrics.jsonl").unlink()
    proc = subprocess.run([str(BIN / "mpiexec"), "-n", "3", str(BIN / "pdestream"), "train", "--resume", str(run)],
                          capture_output=True, text=True, timeout=400, env=env)
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-3000:])
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps[0] == 11 and steps[-1] == 20  # continued from the checkpoint at step 10
    summary = json.loads((run / "summary.json").read_text())
    # tasks in flight at the checkpoint run again: their samples seen before it are dropped as duplicates
    assert summary["steps"] == 20 and summary["samples_received"] >= 32
