"""Random initial conditions and forcings shared by the solvers.

- :func:`gaussian_random_field`: periodic Gaussian random fields with covariance
  ``sigma^2 (-Laplacian + tau^2 I)^(-alpha)`` on ``[0, L]^d`` (the FNO paper's generator uses
  ``alpha = 2.5, tau = 7, sigma = 7^(3/2)`` for Navier-Stokes and ``alpha = 2, tau = 3`` for Darcy;
  Li et al. 2020, arXiv:2010.08895).
- :func:`cosine_random_field`: the same covariance with the Neumann Laplacian on ``[0, L]^d``,
  sampled at the grid nodes ``x_j = j L / (n - 1)`` (the FNO Darcy generator, ``GRF.m``).
- :func:`sum_of_sines`: ``sum_j A_j sin(2 pi l_j x / L + phi_j)`` with random amplitudes, integer
  wavenumbers and phases (the MP-PDE paper's initial conditions and forcing; Brandstetter et al. 2022).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp


def standard_normal(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """N(0, 1) draws of ``shape``, drawn as one flat vector and reshaped: XLA on CPU compiles the Threefry
    bits of some multi-dimensional shapes very slowly, never those of a flat vector."""
    return jax.random.normal(key, (math.prod(shape),)).reshape(shape)


def _wavenumbers(n: int, length: float) -> jax.Array:
    """Angular wavenumbers ``2 pi k / L`` of an ``n``-point periodic grid, FFT order."""
    return 2 * jnp.pi * jnp.fft.fftfreq(n, d=1.0 / n) / length


def gaussian_random_field(
    key: jax.Array,
    shape: tuple[int, ...],
    alpha: float,
    tau: float,
    sigma: float,
    length: float = 1.0,
    dtype: jnp.dtype = jnp.float32,
) -> jax.Array:
    """A zero-mean periodic GRF on ``shape`` points of ``[0, L)^d`` with covariance
    ``sigma^2 (-Laplacian + tau^2)^(-alpha)``.

    Sampled in Fourier space: white noise times the square root of the covariance eigenvalues
    ``sigma (|k|^2 + tau^2)^(-alpha/2)`` (angular ``k``), the mean mode set to zero.
    Returns a real array of ``shape``. Pointwise values are normalised so that the continuum
    operator is discretised with unit-volume grid cells (as in the FNO generator).
    """
    ks = jnp.meshgrid(*[_wavenumbers(n, length) for n in shape], indexing="ij")
    k2 = sum(k**2 for k in ks)
    sqrt_eig = sigma * (k2 + tau**2) ** (-alpha / 2)
    sqrt_eig = sqrt_eig.at[(0,) * len(shape)].set(0.0)
    kr, ki = jax.random.split(key)
    noise = standard_normal(kr, shape) + 1j * standard_normal(ki, shape)
    n_total = 1
    for n in shape:
        n_total *= n
    field = jnp.fft.ifftn(noise * sqrt_eig).real * n_total / length ** (len(shape) / 2)
    return field.astype(dtype)


def cosine_random_field(
    key: jax.Array,
    shape: tuple[int, ...],
    alpha: float,
    tau: float,
    sigma: float = 1.0,
    length: float = 1.0,
    dtype: jnp.dtype = jnp.float32,
) -> jax.Array:
    """A zero-mean GRF with covariance ``sigma^2 (-Laplacian_N + tau^2)^(-alpha)`` (Neumann walls) on the
    nodes ``x_j = j L / (n - 1)``, ``j = 0 .. n - 1``, of ``[0, L]^d``; returns a real array of ``shape``.

    Truncated Karhunen-Loeve expansion over the cosine eigenfunctions ``prod_i c_i cos(pi k_i x_i / L)``
    (``c = 1`` for ``k = 0``, ``sqrt(2 / L)`` otherwise, orthonormal), ``k_i = 0 .. n_i - 1``, eigenvalues
    ``pi^2 |k|^2 / L^2``, the mean mode dropped -- as the FNO Darcy generator (``GRF.m``, Li et al. 2020,
    arXiv:2010.08895), which uses ``idct2`` on cell centres. Evaluated with one dense cosine matrix per
    axis (``O(n^3)``; fine up to n ~ 1000).
    """
    grids = jnp.meshgrid(*[jnp.arange(n) for n in shape], indexing="ij")
    k2 = sum(k**2 for k in grids) * (jnp.pi / length) ** 2
    sqrt_eig = sigma * (k2 + tau**2) ** (-alpha / 2)
    sqrt_eig = sqrt_eig.at[(0,) * len(shape)].set(0.0)
    coeff = standard_normal(key, shape) * sqrt_eig
    for axis, n in enumerate(shape):
        x = jnp.arange(n) / max(n - 1, 1)
        k = jnp.arange(n)
        basis = jnp.cos(jnp.pi * x[:, None] * k[None, :]) * jnp.where(k == 0, 1.0, jnp.sqrt(2.0))[None, :]
        coeff = jnp.moveaxis(jnp.tensordot(basis, coeff, axes=(1, axis)), 0, axis)
    return (coeff / length ** (len(shape) / 2)).astype(dtype)


def sum_of_sines(
    key: jax.Array,
    x: jax.Array,
    length: float,
    n_terms: int = 5,
    amplitude: float = 0.5,
    max_wavenumber: int = 3,
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """Draw the coefficients of ``sum_j A_j sin(2 pi l_j x / L + phi_j)`` and evaluate it at ``x``.

    ``A_j ~ U(-amplitude, amplitude)``, ``l_j`` integers in ``[1, max_wavenumber]``,
    ``phi_j ~ U(0, 2 pi)``. Returns ``(values (len(x),), A (n,), l (n,), phi (n,))`` so that a
    forcing can be re-evaluated at other times.
    """
    ka, kl, kp = jax.random.split(key, 3)
    amp = jax.random.uniform(ka, (n_terms,), minval=-amplitude, maxval=amplitude)
    wav = jax.random.randint(kl, (n_terms,), 1, max_wavenumber + 1).astype(x.dtype)
    phase = jax.random.uniform(kp, (n_terms,), maxval=2 * jnp.pi)
    values = jnp.sum(amp[:, None] * jnp.sin(2 * jnp.pi * wav[:, None] * x[None] / length + phase[:, None]), 0)
    return values.astype(x.dtype), amp.astype(x.dtype), wav, phase.astype(x.dtype)
