"""Boundary conditions of a rectangle on the staggered (MAC) grid: walls, inflow and outflow.

Layout (axis 0 is x, axis 1 is y; ``nx x ny`` pressure cells of size ``dx x dy``):

- ``u`` ``(nx + 1, ny)`` on the vertical faces ``x_i = i dx``, ``y_j = (j + 1/2) dy``;
- ``v`` ``(nx, ny + 1)`` on the horizontal faces ``x_i = (i + 1/2) dx``, ``y_j = j dy``;
- ``p`` ``(nx, ny)`` on the cell centres.

The bottom (``y = 0``), top (``y = Ly``) and left (``x = 0``) sides are walls with a prescribed
velocity (a moving lid is a wall with a tangential velocity, an inlet is a wall with a normal
velocity). The right side (``x = Lx``) is a wall or an outflow: zero normal derivative of both
velocity components and zero pressure on the boundary.

The prescribed normal velocities sit on the boundary faces. A tangential wall velocity ``g`` sits half
a cell away from the nearest unknown and enters through a ghost value ``2 g - inside`` (so the linear
interpolant equals ``g`` on the wall).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp

from solvers.errors import SolverError

WALL = "wall"
OUTFLOW = "outflow"


@dataclass(frozen=True)
class Sides:
    """Kinds of the sides. Left, bottom and top are always walls; ``right`` is ``'wall'`` or ``'outflow'``."""

    right: str = WALL

    def __post_init__(self) -> None:
        if self.right not in (WALL, OUTFLOW):
            raise SolverError(f"right side must be {WALL!r} or {OUTFLOW!r}, got {self.right!r}")


class WallVelocity(NamedTuple):
    """Prescribed wall velocities (m/s); a pytree, so it may depend on traced parameters.

    Normal components on the boundary faces: ``u_left``, ``u_right`` ``(ny,)``, ``v_bottom``,
    ``v_top`` ``(nx,)``. Tangential components at the face positions along the wall: ``v_left``,
    ``v_right`` ``(ny + 1,)``, ``u_bottom``, ``u_top`` ``(nx + 1,)``. Right-side values are ignored
    on an outflow.
    """

    u_left: jax.Array
    u_right: jax.Array
    v_left: jax.Array
    v_right: jax.Array
    u_bottom: jax.Array
    u_top: jax.Array
    v_bottom: jax.Array
    v_top: jax.Array


def still_walls(nx: int, ny: int, dtype: jnp.dtype = jnp.float32) -> WallVelocity:
    """All wall velocities zero (no-slip, impermeable)."""
    zx, zy = jnp.zeros((nx,), dtype), jnp.zeros((ny,), dtype)
    zx1, zy1 = jnp.zeros((nx + 1,), dtype), jnp.zeros((ny + 1,), dtype)
    return WallVelocity(zy, zy, zy1, zy1, zx1, zx1, zx, zx)


def fill_boundary(u: jax.Array, v: jax.Array, walls: WallVelocity, sides: Sides) -> tuple[jax.Array, jax.Array]:
    """Set the boundary faces of ``u`` ``(nx + 1, ny)`` and ``v`` ``(nx, ny + 1)`` from the conditions."""
    u = u.at[0].set(walls.u_left)
    u = u.at[-1].set(walls.u_right if sides.right == WALL else u[-2])
    v = v.at[:, 0].set(walls.v_bottom).at[:, -1].set(walls.v_top)
    return u, v


def ghost_u(u: jax.Array, walls: WallVelocity) -> jax.Array:
    """``u`` padded with one ghost row below and above: ``(nx + 1, ny + 2)``."""
    below = 2 * walls.u_bottom[:, None] - u[:, :1]
    above = 2 * walls.u_top[:, None] - u[:, -1:]
    return jnp.concatenate([below, u, above], axis=1)


def ghost_v(v: jax.Array, walls: WallVelocity, sides: Sides) -> jax.Array:
    """``v`` padded with one ghost column left and right: ``(nx + 2, ny + 1)``."""
    left = 2 * walls.v_left[None, :] - v[:1]
    right = 2 * walls.v_right[None, :] - v[-1:] if sides.right == WALL else v[-1:]
    return jnp.concatenate([left, v, right], axis=0)
