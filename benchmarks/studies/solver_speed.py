"""Solver speed: our periodic spectral solvers side by side with Exponax's steppers, and the CFD solvers.

    python -m benchmarks.studies.solver_speed [--rounds 7] [--json FILE]            # pairs and cfd
    python -m benchmarks.studies.solver_speed --parts pairs profile cfd table --only ns2d burgers1d ks1d
    python -m benchmarks.studies.solver_speed --parts pairs --only ns2d ks1d
    python -m benchmarks.studies.solver_speed --parts table [--batch 16]     # every solver, batched vs single

``pairs`` (needs the ``bench`` extra, ``pip install -e '.[bench]'``): ``ns2d``, ``burgers1d`` and ``ks1d``
against the Exponax stepper solving the same PDE on the same grid with the same ``dt``, ETDRK4 and 2/3
dealiasing (:data:`PAIRS` gives the parameter mapping). Both sides advance a batch of spectra from the same
initial condition with ``fori_loop(vmap(step))`` in one jitted call (Exponax through ``step_fourier``, its
cheapest path; its ``__call__`` adds an FFT pair per step and is timed as a third contestant). Compilation
is excluded; every call ends in ``block_until_ready``; rounds alternate the order of the contestants so
they see the same machine load; the figures are medians over rounds of wall-clock time and of process CPU
time (the latter is steadier on a shared machine). After the timing, the final states of the two sides
are compared (relative L2 on the grid), so the ratio is of equal work. ``cfd``: steps/s of the walled-flow
projection solvers (no peer) at each grid size, batch 1 and ``--cfd-batch``. ``profile``: the share of
each side's step spent in its FFTs (:func:`fft_share`). ``table``: every registered solver, batched
(``vmap``) vs one simulation at a time.

Keys (flat JSON): ``<solver>_vs_exponax_speed_ratio`` (our throughput / that of the faster of Exponax's two
paths, batch 16, wall clock), ``..._b1`` (batch 1), ``..._cpu`` / ``..._b1_cpu`` (CPU time), the same per path
(``<solver>_vs_exponax_fourier_speed_ratio...``, ``..._call_...``), ``<solver>_vs_exponax_rel_diff``,
``<solver>_{ours,exponax,exponax_call}_sim_steps_per_s_b{B}``, ``<cfd>_<n>x<n>_sim_steps_per_s_b{B}``,
``<solver>_{ours,exponax}_fft_share``, ``load_avg_start`` / ``load_avg_end`` (1-minute load average).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from solvers import get_solver, solver_class

# solver -> (config at a typical size, steps per timed run), for ``--parts table``
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
CFD_SOLVERS = ("cavity", "tube", "dam", "cylinder")
CFD_GRIDS = (64, 128)


@dataclass(frozen=True)
class Pair:
    """One side-by-side case: our solver config and parameters, and a builder of the matching Exponax stepper."""

    config: dict
    params: tuple[float, ...]
    n_steps: int  # steps per timed call (also the horizon of the same-trajectory check)
    describe: str
    exponax: Callable[[object], object]  # exponax module -> stepper


# Parameter mapping (check the PDE and its signs on both sides before changing one):
# - ns2d: w_t + u . grad w = nu Lap w on [0, 1)^2, -Lap psi = w, u = psi_y, v = -psi_x. Exponax's
#   NavierStokesVorticity solves q_t + b (psi'_y, -psi'_x) . grad q = nu Lap q with Lap psi' = q, i.e. its
#   velocity is minus ours for q = w; b = -1 makes the two equations identical.
# - burgers1d (forcing off, gamma = 0): u_t + alpha (u^2 / 2)_x = beta u_xx on [0, 16); Exponax's Burgers
#   with convection_scale = alpha, diffusivity = beta, in conservative form (one irfft + one rfft per stage,
#   as ours; its default non-conservative form u u_x costs one more inverse transform).
# - ks1d: u_t + (u^2 / 2)_x + u_xx + nu u_xxxx = 0 on [0, 32 pi); Exponax's KuramotoSivashinskyConservative
#   with convection_scale = 1, second_order_scale = 1, fourth_order_scale = nu.
# Dealiasing differs by one mode: we keep |k| <= (n - 1) // 3, Exponax |k| < 2/3 (n // 2) - 1 (n = 64: 21 vs
# 20); the final states then differ at the level of the energy in that mode, not at round-off.
PAIRS: dict[str, Pair] = {
    "ns2d": Pair(
        {"n": 64, "dt": 1e-3, "forcing": 0.0}, (1e-3,), 100,
        "64x64, dt 1e-3, nu 1e-3, unforced, FNO GRF initial vorticity",
        lambda ex: ex.stepper.NavierStokesVorticity(
            2, 1.0, 64, 1e-3, diffusivity=1e-3, vorticity_convection_scale=-1.0, order=4
        ),
    ),
    "burgers1d": Pair(
        {"nx": 512, "nx_out": 512, "dt": 0.004, "forcing": False}, (1.0, 0.1, 0.0), 200,
        "512 points, L 16, dt 0.004, alpha 1, beta 0.1, gamma 0, unforced, MP-PDE sum-of-sines start",
        lambda ex: ex.stepper.Burgers(
            1, 16.0, 512, 0.004, diffusivity=0.1, convection_scale=1.0, single_channel=True, conservative=True,
            order=4,
        ),
    ),
    "ks1d": Pair(
        {"nx": 256, "dt": 0.05}, (1.0,), 200,
        "256 points, L 32 pi, dt 0.05, nu 1, sum-of-sines start",
        lambda ex: ex.stepper.KuramotoSivashinskyConservative(
            1, 32 * math.pi, 256, 0.05, convection_scale=1.0, second_order_scale=1.0, fourth_order_scale=1.0,
            single_channel=True, order=4,
        ),
    ),
}


def load_avg() -> float:
    return os.getloadavg()[0]


def timed(fn: Callable[[], object]) -> tuple[float, float]:
    """(wall, process CPU) seconds of one synchronised call."""
    wall, cpu = time.perf_counter(), time.process_time()
    jax.block_until_ready(fn())
    return time.perf_counter() - wall, time.process_time() - cpu


def alternating(contestants: dict[str, Callable[[], object]], rounds: int) -> dict[str, dict[str, float]]:
    """Median wall and CPU seconds per call of each contestant over ``rounds`` rounds.

    Each is called once first (compilation, excluded); round ``r`` runs them in order, reversed on odd
    rounds, so a load change hits both sides alike.
    """
    for fn in contestants.values():
        jax.block_until_ready(fn())
    names = list(contestants)
    walls: dict[str, list[float]] = {k: [] for k in names}
    cpus: dict[str, list[float]] = {k: [] for k in names}
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            w, c = timed(contestants[name])
            walls[name].append(w)
            cpus[name].append(c)
    return {k: {"wall": float(np.median(walls[k])), "cpu": float(np.median(cpus[k]))} for k in names}


def stepping(step: Callable, params: jax.Array | None, n_steps: int) -> Callable:
    """A jitted function advancing a batch of states ``n_steps`` times with ``vmap(step)`` (``step(state)``
    when ``params`` is None, else ``step(state, params)`` with ``params`` ``(B, P)``)."""
    vstep = jax.vmap(step)

    @jax.jit
    def run(states: object) -> object:
        body = (lambda i, s: vstep(s)) if params is None else (lambda i, s: vstep(s, params))
        return jax.lax.fori_loop(0, n_steps, body, states)

    return run


def pair_setup(name: str, batch: int, pair: Pair | None = None) -> tuple[dict[str, Callable[[], object]],
                                                                         Callable[[], float]]:
    """The contestants of one pair at one batch size, and the same-trajectory check (relative L2 difference).

    ``pair`` defaults to ``PAIRS[name]``.
    """
    import exponax

    pair = pair or PAIRS[name]
    ours = get_solver(name, **pair.config)
    params = jnp.tile(jnp.asarray([pair.params], ours.dtype), (batch, 1))
    keys = jax.random.split(jax.random.key(1), batch)
    states = jax.jit(jax.vmap(ours.initial_state))(keys, params)
    stepper = pair.exponax(exponax)
    spec_key = "w_hat" if name == "ns2d" else "u_hat"
    spectra = states[spec_key][:, None]  # (B, 1, ...) Exponax's channel axis, the same initial condition
    grid = jax.jit(jax.vmap(ours.fields))  # (B, 1, *grid): our state on the grid
    physical = grid(states)
    run_ours = stepping(ours.step, params, pair.n_steps)
    run_theirs = stepping(stepper.step_fourier, None, pair.n_steps)
    run_call = stepping(stepper, None, pair.n_steps)
    contestants = {"ours": lambda: run_ours(states), "exponax": lambda: run_theirs(spectra),
                   "exponax_call": lambda: run_call(physical)}

    def rel_diff() -> float:
        a = np.asarray(grid(run_ours(states)), np.float64)
        b = np.asarray(run_call(physical), np.float64)
        c = np.asarray(jnp.fft.irfftn(run_theirs(spectra), s=a.shape[2:], axes=tuple(range(2, a.ndim))))
        if not np.allclose(b, c, rtol=1e-3, atol=1e-3 * np.abs(b).max()):
            raise RuntimeError(f"{name}: Exponax's step_fourier and __call__ disagree; the comparison is invalid")
        return float(np.linalg.norm(a - b) / np.linalg.norm(a))

    return contestants, rel_diff


def run_pairs(names: list[str], batches: list[int], rounds: int, results: dict) -> list[tuple]:
    rows = []
    for name in names:
        pair = PAIRS[name]
        for batch in batches:
            contestants, rel_diff = pair_setup(name, batch)
            t = alternating(contestants, rounds)
            steps = batch * pair.n_steps
            for side in contestants:
                results[f"{name}_{side}_sim_steps_per_s_b{batch}"] = steps / t[side]["wall"]
                results[f"{name}_{side}_sim_steps_per_s_cpu_b{batch}"] = steps / t[side]["cpu"]
            suffix = "" if batch == 16 else f"_b{batch}"
            # The headline ratio is against the faster of Exponax's two paths (its __call__ can beat
            # step_fourier: XLA handles the real-valued loop carry better for some shapes).
            theirs = {k: min(t["exponax"][k], t["exponax_call"][k]) for k in ("wall", "cpu")}
            ratio, ratio_cpu = theirs["wall"] / t["ours"]["wall"], theirs["cpu"] / t["ours"]["cpu"]
            results[f"{name}_vs_exponax_speed_ratio{suffix}"] = ratio
            results[f"{name}_vs_exponax_speed_ratio{suffix}_cpu"] = ratio_cpu
            for side in ("exponax", "exponax_call"):
                key = "fourier" if side == "exponax" else "call"
                results[f"{name}_vs_exponax_{key}_speed_ratio{suffix}"] = t[side]["wall"] / t["ours"]["wall"]
                results[f"{name}_vs_exponax_{key}_speed_ratio{suffix}_cpu"] = t[side]["cpu"] / t["ours"]["cpu"]
            if batch == max(batches):
                results[f"{name}_vs_exponax_rel_diff"] = rel_diff()
            results[f"{name}_setup"] = pair.describe + f", {pair.n_steps} steps per call"
            rows.append((name, batch, steps / t["ours"]["wall"], steps / t["exponax"]["wall"],
                         steps / t["exponax_call"]["wall"], ratio, ratio_cpu))
            print(f"{name} b{batch}: ours {rows[-1][2]:,.0f}, exponax {rows[-1][3]:,.0f} (step_fourier), "
                  f"{rows[-1][4]:,.0f} (__call__) sim-steps/s; ratio {ratio:.2f} wall, {ratio_cpu:.2f} cpu; "
                  f"load {load_avg():.1f}", flush=True)
        print(f"{name}: same-trajectory relative L2 difference after {pair.n_steps} steps: "
              f"{results[f'{name}_vs_exponax_rel_diff']:.2e}", flush=True)
    return rows


def solver_rate(name: str, config: dict, n_steps: int, batch: int, rounds: int) -> dict[str, float]:
    """Simulation-steps per second (``wall`` and ``cpu``) of ``batch`` simulations advanced together."""
    solver = get_solver(name, **config)
    params = jnp.asarray(solver.sample_params(jax.random.key(0), batch), solver.dtype)
    keys = jax.random.split(jax.random.key(1), batch)
    states = jax.jit(jax.vmap(solver.initial_state))(keys, params)
    run = stepping(solver.step, params, n_steps)
    t = alternating({"s": lambda: run(states)}, rounds)["s"]
    return {k: batch * n_steps / v for k, v in t.items()}


def fft_share(name: str, batch: int, rounds: int) -> dict[str, float]:
    """Fraction of a step's CPU time spent in its FFTs: a loop of the same transforms (shapes, count) vs the step.

    ns2d: per stage one ``irfft2`` of two fields and one ``rfft2`` of two (Exponax: four and one); 1D: one
    ``irfft`` and one ``rfft``; four stages per step.
    """
    pair = PAIRS[name]
    contestants, _ = pair_setup(name, batch)
    solver = get_solver(name, **pair.config)
    if name == "ns2d":
        n = solver.config.n
        shapes = {"ours": (2, 2), "exponax": (4, 1)}

        def transforms(fields_in: int, fields_out: int) -> Callable:
            def one(z: jax.Array) -> jax.Array:
                x = jnp.fft.irfft2(jnp.broadcast_to(z[:, None], (batch, fields_in, n, n // 2 + 1)), s=(n, n))
                return jnp.fft.rfft2(x[:, :fields_out]).sum(axis=1) * 1e-3
            return one
    else:
        n = solver.config.nx
        shapes = {"ours": (1, 1), "exponax": (1, 1)}

        def transforms(fields_in: int, fields_out: int) -> Callable:
            return lambda z: jnp.fft.rfft(jnp.fft.irfft(z, n=n)) * 1e-3
    z0 = jnp.zeros((batch, n, n // 2 + 1) if name == "ns2d" else (batch, n // 2 + 1), jnp.complex64) + 1e-3
    loops = {}
    for side, (fin, fout) in shapes.items():
        body = transforms(fin, fout)
        loops[f"fft_{side}"] = jax.jit(
            lambda z, body=body: jax.lax.fori_loop(0, 4 * pair.n_steps, lambda i, q: body(q), z)
        )
    timed_ = {"ours": contestants["ours"], "exponax": contestants["exponax"],
              **{k: (lambda f=f: f(z0)) for k, f in loops.items()}}
    t = alternating(timed_, rounds)
    return {side: t[f"fft_{side}"]["cpu"] / t[side]["cpu"] for side in shapes}


def run_cfd(batches: list[int], grids: tuple[int, ...], n_steps: int, rounds: int, results: dict) -> list[tuple]:
    """Steps/s of the walled-flow solvers on ``n x n`` cells, each at the largest ``dt`` its CFL check accepts."""
    rows = []
    for name in CFD_SOLVERS:
        for n in grids:
            for batch in batches:
                probe = get_solver(name, nx=n, ny=n)
                dt = probe.max_stable_dt(np.asarray(probe.sample_params(jax.random.key(0), batch)))
                rate = solver_rate(name, {"nx": n, "ny": n, "dt": dt}, n_steps, batch, rounds)
                results[f"{name}_{n}x{n}_sim_steps_per_s_b{batch}"] = rate["wall"]
                results[f"{name}_{n}x{n}_sim_steps_per_s_cpu_b{batch}"] = rate["cpu"]
                rows.append((name, f"{n}x{n}", batch, rate["wall"], rate["cpu"]))
                print(f"{name} {n}x{n} b{batch}: {rate['wall']:,.0f} sim-steps/s wall, "
                      f"{rate['cpu']:,.0f} per CPU-second (dt {dt:.3g})", flush=True)
    return rows


def run_table(batch: int, rounds: int, only: list[str] | None, results: dict) -> list[tuple]:
    rows = []
    for name, (config, n_steps) in CASES.items():
        if only and name not in only:
            continue
        try:
            solver_class(name)
        except ValueError:
            continue  # not registered in this installation
        batched = solver_rate(name, config, n_steps, batch, rounds)
        single = solver_rate(name, config, n_steps, 1, rounds)
        grid = "x".join(map(str, get_solver(name, **config).grid))
        speedup, speedup_cpu = batched["wall"] / single["wall"], batched["cpu"] / single["cpu"]
        results.update({f"{name}_sim_steps_per_s_batched": batched["wall"],
                        f"{name}_sim_steps_per_s_single": single["wall"], f"{name}_batch_speedup": speedup,
                        f"{name}_batch_speedup_cpu": speedup_cpu})
        rows.append((name, grid, batched["wall"], single["wall"], speedup, speedup_cpu))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--parts", nargs="+", default=["pairs", "cfd"], choices=["pairs", "profile", "cfd", "table"])
    parser.add_argument("--only", nargs="*", help="solvers to run (default: all of the part)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16], help="pair batch sizes (16 is the key)")
    parser.add_argument("--rounds", type=int, default=7, help="alternating timed rounds per case (median)")
    parser.add_argument("--cfd-batch", type=int, default=8)
    parser.add_argument("--cfd-steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=None, help="batch of --parts table, default 16 (with --cfd: "
                        "the CFD batch)")
    parser.add_argument("--cfd", action="store_true", help="older spelling of --parts cfd")
    parser.add_argument("--repeats", type=int, dest="rounds", default=argparse.SUPPRESS,
                        help="older spelling of --rounds")
    args = parser.parse_args()
    if args.cfd:
        args.parts, args.cfd_batch = ["cfd"], args.batch or args.cfd_batch
    args.batch = args.batch or 16
    if args.rounds < 1 or min(args.batches) < 1:
        parser.error("--rounds and --batches must be >= 1")
    results: dict[str, float | str | int] = {"device": str(jax.devices()[0]), "cpu_count": os.cpu_count() or 0,
                                             "rounds": args.rounds, "load_avg_start": load_avg()}
    print(f"device {results['device']}, {results['cpu_count']} CPUs, load average {results['load_avg_start']:.1f}")
    if "pairs" in args.parts:
        names = [n for n in PAIRS if not args.only or n in args.only]
        rows = run_pairs(names, args.batches, args.rounds, results)
        print("| solver | batch | ours sim-steps/s | Exponax step_fourier | Exponax __call__ | ratio to the faster "
              f"(wall) | (CPU) |\n|{'---|' * 7}")
        for name, b, o, e, c, r, rc in rows:
            print(f"| {name} | {b} | {o:,.0f} | {e:,.0f} | {c:,.0f} | {r:.2f} | {rc:.2f} |")
    if "cfd" in args.parts:
        batches = sorted({1, args.cfd_batch})
        rows = run_cfd(batches, CFD_GRIDS, args.cfd_steps, max(3, args.rounds // 2), results)
        print(f"| solver | grid | batch | sim-steps/s | per CPU-second |\n|{'---|' * 5}")
        for name, grid, b, rate, rate_cpu in rows:
            print(f"| {name} | {grid} | {b} | {rate:,.0f} | {rate_cpu:,.0f} |")
    if "profile" in args.parts:
        for name in [n for n in PAIRS if not args.only or n in args.only]:
            share = fft_share(name, max(args.batches), args.rounds)
            for side, v in share.items():
                results[f"{name}_{side}_fft_share"] = v
            print(f"{name} b{max(args.batches)}: FFTs take {share['ours']:.0%} of our step's CPU time, "
                  f"{share['exponax']:.0%} of Exponax's", flush=True)
    if "table" in args.parts:
        rows = run_table(args.batch, args.rounds, args.only, results)
        print(f"| solver | grid | sim-steps/s batched | sim-steps/s single | batch speed-up (wall, CPU) |\n"
              f"|{'---|' * 5}")
        for name, grid, b, s, r, rc in rows:
            print(f"| {name} | {grid} | {b:,.0f} | {s:,.0f} | {r:.1f}x, {rc:.1f}x |")
    results["load_avg_end"] = load_avg()
    print(f"load average at the end {results['load_avg_end']:.1f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({k: (float(v) if isinstance(v, float | np.floating) else v) for k, v in results.items()}, f,
                      indent=2)


if __name__ == "__main__":
    main()
