"""Parameter spaces and designs: which PDE parameters a solver takes, and how to sample them.

A :class:`ParamSpace` is a tuple of named, bounded, unit-carrying :class:`Param` s. Designs
(``uniform``, ``lhs``, ``sobol``) draw points in the unit cube and scale them to the bounds;
``log``-scaled parameters (viscosities) are sampled uniformly in log10.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import numpy as np
from scipy.stats import qmc

from solvers.errors import SolverError

DESIGNS = ("uniform", "lhs", "sobol")


@dataclass(frozen=True)
class Param:
    """One PDE parameter: ``name`` in ``[low, high]`` (``unit``), sampled on a log scale if ``log``."""

    name: str
    low: float
    high: float
    unit: str = "1"
    doc: str = ""
    log: bool = False

    def __post_init__(self) -> None:
        if not self.low <= self.high:
            raise SolverError(f"parameter {self.name!r}: low {self.low} > high {self.high}")
        if self.log and self.low <= 0:
            raise SolverError(f"parameter {self.name!r}: log scale needs low > 0, got {self.low}")


@dataclass(frozen=True)
class ParamSpace:
    """An ordered set of parameters; a parameter vector is a float array ``(P,)`` in this order."""

    params: tuple[Param, ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.params)

    @property
    def low(self) -> np.ndarray:
        return np.array([p.low for p in self.params], dtype=np.float64)

    @property
    def high(self) -> np.ndarray:
        return np.array([p.high for p in self.params], dtype=np.float64)

    def __len__(self) -> int:
        return len(self.params)

    def from_unit(self, u: np.ndarray) -> np.ndarray:
        """Map points ``u`` ``(n, P)`` of the unit cube to parameter vectors ``(n, P)``."""
        u = np.asarray(u, dtype=np.float64)
        out = np.empty_like(u)
        for j, p in enumerate(self.params):
            if p.log:
                out[:, j] = 10 ** (np.log10(p.low) + u[:, j] * (np.log10(p.high) - np.log10(p.low)))
            else:
                out[:, j] = p.low + u[:, j] * (p.high - p.low)
        return out

    def sample(self, key: jax.Array, n: int, design: str = "uniform") -> np.ndarray:
        """Draw ``n`` parameter vectors ``(n, P)`` (float64) with a ``uniform``, ``lhs`` or ``sobol`` design.

        The same key gives the same design. Sobol points are scrambled; ``n`` need not be a power of two.
        """
        if design not in DESIGNS:
            raise SolverError(f"unknown design {design!r}; use one of {', '.join(DESIGNS)}")
        if n < 0:
            raise SolverError(f"number of samples must be >= 0, got {n}")
        seed = int(jax.random.randint(key, (), 0, 2**31 - 1))
        d = len(self)
        if d == 0:
            return np.zeros((n, 0))
        if design == "uniform":
            u = np.random.default_rng(seed).random((n, d))
        elif design == "lhs":
            u = qmc.LatinHypercube(d=d, seed=seed).random(n)
        else:
            m = max(int(np.ceil(np.log2(max(n, 1)))), 0)
            u = qmc.Sobol(d=d, scramble=True, seed=seed).random_base2(m)[:n]
        return self.from_unit(u)

    def validate(self, params: np.ndarray) -> np.ndarray:
        """Check ``params`` ``(P,)`` or ``(B, P)`` against the space; return them as float64 numpy."""
        arr = np.asarray(params, dtype=np.float64)
        if arr.ndim not in (1, 2) or arr.shape[-1] != len(self):
            raise SolverError(
                f"parameters must have shape (P,) or (B, P) with P = {len(self)} "
                f"({', '.join(self.names)}), got shape {arr.shape}"
            )
        if not np.all(np.isfinite(arr)):
            raise SolverError("parameters contain NaN or Inf")
        rows = arr.reshape(-1, len(self))
        for j, p in enumerate(self.params):
            bad = (rows[:, j] < p.low) | (rows[:, j] > p.high)
            if bad.any():
                v = rows[bad, j][0]
                raise SolverError(
                    f"parameter {p.name}={v:g} is outside [{p.low:g}, {p.high:g}] {p.unit}; "
                    f"choose a value inside the range"
                )
        return arr

    def describe(self) -> list[dict]:
        """Plain-dict description of each parameter (for listings and HDF5 attributes)."""
        return [
            {"name": p.name, "low": p.low, "high": p.high, "unit": p.unit, "log": p.log, "doc": p.doc}
            for p in self.params
        ]
