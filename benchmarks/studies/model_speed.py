"""Forward and train-step throughput (samples/s) of every registered surrogate model, and our FNO
against neuraloperator's, side by side in one run.

    python -m benchmarks.studies.model_speed --json benchmarks/results/model_speed.json
    python -m benchmarks.studies.model_speed --grid 128 --batch 8 --models fno unet --no-neuraloperator

Each model is built with its default hyper-parameters, 1 input and 1 output channel on a 2D grid
(the MLP gets cond_dim 6, as Melissa's heat surrogate, and the grid as its `grid`); MP-PDE is also
timed on a 1D grid of 100 points (`--grid-1d`), its setting in Brandstetter et al. 2022. Times are
the best of `--repeats` runs of `--iters` calls after one compile call; the train step is
`surrogates.make_train_step` with Adam. Models that cannot be built are reported as skipped with
the reason.

The FNO comparison (key `fno_train_step_speed_ratio_vs_neuraloperator`, ours / theirs, higher is
better) uses :mod:`benchmarks.studies.fno_vs_neuraloperator` (matched model, see its docstring) and needs
the `bench` extra (CPU `torch`, `neuraloperator`). The two sides are timed in alternation,
`--rounds` times each, and each keeps its best, so a change of machine load hits both alike.
neuraloperator is timed eagerly and with its model under `torch.compile` (inductor, compiled once before
the rounds; key `..._vs_neuraloperator_compiled`); `--no-torch-compile` skips the latter. The same pair
runs again on a 1D grid of `--grid-1d` points (keys ending in `_1d`). neuraloperator has no plain U-Net
(its U-shaped model, UNO, is a neural operator of another design), so the U-Net has no peer row.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from rich.progress import track

from surrogates import SurrogateError, get_model, list_models, make_eval_step, make_train_step


def _best_time(call, iters: int, repeats: int) -> float:
    """Best wall time (s) of `iters` back-to-back calls of `call` (after one warm-up/compile call)."""
    jax.block_until_ready(call())
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(iters):
            out = call()
        jax.block_until_ready(out)
        best = min(best, time.perf_counter() - t0)
    return best


def measure(name: str, grid: int, batch: int, iters: int, repeats: int, ndim: int = 2) -> dict[str, Any]:
    """Throughput of one model on a `grid`^`ndim` grid:
    {"model", "grid", "params", "forward_samples_per_s", "train_samples_per_s"}."""
    cond_dim = 6 if name == "mlp" else 0
    shape = (grid,) * ndim
    extra = {"grid": shape} if name == "mlp" else {}
    model = get_model(name, in_channels=1, out_channels=1, ndim=ndim, cond_dim=cond_dim, rngs=nnx.Rngs(0), **extra)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((batch, 1, *shape)), jnp.float32)
    y = jnp.asarray(rng.standard_normal((batch, 1, *shape)), jnp.float32)
    cond = jnp.asarray(rng.standard_normal((batch, cond_dim)), jnp.float32) if cond_dim else None
    n_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(nnx.state(model, nnx.Param)))

    predict = make_eval_step(model)
    state = nnx.state(model)
    t_fwd = _best_time(lambda: predict(x, cond, state=state), iters, repeats)

    step = make_train_step(model, nnx.Optimizer(model, optax.adam(1e-4), wrt=nnx.Param))
    batch_dict = {"x": x, "y": y} if cond is None else {"x": x, "y": y, "cond": cond}
    t_train = _best_time(lambda: step(batch_dict), iters, repeats)
    return {
        "model": name,
        "grid": "x".join(map(str, shape)),
        "params": n_params,
        "forward_samples_per_s": batch * iters / t_fwd,
        "train_samples_per_s": batch * iters / t_train,
    }


def measure_fitting(name: str, grid: int, batch: int, iters: int, repeats: int, ndim: int) -> dict[str, Any]:
    """:func:`measure`, halving the batch while the train step runs out of memory (MP-PDE on 64x64 graphs:
    65,536 nodes and ~1.8M edges at batch 16); the row says which batch it ran at."""
    while True:
        try:
            return {**measure(name, grid, batch, iters, repeats, ndim=ndim), "batch": batch}
        except jax.errors.JaxRuntimeError as e:
            if "RESOURCE_EXHAUSTED" not in str(e) or batch == 1:
                raise
            batch //= 2


def neuralop_compiled_step(batch: int, grid: int, ndim: int = 2) -> tuple[Any, float]:
    """neuraloperator's matched FNO train step with the model under ``torch.compile`` (default inductor
    backend), compiled by a first call: (step, compile seconds)."""
    from benchmarks.studies.fno_vs_neuraloperator import neuralop_step

    step, _ = neuralop_step(True, batch, grid, compile=True, ndim=ndim)
    t0 = time.perf_counter()
    step().item()
    return step, time.perf_counter() - t0


def fno_vs_neuraloperator(batch: int, grid: int, iters: int, rounds: int, compiled: bool = True,
                          ndim: int = 2) -> dict[str, Any]:
    """Our FNO and neuraloperator's matched FNO on an ``ndim``-D grid (eager, and with ``compiled`` also under
    ``torch.compile``), train steps timed in alternation (best of `rounds` each); compilation is excluded on
    every side. Keys of a 1D run end in ``_1d``."""
    import neuralop
    import torch

    from benchmarks.studies.fno_vs_neuraloperator import _best_rate, measure_neuralop, measure_ours

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    step_c, compile_s = neuralop_compiled_step(batch, grid, ndim) if compiled else (None, 0.0)
    ours, theirs, theirs_c = [], [], []
    for _ in range(rounds):
        ours.append(measure_ours(batch, grid, 3, iters, 1, ndim))
        theirs.append(measure_neuralop(True, batch, grid, 3, iters, 1, ndim))
        if step_c is not None:
            theirs_c.append(_best_rate(step_c, batch, 1, iters, 1, lambda loss: loss.item()))
    best_ours = max(r["samples_per_s"] for r in ours)
    best_theirs = max(r["samples_per_s"] for r in theirs)
    out = {
        "fno_train_step_speed_ratio_vs_neuraloperator": best_ours / best_theirs,
        "ours_train_samples_per_s": best_ours,
        "neuraloperator_train_samples_per_s": best_theirs,
        "ours_params": ours[0]["params"],
        "neuraloperator_params": theirs[0]["params"],
        "neuraloperator_version": neuralop.__version__,
        "torch_version": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "rounds": rounds,
    }
    if theirs_c:
        out.update({
            "fno_train_step_speed_ratio_vs_neuraloperator_compiled": best_ours / max(theirs_c),
            "neuraloperator_compiled_train_samples_per_s": max(theirs_c),
            "neuraloperator_compile_s": compile_s,
        })
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Forward/train-step throughput of the registered surrogate models.")
    parser.add_argument("--grid", type=int, default=64, help="grid points per axis (2D), default 64")
    parser.add_argument("--grid-1d", type=int, default=100,
                        help="1D grid of the MP-PDE row and the 1D FNO vs neuraloperator rows, default 100")
    parser.add_argument("--batch", type=int, default=16, help="batch size, default 16")
    parser.add_argument("--iters", type=int, default=20, help="calls per timed run, default 20")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs (best is kept), default 3")
    parser.add_argument("--rounds", type=int, default=3, help="alternating FNO-vs-neuraloperator rounds, default 3")
    parser.add_argument("--models", nargs="*", default=None, help="model names (default: all registered)")
    parser.add_argument("--no-neuraloperator", action="store_true", help="skip the FNO vs neuraloperator rows")
    parser.add_argument("--no-torch-compile", action="store_true",
                        help="time neuraloperator eagerly only (torch.compile takes minutes on 2 cores)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    args = parser.parse_args(argv)

    names = args.models or list(list_models())
    runs = [(name, 2, args.grid) for name in names] + ([("mppde", 1, args.grid_1d)] if "mppde" in names else [])
    rows: list[dict[str, Any]] = []
    versus: dict[str, Any] = {"skipped": "--no-neuraloperator"}
    if not args.no_neuraloperator:
        try:
            versus = fno_vs_neuraloperator(args.batch, args.grid, args.iters, args.rounds,
                                           compiled=not args.no_torch_compile)
            one_d = fno_vs_neuraloperator(args.batch, args.grid_1d, args.iters, args.rounds,
                                          compiled=not args.no_torch_compile, ndim=1)
            versus.update({f"{k}_1d": v for k, v in one_d.items()})
        except ImportError as e:
            versus = {"skipped": f"{e}; install the `bench` extra (CPU torch, neuraloperator)"}
    _write(args, rows, versus)
    for name, ndim, grid in track(runs, description="models", transient=True):
        try:
            rows.append(measure_fitting(name, grid, args.batch, args.iters, args.repeats, ndim))
        except SurrogateError as e:
            rows.append({"model": name, "grid": f"{grid} ({ndim}D)", "skipped": str(e)})
        _write(args, rows, versus)  # after every row: a long run keeps what it measured

    print(f"device {jax.devices()[0].device_kind}")
    print(f"{'model':8s} {'grid':>8s} {'batch':>6s} {'params':>12s} {'forward/s':>12s} {'train/s':>12s}")
    for r in rows:
        if "skipped" in r:
            print(f"{r['model']:8s} {r['grid']:>8s} skipped: {r['skipped']}")
        else:
            fwd, train = r["forward_samples_per_s"], r["train_samples_per_s"]
            print(f"{r['model']:8s} {r['grid']:>8s} {r['batch']:6d} {r['params']:12,d} {fwd:12.1f} {train:12.1f}")
    if "skipped" in versus:
        print(f"FNO vs neuraloperator skipped: {versus['skipped']}")
    else:
        print(f"FNO train samples/s (modes 12, width 32, depth 4, {args.grid}x{args.grid}): ours "
              f"{versus['ours_train_samples_per_s']:.1f}, neuraloperator {versus['neuraloperator_version']} "
              f"{versus['neuraloperator_train_samples_per_s']:.1f} -> ratio "
              f"{versus['fno_train_step_speed_ratio_vs_neuraloperator']:.2f}")
        if "neuraloperator_compiled_train_samples_per_s" in versus:
            print(f"neuraloperator under torch.compile {versus['neuraloperator_compiled_train_samples_per_s']:.1f} "
                  f"(compiled in {versus['neuraloperator_compile_s']:.0f} s) -> ratio "
                  f"{versus['fno_train_step_speed_ratio_vs_neuraloperator_compiled']:.2f}")
        print(f"1D FNO ({args.grid_1d} points): ours {versus['ours_train_samples_per_s_1d']:.1f}, neuraloperator "
              f"{versus['neuraloperator_train_samples_per_s_1d']:.1f} -> ratio "
              f"{versus['fno_train_step_speed_ratio_vs_neuraloperator_1d']:.2f}"
              + (f", compiled {versus['fno_train_step_speed_ratio_vs_neuraloperator_compiled_1d']:.2f}"
                 if "fno_train_step_speed_ratio_vs_neuraloperator_compiled_1d" in versus else ""))
    return 0


def _write(args: argparse.Namespace, rows: list[dict[str, Any]], versus: dict[str, Any]) -> None:
    """Write the JSON report (``--json``) with the rows measured so far."""
    if args.json is None:
        return
    report = {
        "device": jax.devices()[0].device_kind,
        "backend": jax.default_backend(),
        "jax_version": jax.__version__,
        "batch": args.batch,
        "iters": args.iters,
        "repeats": args.repeats,
        "results": rows,
        "fno_vs_neuraloperator": versus,
    }
    base = "fno_train_step_speed_ratio_vs_neuraloperator"
    for key in (base, base + "_compiled", base + "_1d", base + "_compiled_1d"):
        if key in versus:
            report[key] = versus[key]
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    raise SystemExit(main())
