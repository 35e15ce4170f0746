"""The FNO paper's Navier-Stokes bar, trained online: FNO-2D on ns2d, nu = 1e-3, 64 x 64.

    python -m benchmarks.studies.fno_ns2d_protocol [--scale tiny|reduced|full] [--json FILE] [--out DIR]

Protocol (Li et al. 2020, arXiv:2010.08895, Table 1; ``fourier_2d_time.py``): vorticity frames one
time unit apart, T = 50 (frames at t = 1..50; t = 0 is the initial field, not part of the data);
the model reads frames 1..10 and predicts frames 11..50 autoregressively, one frame per call, the
10-frame window sliding over its own predictions. Score: relative L2 of the whole predicted
trajectory (40 x 64 x 64) per test simulation, ``||pred - y|| / ||y||``, mean over the test set
(``LpLoss.rel`` on the flattened trajectory, ``test_l2_full``). The paper's FNO-2D: **0.0128**
with 1000 fixed training simulations, 500 epochs of batch 20 (25,000 steps, each back-propagating
through the 40-step rollout), 200 test simulations.

Ours: ``configs/ns2d_fno.toml`` (FNO modes 12, width 20, depth 4; AdamW lr 1e-3, wd 1e-4, cosine;
``next_step`` samples with a 10-frame window, the next state predicted, teacher-forced one-step MSE
loss, no rollout training: pinned by ``online_vs_offline.PINNED``), trained *online* on a fresh stream
(local backend, reservoir) through :func:`streaming.job.run_job`, scored on test simulations drawn with
their own seed. The solver runs at 64 x 64 with ETDRK4, dt = 2e-2 (the paper's generator: 256 x 256, dt
= 1e-4, Crank-Nicolson viscosity + explicit advection, then subsampled; see :mod:`solvers.ns2d`), so the
data are close to but not the paper's files. The exported surrogate is the best by validation (4-16
simulations).

Scales: ``tiny`` (tests; 16 x 16, 13 frames, window 2: not the protocol), ``reduced`` (2 CPU
cores: 150 steps x batch 20, about 75 fresh simulations, 8 test simulations), ``full`` (one GPU):

    JAX_PLATFORMS=cuda python -m benchmarks.studies.fno_ns2d_protocol --scale full \\
        --json benchmarks/results/fno_ns2d_protocol_full.json

(50,000 steps x batch 20 = 1M one-step samples from about 24,000 fresh simulations, 200 test
simulations, reservoir 20,000.)
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.studies.online_vs_offline import COMMON, PINNED, run_online, test_set, write_json
from streaming.config import JobConfig, load_config

ROOT = Path(__file__).resolve().parents[2]  # the repository (configs/)

PAPER_REL_L2 = 0.0128  # Li et al. 2020, Table 1: FNO-2D, nu = 1e-3, T = 50, N = 1000 training simulations
PAPER_BUDGET = {"training_sims": 1000, "epochs": 500, "batch_size": 20, "steps": 25000, "test_sims": 200}
N_IN, N_OUT = 10, 40  # the paper's protocol: 10 frames in, 40 predicted

# (config overrides, test simulations, reservoir capacity, watermark, frames in, frames out)
SCALES: dict[str, tuple[dict[str, str], int, int, int, int, int]] = {
    "tiny": ({"solver.config": "{ n = 16, dt = 2e-2 }", "solver.steps": "600", "solver.every": "50",
              "sample.window": "2", "model.hparams": "{ modes = 4, width = 8, depth = 1 }", "optim.steps": "6",
              "optim.batch_size": "4", "validation.n_sims": "2", "validation.interval": "3",
              "validation.rollout_steps": "4", "workers.sims_per_task": "2", "workers.chunk_frames": "13"},
             2, 32, 8, 2, 8),
    "reduced": ({"solver.config": "{ n = 64, dt = 2e-2 }", "solver.steps": "2500", "solver.every": "50",
                 "optim.steps": "150", "optim.batch_size": "20", "validation.n_sims": "2",
                 "validation.interval": "50", "validation.rollout_steps": "40", "workers.sims_per_task": "4",
                 "workers.chunk_frames": "51"},
                8, 2000, 200, N_IN, N_OUT),
    "full": ({"solver.config": "{ n = 64, dt = 2e-2 }", "solver.steps": "2500", "solver.every": "50",
              "optim.steps": "50000", "optim.batch_size": "20", "validation.n_sims": "16",
              "validation.interval": "1000", "validation.rollout_steps": "40", "workers.sims_per_task": "16",
              "workers.chunk_frames": "51"},
             200, 20000, 2000, N_IN, N_OUT),
}


def protocol_config(scale: str, run_dir: str | Path) -> JobConfig:
    return load_config(ROOT / "configs" / "ns2d_fno.toml",
                       {**COMMON, **PINNED["fno_ns2d"], **SCALES[scale][0], "logging.run_dir": str(run_dir)})


def trajectory_rel_l2(sur: Any, frames: np.ndarray, n_in: int, n_out: int, batch: int = 16) -> np.ndarray:
    """Per-simulation relative L2 of the ``n_out``-frame autoregressive prediction from frames ``1..n_in``.

    frames: ``(S, T + 1, C, H, W)`` at t = 0..T (frame 0 is the initial field, left out as in the
    FNO data). Returns ``(S,)``: ``||pred - y||_2 / ||y||_2`` over the flattened ``(n_out, C, H, W)``.
    """
    if frames.ndim != 5 or frames.shape[1] < 1 + n_in + n_out:
        raise ValueError(f"frames {frames.shape}: need (S, >= {1 + n_in + n_out}, C, H, W); raise solver.steps")
    errs = []
    for i in range(0, len(frames), batch):
        f = frames[i:i + batch]
        x, y = f[:, 1:1 + n_in], f[:, 1 + n_in:1 + n_in + n_out]
        pred = np.asarray(sur.rollout(x if n_in > 1 else x[:, 0], n_out, t0=float(n_in)))[:, 1:]
        d = (pred - y).reshape(len(f), -1)
        errs.append(np.linalg.norm(d, axis=1) / np.linalg.norm(y.reshape(len(f), -1), axis=1))
    return np.concatenate(errs)


def run_protocol(scale: str, out: str | Path) -> dict[str, Any]:
    """Train online at ``scale`` and score the paper's protocol; returns the JSON-ready record."""
    from surrogates.surrogate import Surrogate

    if scale not in SCALES:
        raise ValueError(f"--scale {scale!r}: allowed {', '.join(SCALES)}")
    _, n_test, capacity, watermark, n_in, n_out = SCALES[scale]
    out = Path(out)
    cfg = protocol_config(scale, out / "runs")
    shutil.rmtree(out / "runs" / "fno_ns2d_protocol", ignore_errors=True)
    t0 = time.time()
    test = test_set(cfg, n_test, n_out)
    test_s = time.time() - t0
    t0 = time.time()
    summary = run_online(cfg, capacity, watermark, "fno_ns2d_protocol")
    train_s = time.time() - t0
    sur = Surrogate.load(Path(summary["run_dir"]) / "surrogate")
    err = trajectory_rel_l2(sur, test.frames, n_in, n_out)
    b = cfg.optim.batch_size
    return {
        "scale": scale, "rel_l2": float(err.mean()), "rel_l2_std": float(err.std()), "paper_rel_l2": PAPER_REL_L2,
        "ratio_to_paper": float(err.mean()) / PAPER_REL_L2, "n_test_sims": len(err), "frames_in": n_in,
        "frames_out": n_out,
        "budget": {"steps": summary["steps"], "batch_size": b, "one_step_samples_drawn": summary["steps"] * b,
                   "fresh_sims": summary["sims_done"], "samples_received": summary["samples_received"],
                   "train_seconds": round(train_s, 1), "test_gen_seconds": round(test_s, 1)},
        "paper_budget": PAPER_BUDGET, "best_val_one_step_rel_l2": summary["best_val_one_step_rel_l2"],
        "val_rollout_rel_l2_last": summary["last_val"].get("val_rollout_rel_l2"),
        "model": dict(cfg.model.hparams), "solver": dict(cfg.solver.config),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--scale", choices=list(SCALES), default="reduced")
    p.add_argument("--json", metavar="FILE")
    p.add_argument("--out", metavar="DIR", default="runs/fno_ns2d_protocol")
    args = p.parse_args(argv)
    r = run_protocol(args.scale, args.out)
    bud = r["budget"]
    print("| | rel. L2 (10 in, 40 out) | training data | steps x batch |")
    print("|---|---|---|---|")
    print(f"| ours, online ({r['scale']}) | {r['rel_l2']:.4f} +- {r['rel_l2_std']:.4f} ({r['n_test_sims']} test "
          f"sims) | {bud['fresh_sims']} fresh sims | {bud['steps']} x {bud['batch_size']} one-step |")
    print(f"| FNO-2D, Li et al. 2020 | {PAPER_REL_L2} (200 test sims) | 1000 sims x 500 epochs | "
          "25000 x 20 trajectories (40-step rollout loss) |")
    print(f"train {bud['train_seconds']:.0f} s")
    if args.json:
        write_json(r, args.json)
    return 0 if np.isfinite(r["rel_l2"]) else 1


if __name__ == "__main__":
    sys.exit(main())
