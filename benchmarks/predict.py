"""The surrogate as a fast solver: roll it out from the initial states of a trajectory file, write the same layout.

:func:`predict_file` reads a ``pdestream solve`` file (:mod:`benchmarks.trajectories`), takes each simulation's
first ``W`` frames as the initial window (``W`` = the surrogate's window) and its parameters as the conditioning
(when the surrogate has ``cond_names``), and writes ``steps`` predicted frames after the window's last one:
``fields`` ``(N, steps + 1, C, *grid)``, frame 0 being that last given frame (as a solver's rollout starts from its
initial condition), times ``t[W-1] + k * dt``, the same ``params``, ``sim_id`` and grid coordinates, and solver
name ``"surrogate:<training solver>"``. The output is written to ``OUT.partial`` and renamed at the end, so an
error leaves no file behind.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from benchmarks.evaluate import DT_RTOL, EvaluationError, check_fit, cond_from_params, frame_spacing, rollout_windows
from benchmarks.trajectories import TrajectoryWriter, read_trajectories
from surrogates.surrogate import Surrogate

__all__ = ["predict_file"]


def predict_file(
    sur: Surrogate,
    input_h5: str | os.PathLike,
    steps: int,
    out_h5: str | os.PathLike,
    *,
    batch: int = 32,
) -> dict[str, Any]:
    """Roll ``sur`` out ``steps`` frames from each simulation of ``input_h5`` and write them to ``out_h5``.

    ``input_h5`` needs at least ``W`` frames per simulation (frames ``dt`` apart when ``W > 1``), the surrogate's
    channels and grid, and parameters that include its ``cond_names``. ``batch`` simulations are rolled out per call.
    Returns ``{"path", "shape", "seconds", "nonfinite_sims"}`` (ids of simulations whose rollout is not finite).
    """
    input_h5, out_h5 = Path(input_h5), Path(out_h5)
    for name, value in (("steps", steps), ("batch", batch)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
            raise EvaluationError(f"{name}={value!r} must be an integer >= 1")
    steps, batch = int(steps), int(batch)
    if out_h5.resolve() == input_h5.resolve():
        raise EvaluationError(f"--out {out_h5} is the input file; write the predictions to another file")
    traj = read_trajectories(input_h5)
    m = sur.metadata
    check_fit(sur, traj.shape, str(input_h5))
    if list(traj.channels) != list(m.channels):
        raise EvaluationError(
            f"{input_h5}: channels {list(traj.channels)} but the surrogate predicts {list(m.channels)}; give initial "
            "states of the solver the surrogate was trained on"
        )
    n, t_len = traj.shape[:2]
    w = m.window
    if n == 0:
        raise EvaluationError(f"{input_h5}: holds no simulations; give a file with at least one initial state")
    if t_len < w:
        raise EvaluationError(f"{input_h5}: {t_len} frame(s) per simulation but the surrogate reads a window of {w}")
    if w > 1:
        dt = frame_spacing(traj.t[:w])
        if dt is None or not math.isclose(dt, m.dt, rel_tol=DT_RTOL):
            raise EvaluationError(
                f"{input_h5}: the first {w} frames are at t = {traj.t[:w].tolist()} but the surrogate's window holds "
                f"frames {m.dt:g} apart; write the initial states with that spacing"
            )
    cond = cond_from_params(sur, traj.params, traj.param_names, str(input_h5))
    t0 = float(traj.t[w - 1])
    # Keep the input's (dt, every) when its frame spacing is the surrogate's, else describe frames of dt = sur.dt.
    with_every = _file_dt_every(input_h5)
    keep = with_every is not None and math.isclose(with_every[0] * with_every[1], m.dt, rel_tol=DT_RTOL)
    dt_attr, every = with_every if keep else (m.dt, 1)
    config = {
        "surrogate": m.to_dict(),
        "model": sur.model_config,
        "input": str(input_h5),
        "input_solver": traj.solver,
        "input_config": traj.config,
        "initial_window": w,
    }
    writer = TrajectoryWriter(
        path=out_h5,
        n_sims=n,
        frame_shape=(steps + 1, len(m.channels), *m.grid),
        n_params=traj.params.shape[1],
        solver=f"surrogate:{m.solver}",
        channels=list(m.channels),
        param_names=traj.param_names,
        coords=traj.coords,
        times=t0 + np.arange(steps + 1) * m.dt,
        config=config,
        dt=dt_attr,
        every=every,
    )
    start_time = time.perf_counter()
    bad: list[int] = []
    size = min(batch, n)
    with writer as out:
        for start in range(0, n, size):
            stop = min(start + size, n)
            win = traj.fields(slice(start, stop), slice(0, w))  # (b, W, C, *grid)
            c = None if cond is None else cond[start:stop]
            t = np.full(stop - start, t0, np.float32)
            roll = rollout_windows(sur, win, steps, c, t, size, pad_to=size)
            finite = np.isfinite(roll.reshape(len(roll), -1)).all(axis=1)
            bad += [int(traj.sim_id[start + i]) for i in np.flatnonzero(~finite)]
            out.write(start, roll, traj.params[start:stop], traj.sim_id[start:stop])
    return {
        "path": str(out_h5),
        "shape": (n, steps + 1, len(m.channels), *m.grid),
        "seconds": time.perf_counter() - start_time,
        "nonfinite_sims": bad,
    }


def _file_dt_every(path: Path) -> tuple[float, int] | None:
    """The ``dt`` and ``every`` attributes of a trajectory file, None when absent."""
    try:
        with h5py.File(path, "r") as f:
            return float(f.attrs["dt"]), int(f.attrs["every"])
    except (OSError, KeyError, TypeError, ValueError):
        return None
