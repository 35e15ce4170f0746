"""The surrogate as a fast solver, at equal accuracy: a trained surrogate against a ladder of solver settings.

    python -m benchmarks.studies.speedup [--only ns2d heat2d cavity dam] [--surrogate PROBLEM=RUN_OR_SURROGATE]
        [--batch 8] [--repeats 3] [--json FILE] [--png FILE] [--quick] [--run-dir DIR]
    python -m benchmarks.studies.speedup --replot FILE.json --png FILE.png   # the figure again, no solving

Why: a surrogate timed against the solver at the fine time step it was trained on (the old
``ns2d_surrogate_speedup``, kept here as ``<problem>_fixed_dt_speedup``) is a weak baseline; McGreivy & Hakim
(Nature Machine Intelligence 2024) ask for the comparison at equal accuracy or equal cost against an efficient
numerical method. So, per problem:

- a **reference**: the solver at a fine setting (finer grid and/or time step than the training data), the
  "truth" every other rollout is scored against (``<problem>_reference``);
- a **ladder** of solver settings (the training setting, larger time steps up to and past the stability limit,
  coarser grids resampled onto the evaluation grid: spectral for the periodic ns2d, linear between nodes for
  heat2d's walled grid, the CFD solvers' own bilinear resample for cavity and dam), each with its rollout error
  and wall time; a rung whose frames are not all finite is recorded as unstable;
- the **surrogate**'s error and wall time, and the identity baseline (the last input frame copied).

Protocol. ``B`` simulations (fixed seeds, none a training simulation). The training setting of the solver
gives the surrogate's first input window (``W`` frames ``metadata.dt`` apart); from its last frame everything
advances ``n_frames`` frames: the surrogate by :meth:`~surrogates.surrogate.Surrogate.rollout`, each rung by
``metadata.dt / dt`` steps per frame (a rung's ``dt`` must divide the frame spacing). ns2d rungs start from that
frame resampled spectrally onto their grid; heat2d and the CFD problems start from their initial state (the
frame at ``t = 0``, set by the parameters alone), so their surrogates must read one frame. All are jitted,
batched over ``B``, on the same device, compiled before timing, synchronised with ``block_until_ready``, and the
resampling onto the evaluation grid is inside the timed function; the best of ``--repeats`` runs is kept (a rung
whose runs add up past ``REPEAT_BUDGET_S`` stops repeating). The error is the per-simulation relative L2 over
all frames and channels (:func:`benchmarks.ladder.rollout_rel_l2`); in the dam, cells inside the obstacle are
left out. The reference is timed once and never picked as a rung (its error is 0 by construction).

Keys per problem: ``<p>_equal_accuracy_speedup`` (cheapest rung with error <= the surrogate's, its seconds over
the surrogate's; null if no rung is that accurate, then ``<p>_finest_rung`` holds the most accurate rung),
``<p>_equal_cost_error_ratio`` (error of the most accurate rung costing <= the surrogate, over the surrogate's
error; null if none is that cheap), ``<p>_surrogate_rollout_rel_l2``, ``<p>_identity_rollout_rel_l2``,
``<p>_surrogate_s``, ``<p>_ladder`` (label, setting, seconds, error, stable, runs), ``<p>_reference``,
``<p>_training_setting``, ``<p>_fixed_dt_speedup`` (the training setting's seconds over the surrogate's),
``<p>_batch``, ``<p>_frames``, ``<p>_frame_dt``, ``<p>_surrogate`` (how it was trained), with ``device``,
``cpus`` and the 1-minute load average at the start and end.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.evaluate import cond_from_params, load_surrogate
from benchmarks.ladder import (
    Rung,
    equal_accuracy,
    equal_cost,
    node_resample,
    plot_pareto,
    rollout_rel_l2,
    spectral_resample,
)
from solvers import Solver, get_solver
from solvers.cfd.resample import resize as cell_resample
from surrogates.surrogate import Surrogate

ROOT = Path(__file__).resolve().parents[2]
BENCH_SEED = 20261123  # initial-condition keys and parameters of the timed simulations (not a training seed)
DT_RTOL = 1e-6
REPEAT_BUDGET_S = 20.0  # a timing stops repeating once its runs add up to this (the slow rungs run once)
LIVE = "live solvers streamed through the engine (local backend); no dataset written"


class SpeedupError(ValueError):
    """A surrogate, solver setting or option that cannot be compared; the message says the fix."""


# ---------------------------------------------------------------------------------------------------------------------
# Problems
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    """A problem's reference and ladder (solver config overrides over the training setting), the frames rolled
    out, how rungs are resampled (``spectral``, ``nodes`` or ``cells``) and its in-process training job."""

    name: str
    reference: Mapping[str, Any]
    ladder: tuple[Mapping[str, Any], ...]
    frames: int
    resample: str
    job: Callable[[str, bool], tuple[Any, dict]] = field(repr=False)


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out.get(k, {}), v) if isinstance(v, dict) else v
    return out


def _engine(run_dir: str, name: str, steps: int) -> dict[str, Any]:
    """Overrides every in-process job takes: local workers, the step budget, one validation at the end."""
    return {"workers": {"backend": "local", "device": "cpu", "count": 1},
            "optim": {"steps": steps},
            "validation": {"interval": max(steps // 2, 1), "select": "rollout"},
            "checkpoint": {"interval": 10 * steps},
            "logging": {"run_dir": run_dir, "name": name, "tensorboard": False, "progress": False}}


def _job(name: str, config: str | None, base: dict, small: dict, run_dir: str, steps: int) -> tuple[Any, dict]:
    import tomllib

    from streaming.config import JobConfig

    data = tomllib.loads((ROOT / config).read_text()) if config else {}
    overrides = _merge(small, {"optim": {"steps": steps}})
    cfg = JobConfig.model_validate(_merge(_merge(_merge(data, base), overrides), _engine(run_dir, name, steps)))
    return cfg, {"config": config or "built in benchmarks/studies/speedup.py", "base": base,
                 "overrides": overrides, "steps": steps, "training_data": LIVE}


def ns2d_job(run_dir: str, quick: bool = False) -> tuple[Any, dict]:
    """``configs/ns2d_fno.toml`` (FNO, 10 frames one time unit apart, nu = 1e-3) with a small CPU budget."""
    if quick:
        small = {"solver": {"config": {"n": 16, "dt": 1e-2}, "steps": 1000, "every": 100, "n_sims": 2},
                 "sample": {"window": 2}, "model": {"hparams": {"modes": 4, "width": 8, "depth": 2}},
                 "workers": {"sims_per_task": 2, "chunk_frames": 11}, "optim": {"batch_size": 4},
                 "buffer": {"capacity": 64, "watermark": 4}, "validation": {"n_sims": 1, "rollout_steps": 2}}
        return _job("ns2d", "configs/ns2d_fno.toml", {}, small, run_dir, 4)
    small = {"solver": {"config": {"n": 64, "dt": 1e-3}, "steps": 20_000, "every": 1000, "n_sims": 8},
             # 21 frames a simulation -> 11 ten-frame windows; the next state, one model call per sample
             "model": {"predict": "state"},
             "workers": {"sims_per_task": 4, "chunk_frames": 21},
             "optim": {"batch_size": 8, "lr": 2e-3, "unroll": {"start": 1, "end": 1, "ramp_steps": 0}},
             "buffer": {"capacity": 1024, "watermark": 16},
             "validation": {"n_sims": 2, "rollout_steps": 5}}
    return _job("ns2d", "configs/ns2d_fno.toml", {}, small, run_dir, 400)


def heat2d_job(run_dir: str, quick: bool = False) -> tuple[Any, dict]:
    """The quickstart as shipped (``configs/quickstart.toml``: FNO, 32 x 32, one frame = one step of dt 2e-3,
    increments, its step budget and unroll curriculum) on one local worker."""
    if quick:
        small = {"solver": {"config": {"n": 6, "dt": 2e-3}, "steps": 6, "n_sims": 4},
                 "model": {"hparams": {"modes": 3, "width": 8, "depth": 2}, "predict": "increment"},
                 "workers": {"sims_per_task": 4, "chunk_frames": 6}, "optim": {"batch_size": 4},
                 "buffer": {"capacity": 64, "watermark": 8, "ingest_ratio": None},
                 "validation": {"n_sims": 1, "rollout_steps": 2}}
        return _job("heat2d", "configs/quickstart.toml", {}, small, run_dir, 4)
    import tomllib

    steps = tomllib.loads((ROOT / "configs/quickstart.toml").read_text())["optim"]["steps"]
    return _job("heat2d", "configs/quickstart.toml", {}, {}, run_dir, steps)


def cavity_job(run_dir: str, quick: bool = False) -> tuple[Any, dict]:
    """``configs/cfd_cavity.toml`` (FNO, 64 x 64, frames 0.05 s apart over 2 s, increments) with a 300-step CPU
    budget on 12 simulations."""
    if quick:
        small = {"solver": {"config": {"nx": 8, "ny": 8, "dt": 5e-3}, "steps": 40, "every": 10, "n_sims": 2},
                 "model": {"hparams": {"modes": 3, "width": 8, "depth": 2, "padding": 2}},
                 "optim": {"batch_size": 4}, "buffer": {"watermark": 4},
                 "validation": {"n_sims": 1, "rollout_steps": 2}}
        return _job("cavity", "configs/cfd_cavity.toml", {}, small, run_dir, 4)
    small = {"solver": {"n_sims": 12}, "optim": {"batch_size": 8},
             "buffer": {"capacity": 1024, "watermark": 32},
             "workers": {"sims_per_task": 4, "chunk_frames": 21},
             "validation": {"n_sims": 2, "rollout_steps": 10}}
    return _job("cavity", "configs/cfd_cavity.toml", {}, small, run_dir, 300)


def dam_job(run_dir: str, quick: bool = False) -> tuple[Any, dict]:
    """``configs/cfd_dam.toml`` (U-Net, 64 x 64, frames 0.05 s apart) with 1 s simulations, predicting increments."""
    if quick:
        small = {"solver": {"config": {"nx": 16, "ny": 8, "dt": 5e-3}, "steps": 40, "every": 10, "n_sims": 2},
                 "model": {"hparams": {"width": 4, "depth": 2, "groups": 2}}, "optim": {"batch_size": 4},
                 "buffer": {"capacity": 64, "watermark": 4}, "validation": {"n_sims": 1, "rollout_steps": 2}}
        return _job("dam", "configs/cfd_dam.toml", {}, small, run_dir, 4)
    small = {"solver": {"steps": 500, "n_sims": 12},
             "model": {"predict": "increment"},
             "optim": {"batch_size": 8, "unroll": {"start": 1, "end": 2, "ramp_steps": 150}},
             "buffer": {"capacity": 1024, "watermark": 32},
             "workers": {"sims_per_task": 4, "chunk_frames": 21},
             "validation": {"n_sims": 2, "rollout_steps": 10}}
    return _job("dam", "configs/cfd_dam.toml", {}, small, run_dir, 300)


def problems(quick: bool = False) -> dict[str, Problem]:
    """The four problems. Ladder entries override the training setting's solver config; their time steps divide
    the frame spacing. Stability limits: ns2d's ETDRK4 is RK4 for the advection (``|dt u k_max| < 2.8``,
    :mod:`solvers.ns2d`); heat2d's schemes are unconditionally stable; the CFD solvers' RK3 advection needs
    ``dt U (1/dx + 1/dy) <= sqrt(3)`` (:mod:`solvers.cfd.cfl`), and the rungs past it are there on purpose."""
    if quick:
        return {
            "ns2d": Problem("ns2d", {"n": 32, "dt": 5e-3}, ({"dt": 1e-2}, {"dt": 5e-2}), 2, "spectral", ns2d_job),
            "heat2d": Problem("heat2d", {"n": 13, "scheme": "exponential"},
                              ({"dt": 2e-3}, {"n": 2, "scheme": "exponential"}), 3, "nodes", heat2d_job),
            "cavity": Problem("cavity", {"nx": 16, "ny": 16, "dt": 2.5e-3}, ({"dt": 5e-3}, {"dt": 1e-2}), 2, "cells",
                              cavity_job),
            "dam": Problem("dam", {"nx": 32, "ny": 8, "dt": 2.5e-3}, ({"dt": 5e-3}, {"dt": 1e-2}), 2, "cells",
                           dam_job),
        }
    return {
        # training setting n = 64, dt = 1e-3; reference twice as many points per axis (ETDRK4's time error at
        # dt = 5e-3 is far below the spatial one; |dt u k_max| stays under RK4's 2.8)
        "ns2d": Problem("ns2d", {"n": 128, "dt": 5e-3},
                        ({"dt": 1e-3}, {"dt": 5e-3}, {"dt": 2e-2}, {"dt": 5e-2},
                         {"n": 32, "dt": 1e-2}, {"n": 32, "dt": 5e-2}, {"n": 32, "dt": 1e-1},
                         {"n": 16, "dt": 5e-2}, {"n": 16, "dt": 1e-1}, {"n": 16, "dt": 2e-1}),
                        10, "spectral", ns2d_job),
        # training setting n = 30 (32 x 32 nodes), implicit Euler, dt = 2e-3 = the frame spacing;
        # reference: 63 x 63 nodes (every other one on the evaluation grid), exact in time
        "heat2d": Problem("heat2d", {"n": 61, "scheme": "exponential"},
                          ({"dt": 2e-3}, {"dt": 1e-3}, {"dt": 5e-4}, {"scheme": "exponential"},
                           {"n": 14, "dt": 2e-3}, {"n": 14, "scheme": "exponential"},
                           {"n": 6, "scheme": "exponential"}, {"n": 6, "dt": 2e-3}),
                          40, "nodes", heat2d_job),
        # training setting 64 x 64, dt = 2e-3, frames 0.05 s apart (configs/cfd_cavity.toml): the whole 2 s
        "cavity": Problem("cavity", {"nx": 128, "ny": 128, "dt": 1e-3},
                          ({"dt": 2e-3}, {"dt": 2.5e-3}, {"dt": 5e-3},
                           {"nx": 32, "ny": 32, "dt": 5e-3}, {"nx": 32, "ny": 32, "dt": 1e-2},
                           {"nx": 16, "ny": 16, "dt": 1e-2}, {"nx": 16, "ny": 16, "dt": 2.5e-2}),
                          40, "cells", cavity_job),
        # training setting 64 x 64, dt = 2e-3, frames 0.05 s apart
        "dam": Problem("dam", {"nx": 128, "ny": 64, "dt": 1e-3},
                       ({"dt": 2e-3}, {"dt": 2.5e-3}, {"dt": 5e-3},
                        {"nx": 32, "ny": 32, "dt": 5e-3}, {"nx": 32, "ny": 32, "dt": 1e-2},
                        {"nx": 16, "ny": 16, "dt": 1e-2}, {"nx": 16, "ny": 16, "dt": 2.5e-2}),
                       20, "cells", dam_job),
    }


# ---------------------------------------------------------------------------------------------------------------------
# Measuring
# ---------------------------------------------------------------------------------------------------------------------


def label(setting: Mapping[str, Any]) -> str:
    """A short label of a solver setting, e.g. ``"n=32, dt=0.01"``."""
    return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in setting.items())


def steps_per_frame(frame_dt: float, solver: Solver) -> int:
    """Solver steps per frame, ``frame_dt / solver.dt``, which must be a whole number >= 1."""
    ratio = frame_dt / solver.dt
    every = round(ratio)
    if every < 1 or not math.isclose(ratio, every, rel_tol=DT_RTOL):
        raise SpeedupError(f"frames are {frame_dt:g} apart, {ratio:g} steps of dt={solver.dt:g}; "
                           f"use a dt that divides {frame_dt:g}")
    return every


def advance_fn(solver: Solver, every: int, n_frames: int, observe: Callable[[jax.Array], jax.Array]) -> Callable:
    """``(states, params) -> frames``: ``(B, n_frames, C, *grid')``, the fields every ``every`` steps (the start
    excluded) mapped by ``observe`` onto the evaluation grid."""

    def single(state: Any, params: jax.Array) -> jax.Array:
        def frame(s: Any, _: None) -> tuple[Any, jax.Array]:
            s = jax.lax.fori_loop(0, every, lambda i, x: solver.step(x, params), s)
            return s, solver.fields(s)

        return jax.lax.scan(frame, state, None, length=n_frames)[1]

    return lambda states, params: observe(jax.vmap(single)(states, params))


def best_of(fn: Callable[[], Any], repeats: int, budget_s: float = REPEAT_BUDGET_S) -> tuple[float, Any, int]:
    """Best wall time (s) of up to ``repeats`` synchronised calls of ``fn`` (compiled), stopping once they add up
    to ``budget_s``; the first output and the number of calls."""
    times: list[float] = []
    out = None
    while len(times) < repeats and (not times or sum(times) < budget_s):
        t = time.perf_counter()
        result = jax.block_until_ready(fn())
        times.append(time.perf_counter() - t)
        out = result if out is None else out
    return min(times), out, len(times)


def resampler(kind: str, grid: tuple[int, ...]) -> Callable[[jax.Array], jax.Array]:
    """``(..., *grid_rung) -> (..., *grid)``: ``spectral`` (periodic), ``nodes`` (walls on the grid) or ``cells``."""
    if kind == "spectral":
        return lambda f: spectral_resample(f, tuple(grid))
    if kind == "nodes":
        return lambda f: node_resample(f, tuple(grid))
    if kind == "cells":
        return lambda f: f if f.shape[-2:] == tuple(grid) else cell_resample(f, tuple(grid))
    raise SpeedupError(f"unknown resampling {kind!r}; use spectral, nodes or cells")


def start_states(solver: Solver, frame: jax.Array, params: jax.Array, keys: jax.Array, window: int) -> Any:
    """Solver states ``(B, ...)`` at the surrogate's last input frame ``frame`` ``(B, C, *grid)``.

    ns2d: the vorticity resampled spectrally onto the solver's grid. Others: the initial state (the frame at
    ``t = 0`` is set by the parameters alone), which needs a one-frame window.
    """
    if solver.name == "ns2d":
        n = solver.config.n
        if solver.grid != (n, n):
            raise SpeedupError("ns2d rungs must output on their solve grid (out=0); drop 'out' from the setting")
        w = spectral_resample(frame[:, 0], (n, n))
        return jax.vmap(solver.state_from_vorticity)(w, params)
    if window != 1:
        raise SpeedupError(f"a {solver.name} surrogate reading {window} frames cannot be compared here: the rungs "
                           "start from the initial state, so use a surrogate with sample.window = 1")
    return jax.vmap(solver.initial_state)(keys, params)


def fluid_weights(solver: Solver, params: np.ndarray) -> np.ndarray | None:
    """``(B, 1, 1, *grid)`` 1 in the fluid, 0 in obstacles, for problems with an obstacle mask; else None."""
    if solver.name not in ("dam", "cylinder"):
        return None
    masks = np.stack([solver.mask(row) for row in np.asarray(params)])
    return masks[:, None, None].astype(np.float64)


def measure_ladder(sur: Surrogate, base: Mapping[str, Any], problem: Problem, params: np.ndarray, keys: jax.Array,
                   n_frames: int, repeats: int = 3) -> dict[str, Any]:
    """Time and score the surrogate, the reference and every rung of ``problem`` on the same frames.

    Args:
        sur: a ``next_step`` or ``bundle`` surrogate of ``problem.name`` on the training setting's grid.
        base: the training setting's solver config; rungs and the reference override it.
        params: ``(B, P)`` parameters; keys: ``(B,)`` initial-condition keys.
        n_frames: frames rolled out from the last input frame (``n_frames * metadata.dt`` in time).
        repeats: timed runs of each side (best kept).

    Returns:
        ``reference`` (setting, label, seconds), ``rungs`` (:class:`Rung` list), ``surrogate_s``,
        ``surrogate_error``, ``identity_error``, ``frame_dt``, ``grid``.
    """
    m = sur.metadata
    if m.kind not in ("next_step", "bundle"):
        raise SpeedupError(f"the surrogate is of kind {m.kind!r}; compare an autoregressive (next_step or bundle) "
                           "surrogate with the solver")
    if n_frames < 1 or repeats < 1:
        raise SpeedupError(f"n_frames={n_frames} and repeats={repeats} must both be >= 1")
    train = get_solver(problem.name, **dict(base))
    if tuple(m.channels) != tuple(train.channels) or tuple(m.grid) != tuple(train.grid):
        raise SpeedupError(f"the surrogate predicts {list(m.channels)} on {tuple(m.grid)} but the {problem.name} "
                           f"training setting gives {list(train.channels)} on {train.grid}; pass the run directory "
                           "(its config.resolved.toml holds the solver config)")
    params = train.param_space.validate(params)
    if params.ndim != 2 or len(keys) != len(params):
        raise SpeedupError(f"give (B, P) parameters and B keys; got parameters {params.shape} and {len(keys)} keys")
    grid = tuple(m.grid)
    observe = resampler(problem.resample, grid)
    w = m.window

    # The surrogate's first window: the training setting's frames 0 .. W-1.
    p_train = jnp.asarray(params, train.dtype)
    every_train = steps_per_frame(m.dt, train)
    s0 = jax.vmap(train.initial_state)(keys, p_train)
    first = jax.vmap(train.fields)(s0)[:, None]
    if w > 1:
        head = jax.jit(advance_fn(train, every_train, w - 1, lambda f: f))(s0, p_train)
        window0 = jnp.concatenate([first, head], axis=1)
    else:
        window0 = first
    window0 = jax.block_until_ready(window0)
    weights = fluid_weights(train, params)

    def score(frames: np.ndarray, truth: np.ndarray) -> float | None:
        f = np.asarray(frames, np.float64)
        t = np.asarray(truth, np.float64)
        if weights is not None:
            f, t = f * weights, t * weights
        return rollout_rel_l2(f, t, len(grid))

    def solve(setting: Mapping[str, Any]) -> tuple[float, np.ndarray, int]:
        solver = get_solver(problem.name, **{**dict(base), **dict(setting)})
        every = steps_per_frame(m.dt, solver)
        p = jnp.asarray(params, solver.dtype)
        states = jax.block_until_ready(start_states(solver, window0[:, -1], p, keys, w))
        fn = jax.jit(advance_fn(solver, every, n_frames, observe)).lower(states, p).compile()
        seconds, frames, runs = best_of(lambda: fn(states, p), repeats if setting is not problem.reference else 1)
        return seconds, np.asarray(frames), runs

    t_ref, truth, _ = solve(problem.reference)
    if not np.all(np.isfinite(truth)):
        raise SpeedupError(f"the {problem.name} reference {label(problem.reference)} blew up; pick a finer setting")
    rungs = []
    for setting in problem.ladder:
        seconds, frames, runs = solve(setting)
        err = score(frames, truth)
        same = get_solver(problem.name, **{**dict(base), **dict(setting)}).config == train.config
        rungs.append(Rung(label(setting), dict(setting), seconds, err, err is not None,
                          {"runs": runs, "training_setting": same}))
        print(f"  {problem.name} rung {label(setting)}: {seconds:.4f} s, error "
              f"{'unstable' if err is None else f'{err:.3g}'}", flush=True)

    # The surrogate: n_frames autoregressive steps from the same window (compiled by the warm-up call).
    cond = cond_from_params(sur, params, train.param_space.names, f"the {problem.name} solver")
    cond = None if cond is None else jnp.asarray(cond)
    t0 = jnp.full((len(params),), (w - 1) * m.dt, jnp.float32)
    win = window0[:, 0] if w == 1 else window0
    roll = lambda: sur.rollout(win, n_frames, cond=cond, t0=t0)  # noqa: E731
    jax.block_until_ready(roll())
    t_sur, pred, _ = best_of(roll, repeats)
    sur_err = score(np.asarray(pred)[:, 1:], truth)
    last = np.repeat(np.asarray(window0)[:, -1:], n_frames, axis=1)
    return {"reference": {"setting": dict(problem.reference), "label": label(problem.reference), "seconds": t_ref,
                          "runs": 1},
            "rungs": rungs, "surrogate_s": t_sur, "surrogate_error": sur_err, "identity_error": score(last, truth),
            "frame_dt": m.dt, "grid": list(grid)}


def summarise(name: str, r: Mapping[str, Any], base: Mapping[str, Any], batch: int, n_frames: int) -> dict[str, Any]:
    """The flat ``<name>_*`` keys of one problem from :func:`measure_ladder`'s result."""
    rungs: list[Rung] = r["rungs"]
    sur_err, sur_s = r["surrogate_error"], r["surrogate_s"]
    ident = r["identity_error"]
    out: dict[str, Any] = {f"{name}_surrogate_rollout_rel_l2": sur_err, f"{name}_identity_rollout_rel_l2": ident,
                           f"{name}_surrogate_beats_identity": sur_err is not None and ident is not None
                           and sur_err < ident, f"{name}_surrogate_s": sur_s}
    if sur_err is None:  # the surrogate blew up: no comparison at its accuracy
        out.update({f"{name}_equal_accuracy_speedup": None, f"{name}_equal_accuracy_rung": None,
                    f"{name}_equal_cost_error_ratio": None, f"{name}_equal_cost_rung": None})
    else:
        acc = equal_accuracy(rungs, sur_err, sur_s)
        cost = equal_cost(rungs, sur_err, sur_s)
        out.update({f"{name}_equal_accuracy_speedup": acc["speedup"], f"{name}_equal_accuracy_rung": acc["rung"],
                    f"{name}_equal_cost_error_ratio": cost["error_ratio"], f"{name}_equal_cost_rung": cost["rung"]})
        if acc["speedup"] is None:
            out[f"{name}_finest_rung"] = acc["finest"]
    train_rung = next((g for g in rungs if g.extra.get("training_setting")), None)
    out[f"{name}_fixed_dt_speedup"] = train_rung.seconds / sur_s if train_rung is not None else None
    out.update({f"{name}_ladder": [g.as_dict() for g in rungs], f"{name}_reference": r["reference"],
                f"{name}_training_setting": dict(base), f"{name}_batch": batch, f"{name}_frames": n_frames,
                f"{name}_frame_dt": r["frame_dt"], f"{name}_simulated_time": n_frames * r["frame_dt"],
                f"{name}_eval_grid": r["grid"]})
    return out


# ---------------------------------------------------------------------------------------------------------------------
# Surrogates: a checkpoint, or a small one trained in-process through the engine
# ---------------------------------------------------------------------------------------------------------------------


def train_here(problem: Problem, run_dir: str, quick: bool) -> tuple[Surrogate, dict, dict, dict]:
    """Train ``problem``'s job with :func:`streaming.job.run_job`; the best surrogate, the solver config, the fixed
    parameters and the description (config, overrides, steps, training data, wall time)."""
    from streaming.job import run_job

    cfg, desc = problem.job(run_dir, quick)
    t = time.perf_counter()
    summary = run_job(cfg)
    desc = {**desc, "train_wall_s": time.perf_counter() - t, "model": dict(cfg.model.model_dump())}
    return load_surrogate(summary["run_dir"]), dict(cfg.solver.config), dict(cfg.solver.fixed), desc


def from_checkpoint(path: str) -> tuple[Surrogate, dict, dict, dict]:
    """A surrogate from a run or surrogate directory; the run's solver config and fixed parameters (solver
    defaults and none for a bare surrogate) and a description."""
    from streaming.config import load_config

    sur = load_surrogate(path)
    toml = Path(path) / "config.resolved.toml"
    cfg = load_config(toml) if toml.is_file() else None
    base = dict(cfg.solver.config) if cfg is not None else {}
    fixed = dict(cfg.solver.fixed) if cfg is not None else {}
    desc: dict[str, Any] = {"checkpoint": Path(path).name, "model": dict(sur.model_config),
                            "training_data": "as recorded in the run directory"}
    if cfg is not None:  # how the run was trained, from its resolved config and summary
        desc["run"] = {"solver_seed": cfg.solver.seed, "backend": cfg.workers.backend, "workers": cfg.workers.count,
                       "steps": cfg.optim.steps, "unroll": cfg.optim.unroll.model_dump(),
                       "predict": cfg.model.predict}
        summary = Path(path) / "summary.json"
        if summary.is_file():
            s = json.loads(summary.read_text())
            desc["run"].update({k: s.get(k) for k in ("seconds", "best_step", "best_val_one_step_rel_l2",
                                                      "val_rollout_full")})
    return sur, base, fixed, desc


def bench_params(solver: Solver, batch: int, fixed: Mapping[str, float]) -> tuple[np.ndarray, jax.Array]:
    """``(B, P)`` parameters from the bench seed (``fixed`` ones held) and ``(B,)`` initial-condition keys."""
    key_p, key_ic = jax.random.split(jax.random.key(BENCH_SEED))
    params = np.array(solver.sample_params(key_p, batch), np.float64)
    names = solver.param_space.names
    for k, v in fixed.items():
        params[:, names.index(k)] = v
    return params, jax.random.split(key_ic, batch)


def parse_surrogates(items: list[str] | None, known: list[str]) -> dict[str, str]:
    """``["PROBLEM=DIR", ...]`` -> ``{problem: dir}``."""
    out = {}
    for item in items or []:
        name, sep, path = item.partition("=")
        if not sep or not path or name not in known:
            raise SpeedupError(f"--surrogate {item!r}: write PROBLEM=RUN_OR_SURROGATE_DIR with PROBLEM one of "
                               f"{', '.join(known)}")
        out[name] = path
    return out


# ---------------------------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------------------------


def _fmt(x: float | None, spec: str) -> str:
    return "null" if x is None else format(x, spec)


def format_table(results: Mapping[str, Any], name: str) -> str:
    """A markdown table of one problem's ladder, reference and surrogate, and its verdict in words."""
    lines = [f"### {name}: {results[f'{name}_frames']} frames of {results[f'{name}_frame_dt']:g}, batch "
             f"{results[f'{name}_batch']}, reference {results[f'{name}_reference']['label']} "
             f"({results[f'{name}_reference']['seconds']:.3f} s)",
             "| method | seconds | rollout rel L2 | stable |", "|---|---|---|---|"]
    for g in results[f"{name}_ladder"]:
        lines.append(f"| solver {g['label']} | {g['seconds']:.4f} | {_fmt(g['error'], '.3g')} | "
                     f"{'yes' if g['stable'] else 'no'} |")
    lines.append(f"| **surrogate** | {results[f'{name}_surrogate_s']:.4f} | "
                 f"{_fmt(results[f'{name}_surrogate_rollout_rel_l2'], '.3g')} | |")
    lines.append(f"| identity | | {_fmt(results[f'{name}_identity_rollout_rel_l2'], '.3g')} | |")
    lines.append("")
    lines.append(verdict(results, name))
    return "\n".join(lines)


def verdict(results: Mapping[str, Any], name: str) -> str:
    """The equal-accuracy and equal-cost figures of one problem in words."""
    s = results[f"{name}_equal_accuracy_speedup"]
    if results[f"{name}_surrogate_rollout_rel_l2"] is None:
        return f"{name}: the surrogate's rollout blew up; no comparison."
    if s is None:
        f = results.get(f"{name}_finest_rung")
        acc = (f"no rung reaches the surrogate's error (equal-accuracy speed-up null); the finest rung, "
               f"{f['label']}, has error {f['error']:.3g} in {f['seconds']:.4f} s" if f else
               "no rung is stable (equal-accuracy speed-up null)")
    elif s >= 1:
        acc = (f"equal-accuracy speed-up {s:.2f}x: the surrogate is faster than the cheapest rung as accurate "
               f"({results[f'{name}_equal_accuracy_rung']})")
    else:
        acc = (f"equal-accuracy speed-up {s:.3f} (below 1): the solver wins, the rung "
               f"{results[f'{name}_equal_accuracy_rung']} is as accurate in {1 / s:.1f}x less time")
    c = results[f"{name}_equal_cost_error_ratio"]
    if c is None:
        cost = "no rung is as cheap as the surrogate (equal-cost error ratio null)"
    else:
        cost = (f"equal-cost error ratio {c:.3g} (rung {results[f'{name}_equal_cost_rung']}): at the surrogate's "
                f"cost the solver is {'more' if c < 1 else 'less'} accurate")
    note = "" if results[f"{name}_surrogate_beats_identity"] else (
        " The surrogate is no better than copying the last frame, so its speed-up means little.")
    return f"{name}: {acc}; {cost}.{note}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", choices=list(problems()), help="problems to run (default: all)")
    parser.add_argument("--surrogate", action="append", metavar="PROBLEM=DIR",
                        help="a run or surrogate directory to use for PROBLEM instead of training one here")
    parser.add_argument("--batch", type=int, default=8, help="simulations rolled out together")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per side (best kept)")
    parser.add_argument("--frames", type=int, help="frames rolled out (default: per problem)")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--png", help="write the Pareto figure (error against wall time) here")
    parser.add_argument("--quick", action="store_true", help="tiny grids, ladders and training (for tests)")
    parser.add_argument("--run-dir", help="keep the in-process training runs here (default: a temporary "
                        "directory); pass RUN_DIR/NAME to --surrogate later to time again without training")
    parser.add_argument("--replot", metavar="JSON", help="only draw --png from a JSON this script wrote (no solving)")
    args = parser.parse_args(argv)
    try:
        if args.replot:
            if not args.png:
                raise SpeedupError("--replot draws a figure: give --png FILE too")
            plot_pareto(panels_from_json(json.loads(Path(args.replot).read_text())), args.png)
        else:
            run(args)
    except SpeedupError as e:
        parser.exit(2, f"speedup: {e}\n")


def panel(results: Mapping[str, Any], name: str) -> dict[str, Any]:
    """One problem's panel of the Pareto figure from the flat results."""
    err = results[f"{name}_surrogate_rollout_rel_l2"]
    return {"name": name, "rungs": results[f"{name}_ladder"], "reference": results[f"{name}_reference"]["label"],
            "surrogate": {"seconds": results[f"{name}_surrogate_s"], "error": math.nan if err is None else err},
            "identity": results[f"{name}_identity_rollout_rel_l2"]}


def panels_from_json(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The panels of every problem in a results dict written by :func:`run`."""
    names = [k.removesuffix("_ladder") for k in results if k.endswith("_ladder")]
    if not names:
        raise SpeedupError("the JSON holds no <problem>_ladder; pass a file written by this script's --json")
    return [panel(results, n) for n in names]


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the benchmark for parsed arguments; returns the results (also written/printed as asked)."""
    table = problems(args.quick)
    names = args.only or list(table)
    given = parse_surrogates(args.surrogate, list(table))
    if args.batch < 1 or args.repeats < 1 or (args.frames is not None and args.frames < 1):
        raise SpeedupError(f"--batch {args.batch}, --repeats {args.repeats} and --frames {args.frames} must be >= 1")
    results: dict[str, Any] = {"device": str(jax.devices()[0]), "cpus": os.cpu_count() or 0,
                               "load_average_1min_start": os.getloadavg()[0], "quick": bool(args.quick)}
    panels = []
    with tempfile.TemporaryDirectory(prefix="speedup-") as scratch:
        for name in names:
            problem = table[name]
            if name in given:
                sur, base, fixed, desc = from_checkpoint(given[name])
            else:
                print(f"{name}: training a surrogate through the engine", flush=True)
                sur, base, fixed, desc = train_here(problem, args.run_dir or scratch, args.quick)
            if sur.metadata.solver != name:
                raise SpeedupError(f"--surrogate {name}=... holds a {sur.metadata.solver} surrogate; pass a {name} one")
            params, keys = bench_params(get_solver(name, **base), args.batch, fixed)
            n_frames = args.frames or problem.frames
            print(f"{name}: reference {label(problem.reference)} and {len(problem.ladder)} rungs", flush=True)
            r = measure_ladder(sur, base, problem, params, keys, n_frames, args.repeats)
            out = summarise(name, r, base, args.batch, n_frames)
            out[f"{name}_surrogate"] = desc
            out[f"{name}_fixed_params"] = fixed
            results.update(out)
            print(format_table(results, name), flush=True)
            panels.append(panel(results, name))
    results["load_average_1min_end"] = os.getloadavg()[0]
    print(f"device: {results['device']}, {results['cpus']} CPUs, load average {results['load_average_1min_start']:.1f}"
          f" at the start and {results['load_average_1min_end']:.1f} at the end")
    for name in names:
        print(verdict(results, name))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2, default=float) + "\n")
    if args.png:
        plot_pareto(panels, args.png)
    return results


if __name__ == "__main__":
    main()
