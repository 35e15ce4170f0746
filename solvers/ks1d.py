"""Kuramoto-Sivashinsky equation on a periodic domain, with a viscosity-like parameter.

    u_t + u u_x + u_xx + nu u_xxxx = 0,   x in [0, L),  L = 32 pi by default.

``nu`` (the coefficient of the fourth-order, stabilising term; in [0.5, 4], dimensionless like
``x``, ``t`` and ``u``) is the parameter. Rescaling ``x = sqrt(nu) x'``, ``t = nu t'``,
``u = u' / sqrt(nu)`` maps the equation to the standard KS equation (``nu = 1``) on a domain of
length ``L / sqrt(nu)``, so ``nu`` plays the role of the domain length of PDEArena/APEBench-style
setups (``L_eff`` from ~50 at ``nu = 4`` to ~142 at ``nu = 0.5`` with the default ``L``; chaotic for
all of them, Kassam & Trefethen's classic case is ``nu = 1, L = 32 pi``) while the output grid stays
fixed. The fastest-growing wavelength is ``2 pi sqrt(2 nu)``. The range keeps every ``nu`` chaotic
and resolved by ``nx = 256``; PDE-Refiner (Lippe et al., NeurIPS 2023) conditions KS on a viscosity
the same way (we did not check that its range is identical).

Discretisation: Fourier pseudo-spectral on ``nx`` points, 2/3-rule dealiasing, ETDRK4
(:mod:`solvers.etdrk4`, Kassam & Trefethen 2005) with ``L(k) = k^2 - nu k^4`` and
``N(u_hat) = -(i k / 2) FFT(u^2)``. The mean of ``u`` is conserved exactly (it is zero for the
default initial condition). Initial condition: ``sum_j A_j sin(2 pi l_j x / L + phi_j)`` with 10
sines, ``A_j ~ U[-1, 1]``, ``l_j`` in ``{1, ..., 8}`` (:func:`solvers.initial_conditions.sum_of_sines`),
optionally advanced by ``t_warmup`` before the first frame so that rollouts start on the attractor
(the transient lasts ~50-100 time units). Output: channel ``u`` on the ``nx`` points ``j L / nx``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from solvers.base import Solver
from solvers.errors import SolverError
from solvers.etdrk4 import dealias_mask, etdrk4_coefficients, etdrk4_step
from solvers.initial_conditions import sum_of_sines
from solvers.params import Param, ParamSpace

N_SINES = 10
AMPLITUDE = 1.0
MAX_WAVENUMBER = 8


@dataclass(frozen=True)
class KS1DConfig:
    """nx: grid points; dt: time step; length: domain L; t_warmup: time advanced inside
    ``initial_state`` before the first frame (0 = start from the sum of sines).

    ``dt = 0.05`` keeps a trajectory within 1e-3 (relative L2) of one with ``dt / 4`` up to t = 20
    at the most chaotic ``nu = 0.5``; ``dt = 0.1`` does as well for ``nu >= 1`` (4e-4 at ``nu = 1``).
    ``nx = 256`` resolves ``nu = 0.5`` on ``L = 32 pi`` to ~1e-4 against ``nx = 512`` at t = 20."""

    nx: int = 256
    dt: float = 0.05
    length: float = 32 * math.pi
    t_warmup: float = 0.0
    dtype: str = "float32"


class KS1D(Solver):
    """1D Kuramoto-Sivashinsky, periodic, pseudo-spectral + ETDRK4; parameter ``nu``."""

    name = "ks1d"
    channels = ("u",)
    param_space = ParamSpace(
        (Param("nu", 0.5, 4.0, "1", "coefficient of u_xxxx (equivalent domain length L / sqrt(nu))"),)
    )
    Config = KS1DConfig

    def __init__(self, **overrides: object) -> None:
        super().__init__(**overrides)
        c = self.config
        if not 8 <= c.nx <= 65536:
            raise SolverError(f"ks1d: nx={c.nx} is not supported; use 8 <= nx <= 65536")
        if not (c.dt > 0 and c.length > 0):
            raise SolverError(f"ks1d: dt and length must be > 0, got dt={c.dt}, length={c.length}")
        if c.t_warmup < 0:
            raise SolverError(f"ks1d: t_warmup must be >= 0, got {c.t_warmup}")
        self._k = jnp.asarray(2 * np.pi * np.arange(c.nx // 2 + 1) / c.length, self.dtype)
        self._mask = dealias_mask(c.nx)
        self._n_warmup = round(c.t_warmup / c.dt)

    @property
    def grid(self) -> tuple[int, ...]:
        return (self.config.nx,)

    def coords(self) -> dict[str, np.ndarray]:
        """``x`` ``(nx,)``: periodic grid ``j L / nx`` (right end excluded)."""
        c = self.config
        return {"x": np.arange(c.nx) * c.length / c.nx}

    def linear_symbol(self, params: jax.Array) -> jax.Array:
        """``(nx // 2 + 1,)`` ``L(k) = k^2 - nu k^4`` (1 / time), as complex."""
        k2 = self._k**2
        return (k2 - params[0].astype(self.dtype) * k2 * k2).astype(jnp.result_type(self.dtype, jnp.complex64))

    def initial_state(self, key: jax.Array, params: jax.Array) -> dict[str, jax.Array]:
        """State: ``u_hat`` ``(nx//2+1,)`` complex (dealiased rFFT of ``u``) and the ETDRK4 ``coef``."""
        c = self.config
        x = jnp.arange(c.nx, dtype=self.dtype) * (c.length / c.nx)
        u0 = sum_of_sines(key, x, c.length, N_SINES, AMPLITUDE, MAX_WAVENUMBER)[0]
        coef = etdrk4_coefficients(self.linear_symbol(params), c.dt)
        state = {
            "u_hat": jnp.where(self._mask, jnp.fft.rfft(u0), 0),
            # L is real, so are the weights (the contour's imaginary parts cancel to round-off): kept real, the
            # coefficient products in the step are complex-by-real.
            "coef": type(coef)(*(a.real for a in coef)),
        }
        if self._n_warmup:
            state = jax.lax.fori_loop(0, self._n_warmup, lambda i, s: self.step(s, params), state)
        return state

    def step(self, state: dict[str, jax.Array], params: jax.Array) -> dict[str, jax.Array]:
        c = self.config
        half_ik = 0.5j * self._k

        def nonlinear(v: jax.Array, t: jax.Array) -> jax.Array:
            u = jnp.fft.irfft(v, n=c.nx)
            return jnp.where(self._mask, -half_ik * jnp.fft.rfft(u * u), 0)

        u_hat = etdrk4_step(state["coef"], nonlinear, state["u_hat"], jnp.zeros((), self.dtype), c.dt)
        return {**state, "u_hat": u_hat}

    def fields(self, state: dict[str, jax.Array]) -> jax.Array:
        """``(1, nx)``: ``u`` on the grid."""
        return jnp.fft.irfft(state["u_hat"], n=self.config.nx)[None].astype(self.dtype)
