"""Force of the fluid on an obstacle from a control-volume momentum balance on the MAC grid.

Momentum conservation for the fluid in a box around the obstacle gives the force on the obstacle:

    F = -rho [ d/dt int u dV + oint (u (u.n) + p n - nu (grad u + grad u^T) n) dS ].

The box integral is evaluated exactly in discrete form: summing the obstacle-free conservative
operators (advection, viscous term, pressure gradient) over all faces of a box telescopes to their
fluxes through the box's boundary, which are the discrete surface integrals above (closed faces inside
the obstacle carry zero velocity and drop out). The box must lie in the fluid at least two cells from
the obstacle, where the masked and obstacle-free operators agree.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from solvers.cfd.boundaries import Sides, fill_boundary, ghost_u, ghost_v
from solvers.cfd.navier_stokes import Flow
from solvers.cfd.operators import central_advection, gradient, laplacian


def box_force(
    u: jax.Array,
    v: jax.Array,
    p: jax.Array,
    dudt: jax.Array,
    dvdt: jax.Array,
    flow: Flow,
    sides: Sides,
    box: tuple[int, int, int, int],
    rho: jax.Array,
) -> jax.Array:
    """``(2,)`` force (N per m of span) of the fluid on whatever lies inside ``box``.

    Args:
        u, v: face velocities ``(nx + 1, ny)``, ``(nx, ny + 1)`` (m/s); p: kinematic pressure ``(nx, ny)``.
        dudt, dvdt: their time derivatives (m/s^2), zeros for a steady flow.
        flow, sides: as for the step.
        box: cell index range ``(i0, i1, j0, j1)``: the control volume is cells ``i0 <= i < i1``,
            ``j0 <= j < j1``; x-momentum is balanced on the u-faces ``i0 + 1 .. i1 - 1`` of those rows,
            y-momentum on the v-faces ``j0 + 1 .. j1 - 1`` of those columns.
        rho: density (kg/m^3).
    """
    i0, i1, j0, j1 = box
    u, v = fill_boundary(u, v, flow.walls, sides)
    ug, vg = ghost_u(u, flow.walls), ghost_v(v, flow.walls, sides)
    au, av = central_advection(ug, vg, flow.dx, flow.dy)
    lu, lv = laplacian(ug, vg, flow.dx, flow.dy)
    gx, gy = gradient(p, flow.dx, flow.dy, sides)
    ru = dudt[1:-1] + au - flow.nu * lu + gx[1:-1]  # interior u-face k is face k + 1
    rv = dvdt[:, 1:-1] + av - flow.nu * lv + gy[:, 1:-1]
    fx = jnp.sum(ru[i0 : i1 - 1, j0:j1])
    fy = jnp.sum(rv[i0:i1, j0 : j1 - 1])
    return -rho * flow.dx * flow.dy * jnp.stack([fx, fy])
