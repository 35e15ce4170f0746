"""Forward and train-step throughput (samples/s) of every registered surrogate model.

    python benchmarks/model_speed.py                       # 64x64, batch 16, all models
    python benchmarks/model_speed.py --grid 128 --batch 8 --models fno unet --json speed.json

Each model is built with its default hyper-parameters, 1 input and 1 output channel on a 2D grid
(the MLP gets cond_dim 6, as Melissa's heat surrogate, and the grid as its `grid`). Times are the
best of `--repeats` runs of `--iters` calls after one compile call; the train step is
`surrogates.make_train_step` with Adam. Models that cannot be built (module missing, 2D not
supported) are reported as skipped with the reason.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

if __package__ in (None, ""):  # run by path: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from surrogates import SurrogateError, get_model, list_models, make_eval_step, make_train_step  # noqa: E402


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


def measure(name: str, grid: int, batch: int, iters: int, repeats: int) -> dict[str, Any]:
    """Throughput of one model: {"model", "params", "forward_samples_per_s", "train_samples_per_s"}."""
    cond_dim = 6 if name == "mlp" else 0
    extra = {"grid": (grid, grid)} if name == "mlp" else {}
    model = get_model(name, in_channels=1, out_channels=1, ndim=2, cond_dim=cond_dim, rngs=nnx.Rngs(0), **extra)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((batch, 1, grid, grid)), jnp.float32)
    y = jnp.asarray(rng.standard_normal((batch, 1, grid, grid)), jnp.float32)
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
        "params": n_params,
        "forward_samples_per_s": batch * iters / t_fwd,
        "train_samples_per_s": batch * iters / t_train,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Forward/train-step throughput of the registered surrogate models.")
    parser.add_argument("--grid", type=int, default=64, help="grid points per axis (2D), default 64")
    parser.add_argument("--batch", type=int, default=16, help="batch size, default 16")
    parser.add_argument("--iters", type=int, default=20, help="calls per timed run, default 20")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs (best is kept), default 3")
    parser.add_argument("--models", nargs="*", default=None, help="model names (default: all registered)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    args = parser.parse_args(argv)

    names = args.models or list(list_models())
    rows: list[dict[str, Any]] = []
    for name in names:
        try:
            rows.append(measure(name, args.grid, args.batch, args.iters, args.repeats))
        except SurrogateError as e:
            rows.append({"model": name, "skipped": str(e)})

    print(f"device {jax.devices()[0].device_kind}, grid {args.grid}x{args.grid}, batch {args.batch}")
    print(f"{'model':8s} {'params':>12s} {'forward/s':>12s} {'train/s':>12s}")
    for r in rows:
        if "skipped" in r:
            print(f"{r['model']:8s} skipped: {r['skipped']}")
        else:
            fwd, train = r["forward_samples_per_s"], r["train_samples_per_s"]
            print(f"{r['model']:8s} {r['params']:12,d} {fwd:12.1f} {train:12.1f}")
    if args.json is not None:
        report = {
            "device": jax.devices()[0].device_kind,
            "backend": jax.default_backend(),
            "grid": [args.grid, args.grid],
            "batch": args.batch,
            "iters": args.iters,
            "repeats": args.repeats,
            "results": rows,
        }
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
