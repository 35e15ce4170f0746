"""ETDRK4 coefficients (Kassam & Trefethen contour integrals) against closed forms and series, and the
step on a scalar forced linear ODE with a known solution."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from solvers.etdrk4 import dealias_mask, etdrk4_coefficients, make_etdrk4


def _closed_forms(z, h):
    """Q, f1, f2, f3 in float64: direct formulas for |z| >= 0.5, 8 Taylor terms below (no cancellation)."""
    z = np.asarray(z, np.complex128)
    w = np.where(z == 0, 1, z)  # the series covers 0; avoid 0/0 in the unused direct branch
    direct = dict(
        q=h * (np.exp(w / 2) - 1) / w,
        f1=h * (-4 - w + np.exp(w) * (4 - 3 * w + w**2)) / w**3,
        f2=h * (2 + w + np.exp(w) * (w - 2)) / w**3,
        f3=h * (-4 - 3 * w - w**2 + np.exp(w) * (4 - w)) / w**3,
    )
    # phi_n(z) = sum_k z^k / (k + n)!; Q = h/2 phi_1(z/2), f1 = h (phi_1 - 3 phi_2 + 4 phi_3),
    # f2 = h (phi_2 - 2 phi_3), f3 = h (-phi_2 + 4 phi_3)   (Cox & Matthews 2002, eq. 26).
    from math import factorial

    def phi(n, w):
        return sum(w**k / factorial(k + n) for k in range(40))

    series = dict(
        q=h / 2 * phi(1, z / 2),
        f1=h * (phi(1, z) - 3 * phi(2, z) + 4 * phi(3, z)),
        f2=h * (phi(2, z) - 2 * phi(3, z)),
        f3=h * (-phi(2, z) + 4 * phi(3, z)),
    )
    small = np.abs(z) < 0.5
    return {k: np.where(small, series[k], direct[k]) for k in direct}


@pytest.mark.parametrize("dtype,rtol", [(jnp.float32, 2e-6), (jnp.float64, 1e-13)])
def test_coefficients_match_closed_forms(enable_x64, dtype, rtol):
    # KS-like (real, down to -1e4), KdV-like (imaginary up to 1e4) and mixed symbols, z ~ 1e-8 and
    # |z| ~ 1 (where a radius-1 contour would pass next to the origin). Tolerance: a few eps times the
    # conditioning 1 + |z| of e^z (z itself is only known to eps |z|).
    h = 0.1
    lin = np.concatenate(
        [-np.logspace(-7, 5, 25), 1j * np.logspace(-7, 5, 25), -3 + 40j * np.linspace(-1, 1, 9), [0, 2, -10, 10j]]
    )
    lin = jnp.asarray(lin, jnp.result_type(dtype, jnp.complex64))
    got = jax.jit(etdrk4_coefficients)(lin, h)
    z = np.asarray(lin, np.complex128) * h
    want = _closed_forms(z, h)
    for name in ("q", "f1", "f2", "f3"):
        g = np.asarray(getattr(got, name))
        assert g.dtype == jnp.result_type(dtype, jnp.complex64)
        scale = np.maximum(np.abs(want[name]), 1e-3 * h) * (1 + np.abs(z))  # floor: weights decay like 1/z
        assert np.max(np.abs(g - want[name]) / scale) < rtol, name
    err = np.abs(np.asarray(got.exp_full) - np.exp(z)) / (np.maximum(np.abs(np.exp(z)), 1e-30) * (1 + np.abs(z)))
    assert err.max() < rtol


def test_step_converges_at_fourth_order_on_forced_linear_ode(enable_x64):
    # v' = lam v + e^{i w t}, v(0) = 1: v(t) = e^{lam t} + (e^{i w t} - e^{lam t}) / (i w - lam), two modes.
    lam = jnp.array([-50.0 + 0j, -0.5 + 3j])
    w, t_end = 2.0, 1.0
    exact = np.exp(lam * t_end) + (np.exp(1j * w * t_end) - np.exp(lam * t_end)) / (1j * w - lam)

    @jax.jit
    def solve(n):
        dt = t_end / n
        step = make_etdrk4(lam, lambda v, t: jnp.exp(1j * w * t) * jnp.ones_like(v), dt)
        return jax.lax.fori_loop(0, n, lambda i, v: step(v, i * dt), jnp.ones(2, jnp.complex128))

    errs = [np.max(np.abs(np.asarray(solve(n)) - exact)) for n in (10, 20, 40)]
    orders = np.log2(np.array(errs[:-1]) / np.array(errs[1:]))
    assert np.all(orders > 3.5), (errs, orders)


def test_dealias_mask_two_thirds_rule():
    m = np.asarray(dealias_mask(256))
    assert m.shape == (129,) and m[:86].all() and not m[86:].any()  # keeps |m| <= 85 < 256 / 3
    assert np.asarray(dealias_mask(96)).sum() == 32  # |m| <= 31 (3 * 32 = 96 would alias onto 32)
