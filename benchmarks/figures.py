"""PNG figures of an evaluation (:mod:`benchmarks.evaluate`): error against rollout step; truth, prediction, error.

- :func:`plot_error_vs_step`: a metric of ``result["per_step"]`` (default NMSE) against the rollout step, the
  surrogate beside the identity baseline (log scale when every value is positive).
- :func:`plot_case`: one rollout. 2D fields: for each channel three rows (truth, prediction, |error|) at a few
  evenly spaced frames; truth and prediction share one colour scale. 1D fields: space-time images of the three.
  3D fields are shown through their middle slice along the last axes.
- :func:`write_figures`: both for a result, into a directory.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

__all__ = ["plot_case", "plot_error_vs_step", "write_figures"]


def plot_error_vs_step(result: Mapping[str, Any], out: str | Path, metric: str = "NMSE") -> Path:
    """``result["per_step"][model][metric]`` against the rollout step for the surrogate and the identity baseline."""
    per = result["per_step"]
    steps = np.asarray(per["step"])
    fig, ax = plt.subplots(figsize=(6, 4))
    values = []
    for model, style in (("surrogate", "-o"), ("identity", "--s")):
        v = np.asarray(per[model][metric], np.float64)
        values.append(v)
        ax.plot(steps, v, style, markersize=3, label=model)
    finite = np.concatenate(values)
    finite = finite[np.isfinite(finite)]
    if finite.size and np.all(finite > 0):
        ax.set_yscale("log")
    s = result["surrogate"]
    ax.set(xlabel=f"rollout step (dt = {s['dt']:g})", ylabel=metric, title=f"{s['model']} ({s['solver']}): {metric}")
    ax.grid(True, alpha=0.3)
    ax.legend()
    return _save(fig, out)


def _frame2d(a: np.ndarray) -> np.ndarray:
    """A field ``(*grid)`` as a 2D image: 3D fields are cut through the middle of their last axis."""
    while a.ndim > 2:
        a = a[..., a.shape[-1] // 2]
    return a


def plot_case(
    truth: np.ndarray,
    prediction: np.ndarray,
    t: Sequence[float],
    channels: Sequence[str],
    out: str | Path,
    *,
    title: str = "",
    n_frames: int = 4,
) -> Path:
    """Truth, prediction and |error| of one rollout; ``truth``, ``prediction``: ``(T, C, *grid)``, ``t``: ``(T,)``."""
    truth, prediction = np.asarray(truth, np.float64), np.asarray(prediction, np.float64)
    if truth.shape != prediction.shape or truth.ndim < 3 or truth.shape[1] != len(channels):
        raise ValueError(
            f"plot_case: truth {truth.shape} and prediction {prediction.shape} must both be (T, C, *grid) with "
            f"C = {len(channels)}"
        )
    err = np.abs(prediction - truth)
    t = np.asarray(t, np.float64)
    n_t = truth.shape[0]
    rows = ("truth", "prediction", "|error|")
    if truth.ndim == 3:  # 1D: space-time images
        fig, axes = plt.subplots(
            len(channels), 3, figsize=(13, 3 * len(channels) + 0.5), squeeze=False, layout="constrained"
        )
        for c, name in enumerate(channels):
            lo, hi = _range(truth[:, c], prediction[:, c])
            for j, (label, data) in enumerate(zip(rows, (truth, prediction, err), strict=True)):
                ax = axes[c, j]
                kw = {"vmin": lo, "vmax": hi, "cmap": "RdBu_r"} if j < 2 else {"cmap": "magma"}
                im = ax.imshow(data[:, c], aspect="auto", origin="lower", extent=(0, data.shape[-1], t[0], t[-1]), **kw)
                ax.set(title=f"{name}: {label}", xlabel="x index", ylabel="t")
                fig.colorbar(im, ax=ax)
    else:
        idx = np.unique(np.linspace(0, n_t - 1, max(1, min(n_frames, n_t))).round().astype(int))
        fig, axes = plt.subplots(
            3 * len(channels), len(idx), figsize=(2.4 * len(idx) + 1, 2.3 * 3 * len(channels)), squeeze=False
        )
        for c, name in enumerate(channels):
            lo, hi = _range(truth[:, c], prediction[:, c])
            emax = float(np.nanmax(err[:, c])) if np.isfinite(err[:, c]).any() else 1.0
            for r, (label, data) in enumerate(zip(rows, (truth, prediction, err), strict=True)):
                for j, i in enumerate(idx):
                    ax = axes[3 * c + r, j]
                    kw = (
                        {"vmin": lo, "vmax": hi, "cmap": "viridis"}
                        if r < 2
                        else {"vmin": 0, "vmax": emax or 1.0, "cmap": "magma"}
                    )
                    im = ax.imshow(_frame2d(data[i, c]).T, origin="lower", **kw)
                    ax.set_xticks([])
                    ax.set_yticks([])
                    if r == 0:
                        ax.set_title(f"t = {t[i]:.3g}", fontsize=8)
                    if j == 0:
                        ax.set_ylabel(f"{name}\n{label}", fontsize=8)
                fig.colorbar(im, ax=axes[3 * c + r, :].tolist(), shrink=0.8)
    if title:
        fig.suptitle(title, fontsize=9)
    return _save(fig, out)


def write_figures(result: Mapping[str, Any], out_dir: str | Path, metric: str = "NMSE") -> list[Path]:
    """``error_vs_step.png`` and one ``case_<sim>.png`` per kept example (``result["examples"]``); returns the paths."""
    out_dir = Path(out_dir)
    paths = [plot_error_vs_step(result, out_dir / "error_vs_step.png", metric)]
    ex = result.get("examples")
    if ex:
        s = result["surrogate"]
        for k, sim in enumerate(ex["sims"]):
            title = f"{s['model']} ({s['solver']}) rollout of simulation {sim}"
            paths.append(
                plot_case(
                    ex["truth"][k],
                    ex["prediction"][k],
                    ex["t"],
                    ex["channels"],
                    out_dir / f"case_{sim}.png",
                    title=title,
                )
            )
    return paths


def _range(*arrays: np.ndarray) -> tuple[float, float]:
    """Shared colour range of the finite values (the truth's alone when the prediction blew up)."""
    vals = np.concatenate([a[np.isfinite(a)].ravel() for a in arrays])
    if vals.size == 0:
        return 0.0, 1.0
    lo, hi = float(np.percentile(vals, 0.5)), float(np.percentile(vals, 99.5))
    truth = arrays[0][np.isfinite(arrays[0])]
    if truth.size:  # keep the truth's full range visible
        lo, hi = min(lo, float(truth.min())), max(hi, float(truth.max()))
    return (lo, hi) if hi > lo else (lo - 0.5, hi + 0.5)


def _save(fig: plt.Figure, out: str | Path) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return out
