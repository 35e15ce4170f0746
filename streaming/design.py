"""The design cursor: which simulation runs next, and which are finished (upstream end of the stream).

Simulation ``i`` has a fixed parameter vector and initial-condition key derived from the seed, so
re-running it (after a worker died, or on resume) reproduces exactly the same fields, and the
buffer's (simulation id, frame) de-duplication makes delivery exactly-once. The loss-steered design
(:class:`streaming.adaptive.AdaptiveCursor`) records the parameters it draws instead, in its checkpoint state.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import numpy as np

from solvers import Solver, SolverError

BLOCK = 1024  # parameters are drawn in blocks of at most this many simulations (LHS/Sobol need a block size)


def block_size(n_sims: int) -> int:
    """Simulations per parameter block for a design of ``n_sims`` (0: unlimited): equal blocks of at most
    :data:`BLOCK`, so a Latin hypercube of a finite design is stratified over its own size, not a prefix of a
    larger one (the first 48 points of a 1024-point LHS are close to independent draws)."""
    if n_sims <= 0:
        return BLOCK
    blocks = -(-n_sims // BLOCK)
    return -(-n_sims // blocks)


@dataclass(frozen=True)
class Task:
    """Simulations a worker runs together: ids ``(b,)``, parameters ``(b, P)`` and IC seeds ``(b,)``."""

    sim_ids: np.ndarray
    params: np.ndarray
    ic_seeds: np.ndarray


class DesignCursor:
    """Hands out tasks of ``sims_per_task`` simulations, ``n_sims`` in all (0 = unlimited).

    ``requeue(task)`` puts a failed task's unfinished simulations back at the front. With
    ``stride`` N > 1 and ``offset`` k (trainer process k of N) the cursor hands out only the ids
    ``first_id + k, first_id + k + N, ...`` below ``first_id + n_sims``: N cursors share the design
    disjointly, and simulation ``i`` has the same parameters and seed whichever cursor hands it out.
    """

    def __init__(self, solver: Solver, n_sims: int, design: str, seed: int, sims_per_task: int,
                 first_id: int = 0, fixed: dict[str, float] | None = None, offset: int = 0,
                 stride: int = 1) -> None:
        if stride < 1 or not 0 <= offset < stride:
            raise SolverError(f"DesignCursor: offset={offset} must be in [0, stride={stride}); stride >= 1")
        self.solver, self.n_sims, self.design, self.seed = solver, n_sims, design, seed
        names = solver.param_space.names
        unknown = sorted(set(fixed or {}) - set(names))
        if unknown:
            raise SolverError(
                f"solver.fixed: unknown parameter(s) {', '.join(unknown)}; {solver.name} has {', '.join(names)}"
            )
        self.fixed = {names.index(k): float(v) for k, v in (fixed or {}).items()}
        self.sims_per_task = sims_per_task
        self.first_id = first_id
        self.offset, self.stride = offset, stride
        self.next_id = first_id + offset
        self.pending: list[int] = []  # requeued ids, served first
        self.done: set[int] = set()
        self._block = block_size(n_sims)
        self._blocks: dict[int, np.ndarray] = {}
        self._recent: list[np.ndarray] = []  # parameters handed out since the last take_recent()

    def params_of(self, sim_ids: np.ndarray) -> np.ndarray:
        """Parameter vectors ``(b, P)`` of simulations ``sim_ids``."""
        out = []
        for i in np.asarray(sim_ids).tolist():
            b = (i - self.first_id) // self._block
            if b not in self._blocks:
                key = jax.random.fold_in(jax.random.key(self.seed), b)
                block = self.solver.sample_params(key, self._block, self.design)
                for j, v in self.fixed.items():
                    block[:, j] = v
                self._blocks[b] = self.solver.param_space.validate(block)
            out.append(self._blocks[b][(i - self.first_id) % self._block])
        return np.stack(out) if out else np.zeros((0, len(self.solver.param_space)))

    def ic_seeds_of(self, sim_ids: np.ndarray) -> np.ndarray:
        return (np.asarray(sim_ids, np.int64) * 7919 + self.seed) % (2**31 - 1)

    def exhausted(self) -> bool:
        return not self.pending and self.n_sims > 0 and self.next_id >= self.first_id + self.n_sims

    def holds(self) -> bool:
        """Whether the next task waits for the trainer's losses (a fixed design never waits; see
        :meth:`streaming.adaptive.AdaptiveCursor.holds`)."""
        return False

    def next_task(self) -> Task | None:
        """The next task, or None when the design is exhausted."""
        ids = self.pending[: self.sims_per_task]
        self.pending = self.pending[len(ids) :]
        while len(ids) < self.sims_per_task and not (self.n_sims > 0 and self.next_id >= self.first_id + self.n_sims):
            ids.append(self.next_id)
            self.next_id += self.stride
        if not ids:
            return None
        arr = np.asarray(ids, np.int64)
        task = Task(arr, self.params_of(arr), self.ic_seeds_of(arr))
        self._recent.append(task.params)
        del self._recent[:-1024]  # bounded when nobody takes them
        return task

    def take_recent(self) -> np.ndarray:
        """Parameters ``(n, P)`` of the simulations handed out since the last call (for histograms)."""
        recent, self._recent = self._recent, []
        return np.concatenate(recent) if recent else np.zeros((0, len(self.solver.param_space)))

    def observe(self, sim_ids: np.ndarray, losses: np.ndarray) -> None:
        """Per-simulation training losses from the trainer; a fixed design ignores them (see
        :class:`streaming.adaptive.AdaptiveCursor`)."""

    def no_loss(self, sim_ids: np.ndarray) -> None:
        """Simulations the trainer will report no loss for (dropped, or none of their samples entered the buffer); a
        fixed design ignores them (see :meth:`streaming.adaptive.AdaptiveCursor.no_loss`)."""

    def mark_done(self, sim_ids: np.ndarray) -> None:
        self.done.update(int(i) for i in np.asarray(sim_ids).tolist())

    def requeue(self, task: Task) -> None:
        """Put the unfinished simulations of ``task`` back at the front of the queue."""
        left = [int(i) for i in task.sim_ids.tolist() if int(i) not in self.done]
        self.pending = left + [i for i in self.pending if i not in left]

    def state_dict(self, in_flight: list[Task] | None = None) -> dict:
        """Cursor position; simulations issued but unfinished (``in_flight``) are re-run after a resume."""
        pending = list(self.pending)
        for t in in_flight or []:
            pending += [int(i) for i in t.sim_ids.tolist() if int(i) not in self.done and int(i) not in pending]
        return {"next_id": self.next_id, "pending": sorted(pending), "done": sorted(self.done)}

    def load_state_dict(self, d: dict) -> None:
        self.next_id = int(d["next_id"])
        self.pending = [int(i) for i in d["pending"]]
        self.done = {int(i) for i in d["done"]}
