"""ks1d: convergence in dt before chaos takes over, the attractor (and its nu-scaling), conservation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from solvers import SolverError, get_solver

KEY = jax.random.key(0)


def _run(solvers, params, t_end):
    """``u`` at t = 0 and at ``t_end`` ``(B, nx)`` for each solver and each row of ``params`` ``(B, 1)``,
    all in ONE jitted program (compiling is what costs time on CPU)."""

    def one(s, p):
        state0 = s.initial_state(KEY, p)
        state = jax.lax.fori_loop(0, round(t_end / s.dt), lambda i, z: s.step(z, p), state0)
        return s.fields(state0)[0], s.fields(state)[0]

    run = jax.jit(lambda p: [jax.vmap(lambda q, s=s: one(s, q.astype(s.dtype)))(p) for s in solvers])
    return [tuple(np.asarray(a) for a in pair) for pair in run(jnp.asarray(params))]


def test_agrees_with_quarter_time_step_up_to_t20(enable_x64):
    # KS is chaotic: differences grow like e^{lambda t}; for nu = 0.5 (effective length 142, the most
    # chaotic end) float32 rounding alone reaches 5e-4 by t = 20, so we compare in float64 up to t = 20
    # (~4 Lyapunov times at nu = 0.5). Observed relative L2 differences dt = 0.05 vs 0.0125 at t <= 20:
    # 4e-4 (nu = 0.5), 5e-6 (nu = 1), 1e-7 (nu = 4) at t = 20 for this key (up to 9e-4 at nu = 0.5 for
    # others); tolerance 5e-3.
    params = np.array([[0.5], [1.0], [4.0]])
    solvers = [get_solver("ks1d", dt=dt, dtype="float64") for dt in (0.05, 0.0125)]
    (u0, coarse), (u0_fine, fine) = _run(solvers, params, 20.0)
    assert coarse.shape == fine.shape == (3, 256)
    np.testing.assert_array_equal(u0, u0_fine)  # same initial condition for the same key
    rel = np.linalg.norm(coarse - fine, axis=-1) / np.linalg.norm(fine, axis=-1)
    assert rel.max() < 5e-3, rel
    assert np.linalg.norm(coarse - u0, axis=-1).min() > 1.0  # it evolved
    # The mean is the k = 0 mode, untouched by the scheme (L(0) = 0, ik = 0): conserved to round-off.
    assert np.abs(coarse.mean(axis=-1) - u0.mean(axis=-1)).max() < 1e-12


def test_reaches_attractor_with_nu_scaling():
    # From t = 100 to 200 (after t_warmup = 100, default float32 setting) the solution is on the chaotic
    # attractor. x = sqrt(nu) x', t = nu t', u = u' / sqrt(nu) maps the equation to standard KS on length
    # L / sqrt(nu) (50 to 142 here, all long enough that statistics are length independent), so
    # RMS(u) sqrt(nu) should be the same for all nu: we observe 1.25-1.35 (standard KS, 32 pi domain).
    # Band [1.0, 1.6] for each nu; spread across nu below 20%. Far from 0 (a decayed or trivial field)
    # and from a blow-up.
    solver = get_solver("ks1d", t_warmup=100.0)
    nus = np.array([0.5, 1.0, 2.0, 4.0])
    frames = np.asarray(solver.rollout(KEY, nus[:, None], 2000, every=100))
    assert frames.shape == (4, 21, 1, 256) and np.all(np.isfinite(frames))
    scaled = np.sqrt((frames.astype(np.float64) ** 2).mean(axis=(1, 2, 3))) * np.sqrt(nus)
    assert np.all((scaled > 1.0) & (scaled < 1.6)), scaled
    assert scaled.max() / scaled.min() < 1.2, scaled
    # Over 4000 float32 steps the mean (0 up to the IC's rounding) stays put.
    assert np.abs(frames.astype(np.float64).mean(axis=-1)).max() < 1e-5


def test_warmup_equals_the_first_steps_of_a_plain_run():
    plain, warm = get_solver("ks1d", nx=64, dt=0.1), get_solver("ks1d", nx=64, dt=0.1, t_warmup=1.0)
    (p0, p1), (w0, _) = _run([plain, warm], np.array([[1.0]]), 1.0)
    np.testing.assert_allclose(w0, p1, rtol=1e-5, atol=1e-6)
    assert np.abs(p1 - p0).max() > 1e-3


@pytest.mark.parametrize(
    "kwargs,match",
    [({"nx": 4}, "nx=4"), ({"dt": 0.0}, "dt"), ({"t_warmup": -1}, "t_warmup"), ({"nu": 1}, "unknown config key")],
)
def test_bad_config_is_named(kwargs, match):
    with pytest.raises(SolverError, match=match):
        get_solver("ks1d", **kwargs)


def test_nu_out_of_range_is_named():
    with pytest.raises(SolverError, match="nu=0.1"):
        get_solver("ks1d", nx=32).rollout(KEY, np.array([0.1]), 1)
