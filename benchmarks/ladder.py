"""Equal-accuracy and equal-cost comparison of a surrogate with a ladder of solver settings.

A *rung* is one solver setting (time step, grid, scheme) with its wall time for a batched rollout and its
rollout error against a fine reference on the same frames. Following McGreivy & Hakim (Nature Machine
Intelligence 2024, "Weak baselines and reporting biases lead to overoptimism in machine learning for
fluid-related PDEs"), a surrogate is compared at equal accuracy (the cheapest rung at least as accurate, over
the surrogate's time) and at equal cost (the most accurate rung no slower, its error over the surrogate's).
A rung that blew up (non-finite frames) is kept in the record as unstable and never chosen.

Also here: resampling of solver frames onto the evaluation grid (spectral for periodic fields, linear between
grid nodes for fields that include their boundary) and the Pareto figure (error against wall time).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


class LadderError(ValueError):
    """A ladder or a comparison that cannot be scored; the message names the problem and the fix."""


@dataclass(frozen=True)
class Rung:
    """One solver setting: ``label`` (e.g. ``"n=32, dt=0.01"``), ``setting`` (solver config overrides),
    ``seconds`` (wall time of the batched rollout), ``error`` (rollout relative L2 against the reference; None
    when the rung blew up) and ``stable`` (False when its frames were not all finite)."""

    label: str
    setting: Mapping[str, Any]
    seconds: float
    error: float | None
    stable: bool
    extra: Mapping[str, Any] = field(default_factory=dict)

    def usable(self) -> bool:
        """Stable, with a finite error and a finite positive time."""
        return (self.stable and self.error is not None and math.isfinite(self.error)
                and math.isfinite(self.seconds) and self.seconds > 0)

    def as_dict(self) -> dict[str, Any]:
        return {"label": self.label, "setting": dict(self.setting), "seconds": self.seconds, "error": self.error,
                "stable": self.stable, **dict(self.extra)}


def _check(sur_error: float, sur_seconds: float) -> None:
    if not (math.isfinite(sur_error) and sur_error >= 0):
        raise LadderError(f"the surrogate's error {sur_error!r} must be a finite number >= 0 "
                          "(did its rollout blow up?)")
    if not (math.isfinite(sur_seconds) and sur_seconds > 0):
        raise LadderError(f"the surrogate's wall time {sur_seconds!r} s must be a finite number > 0")


def equal_accuracy(rungs: Sequence[Rung], sur_error: float, sur_seconds: float) -> dict[str, Any]:
    """The cheapest usable rung whose error is at most ``sur_error``, and its time over ``sur_seconds``.

    Returns ``speedup`` (None when no rung is that accurate), ``rung`` (its label or None) and ``finest``
    (the lowest-error usable rung as a dict, for the record when none reaches the surrogate; None if no rung
    is usable). Ties in time go to the more accurate rung.
    """
    _check(sur_error, sur_seconds)
    ok = [r for r in rungs if r.usable()]
    finest = min(ok, key=lambda r: (r.error, r.seconds)).as_dict() if ok else None
    good = [r for r in ok if r.error <= sur_error]
    if not good:
        return {"speedup": None, "rung": None, "finest": finest}
    best = min(good, key=lambda r: (r.seconds, r.error))
    return {"speedup": best.seconds / sur_seconds, "rung": best.label, "finest": finest}


def equal_cost(rungs: Sequence[Rung], sur_error: float, sur_seconds: float) -> dict[str, Any]:
    """The lowest-error usable rung costing at most ``sur_seconds``, and its error over ``sur_error``.

    Returns ``error_ratio`` (None when no rung is that cheap; inf when the surrogate's error is 0 and the
    rung's is not) and ``rung`` (its label or None). Below 1 the solver is more accurate at the same cost.
    """
    _check(sur_error, sur_seconds)
    cheap = [r for r in rungs if r.usable() and r.seconds <= sur_seconds]
    if not cheap:
        return {"error_ratio": None, "rung": None}
    best = min(cheap, key=lambda r: (r.error, r.seconds))
    if sur_error == 0:
        ratio = 1.0 if best.error == 0 else math.inf
    else:
        ratio = best.error / sur_error
    return {"error_ratio": ratio, "rung": best.label}


def rollout_rel_l2(pred: np.ndarray, truth: np.ndarray, spatial_dims: int) -> float | None:
    """Per-simulation relative L2 error ``||pred - truth|| / ||truth||`` over ``(T, C, *grid)``, averaged over
    the ``B`` simulations of ``(B, T, C, *grid)`` arrays (the FNO paper's rollout error); None if ``pred`` is not
    all finite."""
    pred = np.asarray(pred, np.float64)
    truth = np.asarray(truth, np.float64)
    if pred.shape != truth.shape or pred.ndim != 3 + spatial_dims:
        raise LadderError(f"prediction {pred.shape} and reference {truth.shape} must both be (B, T, C, *grid) "
                          f"with {spatial_dims} spatial axes; resample the rung onto the evaluation grid first")
    if not np.all(np.isfinite(pred)):
        return None
    b = pred.shape[0]
    num = np.sqrt(np.sum((pred - truth).reshape(b, -1) ** 2, axis=1))
    den = np.sqrt(np.sum(truth.reshape(b, -1) ** 2, axis=1))
    if np.any(den == 0):
        raise LadderError("a reference simulation is zero everywhere, so its relative error is undefined; "
                          "compare over frames where the field is not all zero")
    return float(np.mean(num / den))


# ---------------------------------------------------------------------------------------------------------------------
# Resampling onto the evaluation grid (jit-able)
# ---------------------------------------------------------------------------------------------------------------------


def spectral_resample(fields: jax.Array, shape: tuple[int, int]) -> jax.Array:
    """Periodic ``(..., n0, n1)`` fields -> ``(..., m0, m1)`` by truncating or zero-padding the Fourier series.

    Modes at or beyond the smaller grid's Nyquist frequency are dropped, so upsampling then downsampling
    returns the input up to rounding when its spectrum has no Nyquist content.
    """
    n0, n1 = fields.shape[-2:]
    m0, m1 = shape
    if (n0, n1) == (m0, m1):
        return fields
    spec = jnp.fft.fft2(fields)
    k0 = min(n0, m0)
    k1 = min(n1, m1)
    i0 = np.fft.fftfreq(m0, 1.0 / m0).astype(int)
    i1 = np.fft.fftfreq(m1, 1.0 / m1).astype(int)
    keep0 = 2 * np.abs(i0) < k0
    keep1 = 2 * np.abs(i1) < k1
    sub = spec[..., i0 % n0, :][..., :, i1 % n1]
    sub = sub * jnp.asarray(keep0[:, None] & keep1[None, :], sub.real.dtype)
    out = jnp.fft.ifft2(sub).real * (m0 * m1 / (n0 * n1))
    return out.astype(fields.dtype)


def node_matrix(n_src: int, n_dst: int) -> np.ndarray:
    """``(n_dst, n_src)`` linear interpolation between ``n_src`` evenly spaced nodes that include both ends of
    the interval, onto ``n_dst`` such nodes (the end nodes map to each other exactly)."""
    if n_src < 2 or n_dst < 2:
        raise LadderError(f"node grids need at least 2 points, got {n_src} -> {n_dst}")
    x = np.linspace(0.0, n_src - 1.0, n_dst)
    lo = np.clip(np.floor(x).astype(int), 0, n_src - 2)
    w = x - lo
    mat = np.zeros((n_dst, n_src))
    mat[np.arange(n_dst), lo] += 1 - w
    mat[np.arange(n_dst), lo + 1] += w
    return mat


def node_resample(fields: jax.Array, shape: tuple[int, int]) -> jax.Array:
    """``(..., n0, n1)`` fields on node grids that include the boundary -> ``(..., m0, m1)``, bilinear."""
    n0, n1 = fields.shape[-2:]
    if (n0, n1) == tuple(shape):
        return fields
    a = jnp.asarray(node_matrix(n0, shape[0]), fields.dtype)
    b = jnp.asarray(node_matrix(n1, shape[1]), fields.dtype)
    return jnp.einsum("ij,...jk,lk->...il", a, fields, b)


# ---------------------------------------------------------------------------------------------------------------------
# The Pareto figure
# ---------------------------------------------------------------------------------------------------------------------


STAR_POINTS = 13  # size of the surrogate's star marker (points)
# Offsets (points) of a number from its marker, with its alignment, in the order they are tried.
NUMBER_OFFSETS = ((4, 2, "left", "bottom"), (4, -2, "left", "top"), (-4, 2, "right", "bottom"),
                  (-4, -2, "right", "top"), (0, 5, "center", "bottom"), (0, -5, "center", "top"),
                  (8, 9, "left", "bottom"), (8, -9, "left", "top"), (-8, 9, "right", "bottom"),
                  (-8, -9, "right", "top"))


def marker_box(ax: Any, x: float, y: float, size: float) -> Any:
    """The display-pixel ``Bbox`` of a marker ``size`` points square at data point ``(x, y)``."""
    from matplotlib.transforms import Bbox

    px, py = ax.transData.transform((x, y))
    half = size * ax.figure.dpi / 72 / 2
    return Bbox.from_bounds(px - half, py - half, 2 * half, 2 * half)


def place_numbers(ax: Any, points: Sequence[tuple[float, float, str]], avoid: Sequence[Any] = (),
                  markersize: float = 6.0) -> list[Any]:
    """Annotate each point ``(x, y, text)`` (data units) with its short text at the first offset of
    :data:`NUMBER_OFFSETS` whose box stays inside the axes and overlaps no marker (``markersize`` points
    square), no box of ``avoid`` (display-pixel ``Bbox``) and no earlier number; the first offset when none is
    free. Deterministic; call it after the layout is final (the boxes are in display pixels)."""
    renderer = ax.figure.canvas.get_renderer()
    taken = list(avoid) + [marker_box(ax, x, y, markersize) for x, y, _ in points]
    inside = ax.get_window_extent(renderer)

    def annotate(x: float, y: float, text: str, offset: tuple[float, float, str, str]) -> tuple[Any, Any]:
        dx, dy, ha, va = offset
        note = ax.annotate(text, (x, y), xytext=(dx, dy), textcoords="offset points", fontsize=7, ha=ha, va=va)
        return note, note.get_window_extent(renderer)

    placed = []
    for x, y, text in points:
        for offset in NUMBER_OFFSETS:
            note, box = annotate(x, y, text, offset)
            if (inside.x0 <= box.x0 and box.x1 <= inside.x1 and inside.y0 <= box.y0 and box.y1 <= inside.y1
                    and not any(box.overlaps(b) for b in taken)):
                break
            note.remove()
        else:  # nowhere free
            note, box = annotate(x, y, text, NUMBER_OFFSETS[0])
        taken.append(box)
        placed.append(note)
    return placed


def plot_pareto(panels: Sequence[Mapping[str, Any]], out: str | Path) -> Path:
    """Error against wall time, log-log, one panel per problem; writes a PNG and returns its path.

    Each panel: ``name``, ``rungs`` (dicts with ``label``, ``seconds``, ``error``, ``stable``), ``surrogate``
    (``seconds``, ``error``), ``identity`` (error) and ``reference`` (label). The line joins the rungs no faster
    rung beats in error; unstable rungs are marked at the top of the panel. Rungs carry numbers (stable ones
    from the fastest, then the unstable ones), placed by :func:`place_numbers`; a key beside the panel gives
    each number's setting.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not panels:
        raise LadderError("no problem to plot; run at least one problem")
    from matplotlib.ticker import NullFormatter

    cols = min(2, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(8.8 * cols, 4.8 * rows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    numbered: list[tuple[Any, list[tuple[float, float, str]], tuple[float, float]]] = []
    for ax, panel in zip(axes.flat[:len(panels)], panels, strict=True):
        rungs = [r for r in panel["rungs"] if r["stable"] and r["error"] is not None and r["error"] > 0]
        rungs.sort(key=lambda r: r["seconds"])
        ys = [r["error"] for r in rungs] + [panel["surrogate"]["error"], panel["identity"]]
        top = max(ys) * 3 if ys else 1.0
        if rungs:
            front, best = [], math.inf  # the Pareto front: no faster rung is as accurate
            for r in rungs:
                if r["error"] < best:
                    front.append(r)
                    best = r["error"]
            ax.plot([r["seconds"] for r in rungs], [r["error"] for r in rungs], "o", color="tab:blue",
                    label="solver settings")
            ax.plot([r["seconds"] for r in front], [r["error"] for r in front], "-", color="tab:blue",
                    label="solver Pareto front")
        bad = [r for r in panel["rungs"] if not r["stable"]]
        if bad:
            ax.plot([r["seconds"] for r in bad], [top] * len(bad), "x", color="tab:red", label="unstable rung")
        points = [(r["seconds"], r["error"], str(i)) for i, r in enumerate(rungs, 1)]
        points += [(r["seconds"], top, str(i)) for i, r in enumerate(bad, len(rungs) + 1)]
        key = [f"{i:>2}  {r['label']}" for i, r in enumerate(rungs, 1)]
        key += [f"{i:>2}  {r['label']} (unstable)" for i, r in enumerate(bad, len(rungs) + 1)]
        if key:
            ax.text(1.02, 1.0, "solver settings\n" + "\n".join(key), transform=ax.transAxes, va="top",
                    fontsize=7, family="monospace")
        s = panel["surrogate"]
        numbered.append((ax, points, (s["seconds"], s["error"])))
        ax.plot([s["seconds"]], [s["error"]], "*", color="tab:orange", markersize=STAR_POINTS, label="surrogate")
        ax.axhline(panel["identity"], color="gray", linestyle="--", label="identity (copy last frame)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        lo, hi = ax.get_xlim()
        if hi > 10 * lo:  # minor labels crowd a long axis; a short one has no major label without them
            ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set(xlabel="wall time of the batched rollout (s)", ylabel="rollout relative L2 vs reference",
               title=f"{panel['name']} (reference {panel['reference']})")
        ax.title.set_fontsize(8)
        ax.legend(fontsize=7, loc="lower left")
        ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    for ax, points, star in numbered:
        place_numbers(ax, points, avoid=[ax.get_legend().get_window_extent(), marker_box(ax, *star, STAR_POINTS)])
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
