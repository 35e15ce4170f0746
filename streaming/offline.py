"""The offline baseline: write a job's simulations to HDF5 (``pdestream generate``) and read them back
as the sample source of the same trainer (``pdestream train CFG --offline DATA.h5``).

Offline training keeps every sample of the file in an ``epoch`` buffer (:mod:`streaming.buffers`)
sized to hold them all, and shuffles by epoch: each epoch draws every sample exactly once in a
fresh random order (seeded by ``optim.seed``), and a batch never holds one sample twice. The
watermark is the whole dataset, so the normaliser is fitted on all of it and the first epoch
already holds every sample. The file must fit in memory.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from benchmarks.trajectories import TrajectoryWriter, read_trajectories
from solvers import check_finite
from streaming.chunk import Chunk
from streaming.config import ConfigError, JobConfig
from streaming.design import DesignCursor
from streaming.progress import progress_bar
from streaming.worker import SimReport, SolverWorker

Message = Chunk | SimReport


def generate(cfg: JobConfig, out: str | Path, show_progress: bool = True) -> Path:
    """Simulate the job's ``solver.n_sims`` simulations (same ids, parameters and initial conditions as
    the online stream) and write them in the ``pdestream solve`` layout."""
    from streaming.assembly import build_solver, sample_spec, worker_args

    if cfg.solver.n_sims < 1:
        raise ConfigError("generate needs a finite dataset: set solver.n_sims (e.g. --set solver.n_sims=1000)")
    solver = build_solver(cfg)
    worker = SolverWorker(**worker_args(cfg, sample_spec(cfg, solver)))
    cursor = DesignCursor(solver, cfg.solver.n_sims, cfg.solver.design, cfg.solver.seed, cfg.workers.sims_per_task,
                          fixed=cfg.solver.fixed)
    writer = TrajectoryWriter.for_solver(solver, out, cfg.solver.n_sims, cfg.solver.steps, cfg.solver.every)
    with writer as w, progress_bar(f"generate {solver.name}", total=cfg.solver.n_sims, enabled=show_progress) as bar:
        start = 0
        while (task := cursor.next_task()) is not None:
            frames = worker.simulate(task)
            check_finite(frames, task.params, solver.param_space.names, task.sim_ids)
            w.write(start, frames, task.params, task.sim_ids)
            start += len(task.sim_ids)
            bar.advance(len(task.sim_ids))
    return Path(out)


def file_messages(path: str | Path, cfg: JobConfig) -> list[Message]:
    """Every simulation of a trajectory file as one chunk (and a report), checked against the job."""
    traj = read_trajectories(path)
    if traj.solver != cfg.solver.name:
        raise ConfigError(f"{path} holds {traj.solver} simulations but the job trains on {cfg.solver.name}")
    frames = traj.fields()
    messages: list[Message] = []
    for i in range(len(frames)):
        sid = int(traj.sim_id[i])
        messages.append(Chunk(sim_id=sid, frame_index=np.arange(frames.shape[1]), fields=frames[i],
                              params=traj.params[i], solver=traj.solver))
        messages.append(SimReport(sid, "done"))
    return messages


def offline_config(cfg: JobConfig, messages: list[Message]) -> JobConfig:
    """``cfg`` with an ``epoch`` buffer that holds every sample of ``messages`` (watermark = the number
    of samples), so training sees the fixed dataset one shuffled epoch after another."""
    from streaming.assembly import build_solver, sample_spec

    span = sample_spec(cfg, build_solver(cfg)).span  # frames one sample needs (every unrolled call's targets)
    n = sum(max(m.n_frames - span + 1, 0) for m in messages if isinstance(m, Chunk))
    if n < cfg.optim.batch_size:
        raise ConfigError(f"the offline dataset holds {n} samples, fewer than optim.batch_size="
                          f"{cfg.optim.batch_size}; lower the batch size or write more simulations")
    # capacity >= chunk_frames keeps run_job's check for blocking buffers quiet; the extra slots stay empty
    capacity = max(n, cfg.workers.chunk_frames)
    buffer = cfg.buffer.model_copy(update={"kind": "epoch", "capacity": capacity, "watermark": n, "max_reuse": None,
                                        "ingest_ratio": None})
    return cfg.model_copy(update={"buffer": buffer})


def offline_job(path: str | Path, cfg: JobConfig) -> tuple[list[Message], JobConfig]:
    """The messages of trajectory file ``path`` and the job config that trains on them by epochs."""
    messages = file_messages(path, cfg)
    return messages, offline_config(cfg, messages)
