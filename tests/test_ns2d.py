"""ns2d against exact solutions and invariants: Taylor-Green decay, forced shear flow, the advection
term of a two-mode field, divergence-free velocity, energy decay, Galerkin conservation, 4th order."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from solvers import SolverError, get_solver
from solvers.ns2d import velocity_from_vorticity

K = 2 * np.pi  # angular wavenumber of the unit square's first mode


@functools.cache
def _solver(**config):
    """Shared solver instances (and so shared compilations); float64 ones are only used under x64."""
    return get_solver("ns2d", **config)


@functools.cache
def _stepper(solver, n_steps):
    return jax.jit(lambda s, p: jax.lax.fori_loop(0, n_steps, lambda i, z: solver.step(z, p), s))


@functools.cache
def _jitted(solver, method):
    """A jitted solver method (eager calls would compile op by op)."""
    return jax.jit(getattr(solver, method))


def _state(solver, w, params):
    return solver.state_from_vorticity(jnp.asarray(w), params)  # eager: its small ops are cached across solvers


def _advance(solver, state, params, n_steps):
    return _stepper(solver, n_steps)(state, params)


# float64, no forcing, velocity channels: Taylor-Green, energy and inviscid tests share it.
UNFORCED = {"n": 32, "dt": 1e-2, "forcing": 0.0, "output": "vorticity_velocity", "dtype": "float64"}


def _grid(n):
    x = np.arange(n) / n
    return np.meshgrid(x, x, indexing="ij")


def _grf_vorticity(solver, key, params, scale=1.0):
    n = solver.config.n
    return scale * jnp.fft.irfft2(_jitted(solver, "initial_state")(key, params)["w_hat"], s=(n, n))


@pytest.mark.parametrize("m", [1, 3])
def test_taylor_green_decays_at_analytic_rate(enable_x64, m):
    # w = 2 k cos(kx) cos(ky), k = 2 pi m, is a steady Euler flow (u . grad w = 0), so with no forcing
    # w(t) = w(0) exp(-2 nu k^2 t). ETDRK4 is exact for the linear part; the advection term is round-off,
    # so 1e-5 relative (the required bound) leaves a wide margin (observed ~1e-13).
    nu, n_steps = 1e-3, 100
    solver = _solver(**UNFORCED)
    X, Y = _grid(32)
    k = K * m
    w0 = 2 * k * np.cos(k * X) * np.cos(k * Y)
    params = jnp.array([nu])
    w = solver.fields(_advance(solver, _state(solver, jnp.asarray(w0), params), params, n_steps))[0]
    exact = w0 * np.exp(-2 * nu * k**2 * solver.dt * n_steps)
    assert np.max(np.abs(np.asarray(w) - exact)) / np.max(np.abs(exact)) < 1e-5


def test_forced_shear_flow_matches_exact_solution(enable_x64):
    # The FNO forcing f = 0.1 (sin 2 pi (x+y) + cos 2 pi (x+y)) depends on x + y only, so from w = 0 the flow stays a
    # parallel shear flow (u . grad w = 0) and w(t) = f (1 - exp(-nu |k|^2 t)) / (nu |k|^2) with |k|^2 = 8 pi^2.
    # ETDRK4 is exact for a constant forcing, so the tolerance 1e-9 relative is round-off plus margin.
    nu, n_steps = 1e-3, 20
    solver = _solver(n=32, dt=0.1, dtype="float64")
    X, Y = _grid(32)
    f = 0.1 * (np.sin(K * (X + Y)) + np.cos(K * (X + Y)))
    params = jnp.array([nu])
    state = _state(solver, jnp.zeros((32, 32)), params)
    w = np.asarray(solver.fields(_advance(solver, state, params, n_steps))[0])
    lam = nu * 2 * K**2
    exact = f * (1 - np.exp(-lam * solver.dt * n_steps)) / lam
    assert np.max(np.abs(w - exact)) / np.max(np.abs(exact)) < 1e-9


def test_advection_term_of_two_mode_field(enable_x64):
    # w = cos(2 pi x) + cos(4 pi y): psi = cos(2 pi x)/(4 pi^2) + cos(4 pi y)/(16 pi^2), u = psi_y, v = -psi_x, and
    # by hand -u . grad w = 1.5 sin(2 pi x) sin(4 pi y). Both modes are inside the 2/3 band, so the dealiased
    # pseudo-spectral term is exact up to round-off (1e-12). Catches a wrong sign or factor in the advection.
    solver = _solver(**UNFORCED)
    X, Y = _grid(32)
    w0 = np.cos(K * X) + np.cos(2 * K * Y)
    w_hat = _state(solver, jnp.asarray(w0), jnp.array([1e-3]))["w_hat"]
    tendency = np.asarray(jnp.fft.irfft2(solver.nonlinear(w_hat), s=(32, 32)))
    np.testing.assert_allclose(tendency, 1.5 * np.sin(K * X) * np.sin(2 * K * Y), atol=1e-12)


def test_velocity_is_divergence_free_and_has_the_vorticity_as_curl(enable_x64):
    # Spectral derivatives of the grid velocity: div u = 0 and dv/dx - du/dy = w up to round-off (1e-10 relative,
    # the required bound; the state has no mean or Nyquist modes, so the curl is exactly w).
    n = 32
    solver = _solver(**UNFORCED)
    w_hat = _jitted(solver, "initial_state")(jax.random.key(0), jnp.array([1e-4]))["w_hat"]
    u_hat, v_hat = velocity_from_vorticity(w_hat)
    u, v, w = (jnp.fft.irfft2(z, s=(n, n)) for z in (u_hat, v_hat, w_hat))
    kx = 2j * np.pi * np.fft.fftfreq(n, 1 / n)[:, None]
    ky = 2j * np.pi * np.fft.rfftfreq(n, 1 / n)[None, :]
    uh, vh = jnp.fft.rfft2(u), jnp.fft.rfft2(v)
    div = jnp.fft.irfft2(kx * uh + ky * vh, s=(n, n))
    curl = jnp.fft.irfft2(kx * vh - ky * uh, s=(n, n))
    scale = float(jnp.max(jnp.abs(w)))
    assert float(jnp.max(jnp.abs(div))) < 1e-10 * scale
    assert float(jnp.max(jnp.abs(curl - w))) < 1e-10 * scale


def test_velocity_from_vorticity_checks_shape():
    with pytest.raises(SolverError, match="rfft2 spectrum"):
        velocity_from_vorticity(jnp.zeros((8, 8), jnp.complex64))


def test_energy_never_increases_and_batched_rollout_equals_loop(enable_x64):
    # Unforced: dE/dt = -nu * enstrophy <= 0, and the dealiased advection conserves E, so every frame's energy
    # must not exceed the previous one beyond round-off (1e-12 relative, the required bound). The same batched
    # rollout must equal a loop of single rollouts with the same keys (round-off, 1e-12).
    solver = _solver(**UNFORCED)
    params = np.array([[1e-5], [1e-4], [1e-3]])
    keys = jax.random.split(jax.random.key(2), 3)
    frames = np.asarray(solver.rollout(keys, params, 150))
    assert frames.shape == (3, 151, 3, 32, 32)
    energy = 0.5 * np.mean(frames[:, :, 1] ** 2 + frames[:, :, 2] ** 2, axis=(-2, -1))  # (B, T)
    assert np.all(np.diff(energy, axis=1) <= 1e-12 * energy[:, :1])
    assert np.all(energy[:, -1] < energy[:, 0])
    for i in range(3):
        single = np.asarray(solver.rollout(keys[i], params[i], 150))
        np.testing.assert_allclose(frames[i], single, rtol=1e-12, atol=1e-12 * np.abs(single).max())


def test_inviscid_dealiased_flow_conserves_energy_and_enstrophy(enable_x64):
    # nu = 0 (outside the sampled range, so set through state_from_vorticity): the 2/3-dealiased Galerkin system
    # conserves energy and enstrophy exactly; what is left is ETDRK4's (here RK4's) time error, measured 4e-10 and
    # 5e-8 over 100 steps; tolerances 1e-8 and 1e-6. Without dealiasing the enstrophy drifts by ~1e-3.
    solver = _solver(**UNFORCED)
    w0 = _grf_vorticity(solver, jax.random.key(0), jnp.array([1e-5]), scale=10.0)  # |w| ~ 5, strongly nonlinear
    params = jnp.array([0.0])

    def invariants(state):
        f = solver.fields(state)
        return float(0.5 * jnp.mean(f[1] ** 2 + f[2] ** 2)), float(0.5 * jnp.mean(f[0] ** 2))

    state0 = _state(solver, w0, params)
    (e0, z0), (e1, z1) = invariants(state0), invariants(_advance(solver, state0, params, 100))
    assert abs(e1 - e0) < 1e-8 * e0
    assert abs(z1 - z0) < 1e-6 * z0


def test_time_stepping_is_fourth_order(enable_x64):
    # Forced nonlinear flow (|w| ~ 3.4) to t = 2 with dt = 0.05, 0.025, 0.0125: for a 4th-order scheme the
    # differences of successive solutions fall by 2^4 once dt is in the asymptotic range (dt = 0.1 is not, for
    # some initial fields); we ask for the observed order in [3.3, 4.5].
    n, t_end = 32, 2.0
    params = jnp.array([1e-4])
    w0 = _grf_vorticity(_solver(**UNFORCED), jax.random.key(1), params, scale=10.0)
    finals = []
    for dt in (0.05, 0.025, 0.0125):
        solver = _solver(n=n, dt=dt, dtype="float64")
        state = _advance(solver, _state(solver, w0, params), params, round(t_end / dt))
        finals.append(np.asarray(solver.fields(state)[0]))
    order = np.log2(np.linalg.norm(finals[0] - finals[1]) / np.linalg.norm(finals[1] - finals[2]))
    assert 3.3 < order < 4.5, order


def test_float32_rollout_with_coarse_velocity_output():
    solver = get_solver("ns2d", n=16, out=8, output="vorticity_velocity")
    frames = solver.rollout(jax.random.key(3), np.array([1e-4]), 4, every=2)
    assert solver.channels == ("vorticity", "u", "v")
    assert frames.shape == (3, 3, 8, 8) and frames.dtype == jnp.float32
    assert np.all(np.isfinite(np.asarray(frames)))
    assert solver.describe()["grid"] == [8, 8]


@pytest.mark.parametrize("downsample", ["subsample", "spectral"])
def test_coarse_output_of_band_limited_field_is_exact(enable_x64, downsample):
    # n = 32 -> out = 8: a field with modes |k| <= 2 is resolved on the coarse grid, so subsampling and spectral
    # truncation both give its exact point values there (round-off, 1e-12).
    solver = get_solver("ns2d", n=32, out=8, downsample=downsample, dtype="float64")
    X, Y = _grid(32)
    w0 = np.cos(K * X) * np.sin(2 * K * Y) + 0.5 * np.sin(K * (X - Y))
    out = np.asarray(solver.fields(_state(solver, jnp.asarray(w0), jnp.array([1e-3])))[0])
    np.testing.assert_allclose(out, w0[::4, ::4], atol=1e-12)
    assert np.allclose(solver.coords()["x"], X[::4, 0])


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"n": 64, "out": 48}, "out=48 must divide n=64"),
        ({"n": 2}, "n=2"),
        ({"dt": 0.0}, "dt"),
        ({"downsample": "nearest"}, "downsample"),
        ({"output": "velocity"}, "output"),
        ({"visc": 1e-3}, "unknown config key"),
    ],
)
def test_bad_config_is_named(kwargs, match):
    with pytest.raises(SolverError, match=match):
        get_solver("ns2d", **kwargs)


def test_out_of_range_viscosity_is_named():
    solver = get_solver("ns2d", n=8)
    with pytest.raises(SolverError, match="nu=0.1"):
        solver.rollout(jax.random.key(0), np.array([0.1]), 2)


def test_state_from_vorticity_checks_shape():
    solver = get_solver("ns2d", n=16)
    with pytest.raises(SolverError, match=r"\(16, 16\)"):
        solver.state_from_vorticity(jnp.zeros((8, 8)), jnp.array([1e-3]))
