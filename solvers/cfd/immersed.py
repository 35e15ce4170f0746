"""No-slip on a curved obstacle surface, second order: wall distances for the masked viscous operator.

A cell mask (:mod:`solvers.cfd.obstacles`) puts the solid surface on cell faces: a staircase, first
order in the cell size for a curved body. The no-slip condition is what matters most near a wall
(the velocity there is small, so the mass fluxes through the staircase's misplaced faces are second
order), so it is imposed where the surface really is: where an open face's neighbour in the
five-point Laplacian is closed, the neighbour is replaced by the ghost value that makes the linear
interpolant vanish on the true surface,

    ghost = -(1 - theta) / theta * u_c,

with ``theta h`` the distance from the face to the surface along the grid line (``h`` = ``dx`` or
``dy``). This is the Dirichlet treatment of Shortley & Weller (1938) / Gibou et al. (2002, J. Comput.
Phys. 176, 205-227) and acts like the linear interpolation along the grid line of the direct-forcing
immersed boundary of Fadlun et al. (2000, J. Comput. Phys. 161, 35-60); the operator stays symmetric
(only its diagonal changes), so conjugate gradients still solve the implicit viscous step.

The staircase values are ``theta = 1/2`` for a tangential neighbour (the mirror ghost ``-u_c``) and
``theta = 1`` for a normal one (the closed face itself, velocity 0).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

# Smallest theta: a face closer to the surface than a tenth of a cell behaves as if it were 1/10 away.
# This bounds the diagonal, and so the conjugate-gradient iterations of the viscous solve (a 220 x 41
# cylinder step, 2 loaded cores: staircase 31 ms, 0.01 52 ms in one run; 0.1 20 ms in another), at the
# price of an O(theta_min h) error on faces closer than that (tests/test_cfd_cylinder.py: second order
# in the max norm up to 64 cells across a unit square with 0.1, beyond 96 with 0.01).
THETA_MIN = 0.1
MAX_GHOST_RATIO = 0.9  # ghost <= 0.9 u_c where the grid line misses the circle (theta <= 10)


class WallFractions(NamedTuple):
    """Distances to the surface in cells, ``(left, right, down, up)`` for the interior ``u`` faces
    (each ``(nx - 1, ny)``) and the interior ``v`` faces (each ``(nx, ny - 1)``). Read only where the
    neighbour in that direction is a closed face."""

    u: tuple[jax.Array, jax.Array, jax.Array, jax.Array]
    v: tuple[jax.Array, jax.Array, jax.Array, jax.Array]


def _distances_to_circle(x: jax.Array, y: jax.Array, xc, yc, r) -> list[jax.Array]:
    """Distances (m) from points ``(x, y)`` outside a circle to it along ``-x, +x, -y, +y``; ``inf``
    where the ray misses it, 0 for points inside."""
    out = []
    for along, across, centre, other in ((x, y, xc, yc), (y, x, yc, xc)):
        half = jnp.sqrt(jnp.maximum(r**2 - (across - other) ** 2, 0.0))
        hits = jnp.abs(across - other) < r
        back = jnp.where(hits & (along >= centre + half), along - (centre + half), jnp.inf)  # towards -axis
        ahead = jnp.where(hits & (along <= centre - half), (centre - half) - along, jnp.inf)  # towards +axis
        out += [back, ahead]
    inside = (x - xc) ** 2 + (y - yc) ** 2 < r**2
    return [jnp.where(inside, 0.0, d) for d in out]


def circle_fractions(
    nx: int,
    ny: int,
    dx: jax.Array,
    dy: jax.Array,
    xc: jax.Array,
    yc: jax.Array,
    r: jax.Array,
    dtype: jnp.dtype = jnp.float32,
    theta_min: float = THETA_MIN,
) -> WallFractions:
    """:class:`WallFractions` of a circle of radius ``r`` centred at ``(xc, yc)`` (m) on an ``nx x ny``
    MAC grid of cells ``dx x dy``; jit-able in the geometry. ``theta_min``: see :data:`THETA_MIN`.

    Where the grid line misses the circle (a closed neighbour of the staircase lies in the fluid,
    beside the circle's extreme points) the ghost is the neighbour's value if the velocity grows in
    proportion to the distance from the circle: ``ghost / u_c = d_nb / d_c`` (at most
    :data:`MAX_GHOST_RATIO`), i.e. ``theta = 1 / (1 - d_nb / d_c)``.
    """
    xu, yu = jnp.arange(1, nx, dtype=dtype) * dx, (jnp.arange(ny, dtype=dtype) + 0.5) * dy
    xv, yv = (jnp.arange(nx, dtype=dtype) + 0.5) * dx, jnp.arange(1, ny, dtype=dtype) * dy
    gap = lambda x, y: jnp.hypot(x - xc, y - yc) - r  # noqa: E731  distance from the circle (m)
    fractions = []
    for xs, ys in ((xu, yu), (xv, yv)):
        x, y = jnp.meshgrid(xs, ys, indexing="ij")
        own = jnp.maximum(gap(x, y), theta_min * jnp.minimum(dx, dy))
        thetas = []
        for k, d in enumerate(_distances_to_circle(x, y, xc, yc, r)):
            h = dx if k < 2 else dy
            step_x, step_y = ((-dx, 0), (dx, 0), (0, -dy), (0, dy))[k]
            ratio = jnp.clip(gap(x + step_x, y + step_y) / own, 0.0, MAX_GHOST_RATIO)
            theta = jnp.where(jnp.isfinite(d), jnp.maximum(d / h, theta_min), 1 / (1 - ratio))
            thetas.append(theta.astype(dtype))
        fractions.append(tuple(thetas))
    return WallFractions(*fractions)


def wall_ghost(neighbour: jax.Array, is_open: jax.Array, centre: jax.Array, theta: jax.Array) -> jax.Array:
    """The neighbour value where it is open, else the ghost ``-(1 - theta) / theta * centre``."""
    return jnp.where(is_open > 0, neighbour, -(1 - theta) / theta * centre)


def _covered(lo: jax.Array, hi: jax.Array, a: jax.Array, b: jax.Array) -> jax.Array:
    """Length of the overlap of the intervals ``[lo, hi]`` and ``[a, b]`` (0 when disjoint)."""
    return jnp.maximum(jnp.minimum(hi, b) - jnp.maximum(lo, a), 0.0)


def circle_apertures(
    nx: int,
    ny: int,
    dx: jax.Array,
    dy: jax.Array,
    xc: jax.Array,
    yc: jax.Array,
    r: jax.Array,
    dtype: jnp.dtype = jnp.float32,
) -> tuple[jax.Array, jax.Array]:
    """Fluid apertures of the faces around a circle: ``(nx + 1, ny)`` for ``u``, ``(nx, ny + 1)`` for ``v``.

    A face is open when its centre (where its velocity lives) lies outside the circle; its aperture
    is the fraction of its length outside the circle (between 1/2 and 1 where the circle cuts it,
    1 away from it), and 0 on closed faces. A projection that balances the fluxes
    ``aperture * velocity`` (the cut-cell finite-volume divergence of Ng, Min & Gibou 2009, J.
    Comput. Phys. 228, 8807-8829) sees the circle rather than the staircase of cells. Jit-able in
    the geometry; see :func:`close_dead_ends` for the cells this opens that carry no flow.
    """
    out = []
    for n_along, n_across, h_along, h_across, c_along, c_across in (
        (nx + 1, ny, dx, dy, xc, yc),  # u faces: on the lines x = i dx, spanning [j dy, (j + 1) dy]
        (ny + 1, nx, dy, dx, yc, xc),  # v faces, transposed
    ):
        s = jnp.arange(n_along, dtype=dtype) * h_along  # the face line's coordinate
        t0 = jnp.arange(n_across, dtype=dtype)[None, :] * h_across  # the face's lower end
        half = jnp.sqrt(jnp.maximum(r**2 - (s - c_along) ** 2, 0.0))[:, None]  # the circle's half-chord
        cut = _covered(t0, t0 + h_across, c_across - half, c_across + half) / h_across
        is_open = (s[:, None] - c_along) ** 2 + (t0 + h_across / 2 - c_across) ** 2 > r**2
        out.append(jnp.where(is_open, 1.0 - cut, 0.0).astype(dtype))
    return out[0], out[1].T


def close_dead_ends(au: jax.Array, av: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Close the one open face of every cell that has no other (``au`` ``(nx + 1, ny)``, ``av``
    ``(nx, ny + 1)``, 0 on closed faces).

    Such a cell (a sliver of fluid between the circle and one face, beside the circle's extreme
    points) can hold no steady flux, so a velocity on its face would be 0: a wall in the fluid up to
    half a cell in front of the circle. Closed, the face becomes a neighbour whose ghost puts the
    no-slip condition on the circle (:func:`circle_fractions`); it also halves the pressure solver's
    iterations (15 to 9 per stage, 333 x 62 cylinder).
    """
    count = (au[1:] > 0).astype(jnp.int32) + (au[:-1] > 0) + (av[:, 1:] > 0) + (av[:, :-1] > 0)
    dead = count == 1
    pu, pv = jnp.pad(dead, ((1, 1), (0, 0))), jnp.pad(dead, ((0, 0), (1, 1)))
    au = jnp.where(pu[1:] | pu[:-1], 0.0, au).astype(au.dtype)
    return au, jnp.where(pv[:, 1:] | pv[:, :-1], 0.0, av).astype(av.dtype)
