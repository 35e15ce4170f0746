"""Fast diagonalisation: direct solves of ``(a - b Laplacian) x = r`` on a rectangle.

The 2D five-point operator is a Kronecker sum ``Tx / dx^2 (+) Ty / dy^2`` of 1D second differences
(Lynch, Rice & Thomas 1964). With the eigenpairs ``-T = Q diag(lam) Q^T`` of each 1D matrix, a solve
is two matrix products per axis and a pointwise division:
``x = Qx [(Qx^T r Qy) / (a + b (lam_x / dx^2 + lam_y / dy^2))] Qy^T``.

The eigenvectors depend only on the end conditions and the number of points, so one decomposition
serves every cell size: ``dx`` and ``dy`` (and ``a``, ``b``) may be traced, batched parameters.
Matrix products run at ``Precision.HIGHEST`` so float32 solves stay accurate on GPUs (TF32 off).

End conditions of a 1D line of unknowns ``x_0 .. x_{n-1}`` (spacing 1):

- ``"node"``: the neighbour beyond the end is a known boundary value (moved to the right side);
- ``"face"``: a known value sits half a cell beyond the end; ghost ``= 2 g - x_0``, diagonal ``-3``;
- ``"neumann"``: zero normal derivative, ghost ``= x_0``, diagonal ``-1``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from solvers.errors import SolverError

NODE, FACE, NEUMANN = "node", "face", "neumann"
_DIAG_SHIFT = {NODE: 0.0, FACE: -1.0, NEUMANN: 1.0}


def second_difference(n: int, left: str, right: str) -> np.ndarray:
    """The ``(n, n)`` matrix of ``x_{i-1} - 2 x_i + x_{i+1}`` with homogeneous end conditions."""
    if n < 1:
        raise SolverError(f"a 1D line needs at least one unknown, got n={n}")
    for end in (left, right):
        if end not in _DIAG_SHIFT:
            raise SolverError(f"unknown end condition {end!r}; use one of {', '.join(_DIAG_SHIFT)}")
    t = -2.0 * np.eye(n) + np.eye(n, k=1) + np.eye(n, k=-1)
    t[0, 0] += _DIAG_SHIFT[left]
    t[-1, -1] += _DIAG_SHIFT[right]
    return t


class FastDiag(NamedTuple):
    """Eigenpairs of the two 1D operators: ``qx`` ``(nx, nx)``, ``lx`` ``(nx,)``, ``qy``, ``ly``."""

    qx: jax.Array
    lx: jax.Array
    qy: jax.Array
    ly: jax.Array


def _eig(n: int, ends: tuple[str, str]) -> tuple[np.ndarray, np.ndarray]:
    lam, q = np.linalg.eigh(-second_difference(n, *ends))
    lam[np.abs(lam) < 1e-10] = 0.0  # the constant mode of a pure-Neumann line is exactly singular
    return q, lam


def fast_diag(
    shape: tuple[int, int], x_ends: tuple[str, str], y_ends: tuple[str, str], dtype: jnp.dtype = jnp.float32
) -> FastDiag:
    """Decompose the operator on an ``(nx, ny)`` block of unknowns with the given end conditions."""
    qx, lx = _eig(shape[0], x_ends)
    qy, ly = _eig(shape[1], y_ends)
    return FastDiag(*(jnp.asarray(a, dtype) for a in (qx, lx, qy, ly)))


def solve(fd: FastDiag, rhs: jax.Array, a: jax.Array, b: jax.Array, dx: jax.Array, dy: jax.Array) -> jax.Array:
    """Solve ``(a - b (Dxx + Dyy)) x = rhs`` for ``rhs`` ``(nx, ny)``.

    A singular mode (``a = 0`` with pure-Neumann ends: the constant) is set to zero, which gives the
    mean-free solution when ``rhs`` sums to zero.
    """
    hi = jax.lax.Precision.HIGHEST
    r = jnp.matmul(jnp.matmul(fd.qx.T, rhs, precision=hi), fd.qy, precision=hi)
    den = a + b * (fd.lx[:, None] / dx**2 + fd.ly[None, :] / dy**2)
    singular = den == 0
    r = jnp.where(singular, 0.0, r / jnp.where(singular, 1.0, den))
    return jnp.matmul(jnp.matmul(fd.qx, r, precision=hi), fd.qy.T, precision=hi)
