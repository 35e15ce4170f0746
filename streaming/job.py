"""A training job: builds solver, model, buffer, source and trainer from a :class:`JobConfig` and runs it.

Run directory (one per ``pdestream train``): ``config.resolved.toml``, ``metrics.jsonl``,
``tensorboard/``, ``checkpoints/`` (Orbax), ``surrogate/`` (best model by validation, loadable with
``Surrogate.load``), ``summary.json``. Nothing else is written; never a dataset.

With N trainer processes (``parallel``, see :mod:`streaming.distributed`) process 0 creates the run
directory and writes all of the above; every process adds ``processes/process-K.json`` and
``process_state/process-K/`` (its part of each checkpoint).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx

from solvers import Solver
from streaming.adaptive import held_out_grid, make_cursor
from streaming.assembly import build_model, build_solver, sample_spec, worker_args
from streaming.buffers import make_buffer
from streaming.checkpoint import Checkpoints
from streaming.config import ConfigError, JobConfig, dump_toml, load_config
from streaming.design import DesignCursor, Task
from streaming.distributed import (
    DistributedError,
    NullMetrics,
    Parallel,
    broadcast_text,
    check_config,
    check_resume,
    params_checksum,
    write_process_report,
)
from streaming.errors import JobFailed
from streaming.metrics import MetricsLog
from streaming.optim import make_optimizer
from streaming.trainer import Trainer, Validation
from streaming.transport import make_source
from streaming.transport.in_process import MemorySource
from streaming.transport.launcher import from_config as launcher_source
from streaming.transport.launcher import launched_validation
from streaming.transport.source import Source
from streaming.worker import SolverWorker
from surrogates.normalizer import Normalizer

VALIDATION_FIRST_ID = 2**30  # validation simulations get ids far from the training ones


def build_validation(cfg: JobConfig, solver: Solver) -> Validation:
    if cfg.solver.external is not None:  # a program of the user's: a trajectory file, or launched held-out runs
        frames, params = launched_validation(cfg, solver, VALIDATION_FIRST_ID)
        return Validation(frames, params, cfg.validation.rollout_steps)
    cursor = DesignCursor(solver, cfg.validation.n_sims, "uniform", cfg.validation.seed, cfg.validation.n_sims,
                          first_id=VALIDATION_FIRST_ID, fixed=cfg.solver.fixed)
    task = cursor.next_task()
    if cfg.validation.design != "uniform":  # a held-out grid or Sobol set that covers the space
        free = sum(p.high > p.low and p.name not in cfg.solver.fixed for p in solver.param_space.params)
        n = max(int(np.floor(cfg.validation.n_sims ** (1 / max(free, 1)) + 1e-9)), 1)
        kind = cfg.validation.design
        params = held_out_grid(solver.param_space, n if kind == "grid" else cfg.validation.n_sims, kind,
                               seed=cfg.validation.seed, fixed=cfg.solver.fixed)
        ids = VALIDATION_FIRST_ID + np.arange(len(params))
        task = Task(ids, params, cursor.ic_seeds_of(ids))
    keys = jax.vmap(jax.random.key)(np.asarray(task.ic_seeds, np.uint32))
    frames = np.asarray(solver.rollout(keys, task.params, cfg.solver.steps, cfg.solver.every), np.float32)
    finite = np.isfinite(frames.reshape(len(frames), -1)).all(axis=1)
    if not finite.any():
        raise ConfigError("every validation simulation produced NaN/Inf; reduce solver dt or the parameter range")
    params = task.params[finite]
    hold = None
    if not solver.frozen_border and cfg.sample.kind != "field":  # a border is in the surrogate's metadata already
        hold = solver.held_cells(params)
    return Validation(frames[finite], params, cfg.validation.rollout_steps, hold)


def held_in_training(cfg: JobConfig, solver: Solver) -> Callable[[np.ndarray], np.ndarray | None] | None:
    """``solver.held_cells`` when the solver holds cells whose place depends on the parameters (obstacles) and the
    samples carry the parameters, so the train step can hold them too; None when nothing of the kind is held (a
    frozen border is in the surrogate's output map already)."""
    if solver.frozen_border or cfg.sample.kind == "field" or not hasattr(solver, "held_cells"):  # external: none
        return None
    space = solver.param_space
    if solver.held_cells(np.stack([space.low, (space.low + space.high) / 2, space.high])) is None:
        return None
    if not cfg.sample.condition_on_params:
        print(f"pdestream train: {solver.name}'s obstacle cells are held at validation and use but not in the train "
              "step, whose samples do not carry the parameters; set sample.condition_on_params = true to hold them "
              "there too", file=sys.stderr, flush=True)
        return None
    return solver.held_cells


def _cursor_state(source: Source, cursor: DesignCursor) -> Callable[[], dict]:
    """What checkpoints save of the design: the dispatcher's state and failure count, read under its lock
    (external solvers choose their own simulations: the cursor stays where it is)."""
    if source.dispatcher is not None:
        return source.dispatcher.checkpoint_state
    return lambda: cursor.state_dict([])


def new_run_dir(cfg: JobConfig) -> Path:
    name = cfg.logging.name or f"{cfg.solver.name}-{cfg.model.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = Path(cfg.logging.run_dir) / name
    if run_dir.exists() and any(run_dir.iterdir()):
        raise ConfigError(f"run directory {run_dir} exists; pick another logging.name or resume it with --resume")
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def shared_run_dir(cfg: JobConfig, parallel: Parallel) -> Path:
    """N processes: process 0 creates the run directory (and writes the config); every process gets its path."""
    run_dir, error = None, None
    if parallel.is_main:
        try:
            run_dir = new_run_dir(cfg)
            (run_dir / "config.resolved.toml").write_text(dump_toml(cfg))
        except BaseException as e:  # tell the others before failing, so they do not wait forever
            error = e
    path = broadcast_text(None if run_dir is None else str(run_dir.absolute()))
    if error is not None:
        raise error
    if path is None:
        raise DistributedError("trainer process 0 could not create the run directory; see its error message")
    return Path(path)


def run_job(cfg: JobConfig | None = None, resume: str | Path | None = None, comm: Any = None,
            messages: list | None = None, offline: str | Path | None = None, worker_cls: type = SolverWorker,
            parallel: Parallel | None = None, layout: Any = None) -> dict:
    """Train online as ``cfg`` says (or continue the run in ``resume``); returns the summary.

    ``messages`` replaces the solver workers by chunks already in memory, ``worker_cls`` the
    :class:`SolverWorker` of local and Ray workers (both for benchmarks);
    ``offline`` trains from a trajectory file instead (see :mod:`streaming.offline`);
    ``parallel`` makes this process one of N data-parallel trainers (:mod:`streaming.distributed`);
    ``comm`` and ``layout`` (:class:`~streaming.transport.mpi_ranks.MPILayout`) place it among MPI ranks.
    """
    if resume is not None:
        run_dir = Path(resume)
        if not (run_dir / "config.resolved.toml").exists():
            raise ConfigError(f"--resume {run_dir}: not a run directory (no config.resolved.toml)")
        cfg = load_config(run_dir / "config.resolved.toml")
        if offline is not None:
            from streaming.offline import file_messages

            messages = file_messages(offline, cfg)  # the saved config already holds the offline buffer
    else:
        if cfg is None:
            raise ConfigError("run_job needs a config, or resume=RUN_DIR")
        hand_started = cfg.workers.backend == "external" and not (cfg.solver.external and cfg.solver.external.command)
        if cfg.solver.design == "adaptive" and (parallel is not None or hand_started):
            raise ConfigError("solver.design='adaptive' needs one trainer process that hands out the simulations; with "
                              f"{'several trainer processes' if parallel is not None else 'clients started by hand'} "
                              "use solver.design='lhs' (or 'sobol', 'uniform'), or give solver.external.command so the "
                              "job launches the solver program itself")
        if offline is not None:
            from streaming.offline import offline_job

            messages, cfg = offline_job(offline, cfg)
        if parallel is not None:
            check_config(cfg, parallel.spec)
            run_dir = shared_run_dir(cfg, parallel)
        else:
            run_dir = new_run_dir(cfg)
            (run_dir / "config.resolved.toml").write_text(dump_toml(cfg))
    if resume is not None:
        check_resume(run_dir, None if parallel is None else parallel.num_processes)
        if parallel is not None:
            check_config(cfg, parallel.spec, offline=offline is not None)
    solver = build_solver(cfg)
    spec = sample_spec(cfg, solver)
    model, meta = build_model(cfg, solver, spec)
    tx, schedule = make_optimizer(cfg.optim)
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    b = cfg.buffer
    buffer = make_buffer(b.kind, capacity=b.capacity, watermark=b.watermark, max_reuse=b.max_reuse, seed=cfg.optim.seed)
    if buffer.holds_every_put and cfg.workers.chunk_frames > b.capacity:
        raise ConfigError(f"workers.chunk_frames={cfg.workers.chunk_frames} exceeds buffer.capacity={b.capacity}")
    normalizer = Normalizer(len(solver.channels), len(solver.grid), meta.cond_dim)
    is_main = parallel is None or parallel.is_main
    validation = build_validation(cfg, solver) if is_main else None  # only process 0 validates
    k, n = (0, 1) if parallel is None else (parallel.process_id, parallel.num_processes)
    # process k: simulations k, k + n, ...; design = "adaptive": the loss-steered AdaptiveCursor
    cursor = make_cursor(solver, cfg.solver, cfg.workers.sims_per_task, offset=k, stride=n)
    checkpoints = Checkpoints(run_dir, cfg.checkpoint.keep, None if parallel is None else k)
    restored = None
    if resume is not None and checkpoints.latest_step() is not None:
        train_target = nnx.to_pure_dict(nnx.split((model, optimizer))[1])
        if parallel is not None:  # restored straight into arrays replicated over every process's devices
            train_target = jax.device_put(train_target, parallel.replicated)
        restored = checkpoints.restore(train_target)
        _, tree, meta_ckpt = restored
        buffer.load_state_dict(tree["buffer"])
        normalizer = Normalizer.from_state_dict(tree["normalizer"])
        cursor.load_state_dict(meta_ckpt["cursor"])
        if offline is not None:
            messages = []  # the checkpointed epoch buffer already holds the whole file
    args = worker_args(cfg, spec)
    metrics = MetricsLog(run_dir, cfg.logging.tensorboard) if is_main else NullMetrics()
    if messages is not None:
        source: Source = MemorySource(cursor, messages)
    elif cfg.solver.external is None:
        source = make_source(cfg, cursor, args, comm=comm, layout=layout, worker_cls=worker_cls)
    else:  # an external program: the launcher, or the listener without a command
        source = launcher_source(cfg, cursor, args)
    if restored is not None and getattr(source, "dispatcher", None) is not None:
        source.dispatcher.load_failures(restored[2]["cursor"])  # workers.max_failures: a budget for the whole job
    if cfg.workers.backend == "external" and messages is None:
        print(f"pdestream train: external solvers connect to {source.address} "
              f"(streaming.client.connect, or PDESTREAM_ADDRESS={source.address})", file=sys.stderr, flush=True)
        if getattr(source, "token_generated", False):  # printed once; clients pass it as PDESTREAM_TOKEN
            print(f"pdestream train: clients need the token PDESTREAM_TOKEN={source.token}", file=sys.stderr,
                  flush=True)
    mode = "sync" if cfg.workers.backend == "local" or offline is not None else "background"  # sync: exact resume
    if getattr(source, "dispatcher", None) is not None:  # pacing waits for losses a sync trainer could not report
        source.dispatcher.paced = mode == "background"
        if mode == "background" and cfg.solver.design == "adaptive" and not cfg.solver.adaptive.ahead:
            print(f"pdestream train: solver.design='adaptive' on the {cfg.workers.backend} backend hands simulations "
                  "out as workers come free, before the losses can steer them; set solver.adaptive.ahead (e.g. "
                  f"{cfg.workers.count * cfg.workers.sims_per_task}) to pace them", file=sys.stderr, flush=True)
    trainer = Trainer(cfg=cfg, spec=spec, model=model, optimizer=optimizer, schedule=schedule, buffer=buffer,
                      normalizer=normalizer, metadata=meta, validation=validation, run_dir=run_dir, metrics=metrics,
                      checkpoints=checkpoints, mode=mode,
                      cursor_state=_cursor_state(source, cursor), parallel=parallel,
                      design=getattr(source, "dispatcher", None), held_cells=held_in_training(cfg, solver))
    if restored is not None:
        trainer.restore(restored[0], restored[2])
    interrupted = None
    try:
        summary = trainer.run(source)
    except KeyboardInterrupt as e:
        summary = e.args[0] if e.args and isinstance(e.args[0], dict) else trainer.summary(0.0, True)
        interrupted = e
    except JobFailed as e:
        if getattr(e, "checkpoint", False):  # workers lost, not the trainer (e.g. every MPI worker rank died)
            buffer.reopen_reception()  # ended by the error, not by the stream: the resumed run takes in more
            if checkpoints.latest_step() != trainer.step:
                trainer.save_checkpoint()  # --resume continues from here
        raise
    finally:
        source.close()
        trainer.join_threads()
        metrics.close()
        checkpoints.close()
    summary["run_dir"] = str(run_dir)
    if hasattr(source, "report"):  # where the workers ran and what they survived (Ray)
        summary["workers"] = source.report()
    if messages is None and getattr(source, "dispatcher", None) is not None:  # every backend, resumes included
        summary.setdefault("workers", {"backend": cfg.workers.backend}).setdefault(
            "worker_failures", source.dispatcher.failures)
    if hasattr(source, "external_report"):  # external clients: connections refused or closed, sims dropped, by reason
        summary["external"] = source.external_report()
    if parallel is not None:
        write_process_report(run_dir, k, {
            "process_id": k, "num_processes": n, "steps": trainer.step,
            "params_sha256": params_checksum(trainer.train_step.model_state),
            "sims_done_ids": sorted(cursor.done), "counters": trainer.counters.__dict__,
            "interrupted": interrupted is not None})
    if is_main:
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=float) + "\n")
    if interrupted is not None:
        raise KeyboardInterrupt(summary)
    return summary
