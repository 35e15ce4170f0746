"""PDEBench metrics and pooled field metrics against values computed by hand on tiny arrays.

Tolerances: numpy inputs are computed in float64, so hand values match to round-off (``ATOL = 1e-12`` on O(1)
quantities, FFTs of 64 points included); JAX float32 inputs are compared with ``rtol = 1e-5`` (a few float32 ulps
accumulated over reductions of <= 10^4 terms).
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks.metrics import (
    PDEBENCH_KEYS,
    MetricInputError,
    field_metrics,
    pdebench_metric_arrays,
    pdebench_metrics,
)

ATOL = 1e-12
RNG = np.random.default_rng(1)


def _grid(n: int) -> np.ndarray:
    return np.arange(n) / n  # periodic grid on [0, 1)


def test_constant_offset():
    # e = d everywhere: RMSE = bRMSE = max = cRMSE = |d|; only k = 0 carries Fourier energy: |FFT(e)_0| / N = |d|,
    # and the low band averages modes k = 0..3, so fRMSE_low = |d| / 4.
    d = -0.3
    target = RNG.normal(size=(2, 3, 2, 32)) + 2.0
    m = pdebench_metrics(target + d, target, spatial_dims=1, channels=["u", "v"])
    for k in ("RMSE", "bRMSE", "max_error", "cRMSE", "RMSE/u", "cRMSE/v"):
        assert m[k] == pytest.approx(abs(d), abs=ATOL), k
    assert m["fRMSE_low"] == pytest.approx(abs(d) / 4, abs=ATOL)
    assert m["fRMSE_mid"] == pytest.approx(0.0, abs=ATOL)
    assert m["fRMSE_high"] == pytest.approx(0.0, abs=ATOL)
    nrmse = np.mean(abs(d) / np.sqrt(np.mean(target**2, axis=-1)))  # mean over (b, t, c) of |d| / rms(target)
    assert m["nRMSE"] == pytest.approx(nrmse, abs=ATOL)
    # Domain length scales only the Fourier metrics (PDEBench multiplies by Lx).
    m2 = pdebench_metrics(target + d, target, spatial_dims=1, lengths=[2.0])
    assert m2["fRMSE_low"] == pytest.approx(abs(d) / 2, abs=ATOL)
    assert m2["RMSE"] == pytest.approx(m["RMSE"], abs=ATOL)


@pytest.mark.parametrize(("k0", "band", "band_size"), [(2, "low", 4), (7, "mid", 8), (13, "high", 64 // 2 + 1 - 12)])
def test_sine_error_lands_in_one_band_1d(k0, band, band_size):
    # e = A sin(2 pi k0 x) on 64 points: |rfft(e)_k0| = A N / 2, so the spectrum is A / 2 at k0 and 0 elsewhere;
    # the band mean divides by the number of modes in the band (4, 8, and 33 - 12 = 21 rfft modes).
    amp, n = 0.8, 64
    target = np.ones((1, 1, 1, n))
    pred = target + amp * np.sin(2 * np.pi * k0 * _grid(n))
    m = pdebench_metrics(pred, target, spatial_dims=1)
    for b in ("low", "mid", "high"):
        expect = amp / 2 / band_size if b == band else 0.0
        assert m[f"fRMSE_{b}"] == pytest.approx(expect, abs=ATOL), b
    assert m["cRMSE"] == pytest.approx(0.0, abs=ATOL)  # a sine has zero mean: the conserved mean is exact
    assert m["RMSE"] == pytest.approx(amp / math.sqrt(2), abs=ATOL)


@pytest.mark.parametrize(("kx", "ky", "band", "band_size"),
                         [(2, 0, "low", 4), (3, 4, "mid", 8), (0, 13, "high", 4)])
def test_sine_error_lands_in_one_band_2d(kx, ky, band, band_size):
    # 32 x 32: shells k = floor(sqrt(i^2 + j^2)) = 0..15 over the orthant 0 <= i, j < 16; (3, 4) is shell 5.
    # |fftn(e)| = A N^2 / 2 at (kx, ky) (the mirror (-kx, -ky) is outside the orthant), so the shell value is A / 2.
    amp, n = 0.5, 32
    x, y = np.meshgrid(_grid(n), _grid(n), indexing="ij")
    target = np.full((2, 1, 1, n, n), 3.0)
    pred = target + amp * np.sin(2 * np.pi * (kx * x + ky * y))
    m = pdebench_metrics(pred, target, spatial_dims=2)
    for b in ("low", "mid", "high"):
        expect = amp / 2 / band_size if b == band else 0.0
        assert m[f"fRMSE_{b}"] == pytest.approx(expect, abs=ATOL), b


def test_fourier_orthant_convention_is_pdebenchs():
    # PDEBench bins only 0 <= i < Nx/2, 0 <= j < Ny/2: a mode at (3, -4) and its mirror (-3, 4) are both outside,
    # so it is invisible to fRMSE (though plain RMSE sees it). Kept on purpose to match published numbers.
    n = 32
    x, y = np.meshgrid(_grid(n), _grid(n), indexing="ij")
    e = np.sin(2 * np.pi * (3 * x - 4 * y))[None, None, None]
    m = pdebench_metrics(1.0 + e, np.ones_like(e), spatial_dims=2)
    assert m["RMSE"] == pytest.approx(1 / math.sqrt(2), abs=ATOL)
    assert max(m["fRMSE_low"], m["fRMSE_mid"], m["fRMSE_high"]) == pytest.approx(0.0, abs=ATOL)


def test_shell_sums_match_a_direct_loop_2d():
    # Reference: the definition written as explicit loops over modes (independent of the vectorised shell matrix).
    nb, nt, nc, nx, ny = 3, 2, 2, 28, 32  # 14 shells: low 0..3, mid 4..11, high 12..13
    pred, target = RNG.normal(size=(2, nb, nt, nc, nx, ny))
    e_hat = np.abs(np.fft.fftn(pred - target, axes=(3, 4))) ** 2
    n_shell = min(nx // 2, ny // 2)
    shells = np.zeros((nb, nt, nc, n_shell))
    for i in range(nx // 2):
        for j in range(ny // 2):
            k = math.floor(math.sqrt(i * i + j * j))
            if k < n_shell:
                shells[..., k] += e_hat[..., i, j]
    spec = np.sqrt(shells.mean(axis=0)) / (nx * ny) * 2.0 * 0.5  # lengths Lx = 2, Ly = 0.5
    arrays = pdebench_metric_arrays(pred, target, spatial_dims=2, lengths=(2.0, 0.5))
    np.testing.assert_allclose(arrays["fRMSE_low"], spec[..., :4].mean(-1).T, atol=ATOL)
    np.testing.assert_allclose(arrays["fRMSE_high"], spec[..., 12:].mean(-1).T, atol=ATOL)
    assert arrays["fRMSE_mid"].shape == (nc, nt)
    np.testing.assert_allclose(arrays["fRMSE_mid"], spec[..., 4:12].mean(-1).T, atol=ATOL)


def test_empty_band_is_nan():
    # 16 points: rfft has modes 0..8, so the high band (k >= 12) is empty, as in PDEBench (mean of nothing).
    pred, target = RNG.normal(size=(2, 1, 1, 1, 16))
    m = pdebench_metrics(pred, target, spatial_dims=1)
    assert math.isnan(m["fRMSE_high"]) and math.isfinite(m["fRMSE_mid"])


def test_boundary_error_shows_in_brmse_and_interior_error_does_not():
    n = 16
    target = np.zeros((1, 1, 1, n))
    edge = target.copy()
    edge[..., 0] = 0.5
    m = pdebench_metrics(edge + 1.0, target + 1.0, spatial_dims=1)  # shift both so nRMSE is finite; e unchanged
    assert m["bRMSE"] == pytest.approx(0.5 / math.sqrt(2), abs=ATOL)  # sqrt((e_0^2 + e_-1^2) / 2)
    assert m["RMSE"] == pytest.approx(math.sqrt(0.25 / n), abs=ATOL)
    inner = target.copy()
    inner[..., 1:-1] = 0.5
    m = pdebench_metrics(inner + 1.0, target + 1.0, spatial_dims=1)
    assert m["bRMSE"] == 0.0
    assert m["RMSE"] == pytest.approx(0.5 * math.sqrt((n - 2) / n), abs=ATOL)

    # 2D: e on every edge point; PDEBench counts the corners twice over 2 Nx + 2 Ny points, giving exactly |e|.
    e2 = np.zeros((1, 1, 1, 8, 6))
    e2[..., 0, :] = e2[..., -1, :] = e2[..., :, 0] = e2[..., :, -1] = 0.25
    m = pdebench_metrics(e2 + 1.0, np.ones_like(e2), spatial_dims=2)
    assert m["bRMSE"] == pytest.approx(0.25, abs=ATOL)
    e2[...] = 0.0
    e2[..., 1:-1, 1:-1] = 0.25
    assert pdebench_metrics(e2 + 1.0, np.ones_like(e2), spatial_dims=2)["bRMSE"] == 0.0

    # 3D: e on every face point; faces counted with multiplicity over 2 (NxNy + NyNz + NzNx) points -> |e|.
    e3 = np.zeros((1, 1, 1, 4, 5, 6))
    for axis in (3, 4, 5):
        np.moveaxis(e3, axis, 0)[[0, -1]] = 0.5
    assert pdebench_metrics(e3 + 1.0, np.ones_like(e3), spatial_dims=3)["bRMSE"] == pytest.approx(0.5, abs=ATOL)


def test_max_error_and_per_frame_arrays():
    # One spike of 3 in sample 1, channel 0, frame 1: arrays are (C, T); the dict averages over frames
    # (PDEBench's if_mean), so max_error/c0 = (0 + 3) / 2.
    target = np.ones((2, 2, 2, 8))
    pred = target.copy()
    pred[1, 1, 0, 5] += 3.0
    arrays = pdebench_metric_arrays(pred, target, spatial_dims=1)
    np.testing.assert_array_equal(arrays["max_error"], [[0.0, 3.0], [0.0, 0.0]])
    m = pdebench_metrics(pred, target, spatial_dims=1)
    assert m["max_error/c0"] == pytest.approx(1.5, abs=ATOL)
    assert m["max_error"] == pytest.approx(0.75, abs=ATOL)
    # cRMSE: per-sample sums differ by 3 in one of two samples -> sqrt(mean_b(diff^2)) / N = sqrt(9 / 2) / 8.
    assert arrays["cRMSE"][0, 1] == pytest.approx(math.sqrt(4.5) / 8, abs=ATOL)


def test_nrmse_hand_value_and_single_frame_form():
    target = np.full((3, 2, 4, 4), 2.0)  # (B, C, *grid): one frame
    m = pdebench_metrics(target + 0.1, target, spatial_dims=2)
    assert m["nRMSE"] == pytest.approx(0.05, abs=ATOL)
    pred, tgt = RNG.normal(size=(2, 3, 2, 4, 4))
    # 4 x 4 has 2 shells, so mid and high bands are nan in both; assert_equal treats nan == nan.
    np.testing.assert_equal(pdebench_metrics(pred, tgt, spatial_dims=2),
                            pdebench_metrics(pred[:, None], tgt[:, None], spatial_dims=2))


def test_jax_inputs_agree_with_numpy():
    pred, target = RNG.normal(size=(2, 2, 3, 2, 24, 20))
    a = pdebench_metrics(pred, target, spatial_dims=2)
    b = pdebench_metrics(jnp.asarray(pred, jnp.float32), jnp.asarray(target, jnp.float32), spatial_dims=2)
    assert a.keys() == b.keys()
    for k in a:  # 24 x 20 has 10 shells: the high band is nan in both
        assert b[k] == pytest.approx(a[k], rel=1e-5, nan_ok=True), k
    assert math.isnan(a["fRMSE_high"])
    fa = field_metrics(pred, target, spatial_dims=2)
    fb = field_metrics(jnp.asarray(pred, jnp.float32), jnp.asarray(target, jnp.float32), spatial_dims=2)
    for k in fa:
        assert fb[k] == pytest.approx(fa[k], rel=1e-5), k


def test_field_metrics_hand_values():
    # Sample 0: target 1, sample 1: target 2; pred = 1.1 * target, so e = 0.1 and 0.2.
    # MSE = (0.01 + 0.04) / 2, MAE = 0.15, NMSE = MSE / mean(target^2) = 0.025 / 2.5, rel_L2 = 0.1 for each sample.
    target = np.concatenate([np.ones((1, 2, 2, 5)), np.full((1, 2, 2, 5), 2.0)])
    m = field_metrics(1.1 * target, target, spatial_dims=1, channels=["u", "v"])
    assert m["MSE"] == pytest.approx(0.025, abs=ATOL)
    assert m["RMSE"] == pytest.approx(math.sqrt(0.025), abs=ATOL)
    assert m["MAE"] == pytest.approx(0.15, abs=ATOL)
    assert m["NMSE"] == pytest.approx(0.01, abs=ATOL)
    assert m["rel_L2"] == pytest.approx(0.1, abs=ATOL)
    assert m["MSE/v"] == pytest.approx(0.025, abs=ATOL) and m["rel_L2/u"] == pytest.approx(0.1, abs=ATOL)
    # Per-channel pooling: error only in channel v.
    pred = target.copy()
    pred[:, :, 1] += 0.5
    m = field_metrics(pred, target, spatial_dims=1, channels=["u", "v"])
    assert m["MSE/u"] == 0.0 and m["MSE/v"] == pytest.approx(0.25, abs=ATOL)
    assert m["MSE"] == pytest.approx(0.125, abs=ATOL)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"pred": np.zeros((2, 1, 1, 8)), "target": np.zeros((2, 1, 1, 9)), "spatial_dims": 1}, "one shape"),
        ({"pred": np.zeros((2, 8)), "target": np.zeros((2, 8)), "spatial_dims": 1}, "\\(B, T, C, \\*grid\\)"),
        ({"pred": np.zeros((2, 1, 1, 8)), "target": np.zeros((2, 1, 1, 8)), "spatial_dims": 4}, "1, 2 or 3"),
        ({"pred": np.zeros((2, 1, 1, 8)), "target": np.zeros((2, 1, 1, 8)), "spatial_dims": 1,
          "channels": ["a", "b"]}, "pass 1 names"),
        ({"pred": np.zeros((2, 1, 1, 8)), "target": np.zeros((2, 1, 1, 8)), "spatial_dims": 1,
          "lengths": (1.0, 1.0)}, "one domain length per grid axis"),
        ({"pred": np.zeros((0, 1, 1, 8)), "target": np.zeros((0, 1, 1, 8)), "spatial_dims": 1}, "no elements"),
    ],
)
def test_shape_errors(kwargs, match):
    with pytest.raises(MetricInputError, match=match) as info:
        pdebench_metrics(**kwargs)
    assert isinstance(info.value, ValueError) and "\n" not in str(info.value)


def test_field_metrics_checks_shapes_too():
    with pytest.raises(MetricInputError, match="spatial_dims=2"):
        field_metrics(np.zeros((2, 3, 8)), np.zeros((2, 3, 8)), spatial_dims=2)


def test_keys():
    pred, target = RNG.normal(size=(2, 1, 1, 1, 32))
    m = pdebench_metrics(pred, target, spatial_dims=1, channels=["h"])
    assert set(m) == set(PDEBENCH_KEYS) | {f"{k}/h" for k in PDEBENCH_KEYS}
    assert all(isinstance(v, float) for v in m.values())
