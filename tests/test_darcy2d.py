"""darcy2d against manufactured solutions (second order), the PCG residual and preconditioner, exact scaling
u(c a) = u(a) / c, batching, the coarse output, and the cosine (Neumann) GRF's variance."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from solvers import SolverError, get_solver
from solvers.darcy2d import apply_operator, face_coefficients, solve_darcy
from solvers.initial_conditions import cosine_random_field

# One compilation per grid size, shared by the tests (tol and maxiter traced; eager mode would retrace every call).
_solve = jax.jit(solve_darcy)


def _u_exact(x, y):
    return np.sin(np.pi * x) * np.sin(np.pi * y) * np.exp(x - 0.5 * y)  # zero on the boundary


def _manufactured(X, Y, smooth):
    """(a, f) with f = -div(a grad u_exact) = -(a_x u_x + a_y u_y + a Lap u), derived by hand (checked by autodiff)."""
    pi, e, S = np.pi, np.exp(X - 0.5 * Y), np.sin(np.pi * X) * np.sin(np.pi * Y)
    cx, cy = pi * np.cos(pi * X) * np.sin(pi * Y), pi * np.sin(pi * X) * np.cos(pi * Y)
    ux, uy, lap = e * (cx + S), e * (cy - S / 2), e * (-2 * pi**2 * S + 2 * cx - cy + 1.25 * S)
    if smooth:  # a in [0.5, 2.5]
        a = 1 + 0.5 * np.sin(2 * pi * X) * np.cos(pi * Y) + X * Y
        ax, ay = pi * np.cos(2 * pi * X) * np.cos(pi * Y) + Y, -0.5 * pi * np.sin(2 * pi * X) * np.sin(pi * Y) + X
    else:
        a, ax, ay = np.full_like(X, 2.0), 0.0, 0.0
    return a, -(ax * ux + ay * uy + a * lap)


@pytest.mark.parametrize("smooth", [False, True], ids=["constant", "smooth"])
def test_manufactured_solution_converges_at_second_order(enable_x64, smooth):
    # 5-point differences with harmonic-mean faces are second order for smooth a: the max-norm error on
    # n = 17, 33, 65 nodes must fall by 4 per halving (observed orders 1.99-2.00; required band [1.8, 2.2]).
    # CG to 1e-12 so that the algebraic error is far below the discretisation error (~2e-4 at n = 65).
    errors = []
    for n in (17, 33, 65):
        X, Y = np.meshgrid(np.linspace(0.0, 1.0, n), np.linspace(0.0, 1.0, n), indexing="ij")
        a, f = _manufactured(X, Y, smooth)
        u, residual = _solve(jnp.asarray(a), jnp.asarray(f[1:-1, 1:-1]), tol=1e-12, maxiter=1000)
        assert float(residual) < 1e-11
        errors.append(float(np.max(np.abs(np.asarray(u) - _u_exact(X, Y)[1:-1, 1:-1]))))
    orders = np.log2(np.array(errors[:-1]) / np.array(errors[1:]))
    assert np.all((orders > 1.8) & (orders < 2.2)), orders


def test_cg_reaches_tolerance_in_grid_independent_iterations(enable_x64):
    # The returned residual is the true ||f - A u|| / ||f|| (recomputed here with apply_operator); CG stops on its
    # recursive residual, which differs by round-off (~1e-14), so allow 1% over tol. With the mean-coefficient
    # fast-Poisson preconditioner the condition number is <= a_pos / a_neg = 8, so 50 iterations reach 1e-10 at
    # n = 33 and n = 129 alike (35 were needed at n = 129); plain or Jacobi CG (condition ~ n^2) needs hundreds.
    tol, params = 1e-10, jnp.array([16.0, 2.0])
    for n in (33, 129):
        a = jax.jit(get_solver("darcy2d", n=n, dtype="float64").coefficient)(jax.random.key(1), params)
        assert set(np.unique(np.asarray(a))) == {2.0, 16.0}
        f = jnp.ones((n - 2, n - 2))
        u, residual = _solve(a, f, tol=tol, maxiter=50)
        true = float(jnp.linalg.norm(f - apply_operator(face_coefficients(a), u, 1 / (n - 1))) / jnp.linalg.norm(f))
        assert true <= 1.01 * tol
        assert abs(float(residual) - true) <= 1e-3 * tol
    _, capped = _solve(a[::4, ::4], jnp.ones((31, 31)), tol=tol, maxiter=5)  # reuses the n = 33 compilation
    assert float(capped) > 1e3 * tol  # the cap stops CG early


def test_batched_rollout_scaling_and_loop():
    # Linearity: scaling a by 2 halves u exactly (same key -> same GRF sign pattern), float32 to 1e-5 relative
    # (solution accuracy ~3e-7 measured against float64). The batched rollout equals a loop of single ones;
    # a second step only polishes the converged solution; u > 0 inside (maximum principle, f = 1 > 0).
    solver = get_solver("darcy2d", n=33)
    key = jax.random.key(5)
    keys = jnp.stack([key, key, jax.random.key(6)])
    params = np.array([[8.0, 2.0], [16.0, 4.0], [12.0, 3.0]])
    frames = np.asarray(solver.rollout(keys, params, 2))
    assert frames.shape == (3, 3, 2, 33, 33) and frames.dtype == np.float32
    a, u = frames[:, -1, 0], frames[:, -1, 1]
    assert set(np.unique(a[2])) == {3.0, 12.0}
    np.testing.assert_allclose(a[0] * 2, a[1])
    np.testing.assert_allclose(u[0], 2 * u[1], rtol=1e-5, atol=1e-5 * u[0].max())
    np.testing.assert_allclose(frames[:, 2], frames[:, 1], rtol=1e-5, atol=1e-6 * u.max())
    assert np.all(frames[:, 0, 1] == 0) and np.all(u[:, 1:-1, 1:-1] > 0)
    assert np.all(u[:, 0] == 0) and np.all(u[:, :, -1] == 0)
    for i in range(3):
        np.testing.assert_allclose(frames[i], solver.rollout(keys[i], params[i], 2), rtol=1e-5, atol=1e-8)


def test_coarse_output_takes_every_rth_node():
    fine = get_solver("darcy2d", n=33)
    coarse = get_solver("darcy2d", n=33, out=9)
    state = fine.state_from_coefficient(jnp.arange(33.0 * 33).reshape(33, 33) + 1)
    state["u"] = jnp.arange(31.0 * 31).reshape(31, 31)
    np.testing.assert_array_equal(coarse.fields(state), fine.fields(state)[:, ::4, ::4])
    assert coarse.grid == (9, 9)
    np.testing.assert_allclose(coarse.coords()["x"], np.linspace(0, 1, 33)[::4])


def test_cosine_random_field_has_the_neumann_covariance(enable_x64):
    # Pointwise variance of the KL expansion: sum_k lambda_k e_k(x)^2 with e_k = prod_i c_i cos(pi k_i x_i).
    # 2000 samples estimate it to sqrt(2 / 2000) ~ 3% (one sigma); tolerance 12% at three nodes (corner, edge, centre).
    n, alpha, tau = 9, 2.0, 3.0
    sample = lambda k: cosine_random_field(k, (n, n), alpha, tau, dtype=jnp.float64)
    samples = jax.jit(lambda keys: jax.lax.map(sample, keys))(jax.random.split(jax.random.key(0), 2000))
    k = np.arange(n)
    lam = (np.pi**2 * (k[:, None] ** 2 + k[None, :] ** 2) + tau**2) ** (-alpha)
    lam[0, 0] = 0.0
    x = np.linspace(0, 1, n)
    e = np.cos(np.pi * x[:, None] * k[None, :]) * np.where(k == 0, 1.0, np.sqrt(2.0))  # (node, mode)
    for i, j in [(0, 0), (0, 4), (4, 4)]:
        expected = np.sum(lam * np.outer(e[i], e[j]) ** 2)
        assert abs(float(jnp.var(samples[:, i, j])) / expected - 1) < 0.12


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"n": 64, "out": 11}, "out=11"),
        ({"n": 2}, "n=2"),
        ({"tol": 0.0}, "tol"),
        ({"maxiter": 0}, "maxiter"),
        ({"alpha": 0.5}, "alpha"),
        ({"nx": 3}, "unknown config key"),
    ],
)
def test_bad_config_is_named(kwargs, match):
    with pytest.raises(SolverError, match=match):
        get_solver("darcy2d", **kwargs)


def test_out_of_range_contrast_is_named():
    solver = get_solver("darcy2d", n=9)
    with pytest.raises(SolverError, match="a_neg=1"):
        solver.rollout(jax.random.key(0), np.array([12.0, 1.0]), 1)


def test_solve_checks_shapes():
    with pytest.raises(SolverError, match="interior nodes"):
        solve_darcy(jnp.ones((9, 9)), jnp.ones((9, 9)))
