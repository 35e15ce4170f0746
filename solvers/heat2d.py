"""Heat equation on the unit square with Dirichlet walls: Melissa's use case.

    du/dt = kappa * Laplacian(u)  on (0, 1)^2,   u = T_wall on each of the four walls,
    u(t=0) = T_init inside.

Parameters (all in [100, 500] K, as in Melissa's heat-PDE study; Meyer et al. 2023,
arXiv:2309.16743): ``T_init``, ``T_left`` (x = 0), ``T_right`` (x = 1), ``T_bottom`` (y = 0),
``T_top`` (y = 1).

Discretisation: second-order five-point Laplacian on ``n x n`` interior nodes of spacing
``h = 1 / (n + 1)``. Write ``u = g + w`` where ``g`` is the discrete harmonic field with the wall
temperatures (the steady state) and ``w`` vanishes on the walls. The sine transform (DST-I)
diagonalises the Laplacian for ``w``, so each step is a direct solve in O(n^2 log n):

- ``scheme="euler"``: implicit (backward) Euler, ``w_k <- w_k / (1 + kappa * dt * lambda_k)``;
- ``scheme="exponential"``: exact in time for the semi-discrete system, ``w_k <- exp(-kappa dt lambda_k) w_k``.

Both are unconditionally stable. Output: one channel ``T`` (K) on the ``(n + 2) x (n + 2)`` grid
with the walls included (corners take the mean of their two walls); axis 0 is x, axis 1 is y.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from solvers.base import Solver
from solvers.errors import SolverError
from solvers.params import Param, ParamSpace


def dst1(v: jax.Array, axis: int) -> jax.Array:
    """Type-I discrete sine transform along ``axis``: ``X_k = sum_j v_j sin(pi j k / (n + 1))``.

    Computed from the real FFT of the odd extension ``[0, v, 0, -reverse(v)]``. Its own inverse up
    to the factor ``2 / (n + 1)``.
    """
    v = jnp.moveaxis(v, axis, -1)
    n = v.shape[-1]
    zero = jnp.zeros(v.shape[:-1] + (1,), v.dtype)
    ext = jnp.concatenate([zero, v, zero, -v[..., ::-1]], axis=-1)
    out = -jnp.fft.rfft(ext, axis=-1).imag[..., 1 : n + 1] / 2
    return jnp.moveaxis(out.astype(v.dtype), -1, axis)


def dst1_2d(v: jax.Array) -> jax.Array:
    """DST-I over the last two axes."""
    return dst1(dst1(v, -1), -2)


def idst1_2d(v: jax.Array) -> jax.Array:
    """Inverse of :func:`dst1_2d`."""
    n0, n1 = v.shape[-2:]
    return dst1_2d(v) * (2.0 / (n0 + 1)) * (2.0 / (n1 + 1))


def dirichlet_eigenvalues(n: int, h: float) -> np.ndarray:
    """Eigenvalues ``lambda_k = (2 - 2 cos(pi k / (n + 1))) / h^2`` of the 1D ``-d^2/dx^2`` (k = 1..n)."""
    k = np.arange(1, n + 1)
    return (2 - 2 * np.cos(np.pi * k / (n + 1))) / h**2


@dataclass(frozen=True)
class Heat2DConfig:
    """n: interior nodes per axis (output grid n + 2); dt: time step (s); kappa: diffusivity (m^2/s)."""

    n: int = 62
    dt: float = 1e-3
    kappa: float = 1.0
    scheme: str = "euler"
    dtype: str = "float32"


class Heat2D(Solver):
    """2D heat equation with four Dirichlet walls, stepped by a sine-transform direct solve."""

    name = "heat2d"
    channels = ("T",)
    frozen_border = 1  # the wall temperatures are part of the output and never change
    param_space = ParamSpace(
        (
            Param("T_init", 100.0, 500.0, "K", "initial interior temperature"),
            Param("T_left", 100.0, 500.0, "K", "wall temperature at x = 0"),
            Param("T_right", 100.0, 500.0, "K", "wall temperature at x = 1"),
            Param("T_bottom", 100.0, 500.0, "K", "wall temperature at y = 0"),
            Param("T_top", 100.0, 500.0, "K", "wall temperature at y = 1"),
        )
    )
    Config = Heat2DConfig

    def __init__(self, **overrides: object) -> None:
        super().__init__(**overrides)
        c = self.config
        if not 2 <= c.n <= 4096:
            raise SolverError(f"heat2d: n={c.n} interior nodes is not supported; use 2 <= n <= 4096")
        if c.dt <= 0 or c.kappa <= 0:
            raise SolverError(f"heat2d: dt and kappa must be > 0, got dt={c.dt}, kappa={c.kappa}")
        if c.scheme not in ("euler", "exponential"):
            raise SolverError(f"heat2d: scheme must be 'euler' or 'exponential', got {c.scheme!r}")
        h = 1.0 / (c.n + 1)
        lam1 = dirichlet_eigenvalues(c.n, h)
        lam = lam1[:, None] + lam1[None, :]
        if c.scheme == "euler":
            factor = 1.0 / (1.0 + c.kappa * c.dt * lam)
        else:
            factor = np.exp(-c.kappa * c.dt * lam)
        self._factor = jnp.asarray(factor, self.dtype)
        self._lam = jnp.asarray(lam, self.dtype)
        self._h = h

    @property
    def grid(self) -> tuple[int, ...]:
        return (self.config.n + 2, self.config.n + 2)

    def coords(self) -> dict[str, np.ndarray]:
        x = np.linspace(0.0, 1.0, self.config.n + 2)
        return {"x": x, "y": x.copy()}

    def harmonic(self, params: jax.Array) -> jax.Array:
        """Discrete steady state ``(n, n)`` on the interior nodes for the wall temperatures in ``params``."""
        n, h = self.config.n, self._h
        _, left, right, bottom, top = (params[i] for i in range(5))
        rhs = jnp.zeros((n, n), self.dtype)  # boundary terms of -Laplacian_h g = 0, moved to the right side
        rhs = rhs.at[0, :].add(left / h**2).at[-1, :].add(right / h**2)
        rhs = rhs.at[:, 0].add(bottom / h**2).at[:, -1].add(top / h**2)
        return idst1_2d(dst1_2d(rhs) / self._lam)

    def initial_state(self, key: jax.Array, params: jax.Array) -> dict[str, jax.Array]:
        """State: interior temperature ``u`` ``(n, n)``, its steady state ``g`` ``(n, n)`` and ``walls`` ``(4,)``."""
        n = self.config.n
        p = params.astype(self.dtype)
        return {"u": jnp.full((n, n), p[0], self.dtype), "g": self.harmonic(p), "walls": p[1:5]}

    def step(self, state: dict[str, jax.Array], params: jax.Array) -> dict[str, jax.Array]:
        g = state["g"]
        return {**state, "u": g + idst1_2d(dst1_2d(state["u"] - g) * self._factor)}

    def fields(self, state: dict[str, jax.Array]) -> jax.Array:
        """``(1, n + 2, n + 2)`` temperature (K) with the wall values on the border."""
        left, right, bottom, top = (state["walls"][i] for i in range(4))
        t = jnp.pad(state["u"], 1)
        t = t.at[0, 1:-1].set(left).at[-1, 1:-1].set(right)
        t = t.at[1:-1, 0].set(bottom).at[1:-1, -1].set(top)
        t = t.at[0, 0].set((left + bottom) / 2).at[0, -1].set((left + top) / 2)
        t = t.at[-1, 0].set((right + bottom) / 2).at[-1, -1].set((right + top) / 2)
        return t[None].astype(self.dtype)
