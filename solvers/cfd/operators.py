"""Second-order finite-difference operators on the staggered (MAC) grid.

Shapes follow :mod:`solvers.cfd.boundaries`: ``u`` ``(nx + 1, ny)``, ``v`` ``(nx, ny + 1)``,
``p`` ``(nx, ny)``; ``ug`` and ``vg`` are ``u`` and ``v`` with their ghost rows/columns
(:func:`~solvers.cfd.boundaries.ghost_u`, :func:`~solvers.cfd.boundaries.ghost_v`). Momentum terms
are returned on the interior faces only: ``(nx - 1, ny)`` for ``u`` and ``(nx, ny - 1)`` for ``v``.

The advection term is the divergence form of Harlow & Welch (1965) with arithmetic-mean
interpolation; for a discretely divergence-free velocity it conserves momentum and kinetic energy
(Morinishi et al. 1998, J. Comput. Phys. 143, 90-124), which keeps central differences stable without
upwinding.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from solvers.cfd.boundaries import WALL, Sides


def divergence(u: jax.Array, v: jax.Array, dx: jax.Array, dy: jax.Array) -> jax.Array:
    """Discrete divergence ``(nx, ny)`` (1/s) on the cell centres."""
    return (u[1:] - u[:-1]) / dx + (v[:, 1:] - v[:, :-1]) / dy


def gradient(p: jax.Array, dx: jax.Array, dy: jax.Array, sides: Sides) -> tuple[jax.Array, jax.Array]:
    """Gradient of a cell-centred ``p`` ``(nx, ny)`` on all faces: ``(nx + 1, ny)`` and ``(nx, ny + 1)``.

    Zero on wall faces (their velocity is prescribed); on an outflow face ``p = 0`` is imposed on the
    boundary through the ghost value ``-p``.
    """
    zx = jnp.zeros_like(p[:1])
    last = zx if sides.right == WALL else -2 * p[-1:] / dx
    gx = jnp.concatenate([zx, (p[1:] - p[:-1]) / dx, last], axis=0)
    zy = jnp.zeros_like(p[:, :1])
    gy = jnp.concatenate([zy, (p[:, 1:] - p[:, :-1]) / dy, zy], axis=1)
    return gx, gy


def laplacian(ug: jax.Array, vg: jax.Array, dx: jax.Array, dy: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Five-point Laplacians of ``u`` and ``v`` on the interior faces (1/(m s))."""
    lu = (ug[2:, 1:-1] - 2 * ug[1:-1, 1:-1] + ug[:-2, 1:-1]) / dx**2 + (
        ug[1:-1, 2:] - 2 * ug[1:-1, 1:-1] + ug[1:-1, :-2]
    ) / dy**2
    lv = (vg[2:, 1:-1] - 2 * vg[1:-1, 1:-1] + vg[:-2, 1:-1]) / dx**2 + (
        vg[1:-1, 2:] - 2 * vg[1:-1, 1:-1] + vg[1:-1, :-2]
    ) / dy**2
    return lu, lv


def central_advection(
    ug: jax.Array,
    vg: jax.Array,
    dx: jax.Array,
    dy: jax.Array,
    corners: tuple[jax.Array, jax.Array] | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Advection ``(div(u u), div(u v))`` (m/s^2) on the interior faces, second-order divergence form.

    ``corners``: optional factors ``(nx + 1, ny + 1)`` for the corner values of ``u`` and ``v`` (zero
    on obstacle surfaces, :func:`solvers.cfd.obstacles.corner_masks`).
    """
    u, v = ug[:, 1:-1], vg[1:-1, :]
    uc = (u[1:] + u[:-1]) / 2  # u at cell centres (nx, ny)
    vc = (v[:, 1:] + v[:, :-1]) / 2  # v at cell centres (nx, ny)
    u_corner = (ug[:, 1:] + ug[:, :-1]) / 2  # u at cell corners (nx + 1, ny + 1)
    v_corner = (vg[1:] + vg[:-1]) / 2  # v at cell corners (nx + 1, ny + 1)
    if corners is not None:
        u_corner, v_corner = u_corner * corners[0], v_corner * corners[1]
    uv = u_corner * v_corner
    adv_u = (uc[1:] ** 2 - uc[:-1] ** 2) / dx + (uv[1:-1, 1:] - uv[1:-1, :-1]) / dy
    adv_v = (uv[1:, 1:-1] - uv[:-1, 1:-1]) / dx + (vc[:, 1:] ** 2 - vc[:, :-1] ** 2) / dy
    return adv_u, adv_v


def centred(u: jax.Array, v: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``u`` and ``v`` averaged onto the cell centres, ``(nx, ny)`` each."""
    return (u[1:] + u[:-1]) / 2, (v[:, 1:] + v[:, :-1]) / 2
