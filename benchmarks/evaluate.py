"""Evaluate a surrogate on reference trajectories: one-step and autoregressive errors beside the identity baseline.

Two suites share one engine:

- **trajectories** (:func:`evaluate_trajectories`, :func:`evaluate_trajectory_file`): frames ``(N, T, C, *grid)``
  written by ``pdestream solve``. With a window of ``W`` input frames the surrogate is scored

  * one-step (teacher forced): every true window ``u[s-W+1 .. s]`` -> ``u[s+1]``, ``s = W-1 .. T-2``;
  * autoregressively from the first window ``u[0 .. W-1]``, rolled out to the end (``T - W`` steps), scored over
    the first ``h`` predicted frames for each ``h`` in ``rollout_steps`` (default 20, CFDBench's multi-step
    horizon, Luo et al. 2023, Fig. 8) and over all of them ("full").

  Metrics are :func:`benchmarks.metrics.field_metrics`' pooled ``MSE``, ``RMSE``, ``MAE``, ``NMSE = MSE /
  mean(target^2)`` (CFDBench's definitions) and ``rel_L2``, over all fields and per field (channel). Each is
  reported beside the **identity** baseline, which copies the last input frame (CFDBench's "Identity" row):
  ``u[s]`` for one-step, ``u[W-1]`` for every frame of a rollout.
- **pdebench** (:func:`evaluate_pdebench`): a PDEBench HDF5 file (any layout of :mod:`benchmarks.pdebench`) scored
  with PDEBench's protocol (Takamoto et al. 2022): the first ``initial_step`` frames are given (the surrogate reads
  their last ``W``), the rest is rolled out autoregressively and scored with PDEBench's metrics (RMSE, nRMSE, cRMSE,
  bRMSE, max error, fRMSE low/mid/high; :func:`benchmarks.metrics.pdebench_metrics`) over the predicted frames,
  plus the pooled MSE/MAE/NMSE, again beside the identity baseline.

Both also give the error against the rollout step (``result["per_step"]``, lists for plotting) and, on request,
a few full rollouts (``result["examples"]``, numpy arrays for :mod:`benchmarks.figures`; :func:`to_json` leaves
them out). A surrogate whose grid, channels, window or time step do not fit the data raises
:class:`EvaluationError` (a ``ValueError``) with a one-line message naming both shapes.

Kinds: ``next_step`` and ``bundle`` surrogates step autoregressively (a bundle's one-step error is that of the first
frame of its output); a ``field`` surrogate predicts every frame from the parameters and the time, so its one-step
and rollout errors score the same kind of prediction (no error feeds back).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.metrics import PDEBENCH_KEYS, field_metrics, pdebench_metric_arrays
from benchmarks.pdebench import PDEBenchFile, open_pdebench
from benchmarks.trajectories import read_trajectories
from surrogates.surrogate import Surrogate

__all__ = [
    "DEFAULT_ROLLOUT_STEPS",
    "EvaluationError",
    "check_fit",
    "cond_from_params",
    "evaluate_pdebench",
    "evaluate_trajectories",
    "evaluate_trajectory_file",
    "format_markdown",
    "load_surrogate",
    "frame_spacing",
    "pdebench_test_sims",
    "rollout_windows",
    "to_json",
]

#: CFDBench's multi-step horizon (Luo et al. 2023, Fig. 8: errors after 20 autoregressive steps).
DEFAULT_ROLLOUT_STEPS = (20,)
#: PDEBench's test split: ``test_ratio=0.1`` in ``pdebench/models/fno/utils.py``.
PDEBENCH_TEST_RATIO = 0.1
POOLED_KEYS = ("MSE", "RMSE", "MAE", "NMSE", "rel_L2")
# Relative tolerance when comparing a file's frame spacing with the surrogate's dt (float32 time stamps).
DT_RTOL = 1e-4


class EvaluationError(ValueError):
    """A surrogate and a data set that do not fit each other, or a bad evaluation setting."""


# ---------------------------------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------------------------------


def load_surrogate(path: str | os.PathLike) -> Surrogate:
    """Load a surrogate from a training run directory (its ``surrogate/``) or from a ``Surrogate.save`` directory."""
    p = Path(path).expanduser()
    if not p.exists():
        raise EvaluationError(f"{p}: no such directory; pass a run directory (runs/NAME) or a surrogate directory")
    if (p / "surrogate.json").is_file():
        return Surrogate.load(p)
    if (p / "surrogate" / "surrogate.json").is_file():
        return Surrogate.load(p / "surrogate")
    if (p / "config.resolved.toml").is_file():
        raise EvaluationError(
            f"{p}: this run directory has no surrogate/ yet (it is written at the first validation); "
            "let the run reach a validation or resume it with `pdestream train --resume`"
        )
    raise EvaluationError(
        f"{p}: neither a run directory (with surrogate/) nor a surrogate directory (with surrogate.json); "
        "pass the directory `pdestream train` wrote or one written by Surrogate.save"
    )


# ---------------------------------------------------------------------------------------------------------------------
# Checks shared with benchmarks.predict
# ---------------------------------------------------------------------------------------------------------------------


def check_fit(sur: Surrogate, shape: Sequence[int], source: str) -> None:
    """Fields of ``shape = (N, T, C, *grid)`` from ``source`` must have the surrogate's channel count and grid."""
    m = sur.metadata
    shape = tuple(int(n) for n in shape)
    want = (len(m.channels), *m.grid)
    if len(shape) < 4 or shape[2:] != want:
        got = shape[2:] if len(shape) >= 3 else shape
        raise EvaluationError(
            f"{source}: frames have shape (C, *grid) = {got} but the surrogate predicts {want} "
            f"(channels {list(m.channels)} on grid {m.grid}); evaluate a surrogate trained on this grid and these "
            "channels, or data written at the surrogate's resolution"
        )


def cond_from_params(sur: Surrogate, params: np.ndarray | None, names: Sequence[str], source: str) -> np.ndarray | None:
    """The surrogate's conditioning ``(N, P)`` (its ``cond_names``) picked by name from ``params (N, len(names))``.

    None when the surrogate takes no parameters.
    """
    need = sur.metadata.cond_names
    if not need:
        return None
    names = [str(n) for n in names]
    missing = [n for n in need if n not in names]
    if missing or params is None:
        raise EvaluationError(
            f"{source}: the surrogate is conditioned on {list(need)} but the data has parameters {names}; "
            f"missing {missing or list(need)}: evaluate on data from the solver the surrogate was trained on"
        )
    params = np.asarray(params, np.float64)
    return np.ascontiguousarray(params[:, [names.index(n) for n in need]], np.float32)


def _check_dt(sur: Surrogate, dt: float, source: str) -> None:
    try:
        ok = np.ndim(dt) == 0 and math.isfinite(float(dt)) and float(dt) > 0
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise EvaluationError(f"{source}: dt={dt!r} must be a positive number (time between frames)")
    dt = float(dt)
    if not math.isclose(dt, sur.dt, rel_tol=DT_RTOL):
        raise EvaluationError(
            f"{source}: frames are {dt:g} apart but the surrogate steps {sur.dt:g}; "
            f"write the data with frames {sur.dt:g} apart (e.g. `pdestream solve ... --every K` with dt*K = {sur.dt:g})"
        )


def frame_spacing(t: np.ndarray | None) -> float | None:
    """Spacing of the uniform time stamps ``t``; None when there are fewer than two or they are not uniform."""
    if t is None or len(t) < 2:
        return None
    d = np.diff(np.asarray(t, np.float64))
    if not np.allclose(d, d[0], rtol=DT_RTOL, atol=0) or d[0] <= 0:
        return None
    return float(d[0])


def _check_positive_int(name: str, value: Any, lo: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < lo:
        raise EvaluationError(f"{name}={value!r} must be an integer >= {lo}")
    return int(value)


# ---------------------------------------------------------------------------------------------------------------------
# Surrogate calls in fixed-size batches (one compilation per shape)
# ---------------------------------------------------------------------------------------------------------------------


def _pad(a: np.ndarray | None, size: int) -> np.ndarray | None:
    """Pad axis 0 to ``size`` by repeating the last row (valid inputs, results discarded)."""
    if a is None or len(a) == size:
        return a
    return np.concatenate([a, np.repeat(a[-1:], size - len(a), axis=0)])


def _batched(
    fn: Callable[..., Any], n: int, batch: int, *arrays: np.ndarray | None, pad_to: int | None = None
) -> np.ndarray:
    """Concatenate ``fn(*[a[i:j] for a in arrays])`` over batches of ``min(batch, n)`` rows, each padded to that
    size (or to ``pad_to``), so that the surrogate compiles once."""
    size = min(batch, n)
    width = max(size, pad_to or 0)
    outs = []
    for start in range(0, n, size):
        stop = min(start + size, n)
        chunk = [None if a is None else _pad(a[start:stop], width) for a in arrays]
        outs.append(np.asarray(fn(*chunk))[: stop - start])
    return np.concatenate(outs, axis=0)


def _window_arg(sur: Surrogate, win: np.ndarray) -> np.ndarray | None:
    """Windows ``(B, W, C, *grid)`` as ``Surrogate.step`` / ``rollout`` take them (``(B, C, *grid)`` when W = 1)."""
    m = sur.metadata
    if m.kind == "field":
        return None
    return win[:, 0] if m.window == 1 else win


def _next_frames(sur: Surrogate, win: np.ndarray, cond: np.ndarray | None, t_last: np.ndarray,
                 hold: np.ndarray | None = None) -> np.ndarray:
    """One model call per window: ``win (B, W, C, *grid)`` -> the frame ``dt`` after the window, ``(B, C, *grid)``;
    ``hold`` bool ``(B, C, *grid)``: cells kept at the window's last frame (:meth:`Surrogate.step`)."""
    m = sur.metadata
    if m.kind == "field":
        return np.asarray(sur.predict(cond, t_last + m.dt))
    out = np.asarray(sur.step(_window_arg(sur, win), cond, t_last, hold=hold))
    return out[:, 0] if m.kind == "bundle" else out


def _rollout(sur: Surrogate, win0: np.ndarray, n_steps: int, cond: np.ndarray | None, t0: np.ndarray,
             hold: np.ndarray | None = None) -> np.ndarray:
    """``win0 (B, W, C, *grid)`` -> ``(B, n_steps + 1, C, *grid)``: the last given frame, then the predictions."""
    m = sur.metadata
    if m.kind == "field" and not m.time_in_cond:  # a steady field: the same prediction at every time
        pred = np.asarray(sur.predict(cond))
        return np.concatenate([win0[:, -1:], np.repeat(pred[:, None], n_steps, axis=1)], axis=1)
    if m.kind == "field":
        return np.asarray(sur.rollout(win0[:, -1], n_steps, cond, t0))
    return np.asarray(sur.rollout(_window_arg(sur, win0), n_steps, cond, t0, hold=hold))


def rollout_windows(
    sur: Surrogate,
    win0: np.ndarray,
    n_steps: int,
    cond: np.ndarray | None,
    t0: np.ndarray,
    batch: int,
    *,
    pad_to: int | None = None,
    hold: np.ndarray | None = None,
) -> np.ndarray:
    """Autoregressive rollouts of many windows in batches of ``batch`` (the last one padded, so one compilation;
    ``pad_to`` pads every batch to at least that many rows, for callers that feed windows in pieces).

    win0: ``(N, W, C, *grid)`` initial windows; cond: ``(N, P)`` or None; t0: ``(N,)`` time of each window's last
    frame; hold: None or bool ``(N, C, *grid)``, cells held at each window's last frame after every model call (a
    solver's ``boundary(params)`` mask). Returns ``(N, n_steps + 1, C, *grid)``: each window's last frame, then
    ``n_steps`` predicted frames (a ``field`` surrogate predicts each from the parameters and the time).
    """
    return _batched(lambda w, c, t, h: _rollout(sur, w, n_steps, c, t, h), len(win0), batch, win0, cond, t0, hold,
                    pad_to=pad_to)


# ---------------------------------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------------------------------


def _split_fields(flat: Mapping[str, float], keys: Sequence[str], channels: Sequence[str]) -> dict[str, Any]:
    """A flat ``{"KEY": v, "KEY/name": v}`` dict -> ``{"overall": {KEY: v}, "fields": {name: {KEY: v}}}``."""
    return {
        "overall": {k: float(flat[k]) for k in keys},
        "fields": {c: {k: float(flat[f"{k}/{c}"]) for k in keys} for c in channels},
    }


def _pooled(pred: np.ndarray, target: np.ndarray, channels: Sequence[str], d: int) -> dict[str, Any]:
    flat = field_metrics(pred, target, spatial_dims=d, channels=list(channels))
    return _split_fields(flat, POOLED_KEYS, channels)


def _per_step(
    pred: np.ndarray, target: np.ndarray, channels: Sequence[str], d: int, extra: Callable | None = None
) -> dict[str, list]:
    """Pooled MSE and NMSE (overall and per field) at each rollout step; ``pred``, ``target``: ``(B, n, C, *grid)``."""
    out: dict[str, list] = {"MSE": [], "NMSE": [], **{f"NMSE/{c}": [] for c in channels}}
    for k in range(pred.shape[1]):
        m = field_metrics(pred[:, k], target[:, k], spatial_dims=d, channels=list(channels))
        for key in out:
            out[key].append(float(m[key]))
    if extra is not None:
        for key, values in extra(pred, target).items():
            out[key] = [float(v) for v in values]
    return out


def _nonfinite_sims(pred: np.ndarray) -> list[int]:
    return [int(i) for i in np.flatnonzero(~np.isfinite(pred.reshape(len(pred), -1)).all(axis=1))]


def _describe(sur: Surrogate) -> dict[str, Any]:
    m = sur.metadata
    return {
        "model": sur.model_config.get("name"),
        "kind": m.kind,
        "solver": m.solver,
        "grid": list(m.grid),
        "dt": m.dt,
        "channels": list(m.channels),
        "cond_names": list(m.cond_names),
        "window": m.window,
        "horizon": m.horizon,
    }


def _examples(
    n_examples: int, sims: np.ndarray, truth: np.ndarray, pred: np.ndarray, t: np.ndarray, channels: Sequence[str]
) -> dict[str, Any]:
    """Up to ``n_examples`` evenly spread cases of a rollout (truth and prediction ``(k, n + 1, C, *grid)``)."""
    n = len(truth)
    idx = np.unique(np.linspace(0, n - 1, min(n_examples, n)).round().astype(int))
    return {
        "sims": [int(sims[i]) for i in idx],
        "truth": truth[idx],
        "prediction": pred[idx],
        "t": np.asarray(t, np.float64),
        "channels": list(channels),
    }


# ---------------------------------------------------------------------------------------------------------------------
# Trajectory suite
# ---------------------------------------------------------------------------------------------------------------------


def evaluate_trajectories(
    sur: Surrogate,
    frames: np.ndarray,
    params: np.ndarray | None,
    dt: float,
    *,
    rollout_steps: Sequence[int] | None = None,
    t0: float = 0.0,
    batch: int = 32,
    n_examples: int = 0,
    sim_ids: Sequence[int] | None = None,
    hold: np.ndarray | None = None,
) -> dict[str, Any]:
    """One-step and autoregressive errors of ``sur`` on ``frames``, beside the identity baseline.

    frames: ``(N, T, C, *grid)`` reference trajectories, frame ``j`` at time ``t0 + j * dt`` (solver units);
      ``C`` and ``grid`` must be the surrogate's and ``T >= W + 1``.
    params: ``(N, P)`` the surrogate's ``cond_names`` in that order (see :func:`cond_from_params`), or None for a
      surrogate without parameters.
    dt: time between frames; must equal the surrogate's ``dt``.
    rollout_steps: horizons ``h`` scored over the first ``h`` predicted frames (default ``[20]``); horizons longer
      than the rollout are skipped with a warning. The full rollout (``T - W`` steps) is always scored.
    batch: simulations (or windows) per surrogate call. n_examples: rollouts kept in ``result["examples"]``.
    sim_ids: ids of the simulations, reported with the examples (default ``0 .. N-1``).
    hold: None or bool ``(N, C, *grid)``: per simulation, the cells the surrogate keeps at their input values after
      every call (the solver's ``boundary(params)`` mask, e.g. obstacles; see :meth:`Surrogate.rollout`).

    Returns a dict with ``results`` (``one_step``, ``rollout_<h>``, ``rollout_full``: each ``{"steps", "surrogate",
    "identity"}``, the latter two ``{"overall": {MSE, RMSE, MAE, NMSE, rel_L2}, "fields": {name: {...}}}``),
    ``per_step`` (lists indexed by rollout step 1..n), ``nonfinite_sims``, ``warnings``, ``surrogate`` and ``data``.
    """
    m = sur.metadata
    frames = np.asarray(frames, np.float32)
    check_fit(sur, frames.shape, "frames")
    n, t_len = frames.shape[:2]
    w, d, channels = m.window, len(m.grid), list(m.channels)
    if n == 0:
        raise EvaluationError("frames: no simulations (N = 0); pass at least one trajectory")
    if hold is not None and (np.shape(hold) != (n, *frames.shape[2:]) or np.asarray(hold).dtype != bool):
        raise EvaluationError(f"hold: got {np.asarray(hold).dtype} {np.shape(hold)}; expected a bool mask "
                              f"{(n, *frames.shape[2:])}, one (C, *grid) mask per simulation, or None")
    if t_len < w + 1:
        raise EvaluationError(
            f"frames: {t_len} frame(s) per simulation but the surrogate reads {w} and needs one more to predict; "
            f"pass at least {w + 1} frames (and more than {w + 20} for a 20-step rollout)"
        )
    _check_dt(sur, dt, "frames")
    batch = _check_positive_int("batch", batch)
    n_examples = _check_positive_int("n_examples", n_examples, lo=0)
    horizons = [_check_positive_int("rollout_steps", h) for h in (rollout_steps or DEFAULT_ROLLOUT_STEPS)]
    cond = None
    if m.cond_names:
        if params is None or np.shape(params) != (n, len(m.cond_names)):
            raise EvaluationError(
                f"params: got shape {None if params is None else np.shape(params)}; the surrogate needs ({n}, "
                f"{len(m.cond_names)}), the parameters {list(m.cond_names)} of each simulation"
            )
        cond = np.asarray(params, np.float32)
    times = t0 + np.arange(t_len) * dt
    sim_ids = np.arange(n) if sim_ids is None else np.asarray(sim_ids)
    warnings: list[str] = []

    # One-step, teacher forced: windows ending at s = W-1 .. T-2 of every simulation, ordered (sim, s).
    starts = np.arange(w - 1, t_len - 1)
    sim_idx = np.repeat(np.arange(n), len(starts))
    end_idx = np.tile(starts, n)
    offsets = np.arange(-w + 1, 1)

    def one_step(rows: np.ndarray) -> np.ndarray:
        win = frames[sim_idx[rows][:, None], end_idx[rows][:, None] + offsets]  # (B, W, C, *grid)
        c = None if cond is None else cond[sim_idx[rows]]
        h = None if hold is None else hold[sim_idx[rows]]
        return _next_frames(sur, win, c, times[end_idx[rows]].astype(np.float32), h)

    rows = np.arange(len(sim_idx))
    pred1 = _batched(one_step, len(rows), batch, rows).reshape(n, len(starts), *frames.shape[2:])
    target1 = frames[:, w:]
    results: dict[str, Any] = {
        "one_step": {
            "steps": 1,
            "surrogate": _pooled(pred1, target1, channels, d),
            "identity": _pooled(frames[:, w - 1 : -1], target1, channels, d),
        }
    }

    # Autoregressive rollout from the first window to the end.
    n_roll = t_len - w
    roll = rollout_windows(sur, frames[:, :w], n_roll, cond, np.full(n, times[w - 1], np.float32), batch, hold=hold)
    pred, target = roll[:, 1:], frames[:, w:]
    ident = np.broadcast_to(frames[:, w - 1 : w], target.shape)
    for h in horizons:
        if h > n_roll:
            warnings.append(f"rollout_{h} skipped: the data allow only {n_roll} rollout steps")
            continue
        results[f"rollout_{h}"] = {
            "steps": h,
            "surrogate": _pooled(pred[:, :h], target[:, :h], channels, d),
            "identity": _pooled(ident[:, :h], target[:, :h], channels, d),
        }
    results["rollout_full"] = {
        "steps": n_roll,
        "surrogate": _pooled(pred, target, channels, d),
        "identity": _pooled(ident, target, channels, d),
    }
    bad = _nonfinite_sims(roll)
    if bad:
        warnings.append(
            f"the surrogate's rollout is not finite for {len(bad)} of {n} simulations (ids "
            f"{[int(sim_ids[i]) for i in bad[:5]]}{' ...' if len(bad) > 5 else ''})"
        )
    out: dict[str, Any] = {
        "suite": "trajectories",
        "surrogate": _describe(sur),
        "data": {
            "n_sims": n,
            "n_frames": t_len,
            "channels": channels,
            "grid": list(frames.shape[3:]),
            "dt": float(dt),
            "t0": float(t0),
        },
        "results": results,
        "per_step": {
            "step": list(range(1, n_roll + 1)),
            "t": [float(v) for v in times[w:]],
            "surrogate": _per_step(pred, target, channels, d),
            "identity": _per_step(ident, target, channels, d),
        },
        "nonfinite_sims": [int(sim_ids[i]) for i in bad],
        "warnings": warnings,
    }
    if n_examples:
        out["examples"] = _examples(n_examples, sim_ids, frames[:, w - 1 :], roll, times[w - 1 :], channels)
    return out


def evaluate_trajectory_file(
    sur: Surrogate,
    path: str | os.PathLike,
    *,
    rollout_steps: Sequence[int] | None = None,
    max_sims: int | None = None,
    batch: int = 32,
    n_examples: int = 0,
) -> dict[str, Any]:
    """:func:`evaluate_trajectories` on a ``pdestream solve`` file (its first ``max_sims`` simulations, default all).

    The file's channels must be the surrogate's (same names, same order), its frame spacing ``dt * every`` the
    surrogate's ``dt``, and its parameters must include the surrogate's ``cond_names``. A file from another solver
    than the surrogate's training solver is evaluated with a warning.
    """
    path = Path(path)
    traj = read_trajectories(path)
    m = sur.metadata
    check_fit(sur, traj.shape, str(path))
    if list(traj.channels) != list(m.channels):
        raise EvaluationError(
            f"{path}: channels {list(traj.channels)} but the surrogate predicts {list(m.channels)}; evaluate on data "
            "of the solver the surrogate was trained on"
        )
    n = traj.shape[0] if max_sims is None else min(_check_positive_int("max_sims", max_sims), traj.shape[0])
    dt = frame_spacing(traj.t)
    if dt is None:
        raise EvaluationError(f"{path}: needs at least two uniformly spaced frames (t = {traj.t[:4].tolist()}...)")
    cond = cond_from_params(sur, traj.params[:n], traj.param_names, str(path))
    frames = traj.fields(slice(0, n))
    out = evaluate_trajectories(
        sur,
        frames,
        cond,
        dt,
        rollout_steps=rollout_steps,
        t0=float(traj.t[0]),
        batch=batch,
        n_examples=n_examples,
        sim_ids=traj.sim_id[:n],
    )
    if traj.solver != m.solver:
        out["warnings"].insert(
            0, f"the file was written by {traj.solver!r} but the surrogate was trained on {m.solver!r}"
        )
    out["data"].update(file=str(path), solver=traj.solver, n_sims_in_file=int(traj.shape[0]))
    return out


# ---------------------------------------------------------------------------------------------------------------------
# PDEBench suite
# ---------------------------------------------------------------------------------------------------------------------


def pdebench_test_sims(pf: PDEBenchFile, test_ratio: float = PDEBENCH_TEST_RATIO) -> np.ndarray:
    """PDEBench's test simulations of a file, as its data loaders pick them (``pdebench/models/fno/utils.py``).

    Single-file layouts (``FNODatasetSingle``): the first ``int(N * test_ratio)``. One group per seed
    (``FNODatasetMult``): the seeds from ``int(N * (1 - test_ratio))`` on, i.e. the last ones.
    """
    n = pf.n_sims
    if pf.layout == "grouped":
        idx = np.arange(int(n * (1 - test_ratio)), n)
    else:
        idx = np.arange(int(n * test_ratio))
    if idx.size == 0:
        raise EvaluationError(
            f"{pf.path}: PDEBench's test split ({test_ratio:g} of {n} simulations) is empty; evaluate on all "
            "simulations instead (split='all', --split all)"
        )
    return idx


def _pdebench_cond(
    sur: Surrogate, pf: PDEBenchFile, cond: Mapping[str, float] | None, sims: np.ndarray
) -> np.ndarray | None:
    """``(len(sims), P)`` values of the surrogate's ``cond_names``: from ``cond``, else a root attribute of that name
    (case-insensitive, one value for the whole file, PDEBench's way), else a per-simulation dataset ``(N,)`` of that
    name (as ``pdestream solve --layout pdebench`` writes)."""
    need = sur.metadata.cond_names
    if not need:
        return None
    given = {str(k): float(v) for k, v in (cond or {}).items()}
    unknown = sorted(set(given) - set(need))
    if unknown:
        raise EvaluationError(f"cond: {unknown} are not parameters of the surrogate; it takes {list(need)}")
    lower = {k.lower(): v for k, v in pf.attrs.items()}
    per_sim = {k.lower(): k for k in pf.extras}
    columns, missing = [], []
    for name in need:
        value = given.get(name, _number(lower.get(name.lower())))
        if value is not None:
            columns.append(np.full(len(sims), value, np.float32))
            continue
        column = pf.read_extra(per_sim[name.lower()], sims) if name.lower() in per_sim else None
        if column is None or column.shape != (len(sims),):
            missing.append(name)
        else:
            columns.append(column)
    if missing:
        raise EvaluationError(
            f"{pf.path}: the surrogate is conditioned on {list(need)} but neither the file's attributes "
            f"{sorted(pf.attrs)} nor its per-simulation datasets {sorted(pf.extras)} give {missing}; pass them "
            f"(--cond {missing[0]}=VALUE)"
        )
    return np.stack(columns, axis=1)


def _number(v: Any) -> float | None:
    """A scalar file attribute as a float, None when it is absent or not a number."""
    try:
        return float(v) if v is not None and np.ndim(v) == 0 and not isinstance(v, str | bytes) else None
    except (TypeError, ValueError):
        return None


def _pdebench_block(
    pred: np.ndarray, target: np.ndarray, channels: Sequence[str], d: int, lengths: Sequence[float] | None
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """PDEBench metrics + pooled MSE/MAE/NMSE as ``{"overall", "fields"}``, and PDEBench's ``(C, T)`` arrays."""
    arrays = pdebench_metric_arrays(pred, target, spatial_dims=d, lengths=lengths)
    flat: dict[str, float] = {}
    for k, v in arrays.items():
        flat[k] = float(np.mean(v))
        for name, row in zip(channels, v, strict=True):
            flat[f"{k}/{name}"] = float(np.mean(row))
    pooled = field_metrics(pred, target, spatial_dims=d, channels=list(channels))
    for k in ("MSE", "MAE", "NMSE"):
        flat[k] = pooled[k]
        for name in channels:
            flat[f"{k}/{name}"] = pooled[f"{k}/{name}"]
    return _split_fields(flat, (*PDEBENCH_KEYS, "MSE", "MAE", "NMSE"), channels), arrays


def evaluate_pdebench(
    sur: Surrogate,
    path: str | os.PathLike,
    initial_step: int = 10,
    *,
    split: str = "test",
    max_sims: int | None = None,
    cond: Mapping[str, float] | None = None,
    lengths: Sequence[float] | None = None,
    batch: int = 32,
    n_examples: int = 0,
) -> dict[str, Any]:
    """Score ``sur`` on a PDEBench file with PDEBench's protocol and metrics, beside the identity baseline.

    The first ``initial_step`` frames (PDEBench's default 10) are given; the surrogate reads their last ``W``
    (``W <= initial_step``) and rolls out to the last frame. Metrics cover the ``Nt - initial_step`` predicted frames.
    ``result["results"]["pdebench_evaluator"]`` repeats the surrogate's PDEBench metrics averaged over all ``Nt``
    frames with the given ones counted at zero error, as PDEBench's own evaluator reports them.

    split: ``"test"`` (PDEBench's test simulations, :func:`pdebench_test_sims`) or ``"all"``; ``max_sims`` keeps the
      first that many of them. All selected simulations are held in memory (truth and prediction).
    cond: values of the surrogate's ``cond_names``; names not given are read from the file's root attributes
      (case-insensitive, e.g. ``Nu``, ``beta``). lengths: domain size per axis for fRMSE (PDEBench's Lx, Ly; 1 each).

    A file whose channels or grid do not fit the surrogate raises :class:`EvaluationError`; a frame spacing that
    differs from the surrogate's ``dt`` only adds a warning (PDEBench time units may differ from the solver's).
    """
    path = Path(path)
    pf = open_pdebench(path)
    m = sur.metadata
    w, d = m.window, len(m.grid)
    if pf.spatial_dims != d or pf.shape[2] != len(m.channels) or tuple(pf.grid_shape) != tuple(m.grid):
        raise EvaluationError(
            f"{path}: PDEBench fields have (C, *grid) = {tuple(pf.shape[2:])} (channels {list(pf.channels)}) but the "
            f"surrogate predicts {(len(m.channels), *m.grid)} (channels {list(m.channels)}); evaluate a surrogate "
            "trained on this grid and number of channels"
        )
    initial_step = _check_positive_int("initial_step", initial_step)
    if w > initial_step:
        raise EvaluationError(
            f"initial_step={initial_step} but the surrogate reads a window of {w} frames; pass --initial-step >= {w}"
        )
    if initial_step >= pf.n_frames:
        raise EvaluationError(
            f"{path}: initial_step={initial_step} leaves nothing to predict in {pf.n_frames} frames; pass "
            f"--initial-step < {pf.n_frames}"
        )
    if split == "test":
        sims = pdebench_test_sims(pf)
    elif split == "all":
        sims = np.arange(pf.n_sims)
    else:
        raise EvaluationError(f"split={split!r}; pass 'test' (PDEBench's test simulations) or 'all'")
    if max_sims is not None:
        sims = sims[: _check_positive_int("max_sims", max_sims)]
    batch = _check_positive_int("batch", batch)
    n_examples = _check_positive_int("n_examples", n_examples, lo=0)
    c_arr = _pdebench_cond(sur, pf, cond, sims)
    warnings: list[str] = []
    file_dt = frame_spacing(pf.t)
    if file_dt is not None and not math.isclose(file_dt, m.dt, rel_tol=DT_RTOL):
        warnings.append(f"the file's frames are {file_dt:g} apart but the surrogate steps {m.dt:g}")
    elif file_dt is None:
        warnings.append(f"the file has no uniform time coordinate; frames are taken to be {m.dt:g} apart")
    t_first = float(pf.t[0]) if pf.t is not None else 0.0
    frame_dt = file_dt if file_dt is not None else m.dt

    data = pf.read(sims=sims, frames=slice(initial_step - w, None)).fields  # (n, w + n_roll, C, *grid)
    n, n_roll = len(sims), pf.n_frames - initial_step
    t_last = np.full(n, t_first + (initial_step - 1) * frame_dt, np.float32)
    roll = rollout_windows(sur, data[:, :w], n_roll, c_arr, t_last, batch)
    pred, target = roll[:, 1:], data[:, w:]
    ident = np.broadcast_to(data[:, w - 1 : w], target.shape)
    channels = list(pf.channels)
    sur_block, sur_arrays = _pdebench_block(pred, target, channels, d, lengths)
    id_block, _ = _pdebench_block(ident, target, channels, d, lengths)
    # PDEBench's evaluator averages over all Nt frames, the initial_step given ones at zero error.
    evaluator = {k: float(np.sum(v) / (v.shape[0] * pf.n_frames)) for k, v in sur_arrays.items()}

    def nrmse_per_step(p: np.ndarray, q: np.ndarray) -> dict[str, np.ndarray]:
        arr = pdebench_metric_arrays(p, q, spatial_dims=d, lengths=lengths)["nRMSE"]  # (C, n)
        return {"nRMSE": arr.mean(axis=0)}

    bad = _nonfinite_sims(roll)
    if bad:
        warnings.append(f"the surrogate's rollout is not finite for {len(bad)} of {n} simulations")
    times = t_first + np.arange(pf.n_frames) * frame_dt
    out: dict[str, Any] = {
        "suite": "pdebench",
        "surrogate": _describe(sur),
        "data": {
            "file": str(path),
            "layout": pf.layout,
            "n_sims": n,
            "n_sims_in_file": pf.n_sims,
            "split": split,
            "n_frames": pf.n_frames,
            "initial_step": initial_step,
            "channels": channels,
            "grid": list(pf.grid_shape),
            "dt": file_dt,
        },
        "results": {
            "rollout_full": {"steps": n_roll, "surrogate": sur_block, "identity": id_block},
            "pdebench_evaluator": {"steps": n_roll, "surrogate": evaluator},
        },
        "per_step": {
            "step": list(range(1, n_roll + 1)),
            "t": [float(v) for v in times[initial_step:]],
            "surrogate": _per_step(pred, target, channels, d, nrmse_per_step),
            "identity": _per_step(ident, target, channels, d, nrmse_per_step),
        },
        "nonfinite_sims": [int(sims[i]) for i in bad],
        "warnings": warnings,
    }
    if n_examples:
        out["examples"] = _examples(n_examples, sims, data[:, w - 1 :], roll, times[initial_step - 1 :], channels)
    return out


# ---------------------------------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------------------------------


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items() if k != "examples"}
    if isinstance(obj, list | tuple | np.ndarray):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, float | np.floating):
        return float(obj) if math.isfinite(obj) else None
    return obj


def to_json(result: Mapping[str, Any]) -> dict[str, Any]:
    """A JSON-ready copy of an evaluation result: ``examples`` dropped, NaN and infinities as None."""
    return _jsonable(result)


def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "nan" if v is None or math.isnan(v) else ("inf" if v > 0 else "-inf")
    return f"{v:.3e}"


_LABELS = {"one_step": "one-step (teacher forced)", "rollout_full": "rollout (full)"}


def format_markdown(result: Mapping[str, Any]) -> str:
    """The evaluation as markdown: a heading and one table (surrogate and identity rows per evaluation)."""
    s, dat = result["surrogate"], result["data"]
    where = dat.get("file", "the given frames")
    head = (
        f"### {s['model']} surrogate ({s['kind']}, trained on {s['solver']}) on {where}\n\n"
        f"{dat['n_sims']} simulation(s) x {dat['n_frames']} frames, channels {', '.join(dat['channels'])}, "
        f"grid {'x'.join(map(str, dat['grid']))}"
    )
    if result["suite"] == "pdebench":
        head += f", {dat['layout']} layout, first {dat['initial_step']} frames given"
        keys: tuple[str, ...] = (*PDEBENCH_KEYS, "NMSE")
    else:
        keys = ("MSE", "RMSE", "MAE", "NMSE")
    many = len(dat["channels"]) > 1
    lines = [
        head,
        "",
        "| evaluation | steps | field | model | " + " | ".join(keys) + " |",
        "|" + "---|" * (4 + len(keys)),
    ]
    for name, block in result["results"].items():
        if "identity" not in block:
            continue
        label = _LABELS.get(name, "rollout" if name.startswith("rollout_") else name)
        for field in ["all"] + list(dat["channels"]) if many else ["all"]:
            for model in ("surrogate", "identity"):
                m = block[model]["overall"] if field == "all" else block[model]["fields"][field]
                lines.append(
                    f"| {label} | {block['steps']} | {field} | {model} | "
                    + " | ".join(_fmt(m.get(k)) for k in keys)
                    + " |"
                )
    ev = result["results"].get("pdebench_evaluator")
    if ev:
        lines += [
            "",
            "As PDEBench's evaluator reports it (mean over all frames, the given ones at zero error): "
            + ", ".join(f"{k} {_fmt(ev['surrogate'][k])}" for k in ("RMSE", "nRMSE", "max_error")),
        ]
    return "\n".join(lines)
