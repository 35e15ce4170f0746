"""Error metrics of a prediction against a reference: PDEBench's set, and pooled field metrics (CFDBench's NMSE).

Convention for every function here: ``pred`` and ``target`` have one shape, ``(B, T, C, *grid)`` (sample, frame,
channel, space; the layout of ``benchmarks.trajectories`` and ``benchmarks.pdebench``), or ``(B, C, *grid)`` for a
single frame, and the caller states ``spatial_dims = len(grid)`` (1, 2 or 3), so the two forms cannot be confused.
Arrays may be numpy (computed in float64 on the host) or JAX (computed with ``jax.numpy`` where they live, in their
own precision); results come back as Python floats or numpy arrays.

PDEBench's definitions follow ``pdebench/models/metrics.py::metric_func`` (Takamoto et al. 2022, Sec. 4 and App. D),
per sample ``b``, channel ``c`` and frame ``t``, with ``e = pred - target`` and ``N`` grid points:

- ``RMSE``   = mean_b sqrt(mean_x e^2)
- ``nRMSE``  = mean_b sqrt(mean_x e^2) / sqrt(mean_x target^2)   (no epsilon: an all-zero target gives inf/nan)
- ``cRMSE``  = sqrt(mean_b (sum_x pred - sum_x target)^2) / N   (error of the conserved spatial mean)
- ``bRMSE``  = mean_b sqrt(sum_faces e^2 / n_face_points)   (first and last point along every axis; in 2D the
  corners count twice and the denominator is 2 Nx + 2 Ny, as in PDEBench)
- ``max_error`` = max_{b,x} |e|
- ``fRMSE_low/mid/high``: Fourier error spectrum averaged over wavenumber bands ``k < i_low``,
  ``i_low <= k < i_high``, ``k >= i_high`` (PDEBench: ``iLow=4``, ``iHigh=12``). 1D: per rfft mode k = 0..Nx/2,
  sqrt(mean_b |FFT(e)_k|^2) / Nx * Lx. 2D/3D: |FFT(e)|^2 summed over the non-negative-index orthant
  ``0 <= i < Nx/2, 0 <= j < Ny/2`` into shells ``k = floor(sqrt(i^2 + j^2))`` with ``k < min(N_i/2)``, then
  sqrt(mean_b) / prod(N_i) * prod(L_i). The orthant restriction (negative frequencies ignored) is PDEBench's; we keep
  it so numbers compare with published ones. A band with no mode (small grids) gives nan.

Each is computed per (channel, frame); :func:`pdebench_metrics` averages over channels and frames as PDEBench's
``metric_func(if_mean=True)`` does. Note that PDEBench's evaluator (``metrics()``) scores the full trajectory whose
first ``initial_step`` frames are copied from the truth (error 0) and so count in the time average; pass those frames
to reproduce its numbers, or slice them off to score only predicted frames. In 3D, PDEBench's ``err_BD`` sums the
channels together (its ``view([nb, -1, nt])``); here bRMSE stays per channel in every dimension.

:func:`field_metrics` gives pooled metrics: ``MSE``, ``RMSE = sqrt(MSE)``, ``MAE`` and ``NMSE = MSE / mean(target^2)``
over all samples, frames and points (CFDBench, ``src/models/loss.py``, Luo et al. 2023), and ``rel_L2``, the
per-sample relative L2 error ||e|| / ||target|| over (T, C, *grid) averaged over samples (the FNO ``LpLoss``).
Beware: this ``RMSE`` is pooled, PDEBench's is a mean of per-sample RMSEs.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "PDEBENCH_KEYS",
    "MetricInputError",
    "field_metrics",
    "pdebench_metric_arrays",
    "pdebench_metrics",
]

PDEBENCH_KEYS = ("RMSE", "nRMSE", "cRMSE", "bRMSE", "max_error", "fRMSE_low", "fRMSE_mid", "fRMSE_high")
FIELD_KEYS = ("MSE", "RMSE", "MAE", "NMSE", "rel_L2")

# PDEBench's band edges: metric_func(..., iLow=4, iHigh=12) in pdebench/models/metrics.py.
I_LOW = 4
I_HIGH = 12


class MetricInputError(ValueError):
    """Arrays given to a metric do not have the documented shape."""


def pdebench_metric_arrays(
    pred: np.ndarray | jax.Array,
    target: np.ndarray | jax.Array,
    *,
    spatial_dims: int,
    lengths: Sequence[float] | None = None,
    i_low: int = I_LOW,
    i_high: int = I_HIGH,
) -> dict[str, np.ndarray]:
    """PDEBench's metrics per channel and frame: a dict of numpy arrays ``(C, T)`` keyed by :data:`PDEBENCH_KEYS`.

    ``pred``, ``target``: ``(B, T, C, *grid)`` or ``(B, C, *grid)`` (then ``T = 1``) with ``len(grid) ==
    spatial_dims``. ``lengths``: domain size per grid axis (PDEBench's ``Lx, Ly, Lz``; default 1 each), which scales
    only the fRMSE bands. ``i_low``, ``i_high``: band edges in integer wavenumber.
    """
    xp, p, q = _prepare(pred, target, spatial_dims)
    lengths = _lengths(lengths, spatial_dims)
    if not 0 <= i_low <= i_high:
        raise MetricInputError(f"band edges i_low={i_low}, i_high={i_high}; pass 0 <= i_low <= i_high")
    if xp is jnp:
        out = _pdebench_core_jit(p, q, spatial_dims, lengths, i_low, i_high)
    else:
        with np.errstate(divide="ignore", invalid="ignore"):  # an all-zero target gives inf/nan, as documented
            out = _pdebench_core(np, p, q, spatial_dims, lengths, i_low, i_high)
    return {k: np.asarray(out[k], np.float64).T for k in PDEBENCH_KEYS}  # (T, C) -> (C, T)


def pdebench_metrics(
    pred: np.ndarray | jax.Array,
    target: np.ndarray | jax.Array,
    *,
    spatial_dims: int,
    channels: Sequence[str] | None = None,
    lengths: Sequence[float] | None = None,
    i_low: int = I_LOW,
    i_high: int = I_HIGH,
) -> dict[str, float]:
    """PDEBench's metrics as a flat dict of floats.

    Keys :data:`PDEBENCH_KEYS` hold the mean over channels and frames (PDEBench's ``if_mean=True``); ``"KEY/name"``
    the mean over frames for channel ``name`` (``channels``, default ``c0``, ``c1``, ...). Shapes as in
    :func:`pdebench_metric_arrays`.
    """
    if channels is not None and _n_channels(pred, spatial_dims) is not None:
        _channel_names(channels, _n_channels(pred, spatial_dims))  # fail before computing anything
    arrays = pdebench_metric_arrays(pred, target, spatial_dims=spatial_dims, lengths=lengths, i_low=i_low,
                                    i_high=i_high)
    names = _channel_names(channels, next(iter(arrays.values())).shape[0])
    out: dict[str, float] = {k: float(np.mean(v)) for k, v in arrays.items()}
    for k, v in arrays.items():
        for name, row in zip(names, v, strict=True):
            out[f"{k}/{name}"] = float(np.mean(row))
    return out


def field_metrics(
    pred: np.ndarray | jax.Array,
    target: np.ndarray | jax.Array,
    *,
    spatial_dims: int,
    channels: Sequence[str] | None = None,
) -> dict[str, float]:
    """Pooled ``MSE``, ``RMSE``, ``MAE``, ``NMSE`` (CFDBench) and per-sample ``rel_L2`` as a flat dict of floats.

    Plain keys pool all channels; ``"KEY/name"`` pools one channel (``channels``, default ``c0``, ...).
    ``pred``, ``target``: ``(B, T, C, *grid)`` or ``(B, C, *grid)``.
    """
    xp, p, q = _prepare(pred, target, spatial_dims)
    names = _channel_names(channels, p.shape[2])
    if xp is jnp:
        total, per_channel = _field_core_jit(p, q)
    else:
        with np.errstate(divide="ignore", invalid="ignore"):  # an all-zero target gives inf/nan
            total, per_channel = _field_core(np, p, q)
    out = {k: float(v) for k, v in total.items()}
    for k, v in per_channel.items():
        for name, value in zip(names, np.asarray(v), strict=True):
            out[f"{k}/{name}"] = float(value)
    return out


def _pdebench_core(xp: object, p: object, q: object, d: int, lengths: tuple[float, ...], i_low: int,
                   i_high: int) -> dict[str, object]:
    """PDEBench's metrics as ``(T, C)`` arrays of namespace ``xp``; ``p``, ``q``: ``(B, T, C, *grid)``."""
    grid = p.shape[3:]
    sp = tuple(range(3, 3 + d))
    e = p - q
    n_pts = int(np.prod(grid))
    rmse_b = xp.sqrt(xp.mean(e**2, axis=sp))  # (B, T, C)
    out = {
        "RMSE": xp.mean(rmse_b, axis=0),
        "nRMSE": xp.mean(rmse_b / xp.sqrt(xp.mean(q**2, axis=sp)), axis=0),
        "cRMSE": xp.sqrt(xp.mean((xp.sum(p, axis=sp) - xp.sum(q, axis=sp)) ** 2, axis=0)) / n_pts,
        "max_error": xp.max(xp.abs(e), axis=(0, *sp)),
        "bRMSE": xp.mean(xp.sqrt(_boundary_mean_square(xp, e, d)), axis=0),
    }
    spec = _error_spectrum(xp, e, d, lengths)  # (T, C, K)
    for name, lo, hi in (("fRMSE_low", 0, i_low), ("fRMSE_mid", i_low, i_high), ("fRMSE_high", i_high, None)):
        band = spec[..., lo:hi]
        out[name] = xp.mean(band, axis=-1) if band.shape[-1] > 0 else xp.full(spec.shape[:2], np.nan, spec.dtype)
    return out


def _field_core(xp: object, p: object, q: object) -> tuple[dict[str, object], dict[str, object]]:
    """Pooled metrics over everything, and per channel (arrays ``(C,)``); ``p``, ``q``: ``(B, T, C, *grid)``."""
    e = p - q
    b = p.shape[0]
    all_but_c = (0, 1, *range(3, p.ndim))

    def pooled(axes: tuple[int, ...] | None) -> dict[str, object]:
        mse = xp.mean(e**2, axis=axes)
        per_sample = tuple(a for a in (axes or tuple(range(p.ndim))) if a != 0)  # sum over these, per sample
        e2 = xp.sum(e**2, axis=per_sample)
        q2 = xp.sum(q**2, axis=per_sample)
        return {"MSE": mse, "RMSE": xp.sqrt(mse), "MAE": xp.mean(xp.abs(e), axis=axes),
                "NMSE": mse / xp.mean(q**2, axis=axes), "rel_L2": xp.sum(xp.sqrt(e2 / q2), axis=0) / b}

    return pooled(None), pooled(all_but_c)


_pdebench_core_jit = jax.jit(partial(_pdebench_core, jnp), static_argnums=(2, 3, 4, 5))
_field_core_jit = jax.jit(partial(_field_core, jnp))


def _n_channels(pred: object, spatial_dims: int) -> int | None:
    """C of a well-formed ``(B, [T,] C, *grid)`` array, None when the shape is wrong (``_prepare`` says why)."""
    shape = np.shape(pred)
    ok = spatial_dims in (1, 2, 3) and len(shape) in (spatial_dims + 2, spatial_dims + 3)
    return shape[-(spatial_dims + 1)] if ok else None


# --------------------------------------------------------------------------------------------------------------------


def _prepare(pred: object, target: object, spatial_dims: int) -> tuple:
    """Check shapes and return (namespace, pred, target) with shape ``(B, T, C, *grid)``."""
    if spatial_dims not in (1, 2, 3):
        raise MetricInputError(f"spatial_dims={spatial_dims!r}; pass the number of grid axes: 1, 2 or 3")
    use_jax = isinstance(pred, jax.Array) or isinstance(target, jax.Array)
    if use_jax:
        xp = jnp
        p, q = jnp.asarray(pred), jnp.asarray(target)
        if not jnp.issubdtype(p.dtype, jnp.floating):
            p = p.astype(jnp.float32)
        q = q.astype(p.dtype)
    else:
        xp = np
        p, q = np.asarray(pred, np.float64), np.asarray(target, np.float64)
    if p.shape != q.shape:
        raise MetricInputError(f"pred has shape {p.shape} but target has {q.shape}; pass arrays of one shape "
                               "(B, T, C, *grid)")
    d = spatial_dims
    if p.ndim == d + 2:
        p, q = p[:, None], q[:, None]
    elif p.ndim != d + 3:
        raise MetricInputError(
            f"arrays have shape {p.shape}; with spatial_dims={d} pass (B, T, C, *grid) ({d + 3} axes) or "
            f"(B, C, *grid) ({d + 2} axes)"
        )
    if p.size == 0:
        raise MetricInputError(f"arrays have shape {p.shape} with no elements; pass at least one sample and point")
    return xp, p, q


def _lengths(lengths: Sequence[float] | None, d: int) -> tuple[float, ...]:
    if lengths is None:
        return (1.0,) * d
    lengths = tuple(float(v) for v in lengths)
    if len(lengths) != d:
        raise MetricInputError(f"lengths={lengths} has {len(lengths)} entries; pass one domain length per grid axis "
                               f"({d})")
    return lengths


def _channel_names(channels: Sequence[str] | None, c: int) -> list[str]:
    if channels is None:
        return [f"c{i}" for i in range(c)]
    names = [str(n) for n in channels]
    if len(names) != c:
        raise MetricInputError(f"channels={names} names {len(names)} channels but the arrays have {c}; pass {c} names")
    return names


def _boundary_mean_square(xp: object, e: object, d: int) -> object:
    """Mean of e^2 over the first/last point along each grid axis, PDEBench's way: ``(B, T, C)``."""
    grid = e.shape[3:]
    total = 0.0
    count = 0
    for a in range(d):
        axis = 3 + a
        others = tuple(3 + i for i in range(d) if i != a)
        for idx in (0, grid[a] - 1):
            face = xp.take(e, idx, axis=axis) ** 2  # drops `axis`
            face_axes = tuple(ax if ax < axis else ax - 1 for ax in others)
            total = total + (xp.sum(face, axis=face_axes) if face_axes else face)
        count += 2 * int(np.prod([grid[i] for i in range(d) if i != a]))
    return total / count


def _error_spectrum(xp: object, e: object, d: int, lengths: tuple[float, ...]) -> object:
    """PDEBench's Fourier error spectrum per wavenumber shell: ``(T, C, K)``."""
    grid = e.shape[3:]
    scale = float(np.prod(lengths)) / float(np.prod(grid))
    if d == 1:
        energy = xp.abs(xp.fft.rfft(e, axis=-1)) ** 2  # (B, T, C, Nx//2 + 1)
        return xp.sqrt(xp.mean(energy, axis=0)) * scale
    energy = xp.abs(xp.fft.fftn(e, axes=tuple(range(3, 3 + d)))) ** 2
    half = tuple(n // 2 for n in grid)
    energy = energy[(Ellipsis, *(slice(0, h) for h in half))]  # non-negative-index orthant, as PDEBench
    shells = _shell_matrix(half)  # (K, prod(half))
    flat = energy.reshape(*energy.shape[:3], -1)
    shell_energy = xp.einsum("btcp,kp->btck", flat, xp.asarray(shells, dtype=flat.dtype))
    return xp.sqrt(xp.mean(shell_energy, axis=0)) * scale


def _shell_matrix(half: tuple[int, ...]) -> np.ndarray:
    """One-hot map from orthant modes to shells ``k = floor(|index|)`` with ``k < min(half)``: ``(K, prod(half))``."""
    idx = np.meshgrid(*[np.arange(h) for h in half], indexing="ij")
    radius = np.floor(np.sqrt(sum(i.astype(np.float64) ** 2 for i in idx))).astype(np.int64).ravel()
    n_shells = min(half)
    m = np.zeros((n_shells, radius.size))
    keep = radius < n_shells
    m[radius[keep], np.nonzero(keep)[0]] = 1.0
    return m
