"""Run a solver over a parameter design and write the trajectories to HDF5 (``pdestream solve``)."""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np

from benchmarks.trajectories import TrajectoryWriter
from solvers import Solver, check_finite
from streaming.progress import progress_bar


def solve_to_file(
    solver: Solver,
    n_sims: int,
    n_steps: int,
    out: str | Path,
    every: int = 1,
    seed: int = 0,
    design: str = "uniform",
    batch: int = 16,
    show_progress: bool = True,
) -> Path:
    """Simulate ``n_sims`` parameter sets for ``n_steps`` steps in batches of ``batch`` and write them.

    A NaN/Inf blow-up raises :class:`solvers.SimulationBlowUp` naming the parameters, and no file is left.
    Returns the path written.
    """
    if n_sims < 1 or batch < 1:
        raise ValueError(f"--n ({n_sims}) and --batch ({batch}) must be >= 1")
    key_design, key_ic = jax.random.split(jax.random.key(seed))
    params = solver.sample_params(key_design, n_sims, design)
    keys = jax.random.split(key_ic, n_sims)
    writer = TrajectoryWriter.for_solver(solver, out, n_sims, n_steps, every)
    with writer as w, progress_bar(f"solve {solver.name}", total=n_sims, enabled=show_progress) as bar:
        for start in range(0, n_sims, batch):
            stop = min(start + batch, n_sims)
            frames = np.asarray(solver.rollout(keys[start:stop], params[start:stop], n_steps, every))
            ids = np.arange(start, stop)
            check_finite(frames, params[start:stop], solver.param_space.names, ids)
            w.write(start, frames, params[start:stop], ids)
            bar.advance(stop - start)
    return Path(out)
