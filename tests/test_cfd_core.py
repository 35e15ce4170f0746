"""MAC-grid building blocks: fast diagonalisation, projection, implicit diffusion, advection, CFL."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from solvers.cfd.boundaries import OUTFLOW, WALL, Sides, fill_boundary, ghost_u, ghost_v, still_walls
from solvers.cfd.cfl import check_cfl
from solvers.cfd.fast_diag import FACE, NEUMANN, NODE, fast_diag, second_difference, solve
from solvers.cfd.navier_stokes import Flow, implicit_diffusion, make_solvers, project
from solvers.cfd.operators import central_advection, divergence, laplacian
from solvers.errors import SolverError

NX, NY = 12, 9  # deliberately unequal and odd, to catch transposed axes


def _random_walls(seed, nx, ny, dtype):
    rng = np.random.default_rng(seed)
    zero = still_walls(nx, ny, dtype)
    return zero._replace(**{k: jnp.asarray(rng.normal(size=getattr(zero, k).shape), dtype) for k in zero._fields})


def _random_velocity(seed, nx, ny, dtype):
    rng = np.random.default_rng(seed)
    return jnp.asarray(rng.normal(size=(nx + 1, ny)), dtype), jnp.asarray(rng.normal(size=(nx, ny + 1)), dtype)


@pytest.mark.parametrize("ends", [(NODE, NODE), (FACE, NEUMANN), (NEUMANN, FACE)])
def test_fast_diag_matches_dense_solve(enable_x64, ends):
    # (a - b (Dxx + Dyy)) x = r against a dense Kronecker-sum solve; exact up to round-off (1e-10).
    nx, ny, dx, dy, a, b = 7, 5, 0.3, 0.2, 1.7, 0.05
    fd = fast_diag((nx, ny), ends, (FACE, FACE), jnp.float64)
    lap = np.kron(second_difference(nx, *ends) / dx**2, np.eye(ny)) + np.kron(
        np.eye(nx), second_difference(ny, FACE, FACE) / dy**2
    )
    r = np.random.default_rng(0).normal(size=(nx, ny))
    expected = np.linalg.solve(a * np.eye(nx * ny) - b * lap, r.ravel()).reshape(nx, ny)
    np.testing.assert_allclose(solve(fd, jnp.asarray(r), a, b, dx, dy), expected, rtol=1e-10, atol=1e-12)


def test_singular_neumann_poisson_gives_mean_free_solution(enable_x64):
    fd = fast_diag((6, 4), (NEUMANN, NEUMANN), (NEUMANN, NEUMANN), jnp.float64)
    r = np.random.default_rng(1).normal(size=(6, 4))
    r -= r.mean()
    x = solve(fd, jnp.asarray(r), 0.0, 1.0, 0.5, 0.25)
    lap = np.kron(second_difference(6, NEUMANN, NEUMANN) / 0.25, np.eye(4)) + np.kron(
        np.eye(6), second_difference(4, NEUMANN, NEUMANN) / 0.0625
    )
    np.testing.assert_allclose(-lap @ np.asarray(x).ravel(), r.ravel(), atol=1e-10)
    assert abs(float(jnp.mean(x))) < 1e-12


@pytest.mark.parametrize("right", [WALL, OUTFLOW])
@pytest.mark.parametrize("dtype,tol", [("float64", 1e-6), ("float32", 1e-5)])
def test_divergence_after_projection(request, dtype, tol, right):
    # A random O(1) velocity on cells of 0.1 x 0.05 has divergence O(50); projected, its divergence is
    # <= 1e-6 absolute in float64 (the required bound) and <= 1e-5 of the initial one in float32 (round-off of the
    # O(n) transforms; the required 1e-4 absolute for float32 is checked on real cavity steps in
    # test_cfd_cavity.py).
    if dtype == "float64":
        request.getfixturevalue("enable_x64")
    dt = jnp.dtype(dtype)
    sides = Sides(right=right)
    rng = np.random.default_rng(0)
    walls = _random_walls(0, NX, NY, dt)
    if right == WALL:  # a closed box needs zero net inflow: balance it on the left wall
        w = {k: np.asarray(getattr(walls, k), np.float64) for k in ("u_left", "u_right", "v_bottom", "v_top")}
        net = (w["u_left"].sum() - w["u_right"].sum()) * 0.05 + (w["v_bottom"].sum() - w["v_top"].sum()) * 0.1
        walls = walls._replace(u_left=jnp.asarray(w["u_left"] - net / (NY * 0.05), dt))
    flow = Flow(jnp.asarray(0.1, dt), jnp.asarray(0.05, dt), jnp.asarray(0.01, dt), walls)
    u0, v0 = (jnp.asarray(rng.normal(size=shape), dt) for shape in ((NX + 1, NY), (NX, NY + 1)))

    @jax.jit
    def run(u, v, flow):
        u, v = fill_boundary(u, v, flow.walls, sides)
        pu, pv, _ = project(u, v, flow, sides, make_solvers(NX, NY, sides, dt).p, 0.01)
        div = lambda a, b: jnp.abs(divergence(a, b, flow.dx, flow.dy)).max()  # noqa: E731
        return u, v, pu, pv, div(u, v), div(pu, pv)

    u, v, pu, pv, before, after = (np.asarray(a) for a in run(u0, v0, flow))
    assert before > 10.0
    assert after <= tol * (1.0 if dtype == "float64" else before)
    # the prescribed wall velocities are untouched by the projection
    np.testing.assert_array_equal(pu[0], u[0])
    np.testing.assert_array_equal(pv[:, 0], v[:, 0])
    np.testing.assert_array_equal(pv[:, -1], v[:, -1])


@pytest.mark.parametrize("right", [WALL, OUTFLOW])
def test_implicit_diffusion_inverts_the_explicit_operator(enable_x64, right):
    # The fast solver's end conditions must match the ghost-value Laplacian, wall values included:
    # r = w - c L(w) with L from `laplacian`, then implicit_diffusion(r) must give back w (1e-10).
    sides = Sides(right=right)
    walls = _random_walls(2, NX, NY, jnp.float64)
    flow = Flow(jnp.asarray(0.1), jnp.asarray(0.07), jnp.asarray(0.02), walls)
    u, v = fill_boundary(*_random_velocity(3, NX, NY, jnp.float64), walls, sides)
    solvers = make_solvers(NX, NY, sides, jnp.float64)

    @jax.jit
    def roundtrip(u, v, flow):
        lu, lv = laplacian(ghost_u(u, flow.walls), ghost_v(v, flow.walls, sides), flow.dx, flow.dy)
        coef = 0.3 * flow.nu
        return implicit_diffusion(u[1:-1] - coef * lu, v[:, 1:-1] - coef * lv, coef, flow, sides, solvers)

    us, vs = roundtrip(u, v, flow)
    np.testing.assert_allclose(us, u[1:-1], atol=1e-10)
    np.testing.assert_allclose(vs, v[:, 1:-1], atol=1e-10)


def test_advection_conserves_kinetic_energy(enable_x64):
    # Morinishi et al. (1998): for a discretely divergence-free field with no-slip walls the divergence
    # form conserves kinetic energy, sum(u . adv) = 0, up to round-off; a non-solenoidal field does not.
    sides = Sides()
    walls = still_walls(NX, NY, jnp.float64)
    flow = Flow(jnp.asarray(0.1), jnp.asarray(0.05), jnp.asarray(0.0), walls)
    u, v = fill_boundary(*_random_velocity(4, NX, NY, jnp.float64), walls, sides)

    @jax.jit
    def work(u, v):
        au, av = central_advection(ghost_u(u, walls), ghost_v(v, walls, sides), flow.dx, flow.dy)
        return jnp.sum(u[1:-1] * au) + jnp.sum(v[:, 1:-1] * av)

    assert abs(float(work(u, v))) > 1.0
    pu, pv, _ = jax.jit(lambda u, v: project(u, v, flow, sides, make_solvers(NX, NY, sides, jnp.float64).p, 1.0))(u, v)
    assert abs(float(work(pu, pv))) < 1e-10


def test_cfl_check_names_the_worst_simulation_and_the_fix():
    params = np.array([[1.0, 2.0], [3.0, 4.0]])
    check_cfl("demo", 0.01, np.array([1.0, 1.0]), np.array([0.1, 0.1]), np.array([0.1, 0.1]), 1.0, params, ("a", "b"))
    with pytest.raises(SolverError, match=r"CFL number 3 > cfl_max=1 for a=3, b=4.*use dt <= 0.00333"):
        check_cfl(
            "demo", 0.01, np.array([1.0, 10.0]), np.array([0.1, 0.05]), np.array([0.1, 0.1]), 1.0, params, ("a", "b")
        )


def test_velocity_is_second_order_in_time(enable_x64):
    # A smooth decaying vortex in a closed box (stream function sin^2(pi x) sin^2(pi y) / pi, no-slip
    # walls, nu = 0.01) to t = 0.64 with dt = 0.02, 0.01, 0.005 on one 16 x 16 grid: successive
    # differences shrink by ~4 for a second-order scheme (measured 3.4-5.6 on 32 x 32), 2 for first order.
    from solvers.cfd.navier_stokes import FlowState, make_step

    n, sides = 16, Sides()
    h = 1.0 / n
    xn = np.arange(n + 1) * h
    psi = (np.sin(np.pi * xn)[:, None] * np.sin(np.pi * xn)[None, :]) ** 2 / np.pi  # at cell corners
    u0, v0 = (psi[:, 1:] - psi[:, :-1]) / h, -(psi[1:] - psi[:-1]) / h  # discretely divergence-free
    flow = Flow(jnp.asarray(h), jnp.asarray(h), jnp.asarray(0.01), still_walls(n, n, jnp.float64))
    solvers = make_solvers(n, n, sides, jnp.float64)

    @jax.jit
    def run(dt, k):  # dt traced: one compilation for the three time steps
        step = make_step(sides, solvers, dt)
        return jax.lax.fori_loop(
            0, k, lambda i, z: step(z, flow), FlowState(jnp.asarray(u0), jnp.asarray(v0), jnp.zeros((n, n)))
        )

    finals = [np.asarray(run(jnp.asarray(dt), int(round(0.64 / dt))).u) for dt in (0.02, 0.01, 0.005)]
    d1, d2 = np.abs(finals[0] - finals[1]).max(), np.abs(finals[1] - finals[2]).max()
    assert d1 / d2 >= 3.0, (d1, d2)


@pytest.mark.parametrize("name", ["cavity", "tube", "dam", "cylinder"])
def test_default_time_step_passes_the_cfl_check_everywhere(name):
    # Every corner of the default parameter box must run with the default config (no refusal).
    import itertools

    from solvers.cfd.cavity import Cavity
    from solvers.cfd.cylinder import Cylinder
    from solvers.cfd.dam import Dam
    from solvers.cfd.tube import Tube

    solver = {"cavity": Cavity, "tube": Tube, "dam": Dam, "cylinder": Cylinder}[name]()
    space = solver.param_space
    corners = np.array(list(itertools.product(*zip(space.low, space.high, strict=True))))
    assert solver.cfl(corners).max() <= solver.config.cfl_max
    solver.check_cfl(corners)
