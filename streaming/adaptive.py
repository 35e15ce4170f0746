"""Loss-steered parameter design (``solver.design = "adaptive"``): the training loss chooses where to simulate next.

Method. A fitness-proportional kernel proposal in the unit cube of the parameter space, after the adaptive
multiple importance sampling of Melissa's Breed (Dymchenko, Purandare & Raffin, "MelissaDL x Breed: Towards
Data-Efficient On-line Supervised Training of Multi-parametric Surrogates with Active Learning", 2024). The
trainer reports a running training loss per simulation (each sample's loss from the train step's own forward
pass, the mean over the calls it unrolls, optionally ``relative``; :class:`SimLosses`); simulation ``i``
(its index ``k`` in this cursor's sequence) gets its parameters from

- the base design (``lhs``, ``sobol`` or ``uniform``, the same point a fixed design would give it) for the first
  ``warmup`` simulations, while no loss has been reported, and for a ``floor`` fraction of the rest, spread
  evenly (``floor(k * floor)`` increments), so no region of the space starves; with ``spread`` these base draws
  are instead consecutive points of one scrambled Sobol sequence (the ``m``-th base draw of the run gets point
  ``m``), so even the few of a short run fill the space evenly: the defensive component of the mixture
  (Hesterberg, "Weighted average importance sampling and defensive mixture distributions", Technometrics
  1995) made space-filling;
- otherwise a Gaussian kernel (``bandwidth``, in unit-cube coordinates, reflected at the faces) around a
  recent simulation picked with probability proportional to ``loss ** exponent``, where ``loss`` is the kernel
  average (std ``smooth``) of the running losses of the simulations around it: the loss of one simulation
  also depends on its initial condition, and the average keeps the part that depends on the parameters.

Working in the unit cube (``ParamSpace.from_unit``) makes log-scaled parameters steer in log space. A kernel
mixture over the loss table is cheap and has no model to train, unlike the generative sampler of OGAS
("Learning Where to Simulate", arXiv 2606.09949, 2026), and it keeps exploring through the floor.

Bias. The simulations are no longer drawn from the base density, so the training distribution leans toward
the high-loss regions, and the mean training loss is not an unbiased estimate of the mean error under the base
density. The goal here is a lower worst-case (tail) error over the parameter space, which this lean serves;
the floor bounds the density ratio base / mixture by ``1 / floor``, so no region's weight falls below
``floor`` times its base weight. Importance weights are therefore not applied to the training loss; the
held-out evaluation (:func:`held_out_grid`) measures the error on a grid that is not drawn from any design.

The state (drawn parameters, the loss table) is plain data, saved in the checkpoint with the cursor; every
draw is a function of the seed, the simulation id and the state at the time of the draw, so ``--resume`` on
the local backend continues exactly (with Ray or MPI the losses arrive while workers run, so the draws depend
on timing, as the stream itself does). The parameters of every simulation handed out are kept: ``P`` floats per
simulation in each checkpoint.

Pacing (``ahead`` > 0). Fast simulations on a background backend could all be handed out before the first loss
report, and steering would never act. With ``ahead`` = k a new task goes out only while ``n < max(warmup, m + 1)
+ k``, ``n`` the simulations handed out so far and ``m`` the index of the newest one with at least one loss
report (-1 before any); the task then takes ``sims_per_task`` simulations, so ``n <= max(warmup, m + 1) + k +
sims_per_task - 1`` at all times (requeued simulations always go out). The newest reported simulation, not the
number reported, sets the bound: a simulation whose samples are never drawn for a loss (a full reservoir keeps few
of a late one) or that was dropped (NaN) would otherwise hold its place for good; and a simulation that finished
with none of its samples admitted to the buffer will never be reported, so the trainer says so
(:meth:`AdaptiveCursor.no_loss`) and it counts as reported: else, once the buffer turns most samples away, the
``ahead`` newest simulations could all be such and hand-out would stop for good. The local backend is not held:
the trainer pulls its stream between steps and could not report the losses it waits for.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.stats import qmc

from solvers import Solver, SolverError
from solvers.params import ParamSpace
from streaming.config import AdaptiveSection
from streaming.design import DesignCursor, Task


# ---------------------------------------------------------------------------- pure pieces
def to_unit(space: ParamSpace, params: np.ndarray) -> np.ndarray:
    """Inverse of ``space.from_unit``: parameter vectors ``(n, P)`` to unit-cube points ``(n, P)`` (0 where a
    parameter's range is a single value)."""
    p = np.asarray(params, np.float64).reshape(-1, len(space))
    out = np.zeros_like(p)
    for j, par in enumerate(space.params):
        lo, hi, x = (np.log10(par.low), np.log10(par.high), np.log10(p[:, j])) if par.log else (par.low, par.high,
                                                                                               p[:, j])
        if hi > lo:
            out[:, j] = np.clip((x - lo) / (hi - lo), 0.0, 1.0)
    return out


def from_base(k: int, floor: float, warmup: int) -> bool:
    """Whether the ``k``-th simulation of a cursor comes from the base design: the first ``warmup``, then an
    evenly spread ``floor`` fraction (exactly ``floor(n * floor)`` of ``n`` after warmup, give or take one)."""
    if k < warmup:
        return True
    j = k - warmup
    return int(np.floor((j + 1) * floor + 1e-9)) > int(np.floor(j * floor + 1e-9))


def base_rank(k: int, floor: float, warmup: int) -> int:
    """How many of the simulations ``0 .. k-1`` of a cursor came from the base design (:func:`from_base`): the
    rank ``m`` of simulation ``k`` among the base draws when ``from_base(k, ...)`` holds."""
    return k if k <= warmup else warmup + int(np.floor((k - warmup) * floor + 1e-9))


def sobol_block(dims: int, seed: int, block: int, size: int = 1024) -> np.ndarray:
    """Points ``block * size .. (block + 1) * size - 1`` ``(size, dims)`` of one scrambled Sobol sequence in the
    unit cube (``size`` a power of two keeps every block balanced)."""
    s = qmc.Sobol(d=max(dims, 1), scramble=True, seed=np.random.default_rng([seed, 0x50B]))
    if block:
        s.fast_forward(block * size)
    return s.random(size)[:, :dims]


def update_losses(table: dict[int, tuple[float, int]], sim_ids: np.ndarray, losses: np.ndarray, report: int,
                  ema: float, memory: int) -> dict[int, tuple[float, int]]:
    """A new loss table ``{sim_id: (running loss, report number of its last update)}``: exponential moving
    average with weight ``ema`` on the new value, keeping the ``memory`` most recently updated simulations
    (older entries measured an older model)."""
    out = dict(table)
    for i, v in zip(np.asarray(sim_ids).tolist(), np.asarray(losses, np.float64).tolist(), strict=True):
        if not np.isfinite(v):
            continue
        old = out.get(int(i))
        out[int(i)] = (v if old is None else (1 - ema) * old[0] + ema * v, report)
    if len(out) > memory:
        keep = sorted(out, key=lambda i: (out[i][1], i))[-memory:]
        out = {i: out[i] for i in sorted(keep)}
    return out


def proposal_weights(losses: np.ndarray, exponent: float) -> np.ndarray:
    """Selection probabilities ``(m,)`` proportional to ``loss ** exponent`` (uniform if every loss is 0)."""
    lv = np.maximum(np.asarray(losses, np.float64), 0.0)
    if lv.max(initial=0.0) <= 0:
        return np.full(len(lv), 1.0 / max(len(lv), 1))
    w = (lv / lv.max()) ** exponent
    return w / w.sum()


def smooth_losses(u: np.ndarray, losses: np.ndarray, width: float) -> np.ndarray:
    """Kernel (Nadaraya-Watson) average ``(m,)`` of ``losses`` ``(m,)`` over the points ``u`` ``(m, P)`` with a
    Gaussian of std ``width`` (unit-cube units; 0 = no smoothing): a simulation's loss also depends on its
    initial condition, and the average over neighbours keeps the part that depends on the parameters."""
    lv = np.asarray(losses, np.float64)
    if width <= 0 or len(lv) < 2:
        return lv
    d2 = np.sum(np.square(u[:, None, :] - u[None, :, :]), axis=-1)
    k = np.exp(-0.5 * d2 / width**2)
    return (k @ lv) / k.sum(axis=1)


def reflect(u: np.ndarray) -> np.ndarray:
    """Fold points into ``[0, 1]`` by reflection at the faces (a kernel near a face keeps its mass inside)."""
    u = np.mod(u, 2.0)
    return np.where(u > 1.0, 2.0 - u, u)


def draw_near(rng: np.random.Generator, centers: np.ndarray, weights: np.ndarray, bandwidth: float) -> np.ndarray:
    """One unit-cube point ``(P,)`` from the kernel mixture ``sum_j w_j N(centers_j, bandwidth^2 I)``, reflected."""
    j = rng.choice(len(centers), p=weights)
    return reflect(centers[j] + bandwidth * rng.standard_normal(centers.shape[1]))


# ---------------------------------------------------------------------------- the cursor
class AdaptiveCursor(DesignCursor):
    """A :class:`DesignCursor` whose next parameters follow the reported training losses (module docstring).

    ``observe(sim_ids, losses)`` takes the trainer's per-simulation losses (through the dispatcher). The
    parameters handed out are recorded (:attr:`drawn`), since they depend on the losses seen at the time.
    """

    def __init__(self, solver: Solver, n_sims: int, seed: int, sims_per_task: int, options: AdaptiveSection,
                 first_id: int = 0, fixed: dict[str, float] | None = None, offset: int = 0, stride: int = 1) -> None:
        super().__init__(solver, n_sims, options.base, seed, sims_per_task, first_id=first_id, fixed=fixed,
                         offset=offset, stride=stride)
        self.options = options
        self.drawn: dict[int, np.ndarray] = {}
        self.origin: dict[int, str] = {}  # "base" or "proposal"
        self.table: dict[int, tuple[float, int]] = {}
        self.reports = 0
        self.newest_reported = -1  # index (in this cursor's sequence) of the newest simulation with a loss report
        self._sobol: dict[int, np.ndarray] = {}

    def _spread_point(self, k: int) -> np.ndarray:
        """Parameters ``(P,)`` of the ``k``-th simulation when it is a base draw under ``spread``: point
        ``m * stride + offset`` of the run's Sobol sequence (``m`` its rank among this cursor's base draws), so
        the cursors of several trainers together take its first points."""
        o, space = self.options, self.solver.param_space
        g = base_rank(k, o.floor, o.warmup) * self.stride + self.offset
        b = g // 1024
        if b not in self._sobol:
            self._sobol[b] = sobol_block(len(space), self.seed, b)
        p = space.from_unit(self._sobol[b][g % 1024][None])
        for j, v in self.fixed.items():
            p[:, j] = v
        return space.validate(np.clip(p, space.low, space.high))[0]

    def _index(self, i: int) -> int:
        return (i - self.first_id - self.offset) // self.stride

    def _draw(self, i: int) -> tuple[np.ndarray, str]:
        o, k = self.options, self._index(i)
        centers = [j for j in sorted(self.table) if j in self.drawn]
        if from_base(k, o.floor, o.warmup) and o.spread:
            return self._spread_point(k), "base"
        if from_base(k, o.floor, o.warmup) or not centers:
            return super().params_of(np.asarray([i]))[0], "base"
        rng = np.random.default_rng([self.seed, 0xADA, i])
        space = self.solver.param_space
        u = to_unit(space, np.stack([self.drawn[j] for j in centers]))
        w = proposal_weights(smooth_losses(u, np.asarray([self.table[j][0] for j in centers]), o.smooth), o.exponent)
        p = space.from_unit(draw_near(rng, u, w, o.bandwidth)[None])
        for j, v in self.fixed.items():
            p[:, j] = v
        p = np.clip(p, space.low, space.high)  # float round-off of the log map
        return space.validate(p)[0], "proposal"

    def params_of(self, sim_ids: np.ndarray) -> np.ndarray:
        """Parameters ``(b, P)``: recorded ones, or drawn now (and recorded) for simulations never handed out."""
        out = []
        for i in np.asarray(sim_ids).tolist():
            if i not in self.drawn:
                self.drawn[i], self.origin[i] = self._draw(i)
            out.append(self.drawn[i])
        return np.stack(out) if out else np.zeros((0, len(self.solver.param_space)))

    def next_task(self) -> Task | None:
        """As :meth:`DesignCursor.next_task`, but requeued simulations go out in a task of their own: new ones
        are drawn only when the queue is empty, so a resumed run draws them at the same point of the stream."""
        if not self.pending:
            return super().next_task()
        ids, self.pending = self.pending[: self.sims_per_task], self.pending[self.sims_per_task :]
        arr = np.asarray(ids, np.int64)
        task = Task(arr, self.params_of(arr), self.ic_seeds_of(arr))
        self._recent.append(task.params)
        return task

    def holds(self) -> bool:
        """Whether pacing holds the next new task back (module docstring): ``ahead`` > 0, no requeued simulation
        waits, simulations are left and ``n >= max(warmup, m + 1) + ahead``."""
        o = self.options
        return (o.ahead > 0 and not self.pending and not self.exhausted()
                and self._index(self.next_id) >= max(o.warmup, self.newest_reported + 1) + o.ahead)

    def observe(self, sim_ids: np.ndarray, losses: np.ndarray) -> None:
        """Take per-simulation training losses ``(n,)`` of simulations ``sim_ids`` ``(n,)``."""
        self.reports += 1
        mine = [k for k, i in enumerate(np.asarray(sim_ids).tolist()) if i in self.drawn]
        self._reported(np.asarray(sim_ids)[mine])
        self.table = update_losses(self.table, np.asarray(sim_ids)[mine], np.asarray(losses)[mine], self.reports,
                                   self.options.ema, self.options.memory)

    def no_loss(self, sim_ids: np.ndarray) -> None:
        """Simulations the trainer will never report a loss for count as reported for pacing (module docstring)."""
        self._reported(sim_ids)

    def _reported(self, sim_ids: np.ndarray) -> None:
        """Pacing waits for ``sim_ids`` no longer: the newest reported simulation moves up to them."""
        mine = [self._index(i) for i in np.asarray(sim_ids).tolist() if i in self.drawn]
        self.newest_reported = max([self.newest_reported, *mine])

    def state_dict(self, in_flight: list | None = None) -> dict:
        d = super().state_dict(in_flight)
        d["adaptive"] = {
            "drawn": [[i, self.origin[i], *self.drawn[i].tolist()] for i in sorted(self.drawn)],
            "losses": [[i, v, r] for i, (v, r) in sorted(self.table.items())],
            "reports": self.reports,
            "newest_reported": self.newest_reported,
        }
        return d

    def load_state_dict(self, d: dict) -> None:
        super().load_state_dict(d)
        a = d.get("adaptive")
        if a is None:
            raise SolverError("the checkpoint's design cursor has no adaptive state: it was written with another "
                              "solver.design; resume with the design it was run with")
        self.drawn = {int(r[0]): np.asarray(r[2:], np.float64) for r in a["drawn"]}
        self.origin = {int(r[0]): str(r[1]) for r in a["drawn"]}
        self.table = {int(r[0]): (float(r[1]), int(r[2])) for r in a["losses"]}
        self.reports = int(a["reports"])
        self.newest_reported = int(a.get("newest_reported", -1))  # absent: written before pacing, which was off


def make_cursor(solver: Solver, section: Any, sims_per_task: int, offset: int = 0, stride: int = 1) -> DesignCursor:
    """The training design of a ``[solver]`` section: a :class:`DesignCursor`, or an :class:`AdaptiveCursor`
    for ``design = "adaptive"`` with the options of ``section.adaptive``."""
    if section.design != "adaptive":
        return DesignCursor(solver, section.n_sims, section.design, section.seed, sims_per_task,
                            fixed=section.fixed, offset=offset, stride=stride)
    return AdaptiveCursor(solver, section.n_sims, section.seed, sims_per_task, section.adaptive, fixed=section.fixed,
                          offset=offset, stride=stride)


# ---------------------------------------------------------------------------- losses per simulation
class SimLosses:
    """The trainer's per-sample losses between two reports, and their mean per simulation. ``add`` keeps the
    step's arrays as they are (device arrays: no host sync on the training loop); ``take`` reads them."""

    def __init__(self) -> None:
        self._pending: list[tuple[np.ndarray, Any]] = []

    def add(self, sim_ids: np.ndarray, losses: Any) -> None:
        """Samples' simulation ids ``(B,)`` and their losses ``(B,)`` (any array, read at :meth:`take`)."""
        self._pending.append((np.asarray(sim_ids), losses))

    def take(self) -> tuple[np.ndarray, np.ndarray]:
        """Mean loss per simulation since the last take: ids ``(n,)`` int64 and losses ``(n,)`` float64."""
        if not self._pending:
            return np.zeros(0, np.int64), np.zeros(0, np.float64)
        ids = np.concatenate([i for i, _ in self._pending]).astype(np.int64)
        vals = np.concatenate([np.asarray(v, np.float64).reshape(-1) for _, v in self._pending])
        self._pending = []
        uniq, inv = np.unique(ids, return_inverse=True)
        return uniq, np.bincount(inv, weights=vals) / np.bincount(inv)


# ---------------------------------------------------------------------------- held-out evaluation
def held_out_grid(space: ParamSpace, n: int, kind: str = "grid", seed: int = 2**20 + 7,
                  fixed: dict[str, float] | None = None) -> np.ndarray:
    """Test parameters ``(m, P)`` covering the space, not drawn from any training design: a regular grid of
    ``n`` cell-centred points per free parameter (``kind="grid"``, ``m = n ** free``) or ``n`` scrambled Sobol
    points (``kind="sobol"``); parameters in ``fixed`` (or with a single-value range) are held."""
    names = space.names
    fixed = {names.index(k): float(v) for k, v in (fixed or {}).items()}
    free = [j for j, p in enumerate(space.params) if j not in fixed and p.high > p.low]
    if kind == "grid":
        axes = np.meshgrid(*[(np.arange(n) + 0.5) / n for _ in free], indexing="ij")
        pts = np.stack([a.ravel() for a in axes], 1) if free else np.zeros((1, 0))
    elif kind == "sobol":
        m = int(np.ceil(np.log2(max(n, 1))))  # a power of two keeps Sobol's balance; the first n are kept
        pts = qmc.Sobol(d=max(len(free), 1), scramble=True, seed=seed).random_base2(m)[:n, : len(free)]
    else:
        raise SolverError(f"held_out_grid: kind={kind!r}; use 'grid' or 'sobol'")
    u = np.zeros((len(pts), len(space)))
    u[:, free] = pts
    out = space.from_unit(u)
    for j, v in fixed.items():
        out[:, j] = v
    return space.validate(out)


def rollout_error_norms(sur: Any, spec: Any, frames: np.ndarray, params: np.ndarray,
                        rollout_steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Squared L2 norms ``(S, F)`` of the error and of the truth at each of the ``F`` rollout frames (physical
    units) of the surrogate ``sur`` on frames ``(S, T, C, *grid)`` with parameters ``(S, P)``: the one rollout
    that every reduction of :func:`relative_errors` reads."""
    t_len, s = frames.shape[1], len(frames)
    cond = params.astype(np.float32) if spec.condition_on_params else None
    if spec.kind == "field":
        pred = np.asarray(sur.rollout(None, t_len - 1, cond=cond, t0=0.0))
        pairs = [(pred[:, i], frames[:, i]) for i in range(t_len)]
    else:
        w = spec.window
        n_roll = min(rollout_steps, t_len - w)
        start = frames[:, :w]
        roll = np.asarray(sur.rollout(start if w > 1 else start[:, 0], n_roll, cond=cond,
                                      t0=(w - 1) * spec.frame_dt))
        truth = frames[:, w - 1 : w + n_roll]
        pairs = [(roll[:, i], truth[:, i]) for i in range(1, n_roll + 1)]
    err2 = np.stack([np.sum(np.square(p - y).reshape(s, -1), axis=1) for p, y in pairs], 1)
    ref2 = np.stack([np.sum(np.square(y).reshape(s, -1), axis=1) for _, y in pairs], 1)
    return err2, ref2


def relative_errors(err2: np.ndarray, ref2: np.ndarray, over: str = "frame") -> np.ndarray:
    """Per-simulation relative L2 error ``(S,)`` from :func:`rollout_error_norms`. ``over="frame"``: the mean over
    the frames of each frame's relative L2; ``over="trajectory"``: the L2 norm of the error over all the frames
    over that of the truth (the whole space-time trajectory, as the FNO paper's Navier-Stokes test error: Li et
    al., ICLR 2021), which stays well defined when a field decays towards zero, where a frame's relative error
    divides by a vanishing norm."""
    if over == "trajectory":
        return np.sqrt(err2.sum(1) / np.maximum(ref2.sum(1), 1e-24))
    if over == "frame":
        return np.mean(np.sqrt(err2 / np.maximum(ref2, 1e-24)), axis=1)
    raise SolverError(f"relative_errors: over={over!r}; use 'frame' or 'trajectory'")


def per_sim_errors(sur: Any, spec: Any, frames: np.ndarray, params: np.ndarray, rollout_steps: int,
                   over: str = "frame") -> np.ndarray:
    """Per-simulation rollout relative L2 error ``(S,)`` of the surrogate ``sur`` on frames ``(S, T, C, *grid)``
    with parameters ``(S, P)``, reduced ``over`` frames or the trajectory (:func:`relative_errors`)."""
    if over not in ("frame", "trajectory"):  # before the rollout
        raise SolverError(f"per_sim_errors: over={over!r}; use 'frame' or 'trajectory'")
    return relative_errors(*rollout_error_norms(sur, spec, frames, params, rollout_steps), over)


def region_errors(errors: np.ndarray, params: np.ndarray, space: ParamSpace, bins: int = 4,
                  prefix: str = "val_rollout_rel_l2") -> dict[str, float]:
    """Mean error per parameter bin: ``{f"{prefix}/{name}_bin{b}": mean}`` over ``bins`` equal bins of each
    non-constant parameter's unit coordinate (empty bins left out)."""
    u = to_unit(space, params)
    out: dict[str, float] = {}
    for j, p in enumerate(space.params):
        if p.high <= p.low:
            continue
        b = np.minimum((u[:, j] * bins).astype(int), bins - 1)
        for k in range(bins):
            if (b == k).any():
                out[f"{prefix}/{p.name}_bin{k}"] = float(np.mean(errors[b == k]))
    return out

