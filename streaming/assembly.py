"""Assembly of a job's parts from its :class:`~streaming.config.JobConfig`: the solver, the sample
layout, the worker's constructor arguments and the model. A low module: the transports, the offline
generator and the multi-process exporter use it without importing :mod:`streaming.job`."""

from __future__ import annotations

from typing import Any

from flax import nnx

from solvers import Solver, get_solver
from streaming.config import JobConfig
from streaming.external_solver import ExternalSolver
from streaming.samples import SampleSpec
from surrogates import get_model
from surrogates.surrogate import SurrogateMetadata


def sample_spec(cfg: JobConfig, solver: Solver) -> SampleSpec:
    """The job's training sample: ``[sample]`` with the values its kind fixes (window 0 for "field", horizon 1
    for "next_step" and "field") and the targets of every model call a sample spans (:func:`model_calls`)."""
    s = cfg.sample
    window = 0 if s.kind == "field" else s.window
    horizon = s.horizon if s.kind == "bundle" else 1
    return SampleSpec(s.kind, window, horizon, s.condition_on_params, solver.dt * cfg.solver.every, model_calls(cfg))


def worker_args(cfg: JobConfig, spec: SampleSpec) -> dict[str, Any]:
    """Constructor arguments of :class:`SolverWorker` for this job (the same on every backend). Chunks carry
    the ``window`` frames before a sample's first target and its ``targets`` frames (every model call's)."""
    return {"name": cfg.solver.name, "config": dict(cfg.solver.config), "steps": cfg.solver.steps,
            "every": cfg.solver.every, "chunk_frames": cfg.workers.chunk_frames, "window": spec.window,
            "targets": spec.targets}


def model_calls(cfg: JobConfig) -> int:
    """Autoregressive model calls whose targets one training sample holds."""
    return 1 if cfg.sample.kind == "field" else cfg.optim.pushforward + cfg.optim.unroll.end


def build_solver(cfg: JobConfig) -> Solver:
    """The job's solver; for ``solver.name = "external"`` an :class:`ExternalSolver` (a program, no rollout)."""
    if cfg.solver.external is not None:
        return ExternalSolver(cfg.solver.external)
    return get_solver(cfg.solver.name, **cfg.solver.config)


def build_model(cfg: JobConfig, solver: Solver, spec: SampleSpec) -> tuple[nnx.Module, SurrogateMetadata]:
    n_fields = len(solver.channels)
    cin, cout = spec.channels(n_fields)
    cond_names = solver.param_space.names if spec.condition_on_params else ()
    meta = SurrogateMetadata(kind=spec.kind, solver=solver.name, grid=solver.grid, dt=spec.frame_dt,
                             channels=solver.channels, cond_names=cond_names, time_in_cond=spec.time_in_cond,
                             window=max(spec.window, 1), horizon=spec.horizon,  # the metadata counts 1 for "field"
                             frozen_border=0 if spec.kind == "field" else solver.frozen_border,
                             predict=cfg.model.predict)
    hparams = dict(cfg.model.hparams)
    if cfg.model.name == "mlp":
        hparams.setdefault("grid", list(solver.grid))
    model = get_model(cfg.model.name, in_channels=max(cin, 1),  # the MLP reads no fields; 1 keeps the contract
                      out_channels=cout, ndim=len(solver.grid), cond_dim=meta.cond_dim,
                      rngs=nnx.Rngs(cfg.optim.seed), **hparams)
    return model, meta
