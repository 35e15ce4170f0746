"""A solver worker: runs tasks of simulations with a batched JAX solver and cuts them into chunks.

The same class runs in-process (backend ``local``), inside a Ray actor and on an MPI rank. It knows
nothing of transports: ``run(task)`` yields :class:`~streaming.chunk.Chunk` s and one
:class:`SimReport` per simulation, in that order per simulation.
"""

from __future__ import annotations

from collections.abc import Iterator

import jax
import numpy as np

from solvers import get_solver
from streaming.chunk import Chunk, SimReport
from streaming.design import Task


def chunk_bounds(n_frames: int, chunk_frames: int, window: int, targets: int) -> list[tuple[int, int, int]]:
    """Frame ranges ``(lo, hi, first_owned)`` (frame indices) of the chunks of one simulation.

    A sample whose first target is frame ``j`` needs frames ``[j - window, j + targets)``. Chunk ``c`` owns
    the first targets ``j`` in ``[window + c k, window + (c + 1) k)`` (``k = chunk_frames``) and carries the
    frames they need, so consecutive chunks overlap by ``window + targets - 1`` frames and every
    target is owned by exactly one chunk.
    """
    out = []
    first = window
    last = n_frames - targets  # last valid first target
    for start in range(first, last + 1, chunk_frames):
        stop = min(start + chunk_frames, last + 1)
        out.append((start - window, stop - 1 + targets, start))
    return out


class SolverWorker:
    """Runs tasks of the solver ``name`` with config ``config`` for ``steps`` solver steps, saving a frame every
    ``every`` solver steps (frame ``k`` is solver step ``k * every``); chunks carry the ``window`` frames before
    and the ``targets`` frames from each sample's first target (:func:`chunk_bounds`). ``Chunk.frame_index`` holds
    frame indices."""

    def __init__(
        self, name: str, config: dict, steps: int, every: int, chunk_frames: int, window: int, targets: int
    ) -> None:
        self.solver = get_solver(name, **config)
        self.steps, self.every = steps, every
        self.chunk_frames, self.window, self.targets = chunk_frames, window, targets

    def simulate(self, task: Task) -> np.ndarray:
        """Frames ``(b, n_frames, C, *grid)`` of the task's simulations, ``n_frames = steps // every + 1``."""
        keys = jax.vmap(jax.random.key)(np.asarray(task.ic_seeds, np.uint32))
        return np.asarray(self.solver.rollout(keys, task.params, self.steps, self.every), np.float32)

    def run(self, task: Task) -> Iterator[Chunk | SimReport]:
        frames = self.simulate(task)
        bounds = chunk_bounds(frames.shape[1], self.chunk_frames, self.window, self.targets)
        for b, sim_id in enumerate(task.sim_ids.tolist()):
            sim = frames[b]
            if not np.isfinite(sim).all():
                vals = ", ".join(
                    f"{n}={v:.4g}" for n, v in zip(self.solver.param_space.names, task.params[b], strict=True)
                )
                yield SimReport(sim_id, "nan", f"simulation {sim_id} produced NaN/Inf ({vals}); dropped")
                continue
            for lo, hi, _ in bounds:
                yield Chunk(
                    sim_id=sim_id,
                    frame_index=np.arange(lo, hi, dtype=np.int64),  # frame j is solver step j * every
                    fields=np.ascontiguousarray(sim[lo:hi]),
                    params=task.params[b].astype(np.float32),
                    solver=self.solver.name,
                )
            yield SimReport(sim_id, "done")
