"""2D incompressible Navier-Stokes on a MAC grid: a projection step assembled from small functions.

    du/dt + div(u u) = -grad p + nu Laplacian(u),   div u = 0,

with ``p`` the kinematic pressure (Pa per kg/m^3). One step of length ``dt`` is the low-storage
three-stage Runge-Kutta scheme of Spalart, Moser & Rogers (1991, J. Comput. Phys. 96, 297-324) for
advection with a Crank-Nicolson (``theta = 1/2``) treatment of diffusion in each stage, and an
incremental pressure projection closing each stage (the MAC scheme of Le & Moin 1991, J. Comput.
Phys. 92, 369-379). Stage ``k`` with ``c_k = gamma_k + zeta_k``:

    u* - u_{k-1} = dt [ -gamma_k N(u_{k-1}) - zeta_k N(u_{k-2}) - c_k grad p_{k-1}
                        + (1 - theta) c_k nu L u_{k-1} + theta c_k nu L u* ]
    L phi = div u* / (c_k dt),   u_k = u* - c_k dt grad phi,   p_k = p_{k-1} + phi.

Second order in space; in time the velocity is second order (third-order advection, Crank-Nicolson
diffusion; ``tests/test_cfd_core.py`` measures the rate) and the pressure, the last stage's, first
order (steady pressures are exact). ``theta = 1`` (backward Euler stages) damps the stiffest
viscous modes at the price of first order in the viscous term; use it only for very viscous flows
with a large ``dt``. The implicit solves and the pressure Poisson equation use fast
diagonalisation (:mod:`solvers.cfd.fast_diag`), so without obstacles a step is a fixed number of
dense matrix products: no iterations, no host syncs. With obstacles (``Flow.fluid``) the same
solves precondition conjugate gradients (:mod:`solvers.cfd.obstacles`): typically 2 iterations
for each viscous solve and 8 for the pressure per stage.

Stability: advection is explicit, so ``dt (|u|/dx + |v|/dy) <= sqrt(3)`` (the imaginary-axis bound of
three-stage third-order Runge-Kutta); :mod:`solvers.cfd.cfl` checks a safer limit before a run.
Diffusion is implicit: no limit.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from solvers.cfd.boundaries import WALL, Sides, WallVelocity, fill_boundary, ghost_u, ghost_v
from solvers.cfd.fast_diag import FACE, NEUMANN, NODE, FastDiag, fast_diag, solve
from solvers.cfd.immersed import WallFractions
from solvers.cfd.obstacles import corner_masks, face_masks, fast_preconditioner, masked_laplacian, pcg
from solvers.cfd.operators import central_advection, divergence, gradient, laplacian

# Spalart, Moser & Rogers (1991), Table / eq. (A.1): gamma_k and zeta_k of the three stages.
SMR_GAMMA = (8 / 15, 5 / 12, 3 / 4)
SMR_ZETA = (0.0, -17 / 60, -5 / 12)

Advection = Callable[..., tuple[jax.Array, jax.Array]]  # (ug, vg, dx, dy, corners=None) -> (adv_u, adv_v)

# Conjugate-gradient settings with obstacles: relative residual by dtype, iteration caps.
PCG_RTOL = {"float32": 1e-5, "float64": 1e-10}
PCG_MAXITER_PRESSURE, PCG_MAXITER_DIFFUSION = 300, 100


class Flow(NamedTuple):
    """Per-simulation data of one flow (a pytree; entries may be traced and batched).

    ``dx``, ``dy``: cell size (m); ``nu``: kinematic viscosity (m^2/s); ``walls``: the prescribed wall
    velocities (:class:`~solvers.cfd.boundaries.WallVelocity`); ``fluid``: ``None`` (no obstacle) or
    a cell mask ``(nx, ny)``, 1 in fluid and 0 in solid cells (:mod:`solvers.cfd.obstacles`);
    ``fractions``: ``None`` (staircase no-slip) or the distances to a curved surface that put the
    no-slip condition on it (:mod:`solvers.cfd.immersed`); ``apertures``: ``None`` (a face is open
    when both its cells are fluid) or the fluid fractions of the faces ``(nx + 1, ny)``,
    ``(nx, ny + 1)``, 0 on closed faces: the faces with a positive aperture carry velocities and the
    projection balances the fluxes ``aperture * velocity`` (:func:`~solvers.cfd.immersed.circle_apertures`).
    """

    dx: jax.Array
    dy: jax.Array
    nu: jax.Array
    walls: WallVelocity
    fluid: jax.Array | None = None
    fractions: WallFractions | None = None
    apertures: tuple[jax.Array, jax.Array] | None = None


def open_faces(flow: Flow) -> tuple[jax.Array, jax.Array]:
    """The faces that carry velocities (1/0) of a flow with obstacles: ``(nx + 1, ny)``, ``(nx, ny + 1)``."""
    if flow.apertures is None:
        return face_masks(flow.fluid)
    return tuple((a > 0).astype(a.dtype) for a in flow.apertures)


class FlowState(NamedTuple):
    """Velocity ``u`` ``(nx + 1, ny)``, ``v`` ``(nx, ny + 1)`` (m/s) and kinematic pressure ``p`` ``(nx, ny)``."""

    u: jax.Array
    v: jax.Array
    p: jax.Array


class Solvers(NamedTuple):
    """Fast-diagonalisation factors for the pressure and the two velocity components."""

    p: FastDiag
    u: FastDiag
    v: FastDiag


def make_solvers(nx: int, ny: int, sides: Sides, dtype: jnp.dtype = jnp.float32) -> Solvers:
    """Decompose the pressure Poisson and the velocity Helmholtz operators for an ``nx x ny`` grid."""
    outflow = sides.right != WALL
    return Solvers(
        p=fast_diag((nx, ny), (NEUMANN, FACE if outflow else NEUMANN), (NEUMANN, NEUMANN), dtype),
        u=fast_diag((nx - 1, ny), (NODE, NEUMANN if outflow else NODE), (FACE, FACE), dtype),
        v=fast_diag((nx, ny - 1), (FACE, NEUMANN if outflow else FACE), (NODE, NODE), dtype),
    )


def rest(nx: int, ny: int, flow: Flow, sides: Sides, dtype: jnp.dtype = jnp.float32) -> FlowState:
    """Fluid at rest inside, the prescribed velocities on the boundary faces, zero pressure."""
    u, v = fill_boundary(jnp.zeros((nx + 1, ny), dtype), jnp.zeros((nx, ny + 1), dtype), flow.walls, sides)
    if flow.fluid is not None:
        open_u, open_v = open_faces(flow)
        u, v = u * open_u, v * open_v
    return FlowState(u, v, jnp.zeros((nx, ny), dtype))


def project(
    u: jax.Array, v: jax.Array, flow: Flow, sides: Sides, fd: FastDiag, scale: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Make ``(u, v)`` discretely divergence-free: ``u - scale grad phi`` with ``L phi = div u / scale``.

    Returns the projected ``u``, ``v`` and ``phi`` ``(nx, ny)``. ``scale`` is the time-step factor
    (s), so ``phi`` is a kinematic pressure increment. With obstacles (``flow.fluid``) the gradient
    acts on open faces only and ``L`` is the masked Laplacian, solved by :func:`pcg`; ``phi`` is 0
    in solid cells. With ``flow.apertures`` ``A`` the divergence is that of the fluxes ``A u`` and
    ``L phi = div(A grad phi)`` (symmetric, so conjugate gradients still apply).
    """
    if flow.fluid is None:
        div = divergence(u, v, flow.dx, flow.dy)
        phi = solve(fd, -div / scale, 0.0, 1.0, flow.dx, flow.dy)
        gx, gy = gradient(phi, flow.dx, flow.dy, sides)
        return u - scale * gx, v - scale * gy, phi
    fluid = flow.fluid
    open_u, open_v = open_faces(flow)
    wu, wv = (open_u, open_v) if flow.apertures is None else flow.apertures
    div = divergence(u * wu, v * wv, flow.dx, flow.dy)
    solid_scale = 2 / flow.dx**2 + 2 / flow.dy**2

    def apply_a(phi: jax.Array) -> jax.Array:
        gx, gy = gradient(phi, flow.dx, flow.dy, sides)
        return -divergence(gx * wu, gy * wv, flow.dx, flow.dy) + (1 - fluid) * solid_scale * phi

    precond = fast_preconditioner(fd, fluid, 0.0, 1.0, flow.dx, flow.dy, solid_scale)
    rtol = PCG_RTOL[jnp.dtype(u.dtype).name]
    phi, _ = pcg(apply_a, -fluid * div / scale, precond, jnp.zeros_like(div), rtol, PCG_MAXITER_PRESSURE)
    gx, gy = gradient(phi, flow.dx, flow.dy, sides)
    return u - scale * gx * open_u, v - scale * gy * open_v, phi


def _laplacians(u: jax.Array, v: jax.Array, flow: Flow, sides: Sides, walls: WallVelocity):
    """Laplacians of boundary-filled ``u``, ``v`` on the interior faces, obstacles included."""
    ug, vg = ghost_u(u, walls), ghost_v(v, walls, sides)
    if flow.fluid is None:
        return laplacian(ug, vg, flow.dx, flow.dy)
    return masked_laplacian(ug, vg, *open_faces(flow), flow.dx, flow.dy, flow.fractions)


def implicit_diffusion(
    ru: jax.Array,
    rv: jax.Array,
    coef: jax.Array,
    flow: Flow,
    sides: Sides,
    solvers: Solvers,
    guess: tuple[jax.Array, jax.Array] | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Solve ``(1 - coef L) w = r`` for both velocity components on the interior faces.

    ``L`` includes the wall values: their contribution is the Laplacian of a field that is zero
    inside and carries the boundary conditions, moved to the right side. With obstacles the closed
    faces get ``w = 0`` and the system is solved by :func:`pcg` from ``guess`` (default ``r``).
    """
    nx, ny = rv.shape[0], ru.shape[1]
    dtype = ru.dtype
    zeros = jnp.zeros((nx + 1, ny), dtype), jnp.zeros((nx, ny + 1), dtype)
    bu, bv = _laplacians(*fill_boundary(*zeros, flow.walls, sides), flow, sides, flow.walls)
    if flow.fluid is None:
        us = solve(solvers.u, ru + coef * bu, 1.0, coef, flow.dx, flow.dy)
        vs = solve(solvers.v, rv + coef * bv, 1.0, coef, flow.dx, flow.dy)
        return us, vs
    open_u, open_v = open_faces(flow)
    mu, mv = open_u[1:-1], open_v[:, 1:-1]
    still = flow.walls._replace(**{k: jnp.zeros_like(a) for k, a in flow.walls._asdict().items()})
    rtol = PCG_RTOL[jnp.dtype(dtype).name]
    guess = (ru, rv) if guess is None else guess

    def apply_a(w: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
        fu, fv = fill_boundary(zeros[0].at[1:-1].set(w[0] * mu), zeros[1].at[:, 1:-1].set(w[1] * mv), still, sides)
        lu, lv = _laplacians(fu, fv, flow, sides, still)
        return mu * (w[0] - coef * lu) + (1 - mu) * w[0], mv * (w[1] - coef * lv) + (1 - mv) * w[1]

    pu = fast_preconditioner(solvers.u, mu, 1.0, coef, flow.dx, flow.dy, 1.0)
    pv = fast_preconditioner(solvers.v, mv, 1.0, coef, flow.dx, flow.dy, 1.0)
    b = (mu * (ru + coef * bu), mv * (rv + coef * bv))
    (us, vs), _ = pcg(
        apply_a, b, lambda r: (pu(r[0]), pv(r[1])), (guess[0] * mu, guess[1] * mv), rtol, PCG_MAXITER_DIFFUSION
    )
    return us, vs


def make_step(
    sides: Sides,
    solvers: Solvers,
    dt: float,
    *,
    theta: float = 0.5,
    advection: Advection = central_advection,
) -> Callable[[FlowState, Flow], FlowState]:
    """Build ``step(state, flow) -> state``: one RK3 / Crank-Nicolson projection step of length ``dt`` (s).

    Args:
        sides: kinds of the domain sides.
        solvers: factors from :func:`make_solvers` for the same grid and sides.
        dt: time step (s).
        theta: implicit weight of diffusion in each stage (1/2: Crank-Nicolson, 1: backward Euler).
        advection: ``(ug, vg, dx, dy, corners=None) -> (adv_u, adv_v)`` on the interior faces;
            ``corners`` (given with obstacles) zero the corner velocities on solid surfaces.
    """

    def stage(carry: tuple[FlowState, tuple[jax.Array, jax.Array]], coeffs: jax.Array, flow: Flow):
        state, prev = carry
        gamma, zeta = coeffs[0], coeffs[1]
        c = gamma + zeta
        u, v = fill_boundary(state.u, state.v, flow.walls, sides)
        ug, vg = ghost_u(u, flow.walls), ghost_v(v, flow.walls, sides)
        gx, gy = gradient(state.p, flow.dx, flow.dy, sides)
        if flow.fluid is None:
            au, av = advection(ug, vg, flow.dx, flow.dy)
        else:
            open_u, open_v = open_faces(flow)
            au, av = advection(ug, vg, flow.dx, flow.dy, corners=corner_masks(open_u, open_v))
            gx, gy = gx * open_u, gy * open_v
        lu, lv = _laplacians(u, v, flow, sides, flow.walls)
        explicit_visc = (1 - theta) * c * flow.nu
        ru = u[1:-1] + dt * (-gamma * au - zeta * prev[0] + explicit_visc * lu - c * gx[1:-1])
        rv = v[:, 1:-1] + dt * (-gamma * av - zeta * prev[1] + explicit_visc * lv - c * gy[:, 1:-1])
        coef = theta * c * dt * flow.nu
        us, vs = implicit_diffusion(ru, rv, coef, flow, sides, solvers, guess=(u[1:-1], v[:, 1:-1]))
        u_star, v_star = fill_boundary(u.at[1:-1].set(us), v.at[:, 1:-1].set(vs), flow.walls, sides)
        if flow.fluid is not None:
            u_star, v_star = u_star * open_u, v_star * open_v
        u_new, v_new, phi = project(u_star, v_star, flow, sides, solvers.p, c * dt)
        return (FlowState(u_new, v_new, state.p + phi), (au, av)), None

    def step(state: FlowState, flow: Flow) -> FlowState:
        prev = (jnp.zeros_like(state.u[1:-1]), jnp.zeros_like(state.v[:, 1:-1]))
        coeffs = jnp.asarray([SMR_GAMMA, SMR_ZETA], state.u.dtype).T  # (3 stages, 2)
        (state, _), _ = jax.lax.scan(lambda carry, cz: stage(carry, cz, flow), (state, prev), coeffs)
        return state

    return step
