"""heat2d against analytic solutions: eigenmode decay and the harmonic steady state."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from solvers import SolverError, get_solver


def _mode_state(solver, amp=100.0, base=300.0):
    n = solver.config.n
    x = np.linspace(0, 1, n + 2)[1:-1]
    mode = np.sin(np.pi * x)[:, None] * np.sin(np.pi * x)[None, :]
    params = jnp.full((5,), base, solver.dtype)
    state = solver.initial_state(jax.random.key(0), params)
    state["u"] = jnp.asarray(base + amp * mode, solver.dtype)
    return state, params, mode


@pytest.mark.parametrize("scheme,dt,n,t_end", [("exponential", 1e-3, 255, 0.05), ("euler", 1e-5, 63, 0.01)])
def test_eigenmode_decays_at_analytic_rate(enable_x64, scheme, dt, n, t_end):
    # u = 300 + 100 sin(pi x) sin(pi y) with walls at 300 decays as exp(-2 pi^2 kappa t).
    # Tolerance 1e-4 relative. The 5-point Laplacian's eigenvalue is off by ~(pi h)^2/12 relative, so the
    # decay is off by ~2 pi^2 t (pi h)^2 / 12: 1.2e-5 (n=255, t=0.05), 4e-5 (n=63, t=0.01); backward Euler adds
    # ~(2 pi^2)^2 dt t / 2 = 2e-5 (dt=1e-5, t=0.01); the exponential scheme is exact in time.
    kappa = 1.0
    solver = get_solver("heat2d", n=n, dt=dt, kappa=kappa, scheme=scheme, dtype="float64")
    state, params, mode = _mode_state(solver)
    n_steps = round(t_end / dt)
    step = jax.jit(lambda s: jax.lax.fori_loop(0, n_steps, lambda i, z: solver.step(z, params), s))
    u = step(state)["u"]
    amp = float(jnp.sum((u - 300.0) * mode) / np.sum(mode * mode))
    expected = 100.0 * np.exp(-2 * np.pi**2 * kappa * t_end)
    assert abs(amp - expected) / expected < 1e-4


def test_steady_state_matches_harmonic_series(enable_x64):
    # Left wall 500 K, others 100 K: u = 100 + 400 * sum_{m odd} 4/(m pi) sin(m pi y) sinh(m pi (1-x)) / sinh(m pi).
    # Compared on x, y in [0.1, 0.9] (away from the corner singularities); second-order FD on n=127: 2e-3 relative.
    solver = get_solver("heat2d", n=127, dtype="float64")
    g = solver.harmonic(jnp.array([300.0, 500.0, 100.0, 100.0, 100.0]))
    x = np.linspace(0, 1, 129)[1:-1]
    X, Y = np.meshgrid(x, x, indexing="ij")
    series = np.zeros_like(X)
    for m in range(1, 400, 2):
        series += 4 / (m * np.pi) * np.sin(m * np.pi * Y) * np.exp(-m * np.pi * X) * (
            (1 - np.exp(-2 * m * np.pi * (1 - X))) / (1 - np.exp(-2 * m * np.pi))
        )
    exact = 100 + 400 * series
    inner = (X > 0.1) & (X < 0.9) & (Y > 0.1) & (Y < 0.9)
    err = np.max(np.abs(np.asarray(g) - exact)[inner]) / 400
    assert err < 2e-3


def test_long_rollout_reaches_steady_state_with_walls_on_border():
    solver = get_solver("heat2d", n=30, dt=0.05)
    params = np.array([100.0, 500.0, 200.0, 300.0, 400.0])
    frames = solver.rollout(jax.random.key(0), params, 40, every=40)
    assert frames.shape == (2, 1, 32, 32)
    final = np.asarray(frames[-1, 0])
    g = np.asarray(solver.harmonic(jnp.asarray(params, jnp.float32)))
    np.testing.assert_allclose(final[1:-1, 1:-1], g, rtol=1e-4)
    assert np.allclose(final[0, 1:-1], 500) and np.allclose(final[1:-1, -1], 400)
    assert np.allclose(np.asarray(frames[0, 0, 1:-1, 1:-1]), 100)
    # the declared frozen border (copied forward by surrogates) is exactly the same in every frame
    b = solver.frozen_border
    ring = np.ones((32, 32), bool)
    ring[b:-b, b:-b] = False
    np.testing.assert_array_equal(np.asarray(frames[-1, 0])[ring], np.asarray(frames[0, 0])[ring])


def test_batched_rollout_equals_loop_of_single():
    solver = get_solver("heat2d", n=14)
    keys = jax.random.split(jax.random.key(3), 3)
    params = solver.sample_params(jax.random.key(4), 3, design="lhs")
    batched = solver.rollout(keys, params, 6, every=2)
    assert batched.shape == (3, 4, 1, 16, 16)
    for i in range(3):
        np.testing.assert_allclose(batched[i], solver.rollout(keys[i], params[i], 6, every=2), rtol=1e-6)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"nx": 3}, "unknown config key"),
        ({"n": 1}, "n=1"),
        ({"scheme": "rk4"}, "scheme"),
        ({"n": "abc"}, "cannot read"),
    ],
)
def test_bad_config_is_named(kwargs, match):
    with pytest.raises(SolverError, match=match):
        get_solver("heat2d", **kwargs)


def test_out_of_range_parameter_is_named():
    solver = get_solver("heat2d", n=8)
    with pytest.raises(SolverError, match="T_top=900"):
        solver.rollout(jax.random.key(0), np.array([300, 300, 300, 300, 900.0]), 2)


def test_float64_needs_x64():
    if jax.config.jax_enable_x64:
        pytest.skip("64-bit mode is on in this process")
    with pytest.raises(SolverError, match="JAX_ENABLE_X64"):
        get_solver("heat2d", dtype="float64")
