"""Train-step throughput of our FNO (JAX/Flax NNX) against neuraloperator's FNO (PyTorch), same CPU.

    python -m benchmarks.studies.fno_vs_neuraloperator --json benchmarks/results/fno_vs_neuralop.json

Needs the optional packages `torch` (CPU build) and `neuraloperator` (imported as `neuralop`): `pip
install -e ".[bench]"`. `benchmarks/studies/model_speed.py` runs the same comparison with its rounds
interleaved; its JSON carries the key quoted in `benchmarks/RESULTS.md`. Both models: 2D, 1 input /
1 output channel, width 32, 4 Fourier blocks, Adam(1e-3), MSE loss, batch (16, 1, 64, 64) of fixed
random data. Each side runs `--warmup` steps, then the best of `--repeats` timed runs of `--iters`
steps; JAX is synchronised with `block_until_ready`, PyTorch on CPU is synchronous (the loss is read
with `.item()` at the end of each timed run). PyTorch gets the same thread count as XLA's CPU client
(`--threads`, default: the number of cores this process may use).

Matching neuraloperator's `FNO` to ours (Li et al. 2020, arXiv:2010.08895, `fourier_2d.py`):
  * modes: our `modes=12` keeps frequencies [-12, 12) on the first axis and [0, 12) on the rfft
    axis (24 x 12 complex weights per channel pair). neuraloperator's `n_modes` counts the total
    kept along each axis, centred on 0, and on the last axis keeps `n // 2 + 1`; so
    `n_modes=(24, 23)` keeps exactly the same 24 x 12 frequencies. (`n_modes=(12, 12)` would keep
    12 x 7, about 3.4x fewer spectral weights.)
  * lifting: ours is one pointwise Linear on [x, coordinates]; `lifting_channel_ratio=0` gives a
    single-layer lifting, `positional_embedding="grid"` appends the same [0, 1] coordinates.
  * blocks: `use_channel_mlp=False` (no per-block channel MLP), `fno_skip="linear"` (1x1 conv, no
    bias; the spectral conv carries the bias instead: same count as ours), no norm, dense weights
    (`factorization=None`), GELU between blocks and none after the last, as ours.
  * projection: `projection_channel_ratio=4` gives hidden width 128, as our `proj_width=128`.
The library's defaults (channel MLP, soft-gating skips, 2x lifting MLP, n_modes=(12, 12)) are
timed too, as a second row, for reference; the ratio key uses the matched model.
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

from surrogates import get_model, make_train_step

WIDTH, DEPTH, MODES, PROJ = 32, 4, 12, 128


def _best_rate(step, batch: int, warmup: int, iters: int, repeats: int, sync) -> float:
    """Best samples/s of `repeats` runs of `iters` calls of `step()`, after `warmup` calls."""
    out = None
    for _ in range(warmup):
        out = step()
    sync(out)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(iters):
            out = step()
        sync(out)
        best = min(best, time.perf_counter() - t0)
    return batch * iters / best


def _data(batch: int, grid: int, ndim: int = 2) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    shape = (batch, 1, *(grid,) * ndim)
    return rng.standard_normal(shape, dtype=np.float32), rng.standard_normal(shape, dtype=np.float32)


def measure_ours(batch: int, grid: int, warmup: int, iters: int, repeats: int, ndim: int = 2) -> dict[str, Any]:
    """Our FNO's train-step rate (``ndim``-D grid): {"samples_per_s", "params"}."""
    model = get_model(
        "fno", in_channels=1, out_channels=1, ndim=ndim, modes=MODES, width=WIDTH, depth=DEPTH, rngs=nnx.Rngs(0)
    )
    n_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
    step = make_train_step(model, nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param))
    x, y = (jnp.asarray(a) for a in _data(batch, grid, ndim))
    data = {"x": x, "y": y}
    rate = _best_rate(lambda: step(data), batch, warmup, iters, repeats, jax.block_until_ready)
    return {"samples_per_s": rate, "params": n_params}


def neuralop_kwargs(matched: bool, ndim: int = 2) -> dict[str, Any]:
    """Constructor arguments of `neuralop.models.FNO` (``ndim``-D): matched to ours, or the library defaults."""
    kw: dict[str, Any] = {"in_channels": 1, "out_channels": 1, "hidden_channels": WIDTH, "n_layers": DEPTH}
    if not matched:
        return {**kw, "n_modes": (MODES,) * ndim}
    return {
        **kw,
        # -> frequencies [-12, 12) on every axis but the last, [0, 12) on the last (rfft), see module doc
        "n_modes": (2 * MODES,) * (ndim - 1) + (2 * MODES - 1,),
        "lifting_channel_ratio": 0,  # single Linear lifting
        "projection_channel_ratio": PROJ / WIDTH,  # hidden 128
        "positional_embedding": "grid",
        "use_channel_mlp": False,
        "fno_skip": "linear",
        "norm": None,
        "factorization": None,
        "domain_padding": None,
    }


def neuralop_step(matched: bool, batch: int, grid: int, compile: bool = False, ndim: int = 2) -> tuple[Any, int]:
    """neuraloperator FNO's train step (Adam, MSE, fixed random batch) and its parameter count; with ``compile``
    the model runs under ``torch.compile`` (default inductor backend, compiled by the first call)."""
    import torch
    from neuralop.models import FNO as TorchFNO

    torch.manual_seed(0)
    model = TorchFNO(**neuralop_kwargs(matched, ndim))
    n_params = sum(p.numel() * (2 if p.is_complex() else 1) for p in model.parameters())
    forward = torch.compile(model) if compile else model
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = torch.nn.MSELoss()
    x, y = (torch.from_numpy(a) for a in _data(batch, grid, ndim))

    def step() -> Any:
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(forward(x), y)
        loss.backward()
        opt.step()
        return loss

    return step, n_params


def measure_neuralop(
    matched: bool, batch: int, grid: int, warmup: int, iters: int, repeats: int, ndim: int = 2
) -> dict[str, Any]:
    """neuraloperator FNO's train-step rate (PyTorch, CPU, ``ndim``-D grid): {"samples_per_s", "params"}."""
    step, n_params = neuralop_step(matched, batch, grid, ndim=ndim)
    rate = _best_rate(step, batch, warmup, iters, repeats, lambda loss: loss.item())
    return {"samples_per_s": rate, "params": n_params}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Our FNO vs neuraloperator's FNO: train-step samples/s on CPU.")
    parser.add_argument("--grid", type=int, default=64, help="grid points per axis (2D), default 64")
    parser.add_argument("--batch", type=int, default=16, help="batch size, default 16")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps before timing, default 3")
    parser.add_argument("--iters", type=int, default=20, help="steps per timed run, default 20")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs (best is kept), default 3")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: usable CPU cores)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this flat JSON file")
    args = parser.parse_args(argv)

    try:
        import neuralop
        import torch
    except ImportError as e:
        parser.error(f"{e}; install the CPU build of torch and `neuraloperator` to run this benchmark")
    threads = args.threads or len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)

    common = (args.batch, args.grid, args.warmup, args.iters, args.repeats)
    ours = measure_ours(*common)
    theirs = measure_neuralop(True, *common)
    defaults = measure_neuralop(False, *common)
    ratio = ours["samples_per_s"] / theirs["samples_per_s"]

    print(
        f"CPU, {threads} threads (jax {jax.__version__} / torch {torch.__version__}, "
        f"neuraloperator {neuralop.__version__}); batch {args.batch}, grid {args.grid}x{args.grid}, "
        f"best of {args.repeats} x {args.iters} steps after {args.warmup} warm-up"
    )
    print(f"{'model':34s} {'params':>10s} {'train samples/s':>16s}")
    rows = [
        ("ours (jax, fno modes=12 width=32)", ours),
        ("neuraloperator matched", theirs),
        ("neuraloperator defaults", defaults),
    ]
    for name, r in rows:
        print(f"{name:34s} {r['params']:10,d} {r['samples_per_s']:16.1f}")
    print(f"speed ratio ours / neuraloperator (matched): {ratio:.2f}")

    if args.json is not None:
        report = {
            "fno_train_step_speed_ratio_vs_neuraloperator": ratio,
            "ours_train_samples_per_s": ours["samples_per_s"],
            "neuraloperator_train_samples_per_s": theirs["samples_per_s"],
            "ours_params": ours["params"],
            "neuraloperator_params": theirs["params"],
            "neuraloperator_defaults_train_samples_per_s": defaults["samples_per_s"],
            "neuraloperator_defaults_params": defaults["params"],
            "neuraloperator_version": neuralop.__version__,
            "torch_version": torch.__version__,
            "jax_version": jax.__version__,
            "threads": threads,
            "batch": args.batch,
            "grid": args.grid,
            "warmup": args.warmup,
            "iters": args.iters,
            "repeats": args.repeats,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
