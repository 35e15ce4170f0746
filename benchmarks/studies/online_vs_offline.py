"""Online vs offline training (Melissa's headline) measured with our engine, three model/PDE pairs.

    python -m benchmarks.studies.online_vs_offline [--scale tiny|small|full] [--json FILE] [--out DIR] [--pairs ...]

Melissa (Meyer et al., ICML 2023, arXiv 2306.16133) reports that training on a live stream of
simulations beats training on a fixed dataset: fully connected +68 %, FNO +16 %, MP-PDE +7 %; the
SC23 heat case (arXiv 2309.16743) trained offline on 250 simulations for 100 epochs. Here, per pair,
both runs use the same config (``configs/*.toml`` via the config API), model, batch size and number
of gradient steps, and both go through :func:`streaming.job.run_job`:

- offline: ``solver.n_sims = N`` simulations written with :func:`streaming.offline.generate` and
  trained with ``run_job(cfg, offline=file)`` (epoch buffer: every sample once per epoch). N is
  chosen so the offline run sees each simulation many times (``epochs`` in the table);
- online: ``solver.n_sims = 0`` (an unlimited fresh stream, local backend: the solver runs in
  process, ``batch_size`` new samples enter the reservoir before each step) through a reservoir.

Pairs: MLP on heat2d (Melissa's case: 5 temperatures and t -> field), FNO on ns2d (nu = 1e-3,
64 x 64, 10 input frames -> next), MP-PDE on burgers1d (E3, K = 25 bundles). Both runs of a pair
are validated on the job's validation set (curves in the PNG) and scored at the end on one
held-out test set generated once with its own seed (``TEST_SEED``). The score is the test
relative L2 of the exported surrogate (the best by validation, the same rule for both runs):
``test_rel_l2`` = one-step (next frame / next bundle / field) relative L2, mean over samples;
``test_rollout_rel_l2`` = autoregressive rollout error over ``test_rollout_steps`` frames. MP-PDE is
rolled out over the whole trajectory after its first window (``rollout_steps=None``): each call's K
output frames become the next call's input window, so the error covers several bundles
(``test_rollout_calls``), not one step. ``test_rel_l2_identity`` and ``test_rollout_rel_l2_identity``
(per pair) score the identity baseline, the last input frame held (:class:`HeldFrame`), the same way on the
same test set; None for the MLP pair, a field model with no input frame. ``improvement_<pair>`` =
(offline - online) / offline of ``test_rel_l2``: positive when online is better.

Sizes (steps x batch; N offline simulations; online reservoir capacity / watermark):

=============== ================================ ==================================== ==============================
scale           mlp_heat2d (64x64, 101 frames)   fno_ns2d (64x64, dt 2e-2)            mppde_burgers1d (100 pts)
=============== ================================ ==================================== ==============================
tiny (tests)    20 x 8, N=2, 11 frames, n=14     6 x 4, N=1, 13 frames, n=16, w=2     6 x 4, N=1, 21 frames, K=4
small (2 CPU)   2000 x 32, N=16 (~40 epochs)     200 x 8, N=10, 21 frames (~15 ep.)   200 x 16, N=2 (~8 ep.), h64 x4
full (1 GPU)    20000 x 64, N=100 (~130 epochs)  20000 x 20, N=100, 51 frames (~100)  20000 x 16, N=32 (~50 epochs)
=============== ================================ ==================================== ==============================

``--scale small`` is sized to finish within 30 minutes on 2 CPU cores (alone); ``--scale full``
is sized for one GPU (``JAX_PLATFORMS=cuda``; the solvers run on it too). Models are the configs'
except at ``tiny`` and for MP-PDE at ``small`` (hidden 64, 4 layers instead of 128, 6: CPU time). The FNO paper's
protocol on ns2d (10 frames in, 40 out, vs its 0.0128) is :mod:`benchmarks.studies.fno_ns2d_protocol`.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from streaming.config import JobConfig, load_config
from streaming.job import build_solver, build_validation, run_job, sample_spec
from streaming.metrics import read_metrics
from streaming.offline import generate
from streaming.samples import SampleSpec
from streaming.trainer import Validation

ROOT = Path(__file__).resolve().parents[2]  # the repository (configs/)

TEST_SEED = 20231  # the held-out test set; the validation set uses the config's validation.seed
PAIRS = {"mlp_heat2d": "heat_mlp.toml", "fno_ns2d": "ns2d_fno.toml", "mppde_burgers1d": "burgers_mppde.toml"}
SCALES = ("tiny", "small", "full")
# Every run: in-process solver (deterministic, keeps CPU use sane), no progress bar or TensorBoard,
# one checkpoint at the end.
COMMON = {"workers.backend": "local", "logging.progress": "false", "logging.tensorboard": "false",
          "checkpoint.interval": "1000000000"}
# Training options each pair keeps whatever its shipped config says, so recorded figures stay reproducible:
# one model call per sample, the FNO predicting the next state, MP-PDE at the paper's lr (configs/ns2d_fno.toml
# and configs/burgers_mppde.toml now train through an unroll curriculum for their own CPU budgets); and a
# batch's worth of new samples per step (buffer.ingest_ratio unset, pair_config).
PINNED: dict[str, dict[str, str]] = {
    "fno_ns2d": {"model.predict": '"state"', "optim.unroll": "{ start = 1, end = 1 }"},
    "mppde_burgers1d": {"optim.lr": "1e-4", "optim.unroll": "{ start = 1, end = 1 }"},
}


@dataclass(frozen=True)
class PairSize:
    """One pair at one scale: config overrides, N offline simulations, test simulations, online buffer."""

    overrides: dict[str, str]
    n_offline: int
    n_test: int
    online_capacity: int
    online_watermark: int
    rollout_steps: int | None = 10  # None: every frame after the first window (validation and test)
    extra: dict[str, Any] = field(default_factory=dict)


def _o(**kw: Any) -> dict[str, str]:
    """``a__b=v`` keyword overrides to ``{"a.b": "v"}`` (``--set`` syntax)."""
    return {k.replace("__", "."): str(v) for k, v in kw.items()}


# heat2d: steps 100 -> 101 frames; ns2d: dt 2e-2 (ETDRK4, checked against dt 1e-2: 7e-5 relative
# difference over 50 time units), every 50 -> frames 1 time unit apart as in the FNO data (Li et al.
# 2020); burgers1d: the MP-PDE E3 setting of configs/burgers_mppde.toml (frames 0.016 apart).
SIZES: dict[str, dict[str, PairSize]] = {
    "tiny": {
        "mlp_heat2d": PairSize(_o(solver__config="{ n = 14 }", solver__steps=10, model__hparams="{ hidden = [16] }",
                                  optim__steps=20, optim__batch_size=8, validation__n_sims=2,
                                  validation__interval=10, workers__sims_per_task=2, workers__chunk_frames=11),
                               n_offline=2, n_test=2, online_capacity=64, online_watermark=16),
        "fno_ns2d": PairSize(_o(solver__config="{ n = 16, dt = 2e-2 }", solver__steps=600, solver__every=50,
                                sample__window=2, model__hparams="{ modes = 4, width = 8, depth = 1 }",
                                optim__steps=6, optim__batch_size=4, validation__n_sims=2, validation__interval=3,
                                validation__rollout_steps=2, workers__sims_per_task=2, workers__chunk_frames=13),
                             n_offline=1, n_test=2, online_capacity=32, online_watermark=8, rollout_steps=2),
        "mppde_burgers1d": PairSize(_o(solver__steps=80, sample__window=4, sample__horizon=4,
                                       model__hparams="{ hidden = 16, num_layers = 1, neighbors = 2, periodic = true, "
                                                      "domain_length = 16.0, dt = 0.016 }",
                                       optim__steps=6, optim__batch_size=4, validation__n_sims=2,
                                       validation__interval=3, workers__sims_per_task=2, workers__chunk_frames=21),
                                    n_offline=1, n_test=2, online_capacity=64, online_watermark=8, rollout_steps=None),
    },
    "small": {
        "mlp_heat2d": PairSize(_o(optim__steps=2000, optim__batch_size=32, validation__n_sims=8,
                                  validation__interval=200, workers__sims_per_task=8, workers__chunk_frames=101),
                               n_offline=16, n_test=16, online_capacity=4000, online_watermark=1000),
        "fno_ns2d": PairSize(_o(solver__config="{ n = 64, dt = 2e-2 }", solver__steps=1000, solver__every=50,
                                optim__steps=200, optim__batch_size=8, validation__n_sims=4,
                                validation__interval=50, validation__rollout_steps=10, workers__sims_per_task=4,
                                workers__chunk_frames=21),
                             n_offline=10, n_test=8, online_capacity=500, online_watermark=80),
        "mppde_burgers1d": PairSize(_o(model__hparams="{ hidden = 64, num_layers = 4, neighbors = 3, periodic = true, "
                                                      "domain_length = 16.0, dt = 0.016 }",
                                       optim__steps=200, optim__batch_size=16, validation__n_sims=4,
                                       validation__interval=50, workers__sims_per_task=8, workers__chunk_frames=251),
                                    n_offline=2, n_test=8, online_capacity=2000, online_watermark=400,
                                    rollout_steps=None),
    },
    "full": {
        "mlp_heat2d": PairSize(_o(optim__steps=20000, optim__batch_size=64, validation__n_sims=16,
                                  validation__interval=1000, workers__sims_per_task=16, workers__chunk_frames=101),
                               n_offline=100, n_test=32, online_capacity=20000, online_watermark=1000),
        "fno_ns2d": PairSize(_o(solver__config="{ n = 64, dt = 2e-2 }", solver__steps=2500, solver__every=50,
                                optim__steps=20000, optim__batch_size=20, validation__n_sims=16,
                                validation__interval=1000, validation__rollout_steps=40, workers__sims_per_task=16,
                                workers__chunk_frames=51),
                             n_offline=100, n_test=32, online_capacity=20000, online_watermark=2000, rollout_steps=40),
        "mppde_burgers1d": PairSize(_o(optim__steps=20000, optim__batch_size=16, validation__n_sims=16,
                                       validation__interval=1000, workers__sims_per_task=16,
                                       workers__chunk_frames=251),
                                    n_offline=32, n_test=32, online_capacity=20000, online_watermark=2000,
                                    rollout_steps=None),
    },
}


def full_rollout_steps(cfg: JobConfig) -> int:
    """Frames of a simulation after the first input window: the longest rollout the trajectories score."""
    return cfg.solver.steps // cfg.solver.every + 1 - (0 if cfg.sample.kind == "field" else cfg.sample.window)


def rollout_steps(pair: str, scale: str, cfg: JobConfig) -> int:
    """The pair's rollout length at ``scale`` (``PairSize.rollout_steps``, None: the full trajectory)."""
    steps = SIZES[scale][pair].rollout_steps
    return full_rollout_steps(cfg) if steps is None else steps


def pair_config(pair: str, scale: str, run_dir: str | Path) -> JobConfig:
    """The shared config of a pair at a scale (the TOML, the scale's overrides, runs under ``run_dir``).

    A pair rolled out over its full trajectories validates over them too (``validation.rollout_steps``)."""
    size = SIZES[scale][pair]
    cfg = load_config(ROOT / "configs" / PAIRS[pair], {**COMMON, **PINNED.get(pair, {}), **size.overrides,
                                                       "logging.run_dir": str(run_dir)})
    cfg = with_updates(cfg, buffer={"ingest_ratio": None})
    if size.rollout_steps is None:
        cfg = with_updates(cfg, validation={"rollout_steps": full_rollout_steps(cfg)})
    return cfg


def with_updates(cfg: JobConfig, **sections: dict[str, Any]) -> JobConfig:
    """``cfg`` with fields of some sections replaced, validated again (``solver={"n_sims": 0}``)."""
    data = cfg.model_dump()
    for name, values in sections.items():
        data[name].update(values)
    return JobConfig.model_validate(data)


def test_set(cfg: JobConfig, n_sims: int, rollout_steps: int, seed: int = TEST_SEED) -> Validation:
    """Held-out simulations drawn like the validation set but with their own seed."""
    cfg = with_updates(cfg, validation={"n_sims": n_sims, "seed": seed, "rollout_steps": rollout_steps})
    return build_validation(cfg, build_solver(cfg))


def run_offline(cfg: JobConfig, n_sims: int, data_dir: Path, name: str) -> dict:
    """Write ``n_sims`` simulations to HDF5, then train on them by epochs; returns the run summary."""
    cfg = with_updates(cfg, solver={"n_sims": n_sims}, logging={"name": name})
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / f"{name}.h5"
    t0 = time.time()
    generate(cfg, path, show_progress=False)
    gen_s = time.time() - t0
    summary = run_job(cfg, offline=path)
    return {**summary, "generate_seconds": round(gen_s, 2)}


def run_online(cfg: JobConfig, capacity: int, watermark: int, name: str) -> dict:
    """Train on an unlimited fresh stream through a reservoir; returns the run summary."""
    cfg = with_updates(cfg, solver={"n_sims": 0}, logging={"name": name},
                       buffer={"kind": "reservoir", "capacity": capacity, "watermark": watermark, "max_reuse": None})
    return run_job(cfg)


def score(run_dir: str | Path, test: Validation, cfg: JobConfig) -> dict[str, float]:
    """Test relative L2 of the run's exported (best-by-validation) surrogate."""
    from surrogates.surrogate import Surrogate

    sur = Surrogate.load(Path(run_dir) / "surrogate")
    s = test.score(sur, sample_spec(cfg, build_solver(cfg)))
    return {"test_rel_l2": s["val_one_step_rel_l2"], "test_rollout_rel_l2": s["val_rollout_rel_l2"]}


class HeldFrame:
    """The identity baseline as a surrogate: every prediction is the last input frame, held.

    ``step`` and ``rollout`` take and return the shapes of :meth:`surrogates.surrogate.Surrogate.step` and
    ``rollout`` (batched), so :meth:`Validation.score` scores it as it scores a trained surrogate."""

    def __init__(self, spec: SampleSpec):
        if spec.kind == "field":
            raise ValueError("HeldFrame: a 'field' sample has no input frame to hold; score the identity only for "
                             "'next_step' and 'bundle' models")
        self.spec = spec

    def last_frame(self, fields: np.ndarray) -> np.ndarray:
        """``(B, C, *grid)`` from a window ``(B, W, C, *grid)`` (or ``(B, C, *grid)`` when W = 1)."""
        fields = np.asarray(fields)
        return fields[:, -1] if self.spec.window > 1 else fields

    def step(self, fields: np.ndarray, cond: Any = None, t: Any = 0.0, hold: Any = None) -> np.ndarray:
        """``(B, C, *grid)``, or ``(B, K, C, *grid)`` for a bundle of K frames."""
        last = self.last_frame(fields)
        if self.spec.kind == "bundle":
            return np.repeat(last[:, None], self.spec.horizon, axis=1)
        return last

    def rollout(self, fields0: np.ndarray, n_steps: int, cond: Any = None, t0: Any = 0.0,
                hold: Any = None) -> np.ndarray:
        """``(B, n_steps + 1, C, *grid)``: the last frame of ``fields0`` at every step."""
        return np.repeat(self.last_frame(fields0)[:, None], n_steps + 1, axis=1)


def score_identity(test: Validation, cfg: JobConfig) -> dict[str, float | None]:
    """Test relative L2 of the identity baseline (:class:`HeldFrame`), one step and over the rollout; None for
    a field model, which reads no input frame."""
    spec = sample_spec(cfg, build_solver(cfg))
    if spec.kind == "field":
        return {"test_rel_l2_identity": None, "test_rollout_rel_l2_identity": None}
    s = test.score(HeldFrame(spec), spec)
    return {"test_rel_l2_identity": s["val_one_step_rel_l2"], "test_rollout_rel_l2_identity": s["val_rollout_rel_l2"]}


def rollout_extent(test: Validation, cfg: JobConfig) -> dict[str, int]:
    """Frames the test rollout scores and the autoregressive model calls (bundles of K frames) it takes."""
    if cfg.sample.kind == "field":
        return {"test_rollout_steps": test.frames.shape[1] - 1, "test_rollout_calls": 0}
    steps = min(test.rollout_steps, test.frames.shape[1] - cfg.sample.window)
    per_call = cfg.sample.horizon if cfg.sample.kind == "bundle" else 1
    return {"test_rollout_steps": steps, "test_rollout_calls": -(-steps // per_call)}


def val_curve(run_dir: str | Path) -> tuple[list[int], list[float]]:
    """(steps, validation one-step relative L2) from the run's ``metrics.jsonl``."""
    recs = [r for r in read_metrics(Path(run_dir) / "metrics.jsonl") if "val_one_step_rel_l2" in r]
    return [int(r["step"]) for r in recs], [float(r["val_one_step_rel_l2"]) for r in recs]


def improvement(offline: float, online: float) -> float:
    """(offline - online) / offline: positive when online has the lower error."""
    return (offline - online) / offline


def _record(summary: dict, scores: dict, n_samples_dataset: int | None, seconds: float) -> dict[str, Any]:
    buf = summary["buffer"]
    rec = {**scores, "best_val_rel_l2": summary["best_val_one_step_rel_l2"],
           "final_val_rel_l2": summary["last_val"].get("val_one_step_rel_l2"), "steps": summary["steps"],
           "sims_trained_on": summary["sims_done"], "samples_received": summary["samples_received"],
           "draws_per_sample": buf["n_drawn"] / max(summary["samples_received"], 1), "seconds": round(seconds, 1)}
    if n_samples_dataset:
        rec["epochs"] = buf["n_drawn"] / n_samples_dataset
    return rec


def run_pair(pair: str, scale: str, out: Path) -> dict[str, Any]:
    """Offline and online runs of one pair, scored on one test set; returns the record (and the curves)."""
    size = SIZES[scale][pair]
    runs = out / "runs"
    cfg = pair_config(pair, scale, runs)
    for name in (f"{pair}-offline", f"{pair}-online"):
        shutil.rmtree(runs / name, ignore_errors=True)
    t0 = time.time()
    test = test_set(cfg, size.n_test, rollout_steps(pair, scale, cfg))
    test_s = time.time() - t0
    t0 = time.time()
    off = run_offline(cfg, size.n_offline, out / "data", f"{pair}-offline")
    off_s = time.time() - t0
    t0 = time.time()
    on = run_online(cfg, size.online_capacity, size.online_watermark, f"{pair}-online")
    on_s = time.time() - t0
    rec_off = _record(off, score(off["run_dir"], test, cfg), off["samples_received"], off_s)
    rec_on = _record(on, score(on["run_dir"], test, cfg), None, on_s)
    return {
        "offline": {**rec_off, "n_sims": size.n_offline, "generate_seconds": off["generate_seconds"]},
        "online": {**rec_on, "reservoir_capacity": size.online_capacity},
        "batch_size": cfg.optim.batch_size, "n_test_sims": len(test.frames), "test_seconds": round(test_s, 1),
        **rollout_extent(test, cfg), **score_identity(test, cfg),
        "improvement": improvement(rec_off["test_rel_l2"], rec_on["test_rel_l2"]),
        "improvement_rollout": improvement(rec_off["test_rollout_rel_l2"], rec_on["test_rollout_rel_l2"]),
        "curves": {"offline": val_curve(off["run_dir"]), "online": val_curve(on["run_dir"])},
    }


def plot_curves(pair: str, rec: dict[str, Any], path: Path) -> Path:
    """Validation one-step relative L2 vs gradient step of both runs of a pair (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for mode, style in (("offline", "o-"), ("online", "s-")):
        steps, val = rec["curves"][mode]
        r = rec[mode]
        label = (f"offline, {r['n_sims']} sims x {r['epochs']:.0f} epochs" if mode == "offline"
                 else f"online, {r['sims_trained_on']} fresh sims")
        ax.plot(steps, val, style, ms=3, label=f"{label} (test {r['test_rel_l2']:.3g})")
    ax.set(xlabel="gradient step", ylabel="validation relative L2 (one step)", yscale="log",
           title=f"{pair}: improvement {rec['improvement']:+.1%}")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def format_table(results: dict[str, Any]) -> str:
    """A markdown table of the study."""
    head = ("| pair | offline N sims (epochs) | online fresh sims | steps x batch | test rel. L2 offline | "
            "online | identity | improvement | rollout frames (model calls) | rollout offline | rollout online | "
            "rollout identity |")
    lines = [head, "|" + "---|" * 12]
    for pair, r in results["pairs"].items():
        off, on = r["offline"], r["online"]
        lines.append(f"| {pair} | {off['n_sims']} ({off['epochs']:.1f}) | {on['sims_trained_on']} | "
                     f"{off['steps']} x {r['batch_size']} | {off['test_rel_l2']:.4g} | {on['test_rel_l2']:.4g} | "
                     f"{_or_none(r['test_rel_l2_identity'])} | {r['improvement']:+.1%} | "
                     f"{r['test_rollout_steps']} ({r['test_rollout_calls']}) | {off['test_rollout_rel_l2']:.4g} | "
                     f"{on['test_rollout_rel_l2']:.4g} | {_or_none(r['test_rollout_rel_l2_identity'])} |")
    return "\n".join(lines)


def _or_none(v: float | None) -> str:
    return "none" if v is None else f"{v:.4g}"


def run_study(scale: str, out: str | Path, pairs: list[str] | None = None,
              figures: str | Path | None = None, json_path: str | Path | None = None) -> dict[str, Any]:
    """Run the pairs at ``scale``; returns the JSON-ready results (flat ``improvement_<pair>`` keys too).

    With ``json_path`` the results so far are written there after every pair.
    """
    if scale not in SCALES:
        raise ValueError(f"--scale {scale!r}: allowed {', '.join(SCALES)}")
    pairs = pairs or list(PAIRS)
    unknown = sorted(set(pairs) - set(PAIRS))
    if unknown:
        raise ValueError(f"--pairs {', '.join(unknown)}: allowed {', '.join(PAIRS)}")
    out = Path(out)
    fig_dir = Path(figures) if figures is not None else out / "figures"
    t0 = time.time()
    results: dict[str, Any] = {"scale": scale, "test_seed": TEST_SEED, "pairs": {}, "figures": {}}
    for pair in pairs:
        print(f"[online_vs_offline] {pair} ({scale}) ...", file=sys.stderr, flush=True)
        rec = run_pair(pair, scale, out)
        results["pairs"][pair] = rec
        results[f"improvement_{pair}"] = rec["improvement"]
        png = plot_curves(pair, rec, fig_dir / f"online_vs_offline_{scale}_{pair}.png")
        results["figures"][pair] = str(png)
        results["seconds"] = round(time.time() - t0, 1)
        if json_path is not None:
            write_json(results, json_path)
    return results


def write_json(results: dict[str, Any], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, default=_json_default) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--scale", choices=SCALES, default="small")
    p.add_argument("--json", metavar="FILE", help="write the results here")
    p.add_argument("--out", metavar="DIR", default="runs/online_vs_offline",
                   help="runs, datasets and (unless --figures) figures go here")
    p.add_argument("--figures", metavar="DIR", help="where the PNGs go (default OUT/figures)")
    p.add_argument("--pairs", nargs="+", choices=list(PAIRS), help="a subset of the pairs")
    args = p.parse_args(argv)
    results = run_study(args.scale, args.out, args.pairs, args.figures, args.json)
    print(format_table(results))
    print(f"total {results['seconds']:.0f} s; figures: {', '.join(results['figures'].values())}")
    bad = [k for k, v in results.items() if k.startswith("improvement_") and not math.isfinite(v)]
    return 1 if bad else 0


def _json_default(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    raise TypeError(f"cannot write {type(v).__name__} to JSON")


if __name__ == "__main__":
    sys.exit(main())
