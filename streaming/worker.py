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


def chunk_bounds(n_frames: int, chunk_frames: int, lookback: int, lookahead: int) -> list[tuple[int, int, int]]:
    """Frame ranges ``(lo, hi, first_owned)`` of the chunks of one simulation.

    A sample with target frame ``j`` needs frames ``[j - lookback, j + lookahead)``. Chunk ``c`` owns
    the targets ``j`` in ``[c k, (c + 1) k)`` and carries the frames they need, so consecutive chunks
    overlap by ``lookback + lookahead - 1`` frames and every target is owned by exactly one chunk.
    """
    out = []
    first = lookback
    last = n_frames - lookahead  # last valid target
    for start in range(first, last + 1, chunk_frames):
        stop = min(start + chunk_frames, last + 1)
        out.append((start - lookback, stop - 1 + lookahead, start))
    return out


class SolverWorker:
    """Runs tasks of the solver ``name`` with config ``config`` for ``steps`` steps (frames every ``every``)."""

    def __init__(
        self, name: str, config: dict, steps: int, every: int, chunk_frames: int, lookback: int, lookahead: int
    ) -> None:
        self.solver = get_solver(name, **config)
        self.steps, self.every = steps, every
        self.chunk_frames, self.lookback, self.lookahead = chunk_frames, lookback, lookahead

    def simulate(self, task: Task) -> np.ndarray:
        """Frames ``(b, n_frames, C, *grid)`` of the task's simulations."""
        keys = jax.vmap(jax.random.key)(np.asarray(task.ic_seeds, np.uint32))
        return np.asarray(self.solver.rollout(keys, task.params, self.steps, self.every), np.float32)

    def run(self, task: Task) -> Iterator[Chunk | SimReport]:
        frames = self.simulate(task)
        bounds = chunk_bounds(frames.shape[1], self.chunk_frames, self.lookback, self.lookahead)
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
                    steps=np.arange(lo, hi, dtype=np.int64),
                    fields=np.ascontiguousarray(sim[lo:hi]),
                    params=task.params[b].astype(np.float32),
                    solver=self.solver.name,
                )
            yield SimReport(sim_id, "done")
