"""Incompressible Navier-Stokes in vorticity form on the periodic unit square (the FNO benchmark).

    dw/dt + u . grad(w) = nu Laplacian(w) + f,   div u = 0,   w = dv/dx - du/dy,

on ``[0, 1)^2`` with the forcing ``f = A (sin 2 pi (x + y) + cos 2 pi (x + y))``, ``A = 0.1``, and
initial vorticity drawn from the GRF ``N(0, 7^(3/2) (-Laplacian + 49 I)^(-2.5))`` (Li et al. 2020,
arXiv:2010.08895, Sec. 5.3; the generator's ``sigma = 7^1.5`` makes the covariance ``7^3 (...)``,
see ``initial_conditions.gaussian_random_field``). Parameter: the viscosity ``nu`` in
``[1e-5, 1e-3]`` (log scale), the FNO paper's three regimes at its ends and middle.

Discretisation: Fourier pseudo-spectral on ``n x n`` points ``x_i = i / n`` (axis 0 is x, axis 1
is y). The velocity comes from the stream function, ``-Laplacian psi = w``, ``u = dpsi/dy``,
``v = -dpsi/dx`` (:func:`velocity_from_vorticity`). The advection term is computed on the grid from
the velocity alone: for a divergence-free ``u``, ``u . grad(w) = curl div(u u^T)
= (d_xx - d_yy)(u v) + d_xy (v^2 - u^2)`` (the trace-free products of Basdevant 1983, J. Comput. Phys.
50:209), so a stage costs two inverse and two forward FFTs instead of four and one. It is
dealiased with the 2/3 rule: only modes with ``3 |k_x| < n`` and ``3 |k_y| < n`` are kept, which
makes the quadratic term alias-free (the scheme is then the Galerkin truncation, which conserves
energy and enstrophy). The initial vorticity is projected onto those modes too, and the mean
vorticity is zero.

Time stepping: ETDRK4 (Cox & Matthews 2002, J. Comput. Phys. 176:430) on the diagonal linear
part ``-nu |k|^2``, exact for it; the advection and the constant forcing form the nonlinear part.
Its coefficients are computed once per simulation from ``nu`` (Taylor series of the phi functions
near zero, as Kassam & Trefethen 2005 warn against cancellation). With ``nu`` -> 0 the scheme is
classical RK4, whose stability limit on the imaginary axis is ``|dt * u_max * k_max| < 2.8``:
``dt = 1e-3`` is comfortable up to ``n = 128``; use ``dt = 1e-4`` (the FNO generator's value)
at ``n = 256``. (The FNO generator itself uses Crank-Nicolson for viscosity and explicit Euler for
advection; ETDRK4 is more accurate at the same ``dt``.)

Output: ``out x out`` points (default ``out = n``). The FNO data were solved at 256 and kept every
4th point (``n=256, out=64``); ``downsample="subsample"`` does that, ``"spectral"`` truncates the
spectrum instead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from solvers.base import Solver
from solvers.errors import SolverError
from solvers.initial_conditions import gaussian_random_field
from solvers.params import Param, ParamSpace

# Initial condition and forcing of the FNO paper (Li et al. 2020, arXiv:2010.08895, Sec. 5.3).
GRF_ALPHA, GRF_TAU, GRF_SIGMA = 2.5, 7.0, 7.0**1.5
FORCING_AMPLITUDE = 0.1

OUTPUTS = {"vorticity": ("vorticity",), "vorticity_velocity": ("vorticity", "u", "v")}
DOWNSAMPLES = ("subsample", "spectral")


def _real_dtype(x: jax.Array) -> jnp.dtype:
    return jnp.finfo(x.dtype).dtype


def wavenumbers(n: int, length: float = 1.0, dtype: jnp.dtype = jnp.float32) -> tuple[jax.Array, jax.Array]:
    """Angular wavenumbers ``(n, 1)`` along x and ``(1, n // 2 + 1)`` along y of an ``rfft2`` spectrum."""
    kx = 2 * jnp.pi / length * jnp.fft.fftfreq(n, d=1.0 / n)
    ky = 2 * jnp.pi / length * jnp.fft.rfftfreq(n, d=1.0 / n)
    return kx.astype(dtype)[:, None], ky.astype(dtype)[None, :]


def derivative_wavenumbers(n: int, length: float = 1.0, dtype: jnp.dtype = jnp.float32) -> tuple[jax.Array, jax.Array]:
    """Like :func:`wavenumbers` with the Nyquist mode set to zero (its derivative is not real)."""
    kx, ky = wavenumbers(n, length, dtype)
    if n % 2 == 0:
        kx = kx.at[n // 2, 0].set(0.0)
        ky = ky.at[0, n // 2].set(0.0)
    return kx, ky


def _check_spectrum(w_hat: jax.Array) -> int:
    if w_hat.ndim < 2 or w_hat.shape[-1] != w_hat.shape[-2] // 2 + 1:
        raise SolverError(
            f"expected an rfft2 spectrum of shape (..., n, n // 2 + 1), got {w_hat.shape}; "
            "pass jnp.fft.rfft2(w) of a square vorticity field w"
        )
    return w_hat.shape[-2]


def velocity_from_vorticity(w_hat: jax.Array, length: float = 1.0) -> tuple[jax.Array, jax.Array]:
    """Velocity spectra ``(u_hat, v_hat)`` from the vorticity spectrum ``w_hat`` ``(..., n, n // 2 + 1)``.

    Solves ``-Laplacian psi = w`` (mean of ``psi`` zero) and returns ``u = dpsi/dy``,
    ``v = -dpsi/dx`` as ``rfft2`` spectra of the same shape; ``jnp.fft.irfft2(u_hat, s=(n, n))``
    gives the velocity on the grid. The result is divergence-free, and its curl is ``w`` minus
    its mean and Nyquist modes.
    """
    n = _check_spectrum(w_hat)
    rdt = _real_dtype(w_hat)
    kx, ky = wavenumbers(n, length, rdt)
    k2 = kx**2 + ky**2
    psi_hat = jnp.where(k2 > 0, w_hat / jnp.where(k2 > 0, k2, 1.0), 0.0)
    dx, dy = derivative_wavenumbers(n, length, rdt)
    return 1j * dy * psi_hat, -1j * dx * psi_hat


def dealias_mask(n: int, dtype: jnp.dtype = jnp.float32) -> jax.Array:
    """2/3-rule mask ``(n, n // 2 + 1)``: 1 where ``3 |k_x| < n`` and ``3 |k_y| < n`` (integer k), mean mode 0.

    Products of two fields inside the mask are alias-free on the mask (``2K - n < -K`` for ``3K < n``).
    """
    kx = np.abs(np.fft.fftfreq(n, d=1.0 / n))[:, None]
    ky = np.fft.rfftfreq(n, d=1.0 / n)[None, :]
    mask = (3 * kx < n) & (3 * ky < n)
    mask[0, 0] = False
    return jnp.asarray(mask, dtype)


def phi_functions(z: jax.Array) -> jax.Array:
    """``(3, *z.shape)``: ``phi_1, phi_2, phi_3`` of the real array ``z`` (``phi_k(z) = sum_m z^m / (m + k)!``).

    A 24-term Taylor series for ``|z| < 1`` (truncation error below 1e-20) and the recurrence
    ``phi_{k+1} = (phi_k - 1 / k!) / z`` from ``phi_0 = exp(z)`` elsewhere, where it is stable.
    """
    n_terms = 24
    small = jnp.abs(z) < 1.0
    zs = jnp.where(small, z, 0.0)
    # Horner's rule for the three series at once; row k - 1 holds 1 / (m + k)!, m = 0 .. n_terms - 1.
    table = np.array([[1.0 / math.factorial(m + k) for m in range(n_terms)] for k in (1, 2, 3)])
    table = table.reshape((3, n_terms) + (1,) * z.ndim)
    series = jnp.broadcast_to(jnp.asarray(table[:, -1], z.dtype), (3,) + z.shape)
    for m in range(n_terms - 2, -1, -1):
        series = series * zs + jnp.asarray(table[:, m], z.dtype)
    zl = jnp.where(small, -1.0, z)
    p1 = jnp.expm1(zl) / zl
    p2 = (p1 - 1.0) / zl
    p3 = (p2 - 0.5) / zl
    return jnp.where(small, series, jnp.stack([p1, p2, p3]))


def etdrk4_coefficients(lin: jax.Array, dt: float) -> dict[str, jax.Array]:
    """ETDRK4 coefficients for the diagonal linear operator ``lin`` (real, any shape) and step ``dt``.

    Cox & Matthews (2002), eq. (26)-(27), written with phi functions: ``E = exp(z)``,
    ``E2 = exp(z / 2)``, ``Q = dt phi_1(z / 2) / 2``, ``f1 = dt (phi_1 - 3 phi_2 + 4 phi_3)``,
    ``f2 = dt (phi_2 - 2 phi_3)``, ``f3 = dt (4 phi_3 - phi_2)`` with ``z = dt * lin``.
    """
    z = dt * lin
    (p1, h1), (p2, _), (p3, _) = phi_functions(jnp.stack([z, z / 2]))  # (3, 2, ...)
    return {
        "E": jnp.exp(z),
        "E2": jnp.exp(z / 2),
        "Q": dt * h1 / 2,
        "f1": dt * (p1 - 3 * p2 + 4 * p3),
        "f2": dt * (p2 - 2 * p3),
        "f3": dt * (4 * p3 - p2),
    }


@dataclass(frozen=True)
class NS2DConfig:
    """n: solve grid per axis; out: output grid (0 = n, must divide n); downsample: 'subsample' or
    'spectral'; dt: time step (time units of the unit square); forcing: amplitude A of
    A (sin 2 pi (x + y) + cos 2 pi (x + y)) (0 switches it off); output: 'vorticity' or
    'vorticity_velocity'."""

    n: int = 64
    out: int = 0
    downsample: str = "subsample"
    dt: float = 1e-3
    forcing: float = FORCING_AMPLITUDE
    output: str = "vorticity"
    dtype: str = "float32"


class NS2D(Solver):
    """2D periodic Navier-Stokes (vorticity form), pseudo-spectral with ETDRK4, FNO setting."""

    name = "ns2d"
    channels = OUTPUTS["vorticity"]
    param_space = ParamSpace((Param("nu", 1e-5, 1e-3, "1", "kinematic viscosity (1/Re) on the unit square", log=True),))
    Config = NS2DConfig

    def __init__(self, **overrides: object) -> None:
        super().__init__(**overrides)
        c = self.config
        if not 4 <= c.n <= 8192:
            raise SolverError(f"ns2d: n={c.n} is not supported; use 4 <= n <= 8192 (a power of 2 is fastest)")
        out = c.out or c.n
        if not 0 < out <= c.n or c.n % out:
            raise SolverError(f"ns2d: out={c.out} must divide n={c.n} (or be 0 for out = n); e.g. n=256, out=64")
        if c.downsample not in DOWNSAMPLES:
            raise SolverError(f"ns2d: downsample must be one of {', '.join(DOWNSAMPLES)}, got {c.downsample!r}")
        if c.output not in OUTPUTS:
            raise SolverError(f"ns2d: output must be one of {', '.join(OUTPUTS)}, got {c.output!r}")
        if not (c.dt > 0 and math.isfinite(c.dt)):
            raise SolverError(f"ns2d: dt must be > 0, got {c.dt}")
        if not math.isfinite(c.forcing):
            raise SolverError(f"ns2d: forcing amplitude must be finite, got {c.forcing}")
        self.channels = OUTPUTS[c.output]
        self._out = out
        cdtype = jnp.complex128 if self.dtype == jnp.float64 else jnp.complex64
        self._cdtype = cdtype
        self._mask = dealias_mask(c.n, self.dtype)
        kx, ky = wavenumbers(c.n, 1.0, self.dtype)
        self._k2 = kx**2 + ky**2
        self._dx, self._dy = derivative_wavenumbers(c.n, 1.0, self.dtype)
        x = np.arange(c.n) / c.n
        xx, yy = np.meshgrid(x, x, indexing="ij")
        f = c.forcing * (np.sin(2 * np.pi * (xx + yy)) + np.cos(2 * np.pi * (xx + yy)))
        self._forcing_hat = (self._mask * jnp.fft.rfft2(jnp.asarray(f, self.dtype))).astype(cdtype)
        # Spectral multipliers, dealiased (no mean or Nyquist mode): w_hat -> (u_hat, v_hat) ``(2, n, n // 2 + 1)``,
        # and the real symbols of d_yy - d_xx and d_xy that turn the spectra of (u v, u^2 - v^2) into u . grad(w).
        inv_k2 = jnp.where(self._k2 > 0, 1.0 / jnp.where(self._k2 > 0, self._k2, 1.0), 0.0)
        to_velocity = jnp.broadcast_arrays(1j * self._dy * inv_k2, -1j * self._dx * inv_k2)
        self._to_velocity = (jnp.stack(to_velocity) * self._mask).astype(cdtype)
        advection = jnp.broadcast_arrays(self._dy**2 - self._dx**2, self._dx * self._dy)
        self._advection = jnp.stack(advection) * self._mask

    @property
    def grid(self) -> tuple[int, ...]:
        return (self._out, self._out)

    def coords(self) -> dict[str, np.ndarray]:
        x = np.arange(self._out) / self._out
        return {"x": x, "y": x.copy()}

    # --- state ---------------------------------------------------------------------------
    def state_from_vorticity(self, w: jax.Array, params: jax.Array) -> dict[str, jax.Array]:
        """State for the vorticity ``w`` ``(n, n)`` on the solve grid and parameters ``(1,)`` (``nu``).

        The state holds the dealiased spectrum ``w_hat`` ``(n, n // 2 + 1)`` and the ETDRK4
        coefficients for this ``nu``.
        """
        n = self.config.n
        if w.shape != (n, n):
            raise SolverError(f"ns2d: vorticity must have shape ({n}, {n}) (the solve grid), got {w.shape}")
        nu = jnp.asarray(params, self.dtype)[0]
        w_hat = (self._mask * jnp.fft.rfft2(jnp.asarray(w, self.dtype))).astype(self._cdtype)
        coef = etdrk4_coefficients(-nu * self._k2, self.config.dt)
        return {"w_hat": w_hat, **{k: v.astype(self.dtype) for k, v in coef.items()}}

    def initial_state(self, key: jax.Array, params: jax.Array) -> dict[str, jax.Array]:
        n = self.config.n
        w0 = gaussian_random_field(key, (n, n), GRF_ALPHA, GRF_TAU, GRF_SIGMA, dtype=self.dtype)
        return self.state_from_vorticity(w0, params)

    # --- dynamics ------------------------------------------------------------------------
    def nonlinear(self, w_hat: jax.Array) -> jax.Array:
        """``-u . grad(w) + f`` as a dealiased spectrum ``(n, n // 2 + 1)``."""
        n = self.config.n
        u, v = jnp.fft.irfft2(self._to_velocity * w_hat, s=(n, n))
        uv_hat, uu_vv_hat = jnp.fft.rfft2(jnp.stack([u * v, u * u - v * v]))
        adv_hat = self._advection[0] * uv_hat + self._advection[1] * uu_vv_hat
        return (self._forcing_hat - adv_hat).astype(self._cdtype)

    def step(self, state: dict[str, jax.Array], params: jax.Array) -> dict[str, jax.Array]:
        """One ETDRK4 step; ``nu`` enters through the coefficients in ``state`` (``params`` is not read)."""
        w = state["w_hat"]
        E, E2, Q = state["E"], state["E2"], state["Q"]
        nw = self.nonlinear(w)
        a = E2 * w + Q * nw
        na = self.nonlinear(a)
        b = E2 * w + Q * na
        nb = self.nonlinear(b)
        c = E2 * a + Q * (2 * nb - nw)
        nc = self.nonlinear(c)
        w_new = E * w + state["f1"] * nw + 2 * state["f2"] * (na + nb) + state["f3"] * nc
        return {**state, "w_hat": w_new.astype(self._cdtype)}

    # --- output --------------------------------------------------------------------------
    def _to_output_grid(self, z_hat: jax.Array) -> jax.Array:
        n, m = self.config.n, self._out
        if m == n:
            return jnp.fft.irfft2(z_hat, s=(n, n))
        if self.config.downsample == "subsample":
            r = n // m
            return jnp.fft.irfft2(z_hat, s=(n, n))[::r, ::r]
        kx = np.fft.fftfreq(m, d=1.0 / m).astype(int)
        ky = np.fft.rfftfreq(m, d=1.0 / m).astype(int)
        keep = (2 * np.abs(kx)[:, None] < m) & (2 * ky[None, :] < m)  # drop the coarse Nyquist modes
        coarse = z_hat[kx % n][:, ky] * jnp.asarray(keep, self.dtype)
        return jnp.fft.irfft2(coarse, s=(m, m)) * (m * m / (n * n))

    def fields(self, state: dict[str, jax.Array]) -> jax.Array:
        """``(C, out, out)``: vorticity, and with ``output='vorticity_velocity'`` also ``u``, ``v``."""
        w_hat = state["w_hat"]
        spectra = [w_hat]
        if self.config.output == "vorticity_velocity":
            spectra += list(velocity_from_vorticity(w_hat))
        return jnp.stack([self._to_output_grid(s) for s in spectra]).astype(self.dtype)
