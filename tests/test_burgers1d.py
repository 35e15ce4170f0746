"""burgers1d (MP-PDE combined equation): ETDRK4 order in time, spectral accuracy in space, the exact
linear limit, mean conservation at the default (float32) setting, batching and config errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from solvers import SolverError, get_solver
from solvers.burgers1d import Burgers1D

# alpha, beta, gamma: viscous enough (no shock before t = 1) that nx = 64 is resolved to ~1e-5.
SMOOTH = np.array([1.0, 0.2, 0.1])
KEY = jax.random.key(7)


# The float64 cases of this module, (config, params, t_end) each: ETDRK4 order (dt = 1/10, 1/20, 1/40 and
# a 1/320 reference), spectral accuracy (nx = 32, 64, 128 and a 256 reference), the linear and the
# inviscid limits. They run in ONE jitted program: compiling is what costs time on CPU, and XLA shares
# the random draws of the identical initial conditions.
CASES = {
    "dt": [(dict(nx=64, nx_out=64, dt=dt), SMOOTH, 1.0) for dt in (1 / 10, 1 / 20, 1 / 40, 1 / 320)],
    "nx": [(dict(nx=nx, nx_out=16, dt=0.01), SMOOTH, 1.0) for nx in (32, 64, 128, 256)],
    "linear": [(dict(nx=64, nx_out=32, dt=0.01), np.array([0.0, 0.1, 0.5]), 2.0)],
    "inviscid": [(dict(nx=256, nx_out=64, dt=0.005, forcing=False), np.array([3.0, 0.0, 0.0]), 0.25)],
}


@pytest.fixture(scope="module")
def f64():
    """``{case: [(solver, initial state (numpy pytree), u (nx_out,) at t_end), ...]}`` for :data:`CASES`."""
    prev = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    try:
        runs = [
            (name, get_solver("burgers1d", dtype="float64", **cfg), jnp.asarray(p), t)
            for name, items in CASES.items()
            for cfg, p, t in items
        ]

        @jax.jit
        def run_all(params):
            out = []
            for (_, s, _, t_end), p in zip(runs, params, strict=True):
                state0 = s.initial_state(KEY, p)
                state = jax.lax.fori_loop(0, round(t_end / s.dt), lambda i, z, s=s, p=p: s.step(z, p), state0)
                out.append((state0, s.fields(state)[0]))
            return out

        results = jax.tree.map(np.asarray, run_all([p for _, _, p, _ in runs]))
    finally:
        jax.config.update("jax_enable_x64", prev)
    grouped = {name: [] for name in CASES}
    for (name, solver, _, _), (state0, u) in zip(runs, results, strict=True):
        grouped[name].append((solver, state0, u))
    return grouped


def _rel(a, b):
    return np.linalg.norm(a - b) / np.linalg.norm(b)


def test_observed_order_in_time_is_four(f64):
    # ETDRK4 is fourth order (Cox & Matthews 2002); the forcing is time dependent, so this also checks
    # the stage times. Reference: dt = 1/320, 8x below the finest tested step (error ~8^4 smaller).
    # Observed on this case: errors 4.7e-6, 3.2e-7, 2.1e-8 at t = 1, orders 3.87, 3.97.
    *us, ref = (u for _, _, u in f64["dt"])
    errs = np.array([_rel(u, ref) for u in us])
    orders = np.log2(errs[:-1] / errs[1:])
    assert np.all((orders > 3.5) & (orders < 4.5)), f"errors {errs}, observed orders {orders}"


def test_spectral_accuracy_in_space(f64):
    # A smooth periodic solution is analytic in a strip, so the Fourier error falls like exp(-c nx):
    # the error ratio per doubling of nx grows (observed 2^9 for 32 -> 64, 2^18 for 64 -> 128); any
    # algebraic order p would give a constant ratio 2^p. Compared at 16 common points, dt fixed
    # (its error, ~1e-12, is the same for all nx), reference nx = 256.
    *us, ref = (u for _, _, u in f64["nx"])
    e32, e64, e128 = (_rel(u, ref) for u in us)
    first, second = np.log2(e32 / e64), np.log2(e64 / e128)
    assert first > 7, f"errors {e32:.2e} -> {e64:.2e}: only order {first:.1f}"
    assert second > 1.6 * first, f"orders {first:.1f} then {second:.1f}: not exponential convergence"
    assert e128 < 1e-9


def test_linear_limit_matches_exact_forced_solution(f64):
    # alpha = 0: each forcing term A sin(omega t + k x + phi) (k = 2 pi l / L) and the matching part of
    # the IC evolve as u = Im(c(t) e^{ikx}) with c' = lam c + A e^{i(omega t + phi)}, c(0) = A e^{i phi},
    # lam = -beta k^2 + i gamma k^3 (beta u_xx is diffusion, -gamma u_xxx disperses), so
    # c(t) = e^{lam t} c(0) + A e^{i phi} (e^{i omega t} - e^{lam t}) / (i omega - lam).
    # ETDRK4 integrates the linear part exactly; the forcing quadrature error is ~(omega dt)^4 ~ 1e-12.
    ((solver, state, u),) = f64["linear"]
    (_, (_, beta, gamma), t_end), *_ = CASES["linear"]
    amp, omega, phase, wav = (state[k] for k in ("amp", "omega", "phase", "wav"))
    k = 2 * np.pi * wav / solver.config.length
    lam = -beta * k**2 + 1j * gamma * k**3
    c0 = amp * np.exp(1j * phase)
    c = np.exp(lam * t_end) * c0 + c0 * (np.exp(1j * omega * t_end) - np.exp(lam * t_end)) / (1j * omega - lam)
    x = solver.coords()["x"]
    exact = np.sum(np.imag(c[:, None] * np.exp(1j * k[:, None] * x[None])), axis=0)
    assert x.shape == (32,) and np.ptp(exact) > 0.1
    np.testing.assert_allclose(u, exact, atol=1e-9)


def test_inviscid_burgers_matches_characteristics_before_the_shock(f64):
    # beta = gamma = 0, no forcing: u_t + alpha u u_x = 0 has u(x, t) = u0(x - alpha t u(x, t)) until the
    # first shock at t* = 1 / (alpha max(-u0')); for this key max|u0'| = 0.55, so t* >= 0.6 at alpha = 3.
    # At t = 0.25 the implicit equation is a contraction (factor alpha t max|u0'| = 0.41, asserted), solved
    # to round-off by iteration. The Fourier spectrum of u decays only like ~0.41^(m/3) here, so nx = 256
    # is needed (nx = 128 leaves 4e-7); dt = 0.005 is below 1e-9. Checks the sign and size of the
    # nonlinear term (u > 0 moves right).
    ((solver, state, u),) = f64["inviscid"]
    (_, (alpha, _, _), t_end), *_ = CASES["inviscid"]
    amp, phase, wav = (state[k][:, None] for k in ("amp", "phase", "wav"))
    k = 2 * np.pi * wav / solver.config.length
    u0 = lambda x: np.sum(amp * np.sin(k * x[None] + phase), axis=0)  # noqa: E731
    du0 = lambda x: np.sum(amp * k * np.cos(k * x[None] + phase), axis=0)  # noqa: E731
    assert alpha * t_end * np.abs(du0(np.linspace(0, 16, 4001))).max() < 0.5
    x = solver.coords()["x"]
    exact = u0(x)
    for _ in range(80):
        exact = u0(x - alpha * t_end * exact)
    assert np.abs(exact - u0(x)).max() > 0.05  # the nonlinearity moved things visibly
    np.testing.assert_allclose(u, exact, atol=1e-9)


def test_default_setting_conserves_mean_and_stays_bounded():
    # Default float32, nx = 512, dt = 0.004, forcing on, to t = 4 (the E1/E2 horizon), at the corners of
    # the box where the time step is tightest. The mean is the k = 0 Fourier mode, untouched by the
    # scheme (L(0) = 0, ik = 0, the forcing has no mean), so it changes only by float32 rounding in the
    # inverse FFT (~1e-7 |u|); output on all 512 points so that the grid mean is the true mean.
    solver = get_solver("burgers1d", nx_out=512)
    params = np.array([[1.0, 0.0, 0.0], [3.0, 0.0, 0.0], [3.0, 0.1, 0.0], [3.0, 0.0, 1.0]])
    frames = np.asarray(solver.rollout(KEY, params, 1000, every=250))
    assert frames.shape == (4, 5, 1, 512) and frames.dtype == np.float32
    assert np.all(np.isfinite(frames)) and np.abs(frames).max() < 20
    means = frames.astype(np.float64).mean(axis=-1)
    assert np.abs(means - means[:, :1]).max() < 1e-6
    assert np.abs(frames[:, -1] - frames[:, 0]).max() > 0.5  # it did evolve


def test_batched_rollout_equals_loop_of_single():
    solver = get_solver("burgers1d", nx=64, nx_out=32, dt=0.01)
    keys = jax.random.split(jax.random.key(3), 3)
    params = np.array([[0.5, 0.1, 0.2], [2.0, 0.3, 0.9], [3.0, 0.0, 0.0]])
    batched = solver.rollout(keys, params, 20, every=5)
    assert batched.shape == (3, 5, 1, 32)
    for i in range(3):
        np.testing.assert_allclose(batched[i], solver.rollout(keys[i], params[i], 20, every=5), rtol=1e-5, atol=1e-6)


def test_families_restrict_the_parameter_space():
    assert get_solver("burgers1d").param_space == Burgers1D.param_space
    e1 = get_solver("burgers1d", family="E1")
    np.testing.assert_array_equal(e1.sample_params(KEY, 4), np.tile([1.0, 0.0, 0.0], (4, 1)))
    e3 = get_solver("burgers1d", family="E3").param_space
    assert list(e3.low) == [0.0, 0.1, 0.0] and list(e3.high) == [3.0, 0.4, 1.0]
    e2 = get_solver("burgers1d", family="E2", nx=64, nx_out=32)
    with pytest.raises(SolverError, match="gamma=0.5"):
        e2.rollout(KEY, np.array([1.0, 0.1, 0.5]), 1)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"family": "E4"}, "family='E4'"),
        ({"nx": 512, "nx_out": 100}, "nx_out=100 must divide nx=512; e.g. nx_out=64"),
        ({"nx": 4}, "nx=4"),
        ({"dt": -0.1}, "dt"),
        ({"forcing": "maybe"}, "cannot read"),
        ({"n": 3}, "unknown config key"),
    ],
)
def test_bad_config_is_named(kwargs, match):
    with pytest.raises(SolverError, match=match):
        get_solver("burgers1d", **kwargs)


def test_e2log_family_draws_viscosity_on_a_log_scale():
    space = get_solver("burgers1d", family="E2log").param_space
    assert list(space.low) == [1.0, 0.01, 0.0] and list(space.high) == [1.0, 1.0, 0.0]
    assert [p.log for p in space.params] == [False, True, False]
    beta = get_solver("burgers1d", family="E2log").sample_params(KEY, 4000, "uniform")[:, 1]
    # log-uniform on [0.01, 1]: a third of the draws per third of the decades, median 0.1 (uniform: median 0.505)
    assert abs(np.mean(beta < 10 ** (-4 / 3)) - 1 / 3) < 0.03 and 0.09 < np.median(beta) < 0.11
    solver = get_solver("burgers1d", family="E2log", nx=64, nx_out=32, dt=0.01)
    with pytest.raises(SolverError, match="beta"):
        solver.rollout(KEY, np.array([1.0, 0.0, 0.0]), 1)  # beta = 0 is outside the log range
    u = solver.rollout(jax.random.split(KEY, 2), np.array([[1.0, 0.01, 0.0], [1.0, 1.0, 0.0]]), 100, every=50)
    assert np.isfinite(u).all() and np.abs(u).max() < 10
