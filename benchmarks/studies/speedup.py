"""The surrogate as a fast solver: wall time of the same batched rollout by a trained surrogate and by
our numerical solver, with the surrogate's error beside the speed-up.

    python -m benchmarks.studies.speedup [--json FILE] [--ns2d-checkpoint RUN_OR_SURROGATE]
        [--cavity-checkpoint RUN_OR_SURROGATE] [--batch 8] [--repeats 3] [--only ns2d cavity]

Protocol (per problem). ``B`` simulations (fixed seeds, none of them a training simulation) start from
the solver's initial conditions. The solver produces the surrogate's first input window (``W`` frames,
``metadata.dt`` apart); from the last frame of that window both advance the same physical time
``n_frames * metadata.dt``: the surrogate with ``n_frames`` autoregressive steps
(:meth:`~surrogates.surrogate.Surrogate.rollout`), the solver with ``n_frames * every`` steps of its
own ``dt``, where ``every = metadata.dt / solver.dt`` (one surrogate frame replaces ``every`` solver
steps), returning the same ``n_frames`` frames. Both are jitted, batched over ``B`` (``vmap`` for the
solver), run on the same device, compiled before timing (the solver ahead of time, the surrogate by a
warm-up call), synchronised with ``block_until_ready``, best of ``--repeats``. The speed-up is
``solver_seconds / surrogate_seconds``. The error is the per-simulation relative L2 error of the
surrogate's frames against the solver's over the whole rollout (``rel_L2`` of
:func:`benchmarks.metrics.field_metrics`), beside the identity baseline (the last input frame copied).

Surrogates: ``--ns2d-checkpoint`` / ``--cavity-checkpoint`` take a run directory of ``pdestream train``
(its ``config.resolved.toml`` gives the solver config and fixed parameters) or a surrogate directory
(solver defaults). Without one, a small surrogate is trained in-process through the real engine
(:func:`streaming.job.run_job`, local backend): ns2d from ``configs/ns2d_fno.toml`` (FNO on frames one
time unit apart, 10 input frames) with a small budget, the cavity from :func:`cavity_job` (CFDBench's
FNO on frames 0.1 s apart, CFDBench's cavity frame spacing). A cavity surrogate may predict either the
solver's channels ``(u, v, p)`` or CFDBench's ``(u, v, mask)`` samples
(:func:`solvers.cfd.resample.cfdbench_sample`); for the latter the solver's frames are resampled inside
its timed function, and the error leaves the mask out.

Writes a flat JSON dict: ``<problem>_surrogate_speedup``, ``<problem>_solver_s``,
``<problem>_surrogate_s``, ``<problem>_rel_l2``, ``<problem>_identity_rel_l2``, ``<problem>_frames``,
``<problem>_solver_steps``, ``<problem>_every``, ``<problem>_simulated_time``, ``<problem>_batch``,
``<problem>_surrogate`` (description), ``device``, ``cpus`` and the 1-minute load average at the start and end
(timings on a shared machine are only as quiet as it is).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.evaluate import cond_from_params, load_surrogate
from benchmarks.metrics import field_metrics
from solvers import Solver, get_solver
from solvers.cfd.resample import cfdbench_sample
from surrogates.surrogate import Surrogate

ROOT = Path(__file__).resolve().parents[2]
CFDBENCH_CHANNELS = ("u", "v", "mask")
BENCH_SEED = 20261123  # initial-condition keys and parameters of the timed simulations (not a training seed)
DT_RTOL = 1e-6
# problem -> surrogate frames rolled out (ns2d: 10 time units = 10,000 solver steps of dt 1e-3; cavity: CFDBench's
# 20-step autoregressive horizon, Luo et al. 2023, Fig. 8, = 2 s)
DEFAULT_FRAMES = {"ns2d": 10, "cavity": 20}


class SpeedupError(ValueError):
    """A surrogate and a solver that cannot be compared (time step, grid or channels); the message says the fix."""


# ---------------------------------------------------------------------------------------------------------------------
# Matching a surrogate's frames to solver steps
# ---------------------------------------------------------------------------------------------------------------------


def solver_steps_per_frame(sur: Surrogate, solver: Solver) -> int:
    """``every``: solver steps per surrogate frame, ``metadata.dt / solver.dt``, which must be a whole number."""
    ratio = sur.dt / solver.dt
    every = round(ratio)
    if every < 1 or not math.isclose(ratio, every, rel_tol=DT_RTOL):
        raise SpeedupError(
            f"the surrogate's frames are {sur.dt:g} apart, {ratio:g} steps of the solver's dt={solver.dt:g}; "
            f"use a solver config whose dt divides {sur.dt:g} (the run's solver.config)"
        )
    return every


def observer(sur: Surrogate, solver: Solver, params: np.ndarray) -> Callable[[jax.Array], jax.Array]:
    """A jit-able map from solver frames ``(B, T, C, *grid)`` to the surrogate's channels ``(B, T, C', *grid')``.

    The identity when the surrogate predicts the solver's channels on its grid; CFDBench's ``(u, v, mask)``
    resampling for a CFD solver and a surrogate with those channels (the obstacle mask of each simulation is
    computed here, on the host, from ``params`` ``(B, P)``).
    """
    m = sur.metadata
    if tuple(m.channels) == tuple(solver.channels):
        if tuple(m.grid) != tuple(solver.grid):
            raise SpeedupError(
                f"the surrogate predicts on grid {m.grid} but the {solver.name} solver's grid is {solver.grid}; "
                "use the solver config the surrogate was trained with (the run directory's)"
            )
        return lambda frames: frames
    if tuple(m.channels) == CFDBENCH_CHANNELS and hasattr(solver, "mask"):
        masks = jnp.asarray(np.stack([solver.mask(row) for row in np.asarray(params)]), solver.dtype)
        return lambda frames: cfdbench_sample(frames, masks, tuple(m.grid))
    raise SpeedupError(
        f"the surrogate predicts the channels {list(m.channels)} but the {solver.name} solver gives "
        f"{list(solver.channels)}; compare a surrogate of this solver (or a CFD one of {list(CFDBENCH_CHANNELS)})"
    )


def advance_fn(solver: Solver, every: int, n_frames: int,
               observe: Callable[[jax.Array], jax.Array] = lambda f: f) -> Callable:
    """``(states, params) -> (states', frames)``: a batch of solver states advanced ``n_frames * every`` steps.

    ``frames`` ``(B, n_frames, C, *grid)`` (after ``observe``) are the fields every ``every`` steps, the start
    excluded, as :meth:`Solver.rollout` computes them (a ``fori_loop`` of ``every`` steps inside a ``scan``).
    """

    def single(state: Any, params: jax.Array) -> tuple[Any, jax.Array]:
        def frame(s: Any, _: None) -> tuple[Any, jax.Array]:
            s = jax.lax.fori_loop(0, every, lambda i, x: solver.step(x, params), s)
            return s, solver.fields(s)

        return jax.lax.scan(frame, state, None, length=n_frames)

    def run(states: Any, params: jax.Array) -> tuple[Any, jax.Array]:
        states, frames = jax.vmap(single)(states, params)
        return states, observe(frames)

    return run


def best_of(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """Best wall time (s) of ``repeats`` synchronised calls of ``fn`` (already compiled), and the first output."""
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        result = jax.block_until_ready(fn())
        times.append(time.perf_counter() - t)
        out = result if out is None else out
    return min(times), out


def _physical(frames: np.ndarray, channels: tuple[str, ...]) -> tuple[np.ndarray, list[str]]:
    keep = [i for i, c in enumerate(channels) if c != "mask"]
    return frames[:, :, keep], [channels[i] for i in keep]


def measure_speedup(sur: Surrogate, solver: Solver, params: Any, keys: jax.Array, n_frames: int,
                    repeats: int = 3, name: str = "ns2d") -> dict[str, Any]:
    """Time the same batched rollout by ``sur`` and ``solver`` and score the surrogate against the solver.

    Args:
        sur: a ``next_step`` or ``bundle`` surrogate of ``solver`` (frames ``every`` solver steps apart).
        solver: the numerical solver, configured as for the surrogate's training data.
        params: ``(B, P)`` parameter vectors of the ``B`` simulations; keys: ``(B,)`` initial-condition keys.
        n_frames: surrogate frames rolled out (``n_frames * every`` solver steps).
        repeats: timed runs per side (the best is kept).
        name: the key prefix.

    Returns:
        ``{name}_surrogate_speedup`` (solver seconds / surrogate seconds), ``{name}_solver_s``,
        ``{name}_surrogate_s``, ``{name}_rel_l2``, ``{name}_identity_rel_l2``, ``{name}_frames``,
        ``{name}_solver_steps`` (per simulation), ``{name}_every``, ``{name}_simulated_time`` (the solver's time
        unit), ``{name}_batch``.
    """
    m = sur.metadata
    if m.kind not in ("next_step", "bundle"):
        raise SpeedupError(f"the surrogate is of kind {m.kind!r}; the speed-up compares autoregressive "
                           "(next_step or bundle) surrogates with the solver")
    if n_frames < 1 or repeats < 1:
        raise SpeedupError(f"n_frames={n_frames} and repeats={repeats} must both be >= 1")
    params = solver.param_space.validate(params)  # float64, checked against the space
    if params.ndim != 2 or len(keys) != len(params):
        raise SpeedupError(f"give (B, P) parameters and B keys; got parameters {params.shape} and {len(keys)} keys")
    if hasattr(solver, "check_cfl"):
        solver.check_cfl(params)
    every = solver_steps_per_frame(sur, solver)
    observe = observer(sur, solver, params)
    w = m.window
    p = jnp.asarray(params, solver.dtype)

    # The surrogate's first window: the solver's frames 0 .. W-1, and the solver state at frame W-1.
    states0 = jax.jit(jax.vmap(solver.initial_state))(keys, p)
    first = observe(jax.vmap(solver.fields)(states0)[:, None])
    if w > 1:
        states, head = jax.jit(advance_fn(solver, every, w - 1, observe))(states0, p)
        window0 = jnp.concatenate([first, head], axis=1)
    else:
        states, window0 = states0, first
    window0 = jax.block_until_ready(window0)

    # The solver: n_frames * every steps from frame W-1, compiled ahead of time.
    solve = jax.jit(advance_fn(solver, every, n_frames, observe)).lower(states, p).compile()
    t_solver, (_, truth) = best_of(lambda: solve(states, p), repeats)

    # The surrogate: n_frames autoregressive steps from the same window (compiled by the warm-up call).
    cond = cond_from_params(sur, params, solver.param_space.names, f"the {solver.name} solver")
    cond = None if cond is None else jnp.asarray(cond)
    t0 = jnp.full((len(params),), (w - 1) * sur.dt, jnp.float32)
    win = window0[:, 0] if w == 1 else window0  # (B, C, *grid) for one input frame, else (B, W, C, *grid)
    roll = lambda: sur.rollout(win, n_frames, cond=cond, t0=t0)  # noqa: E731
    jax.block_until_ready(roll())
    t_sur, pred = best_of(roll, repeats)

    truth_np, channels = _physical(np.asarray(truth, np.float32), tuple(m.channels))
    pred_np, _ = _physical(np.asarray(pred, np.float32)[:, 1:], tuple(m.channels))
    last = np.repeat(_physical(np.asarray(window0, np.float32)[:, -1:], tuple(m.channels))[0], n_frames, axis=1)
    nd = len(m.grid)
    steps = n_frames * every
    return {
        f"{name}_surrogate_speedup": t_solver / t_sur,
        f"{name}_solver_s": t_solver,
        f"{name}_surrogate_s": t_sur,
        f"{name}_rel_l2": field_metrics(pred_np, truth_np, spatial_dims=nd, channels=channels)["rel_L2"],
        f"{name}_identity_rel_l2": field_metrics(last, truth_np, spatial_dims=nd, channels=channels)["rel_L2"],
        f"{name}_frames": n_frames,
        f"{name}_solver_steps": steps,
        f"{name}_every": every,
        f"{name}_simulated_time": steps * solver.dt,
        f"{name}_batch": len(params),
    }


# ---------------------------------------------------------------------------------------------------------------------
# Surrogates: a checkpoint, or a small one trained in-process through the engine
# ---------------------------------------------------------------------------------------------------------------------


def _common_overrides(run_dir: str, name: str, train_steps: int) -> dict[str, Any]:
    return {"workers": {"backend": "local", "device": "cpu"},
            "optim": {"steps": train_steps},
            "validation": {"interval": train_steps},  # one validation at the end writes surrogate/
            "checkpoint": {"interval": 10 * train_steps},
            "logging": {"run_dir": run_dir, "name": name, "tensorboard": False, "progress": False}}


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out.get(k, {}), v) if isinstance(v, dict) else v
    return out


def ns2d_job(run_dir: str, train_steps: int = 400, n_sims: int = 8) -> Any:
    """``configs/ns2d_fno.toml`` (FNO, 10 input frames one time unit apart) with a small budget, local workers."""
    import tomllib

    from streaming.config import JobConfig

    data = tomllib.loads((ROOT / "configs/ns2d_fno.toml").read_text())
    small = {"solver": {"steps": 20_000, "n_sims": n_sims},  # 21 frames a simulation -> 11 samples
             "workers": {"sims_per_task": 4, "chunk_frames": 21},
             "optim": {"batch_size": 8, "lr": 2e-3},
             "buffer": {"capacity": 1024, "watermark": 16},
             "validation": {"n_sims": 2, "rollout_steps": 5}}
    return JobConfig.model_validate(_merge(_merge(data, small), _common_overrides(run_dir, "ns2d", train_steps)))


def cavity_job(run_dir: str, train_steps: int = 400, n_sims: int = 8) -> Any:
    """A small cavity job: frames 0.1 s apart (CFDBench's cavity spacing, 50 steps of dt 2e-3 s) over 2 s,
    next-step with the parameters as conditioning, CFDBench's FNO (depth 4, width 32, 12 modes)."""
    from streaming.config import JobConfig

    data = {"solver": {"name": "cavity", "config": {"nx": 64, "ny": 64, "dt": 2e-3}, "steps": 1000, "every": 50,
                       "n_sims": n_sims, "design": "lhs"},
            "sample": {"kind": "next_step", "window": 1, "condition_on_params": True},
            "model": {"name": "fno", "hparams": {"modes": 12, "width": 32, "depth": 4}},
            "optim": {"optimizer": "adam", "lr": 2e-3, "schedule": "cosine", "batch_size": 16},
            "buffer": {"kind": "reservoir", "capacity": 1024, "watermark": 32},
            "workers": {"sims_per_task": 4, "chunk_frames": 21},
            "validation": {"n_sims": 2, "rollout_steps": 10}}
    return JobConfig.model_validate(_merge(data, _common_overrides(run_dir, "cavity", train_steps)))


def train_small(cfg: Any) -> tuple[Surrogate, Any]:
    """Train ``cfg`` with :func:`streaming.job.run_job`; the run's best surrogate and its config."""
    from streaming.job import run_job

    summary = run_job(cfg)
    return load_surrogate(summary["run_dir"]), cfg


def from_checkpoint(path: str) -> tuple[Surrogate, Any]:
    """A surrogate from a run or surrogate directory, with the run's config (None for a bare surrogate)."""
    from streaming.config import load_config

    sur = load_surrogate(path)
    toml = Path(path) / "config.resolved.toml"
    return sur, (load_config(toml) if toml.is_file() else None)


def bench_setup(sur: Surrogate, cfg: Any, batch: int) -> tuple[Solver, np.ndarray, jax.Array]:
    """The solver (the run's config, else defaults), ``(B, P)`` parameters (the run's fixed ones kept) and keys."""
    name = sur.metadata.solver
    solver = get_solver(name, **(dict(cfg.solver.config) if cfg is not None else {}))
    key_p, key_ic = jax.random.split(jax.random.key(BENCH_SEED))
    params = np.array(solver.sample_params(key_p, batch), np.float64)
    names = solver.param_space.names
    for k, v in (cfg.solver.fixed if cfg is not None else {}).items():
        params[:, names.index(k)] = v
    return solver, params, jax.random.split(key_ic, batch)


def describe(sur: Surrogate, trained: bool) -> str:
    c = sur.model_config
    hp = ", ".join(f"{k}={v}" for k, v in c.items() if k in ("modes", "width", "depth", "hidden", "layers"))
    return f"{c.get('name')}({hp}), window {sur.metadata.window}, {'trained here' if trained else 'checkpoint'}"


# ---------------------------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------------------------


def format_table(results: dict[str, Any], problems: list[str]) -> str:
    """A markdown table of the results."""
    lines = ["| problem | batch | frames (solver steps) | simulated time | solver s | surrogate s | speed-up "
             "| surrogate rel L2 | identity rel L2 | surrogate |", "|" + "---|" * 10]
    for p in problems:
        r = {k.removeprefix(p + "_"): v for k, v in results.items() if k.startswith(p + "_")}
        lines.append(f"| {p} | {r['batch']} | {r['frames']} ({r['solver_steps']:,} = {r['frames']} x {r['every']}) "
                     f"| {r['simulated_time']:g} | {r['solver_s']:.3f} | {r['surrogate_s']:.4f} "
                     f"| **{r['surrogate_speedup']:.1f}x** | {r['rel_l2']:.3f} | {r['identity_rel_l2']:.3f} "
                     f"| {r['surrogate']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--ns2d-checkpoint", help="run or surrogate directory of an ns2d surrogate")
    parser.add_argument("--cavity-checkpoint", help="run or surrogate directory of a cavity surrogate")
    parser.add_argument("--only", nargs="*", choices=list(DEFAULT_FRAMES), help="problems to run (default: all)")
    parser.add_argument("--batch", type=int, default=8, help="simulations rolled out together")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per side (best kept)")
    parser.add_argument("--ns2d-frames", type=int, default=DEFAULT_FRAMES["ns2d"])
    parser.add_argument("--cavity-frames", type=int, default=DEFAULT_FRAMES["cavity"])
    parser.add_argument("--train-steps", type=int, default=400, help="gradient steps of an in-process surrogate")
    parser.add_argument("--train-sims", type=int, default=8, help="training simulations of an in-process surrogate")
    parser.add_argument("--run-dir", help="keep the in-process training runs here (default: a temporary directory); "
                        "pass RUN_DIR/ns2d to --ns2d-checkpoint later to time again without training")
    args = parser.parse_args()
    problems = args.only or list(DEFAULT_FRAMES)
    results: dict[str, Any] = {"device": str(jax.devices()[0]), "cpus": os.cpu_count() or 0,
                               "load_average_1min_start": os.getloadavg()[0]}
    jobs = {"ns2d": ns2d_job, "cavity": cavity_job}
    with tempfile.TemporaryDirectory(prefix="speedup-") as scratch:
        tmp = args.run_dir or scratch
        for p in problems:
            ckpt = getattr(args, f"{p}_checkpoint")
            sur, cfg = from_checkpoint(ckpt) if ckpt else train_small(jobs[p](tmp, args.train_steps, args.train_sims))
            if sur.metadata.solver != p:
                raise SpeedupError(f"--{p}-checkpoint holds a {sur.metadata.solver} surrogate; pass a {p} one")
            solver, params, keys = bench_setup(sur, cfg, args.batch)
            results.update(measure_speedup(sur, solver, params, keys, getattr(args, f"{p}_frames"), args.repeats, p))
            results[f"{p}_surrogate"] = describe(sur, ckpt is None)
            print(f"{p}: {results[f'{p}_surrogate_speedup']:.1f}x, rel L2 {results[f'{p}_rel_l2']:.3f}", flush=True)
    results["load_average_1min_end"] = os.getloadavg()[0]
    print(f"device: {results['device']}, {results['cpus']} CPUs, load average {results['load_average_1min_start']:.1f}"
          f" at the start and {results['load_average_1min_end']:.1f} at the end")
    print(format_table(results, problems))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=float) + "\n")


if __name__ == "__main__":
    main()
