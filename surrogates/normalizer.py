"""Per-channel normalisation statistics fitted from a stream of chunks, then frozen.

A :class:`Normalizer` keeps, for the fields ``(B, C, *grid)`` and for a conditioning vector
``(B, P)``, one running count / mean / sum of squared deviations (``M2``) per channel in float64.
Each ``update`` computes the moments of its batch with a two-pass sum (stable inside the batch)
and merges them into the running totals with the pairwise formula of Chan, Golub & LeVeque
("Updating formulae and a pairwise algorithm for computing sample variances", 1979)::

    n = n_a + n_b,  d = mean_b - mean_a,
    mean = mean_a + d * n_b / n,  M2 = M2_a + M2_b + d**2 * n_a * n_b / n

which, unlike the one-pass ``E[x^2] - E[x]^2``, does not lose the variance to cancellation when
the mean is large (Welford 1962 is the special case n_b = 1). ``std`` is the population standard
deviation (numpy's ``ddof=0``) floored at ``eps`` so that a constant channel does not divide by 0.

``freeze()`` turns the statistics into a :class:`FrozenStats` pytree of float32 arrays whose
``normalize`` / ``denormalize`` methods are pure ``jnp`` functions, usable inside ``jax.jit``
(pass the ``FrozenStats`` as an argument, or close over it). After ``freeze`` the statistics
cannot change. ``state_dict()`` / ``Normalizer.from_state_dict`` round-trip the accumulators as a
dict of numpy arrays (what ``Surrogate.save`` hands to Orbax).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from surrogates.errors import SurrogateError

__all__ = ["FrozenStats", "Normalizer"]

DEFAULT_EPS = 1e-6


class FrozenStats(NamedTuple):
    """Frozen float32 statistics (a pytree; pass it through ``jax.jit``).

    mean, std: ``(C, 1, ..., 1)`` with ``ndim`` trailing ones, so they broadcast against
    ``(..., C, *grid)``. cond_mean, cond_std: ``(P,)`` (``P`` may be 0).
    """

    mean: jax.Array
    std: jax.Array
    cond_mean: jax.Array
    cond_std: jax.Array

    @property
    def channels(self) -> int:
        return int(self.mean.shape[0])

    @property
    def ndim(self) -> int:
        return len(self.mean.shape) - 1

    @property
    def cond_dim(self) -> int:
        return int(self.cond_mean.shape[0])

    def _check_fields(self, x: Any, what: str) -> None:
        shape = tuple(getattr(x, "shape", ()))
        c, nd = self.channels, self.ndim
        if len(shape) < nd + 1 or shape[-(nd + 1)] != c:
            raise SurrogateError(
                f"{what}: got an array of shape {shape}; expected (..., {c}, *grid) with {c} channels "
                f"on axis -{nd + 1} and a {nd}D grid after it"
            )

    def _check_cond(self, c: Any, what: str) -> None:
        shape = tuple(getattr(c, "shape", ()))
        if len(shape) < 1 or shape[-1] != self.cond_dim:
            raise SurrogateError(f"{what}: got a conditioning array of shape {shape}; expected (..., {self.cond_dim})")

    def normalize(self, x: jax.Array) -> jax.Array:
        """(x - mean) / std per channel; x: ``(..., C, *grid)``."""
        self._check_fields(x, "normalize")
        return (x - self.mean) / self.std

    def denormalize(self, y: jax.Array) -> jax.Array:
        """y * std + mean per channel; y: ``(..., C, *grid)``."""
        self._check_fields(y, "denormalize")
        return y * self.std + self.mean

    def normalize_cond(self, c: jax.Array | None) -> jax.Array | None:
        """(c - cond_mean) / cond_std per entry; c: ``(..., P)``. None stays None."""
        if c is None:
            return None
        self._check_cond(c, "normalize_cond")
        return (c - self.cond_mean) / self.cond_std

    def denormalize_cond(self, c: jax.Array | None) -> jax.Array | None:
        """c * cond_std + cond_mean; c: ``(..., P)``. None stays None."""
        if c is None:
            return None
        self._check_cond(c, "denormalize_cond")
        return c * self.cond_std + self.cond_mean


class _Moments:
    """count, mean (K,), M2 (K,) in float64 for K channels."""

    def __init__(self, k: int) -> None:
        self.count = 0
        self.mean = np.zeros(k, np.float64)
        self.m2 = np.zeros(k, np.float64)

    def merge(self, x: np.ndarray, axes: tuple[int, ...], what: str) -> None:
        n_b = int(np.prod([x.shape[a] for a in axes], dtype=np.int64))
        if n_b == 0:
            return
        mean_b = np.mean(x, axis=axes, dtype=np.float64)
        dev = x - np.expand_dims(mean_b, axes)  # float64 (mean_b is float64)
        m2_b = np.sum(dev * dev, axis=axes)
        if not (np.all(np.isfinite(mean_b)) and np.all(np.isfinite(m2_b))):
            raise SurrogateError(
                f"Normalizer.update: the {what} batch contains NaN or Inf (in channels "
                f"{np.flatnonzero(~np.isfinite(mean_b + m2_b)).tolist()}); "
                "drop or fix that chunk before fitting the statistics"
            )
        self.combine(n_b, mean_b, m2_b)

    def combine(self, n_b: int, mean_b: np.ndarray, m2_b: np.ndarray) -> None:
        """Add the moments of another sample set (Chan, Golub & LeVeque 1979, pairwise update)."""
        if n_b == 0:
            return
        n_a = self.count
        n = n_a + n_b
        delta = mean_b - self.mean
        self.mean = self.mean + delta * (n_b / n)
        self.m2 = self.m2 + m2_b + delta * delta * (n_a * n_b / n)
        self.count = n

    def std(self, eps: float) -> np.ndarray:
        return np.maximum(np.sqrt(self.m2 / self.count), eps)


class Normalizer:
    """Running per-channel mean/std of fields ``(B, C, *grid)`` and of a conditioning vector ``(B, P)``.

    Args:
      channels: C, the number of field channels.
      ndim: number of grid axes (1 or 2 in this project).
      cond_dim: P, the length of the conditioning vector (0 for none).
      eps: floor of the standard deviations (same units as the data).

    Fit with ``update`` on as many chunks as you like, then ``freeze()``; use ``normalize`` /
    ``denormalize`` (fields) and ``normalize_cond`` (conditioning) after that, or pass
    ``normalizer.stats`` (a :class:`FrozenStats`) into jitted code.
    """

    def __init__(self, channels: int, ndim: int, cond_dim: int = 0, eps: float = DEFAULT_EPS) -> None:
        for name, value, lo in (("channels", channels, 1), ("ndim", ndim, 1), ("cond_dim", cond_dim, 0)):
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < lo:
                raise SurrogateError(f"Normalizer: {name}={value!r} must be an integer >= {lo}")
        if not (isinstance(eps, int | float) and np.isfinite(eps) and eps > 0):
            raise SurrogateError(f"Normalizer: eps={eps!r} must be a positive number")
        self.channels = int(channels)
        self.ndim = int(ndim)
        self.cond_dim = int(cond_dim)
        self.eps = float(eps)
        self._fields = _Moments(self.channels)
        self._cond = _Moments(self.cond_dim)
        self._stats: FrozenStats | None = None

    # ------------------------------------------------------------------ construction
    @classmethod
    def identity(cls, channels: int, ndim: int, cond_dim: int = 0) -> Normalizer:
        """A frozen normaliser with mean 0 and std 1 everywhere (no normalisation)."""
        norm = cls(channels, ndim, cond_dim)
        for moments in (norm._fields, norm._cond):
            moments.count = 1
            moments.m2 = np.ones_like(moments.m2)  # var = M2 / count = 1
        return norm.freeze()

    # ------------------------------------------------------------------ fitting
    @property
    def frozen(self) -> bool:
        return self._stats is not None

    def update(self, fields: Any | None, cond: Any | None = None) -> Normalizer:
        """Merge a batch into the running statistics; returns self.

        fields: ``(B, C, *grid)`` (e.g. a chunk's ``(n_steps, C, *grid)``), or None.
        cond: ``(B, P)`` conditioning vectors, or None. The two are counted separately.
        """
        if self.frozen:
            raise SurrogateError(
                "Normalizer.update: the statistics are frozen (freeze() was called); fit a new "
                "Normalizer, or call update() before freeze()"
            )
        if fields is not None:
            x = np.asarray(fields)
            c, nd = self.channels, self.ndim
            if x.ndim != nd + 2 or x.shape[1] != c:
                raise SurrogateError(
                    f"Normalizer.update: fields have shape {x.shape}; expected (B, {c}, *grid) with a "
                    f"{nd}D grid, e.g. a chunk's (n_steps, C, *grid) array"
                )
            self._fields.merge(x, (0, *range(2, x.ndim)), "fields")
        if cond is not None:
            p = np.asarray(cond)
            if p.ndim != 2 or p.shape[1] != self.cond_dim:
                raise SurrogateError(
                    f"Normalizer.update: cond has shape {p.shape}; expected (B, {self.cond_dim}); "
                    "pass one conditioning vector per sample as a 2D array"
                )
            if self.cond_dim:
                self._cond.merge(p, (0,), "cond")
        return self

    def absorb(self, state: Mapping[str, Mapping[str, Any]]) -> Normalizer:
        """Add the statistics accumulated by another normaliser (its ``state_dict()``, e.g. another
        process's) as if its batches had been passed to :meth:`update`; returns self."""
        if self.frozen:
            raise SurrogateError("Normalizer.absorb: the statistics are frozen; absorb before freeze()")
        other = Normalizer.from_state_dict(state)
        if (other.channels, other.cond_dim) != (self.channels, self.cond_dim):
            raise SurrogateError(
                f"Normalizer.absorb: {other.channels} channels / cond_dim {other.cond_dim} do not match this "
                f"normaliser's {self.channels} / {self.cond_dim}"
            )
        for mine, theirs in ((self._fields, other._fields), (self._cond, other._cond)):
            mine.combine(theirs.count, theirs.mean, theirs.m2)
        return self

    def _require(self, moments: _Moments, what: str) -> None:
        if moments.count == 0:
            raise SurrogateError(
                f"Normalizer: no {what} seen yet; call update({'fields' if what == 'fields' else 'None, cond'}) "
                "with some data first"
            )

    @property
    def count(self) -> int:
        """Number of values seen per field channel (B * prod(grid) summed over updates)."""
        return self._fields.count

    @property
    def cond_count(self) -> int:
        """Number of conditioning vectors seen."""
        return self._cond.count

    @property
    def mean(self) -> np.ndarray:
        """Per-channel mean of the fields seen so far, ``(C,)`` float64."""
        self._require(self._fields, "fields")
        return self._fields.mean.copy()

    @property
    def std(self) -> np.ndarray:
        """Per-channel population std (ddof=0) of the fields, floored at ``eps``; ``(C,)`` float64."""
        self._require(self._fields, "fields")
        return self._fields.std(self.eps)

    @property
    def cond_mean(self) -> np.ndarray:
        """Per-entry mean of the conditioning vectors, ``(P,)`` float64."""
        if self.cond_dim:
            self._require(self._cond, "cond")
        return self._cond.mean.copy()

    @property
    def cond_std(self) -> np.ndarray:
        """Per-entry population std of the conditioning vectors, floored at ``eps``; ``(P,)`` float64."""
        if not self.cond_dim:
            return np.ones(0, np.float64)
        self._require(self._cond, "cond")
        return self._cond.std(self.eps)

    def freeze(self) -> Normalizer:
        """Fix the statistics (float32 :class:`FrozenStats`); later ``update`` calls fail. Returns self."""
        if self.frozen:
            return self
        bshape = (self.channels,) + (1,) * self.ndim
        self._stats = FrozenStats(
            mean=jnp.asarray(self.mean.reshape(bshape), jnp.float32),
            std=jnp.asarray(self.std.reshape(bshape), jnp.float32),
            cond_mean=jnp.asarray(self.cond_mean, jnp.float32),
            cond_std=jnp.asarray(self.cond_std, jnp.float32),
        )
        return self

    # ------------------------------------------------------------------ applying
    @property
    def stats(self) -> FrozenStats:
        """The frozen statistics (a pytree of float32 arrays)."""
        if self._stats is None:
            raise SurrogateError("Normalizer: call freeze() after fitting, before normalising")
        return self._stats

    def normalize(self, x: jax.Array) -> jax.Array:
        """(x - mean) / std per channel; x: ``(..., C, *grid)``. Needs ``freeze()``."""
        return self.stats.normalize(x)

    def denormalize(self, y: jax.Array) -> jax.Array:
        """y * std + mean per channel; y: ``(..., C, *grid)``. Needs ``freeze()``."""
        return self.stats.denormalize(y)

    def normalize_cond(self, c: jax.Array | None) -> jax.Array | None:
        """(c - cond_mean) / cond_std; c: ``(..., P)`` or None. Needs ``freeze()``."""
        return self.stats.normalize_cond(c)

    def denormalize_cond(self, c: jax.Array | None) -> jax.Array | None:
        """Inverse of ``normalize_cond``. Needs ``freeze()``."""
        return self.stats.denormalize_cond(c)

    # ------------------------------------------------------------------ (de)serialisation
    def state_dict(self) -> dict[str, dict[str, np.ndarray]]:
        """The accumulators as numpy arrays (float64 / int64 / bool), e.g. for Orbax.

        ``{"fields": {"count", "mean", "m2"}, "cond": {...} (only when cond_dim > 0),
        "config": {"ndim", "eps", "frozen"}}``.
        """
        out: dict[str, dict[str, np.ndarray]] = {
            "fields": _moments_dict(self._fields),
            "config": {
                "ndim": np.asarray(self.ndim, np.int64),
                "eps": np.asarray(self.eps, np.float64),
                "frozen": np.asarray(self.frozen, np.bool_),
            },
        }
        if self.cond_dim:  # Orbax does not store zero-size arrays
            out["cond"] = _moments_dict(self._cond)
        return out

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Mapping[str, Any]]) -> Normalizer:
        """Rebuild a normaliser (frozen again if it was) from ``state_dict()``'s output."""
        try:
            fields, config = state["fields"], state["config"]
            mean = np.asarray(fields["mean"], np.float64)
            norm = cls(
                channels=int(mean.shape[0]),
                ndim=int(config["ndim"]),
                cond_dim=int(np.asarray(state["cond"]["mean"]).shape[0]) if "cond" in state else 0,
                eps=float(config["eps"]),
            )
            _load_moments(norm._fields, fields)
            if "cond" in state:
                _load_moments(norm._cond, state["cond"])
            frozen = bool(config["frozen"])
        except (KeyError, TypeError, IndexError) as e:
            raise SurrogateError(
                f"Normalizer.from_state_dict: not a normaliser state ({type(e).__name__}: {e}); "
                "pass the dict returned by Normalizer.state_dict()"
            ) from None
        return norm.freeze() if frozen else norm

    def __repr__(self) -> str:
        return (
            f"Normalizer(channels={self.channels}, ndim={self.ndim}, cond_dim={self.cond_dim}, "
            f"count={self.count}, cond_count={self.cond_count}, frozen={self.frozen})"
        )


def _moments_dict(m: _Moments) -> dict[str, np.ndarray]:
    return {"count": np.asarray(m.count, np.int64), "mean": m.mean.copy(), "m2": m.m2.copy()}


def _load_moments(m: _Moments, d: Mapping[str, Any]) -> None:
    mean = np.asarray(d["mean"], np.float64)
    m2 = np.asarray(d["m2"], np.float64)
    if mean.shape != m.mean.shape or m2.shape != m.m2.shape:
        raise SurrogateError(
            f"Normalizer.from_state_dict: mean {mean.shape} and m2 {m2.shape} must both have shape {m.mean.shape}"
        )
    m.count, m.mean, m.m2 = int(d["count"]), mean, m2
