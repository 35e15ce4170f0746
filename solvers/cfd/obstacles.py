"""Solid obstacles inside the rectangle, given as a cell mask (staircase geometry on the MAC grid).

``fluid`` ``(nx, ny)`` is 1 in fluid cells and 0 in solid ones. A face is *open* when both cells
beside it are fluid; closed faces carry zero velocity, so the solid surface runs along cell faces.
Normal no-slip is exact there; tangential no-slip uses a mirror ghost (``-u`` of the open neighbour),
which puts the zero on the surface, half a cell from the nearest unknown, as for the domain walls.
For obstacles aligned with the grid (the ``dam``) this keeps second order; curved ones (a cylinder)
are staircased, a first-order geometric error in the cell size.

With obstacles the operators are no longer separable, so the pressure Poisson and the viscous
Helmholtz equations are solved by preconditioned conjugate gradients (:func:`pcg`) with the
obstacle-free fast-diagonalisation solve as preconditioner (its inverse differs from the masked
operator's only near the obstacle, so few iterations are needed).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from solvers.cfd.fast_diag import FastDiag, solve
from solvers.cfd.immersed import WallFractions, wall_ghost


def face_masks(fluid: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Open faces of a cell mask ``(nx, ny)``: ``(nx + 1, ny)`` for ``u``, ``(nx, ny + 1)`` for ``v`` (1/0).

    A boundary face is open when its one cell is fluid.
    """
    px = jnp.pad(fluid, ((1, 1), (0, 0)), constant_values=1)
    py = jnp.pad(fluid, ((0, 0), (1, 1)), constant_values=1)
    return px[1:] * px[:-1], py[:, 1:] * py[:, :-1]


def corner_masks(open_u: jax.Array, open_v: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Factors ``(nx + 1, ny + 1)`` that zero ``u`` and ``v`` at cell corners on a solid surface.

    A corner's ``u`` is the mean of the ``u`` faces below and above it; it is zero when either is
    closed (the mirror ghost). Likewise ``v`` with the faces left and right of the corner.
    """
    ou = jnp.pad(open_u, ((0, 0), (1, 1)), constant_values=1)
    ov = jnp.pad(open_v, ((1, 1), (0, 0)), constant_values=1)
    return ou[:, 1:] * ou[:, :-1], ov[1:] * ov[:-1]


def masked_laplacian(
    ug: jax.Array,
    vg: jax.Array,
    open_u: jax.Array,
    open_v: jax.Array,
    dx: jax.Array,
    dy: jax.Array,
    fractions: WallFractions | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Five-point Laplacians on the interior faces with no-slip ghosts across solid surfaces.

    ``ug`` ``(nx + 1, ny + 2)`` and ``vg`` ``(nx + 2, ny + 1)`` carry the domain ghosts and zeros on
    closed faces. Staircase (``fractions`` None): normal neighbours on a closed face are zero (the
    surface passes through them); tangential ones are replaced by ``-`` the centre value. With
    :class:`~solvers.cfd.immersed.WallFractions` every closed neighbour is the ghost that puts the zero
    on the true surface (:mod:`solvers.cfd.immersed`).
    """
    ou = jnp.pad(open_u, ((0, 0), (1, 1)), constant_values=1)[1:-1]
    ov = jnp.pad(open_v, ((1, 1), (0, 0)), constant_values=1)[:, 1:-1]
    c = ug[1:-1, 1:-1]
    if fractions is None:
        left, right = ug[:-2, 1:-1], ug[2:, 1:-1]
        down = jnp.where(ou[:, :-2] > 0, ug[1:-1, :-2], -c)
        up = jnp.where(ou[:, 2:] > 0, ug[1:-1, 2:], -c)
    else:
        tl, tr, td, tu = fractions.u
        left, right = wall_ghost(ug[:-2, 1:-1], open_u[:-2], c, tl), wall_ghost(ug[2:, 1:-1], open_u[2:], c, tr)
        down, up = wall_ghost(ug[1:-1, :-2], ou[:, :-2], c, td), wall_ghost(ug[1:-1, 2:], ou[:, 2:], c, tu)
    lu = (right - 2 * c + left) / dx**2 + (up - 2 * c + down) / dy**2
    c = vg[1:-1, 1:-1]
    if fractions is None:
        down, up = vg[1:-1, :-2], vg[1:-1, 2:]
        left = jnp.where(ov[:-2] > 0, vg[:-2, 1:-1], -c)
        right = jnp.where(ov[2:] > 0, vg[2:, 1:-1], -c)
    else:
        tl, tr, td, tu = fractions.v
        down, up = wall_ghost(vg[1:-1, :-2], open_v[:, :-2], c, td), wall_ghost(vg[1:-1, 2:], open_v[:, 2:], c, tu)
        left, right = wall_ghost(vg[:-2, 1:-1], ov[:-2], c, tl), wall_ghost(vg[2:, 1:-1], ov[2:], c, tr)
    lv = (right - 2 * c + left) / dx**2 + (up - 2 * c + down) / dy**2
    return lu, lv


def _dot(a, b) -> jax.Array:
    return sum(jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def _max_abs(a) -> jax.Array:
    return jnp.max(jnp.stack([jnp.max(jnp.abs(x)) for x in jax.tree.leaves(a)]))


def pcg(
    apply_a: Callable[[Any], Any],
    b: Any,
    precond: Callable[[Any], Any],
    x0: Any,
    rtol: float,
    maxiter: int,
) -> tuple[Any, jax.Array]:
    """Preconditioned conjugate gradients for a symmetric positive definite ``A`` on arrays or pytrees.

    Stops when ``max|b - A x| <= rtol * max|b|`` or after ``maxiter`` iterations. Returns ``x`` and
    the number of iterations. ``jax.lax.while_loop``: jit-able and ``vmap``-able (a batch runs until
    its slowest member converges).
    """
    axpy = lambda a, x, y: jax.tree.map(lambda xi, yi: a * xi + yi, x, y)  # noqa: E731
    r = jax.tree.map(jnp.subtract, b, apply_a(x0))
    z = precond(r)
    target = rtol * _max_abs(b)

    def cond(carry):
        k, _, r, _, _ = carry
        return (k < maxiter) & (_max_abs(r) > target)

    def body(carry):
        k, x, r, p, rz = carry
        ap = apply_a(p)
        pap = _dot(p, ap)
        alpha = rz / jnp.where(pap == 0, 1.0, pap)
        x = axpy(alpha, p, x)
        r = axpy(-alpha, ap, r)
        z = precond(r)
        rz_new = _dot(r, z)
        p = axpy(rz_new / jnp.where(rz == 0, 1.0, rz), p, z)
        return k + 1, x, r, p, rz_new

    k, x, *_ = jax.lax.while_loop(cond, body, (jnp.asarray(0), x0, r, z, _dot(r, z)))
    return x, k


def fast_preconditioner(fd: FastDiag, mask: jax.Array, a: jax.Array, b: jax.Array, dx, dy, solid_scale) -> Callable:
    """``r -> mask * solve(a - b L, mask * r) + (1 - mask) * r / solid_scale``: SPD, obstacle-free inverse."""

    def apply(r: jax.Array) -> jax.Array:
        return mask * solve(fd, mask * r, a, b, dx, dy) + (1 - mask) * r / solid_scale

    return apply
