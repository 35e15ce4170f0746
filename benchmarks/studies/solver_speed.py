"""Solver speed: simulation-steps per second, batched (vmap) vs one simulation at a time, and our
ns2d against Exponax's Navier-Stokes vorticity stepper on the same grid and dt, in one run.

    python -m benchmarks.studies.solver_speed [--json FILE] [--batch 16] [--repeats 3]
    python -m benchmarks.studies.solver_speed --cfd [--json benchmarks/results/solver_speed_cfd.json]

Prints a table and writes a flat JSON dict (keys ``<solver>_sim_steps_per_s_batched``,
``<solver>_sim_steps_per_s_single``, ``<solver>_batch_speedup``, ``ns2d_vs_exponax_speed_ratio``).
``--cfd`` runs only the walled-flow solvers (cavity, tube, dam, cylinder) on ``64 x 64`` and
``128 x 128`` cells (keys ``<solver>_<n>x<n>_...``), each with the largest ``dt`` its CFL check
accepts for the sampled parameters (the cost of a step with obstacles depends on ``dt`` through the
conjugate-gradient iterations). Timings are the best of ``--repeats`` runs after a warm-up (compile)
run; every run is synchronised with ``block_until_ready``.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from solvers import get_solver, solver_class

# solver -> (config at a typical size, steps per timed run)
CASES: dict[str, tuple[dict, int]] = {
    "heat2d": ({"n": 62}, 100),
    "burgers1d": ({}, 200),
    "ks1d": ({}, 200),
    "ns2d": ({"n": 64}, 100),
    "darcy2d": ({"n": 64}, 1),
    "cavity": ({}, 100),
    "tube": ({}, 100),
    "dam": ({}, 100),
    "cylinder": ({}, 100),
}


def best_time(fn: Callable[[], jax.Array], repeats: int) -> float:
    jax.block_until_ready(fn())  # compile + warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t)
    return min(times)


def stepping(step: Callable, params: jax.Array, n_steps: int) -> Callable:
    """A jitted function advancing a batch of states ``n_steps`` times with ``vmap(step)``."""
    vstep = jax.vmap(step)

    @jax.jit
    def run(states: object) -> object:
        return jax.lax.fori_loop(0, n_steps, lambda i, s: vstep(s, params), states)

    return run


def solver_rate(name: str, config: dict, n_steps: int, batch: int, repeats: int) -> float:
    """Simulation-steps per second of ``batch`` simulations advanced together."""
    solver = get_solver(name, **config)
    params = jnp.asarray(solver.sample_params(jax.random.key(0), batch), solver.dtype)
    keys = jax.random.split(jax.random.key(1), batch)
    states = jax.jit(jax.vmap(solver.initial_state))(keys, params)
    run = stepping(solver.step, params, n_steps)
    return batch * n_steps / best_time(lambda: run(states), repeats)


CFD_SOLVERS = ("cavity", "tube", "dam", "cylinder")
CFD_GRIDS = (64, 128)


def cfd_rates(name: str, n: int, n_steps: int, batch: int, repeats: int) -> tuple[float, float]:
    """Batched and single sim-steps/s of a walled-flow solver on ``n x n`` cells at its largest stable ``dt``."""
    params = get_solver(name, nx=n, ny=n).sample_params(jax.random.key(0), batch)
    dt = get_solver(name, nx=n, ny=n).max_stable_dt(np.asarray(params))
    config = {"nx": n, "ny": n, "dt": dt}
    return (solver_rate(name, config, n_steps, batch, repeats), solver_rate(name, config, n_steps, 1, repeats))


def exponax_vs_ours(batch: int, repeats: int, n: int = 64, dt: float = 1e-3, nu: float = 1e-3,
                    n_steps: int = 100) -> dict[str, float]:
    """Unforced 2D vorticity NS, both ETDRK4 with 2/3 dealiasing on the periodic unit square."""
    import exponax

    ours = get_solver("ns2d", n=n, dt=dt, forcing=0.0)
    params = jnp.full((batch, 1), nu, jnp.float32)
    keys = jax.random.split(jax.random.key(1), batch)
    states = jax.jit(jax.vmap(ours.initial_state))(keys, params)
    run_ours = stepping(ours.step, params, n_steps)
    t_ours = best_time(lambda: run_ours(states), repeats)

    stepper = exponax.stepper.NavierStokesVorticity(2, 1.0, n, dt, diffusivity=nu, order=4)
    w0 = jax.vmap(ours.fields)(states)  # (B, 1, n, n) the same initial vorticity
    vstep = jax.vmap(stepper)
    run_exp = jax.jit(lambda w: jax.lax.fori_loop(0, n_steps, lambda i, s: vstep(s), w))
    t_exp = best_time(lambda: run_exp(w0), repeats)
    return {"ns2d_ours_sim_steps_per_s": batch * n_steps / t_ours,
            "ns2d_exponax_sim_steps_per_s": batch * n_steps / t_exp,
            "ns2d_vs_exponax_speed_ratio": t_exp / t_ours}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", nargs="*", help="solvers to run (default: all registered)")
    parser.add_argument("--cfd", action="store_true", help="only the CFD solvers at 64x64 and 128x128")
    args = parser.parse_args()
    results: dict[str, float | str] = {"device": str(jax.devices()[0]), "batch": args.batch}
    rows = []
    if args.cfd:
        for name in CFD_SOLVERS:
            for n in CFD_GRIDS:
                batched, single = cfd_rates(name, n, 20, args.batch, args.repeats)
                key = f"{name}_{n}x{n}"
                results.update({f"{key}_sim_steps_per_s_batched": batched, f"{key}_sim_steps_per_s_single": single,
                                f"{key}_batch_speedup": batched / single})
                rows.append((name, f"{n}x{n}", batched, single, batched / single))
                print(rows[-1], flush=True)
    for name, (config, n_steps) in ({} if args.cfd else CASES).items():
        if args.only and name not in args.only:
            continue
        try:
            solver_class(name)
        except ValueError:
            continue  # not registered in this installation
        batched = solver_rate(name, config, n_steps, args.batch, args.repeats)
        single = solver_rate(name, config, n_steps, 1, args.repeats)
        grid = "x".join(map(str, get_solver(name, **config).grid))
        results.update({f"{name}_sim_steps_per_s_batched": batched, f"{name}_sim_steps_per_s_single": single,
                        f"{name}_batch_speedup": batched / single})
        rows.append((name, grid, batched, single, batched / single))
    print(f"device: {results['device']}, batch {args.batch}")
    print(f"| solver | grid | sim-steps/s batched | sim-steps/s single | batch speed-up |\n|{'---|' * 5}")
    for name, grid, b, s, r in rows:
        print(f"| {name} | {grid} | {b:,.0f} | {s:,.0f} | {r:.1f}x |")
    if not args.cfd and (not args.only or "exponax" in args.only):
        try:
            results.update(exponax_vs_ours(args.batch, args.repeats))
        except ImportError:
            print("exponax not installed (pip install -e '.[bench]'): skipped the comparison")
        else:
            print(f"ns2d 64x64 dt=1e-3 ETDRK4, batch {args.batch}: ours "
                  f"{results['ns2d_ours_sim_steps_per_s']:,.0f} vs exponax "
                  f"{results['ns2d_exponax_sim_steps_per_s']:,.0f} sim-steps/s -> ratio "
                  f"{results['ns2d_vs_exponax_speed_ratio']:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({k: (float(v) if isinstance(v, float | np.floating) else v) for k, v in results.items()}, f,
                      indent=2)


if __name__ == "__main__":
    main()
