"""Tests of the LSM (Wu et al. 2023) and MP-PDE (Brandstetter et al. 2022) surrogates.

Big configurations are checked with `jax.eval_shape` (traces every reshape, allocates and compiles
nothing); small ones run for real. Everything is float32 on CPU with fixed seeds.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from surrogates.errors import SurrogateError
from surrogates.models.lsm import LSM, NeuralSpectralBlock, patchify, unpatchify
from surrogates.models.mppde import MPPDE, decoder_kernels, grid_graph, grid_points, point_graph


# --------------------------------------------------------------------------- helpers
def _abstract_out(cls, x_shape, cond_dim=0, ndim=2, out_channels=1, **hparams):
    """Output ShapeDtypeStruct of cls(...)(zeros(x_shape), cond), built and traced abstractly."""

    def run():
        model = cls(
            in_channels=x_shape[1],
            out_channels=out_channels,
            ndim=ndim,
            cond_dim=cond_dim,
            hparams=cls.Hparams(**hparams),
            rngs=nnx.Rngs(0),
        )
        cond = jnp.zeros((x_shape[0], cond_dim)) if cond_dim else None
        return model(jnp.zeros(x_shape), cond)

    return jax.eval_shape(run)


def _num_params(cls, **kw) -> int:
    abstract = nnx.eval_shape(lambda: cls(**kw, hparams=cls.Hparams(), rngs=nnx.Rngs(0)))
    return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(nnx.state(abstract, nnx.Param)))


def _fit(model, x, y, cond, *, steps=200, lr=3e-3):
    """Adam on the MSE of a fixed batch; returns the per-step losses."""
    graphdef, params = nnx.split(model)
    opt = optax.adam(lr)
    opt_state = opt.init(params)

    def loss_fn(p):
        pred = nnx.merge(graphdef, p)(x, cond)
        assert pred.shape == y.shape, (pred.shape, y.shape)  # checked at trace time; no broadcasting
        return jnp.mean((pred - y) ** 2)

    @jax.jit
    def step(p, s):
        loss, grads = jax.value_and_grad(loss_fn)(p)
        updates, s = opt.update(grads, s, p)
        return optax.apply_updates(p, updates), s, loss

    losses = []
    for _ in range(steps):
        params, opt_state, loss = step(params, opt_state)
        losses.append(float(loss))
    return np.asarray(losses)


def _rngs(seed: int) -> nnx.Rngs:
    # RngBitGenerator keys: on CPU, eager threefry initialisation compiles a kernel per parameter
    # shape (seconds per shape on the shared CI machine); 'rbg' keys compile ~3x faster.
    return nnx.Rngs(jax.random.key(seed, impl="rbg"))


# Jitted calls: one XLA compile per model and shape instead of compiling op by op.
_call = nnx.jit(lambda model, x, cond: model(x, cond))
_call_points = nnx.jit(lambda model, u, pos, s, r, cond, rel: model.apply_points(u, pos, s, r, cond, rel_pos=rel))

_TINY_LSM = LSM.Hparams(width=16, num_scales=2, patch_size=4, num_heads=2, norm_groups=2, head_width=16)
_TINY_MPPDE = MPPDE.Hparams(hidden=32, num_layers=2, neighbors=2, dt=0.1)


@pytest.fixture(scope="module")
def tiny_lsm() -> LSM:
    return LSM(in_channels=1, out_channels=1, ndim=2, cond_dim=0, hparams=_TINY_LSM, rngs=_rngs(0))


@pytest.fixture(scope="module")
def tiny_mppde_2d() -> MPPDE:
    return MPPDE(in_channels=4, out_channels=4, ndim=2, cond_dim=1, hparams=_TINY_MPPDE, rngs=_rngs(1))


def test_registry_builds_both_models():
    from surrogates.models import get_model, model_config

    for name, kw in [("lsm", dict(width=8, num_heads=2, patch_size=[2, 4])), ("mppde", dict(hidden=32, dt=0.5))]:
        model = nnx.eval_shape(lambda n=name, k=kw: get_model(n, in_channels=3, out_channels=2, ndim=2, **k))
        config = model_config(model)
        assert config["name"] == name and config["in_channels"] == 3 and config["ndim"] == 2
        assert {k: config[k] for k in kw} == kw  # hyper-parameters survive the round trip
    with pytest.raises(SurrogateError, match="ndim=3"):
        get_model("mppde", in_channels=3, out_channels=2, ndim=3)


# --------------------------------------------------------------------------- LSM
def test_lsm_default_parameter_count():
    # 19,187,457 is also what the reference PyTorch LSM2d(in_channels=1, out_channels=1, width=64,
    # num_basis=12, num_token=4) has by our own count (BatchNorm and GroupNorm both carry 2C affine
    # parameters), so the layer structure matches the authors'.
    assert _num_params(LSM, in_channels=1, out_channels=1, ndim=2, cond_dim=0) == 19_187_457


def test_lsm_output_shapes():
    small = dict(width=8, num_heads=2, norm_groups=2, head_width=16)
    # Default depth (5 scales) and patch 4x4 on 64x64, as for Navier-Stokes in the paper.
    out = _abstract_out(LSM, (2, 10, 64, 64), out_channels=3, **small)
    assert out.shape == (2, 3, 64, 64) and out.dtype == jnp.float32
    # 32x32 with one scale fewer (16x16 with two: the tiny model of the overfit test).
    assert _abstract_out(LSM, (2, 1, 32, 32), num_scales=4, **small).shape == (2, 1, 32, 32)
    # Rectangular grid, per-axis patches, conditioning, and the 1D and 3D variants.
    rect = _abstract_out(LSM, (3, 2, 16, 32), cond_dim=3, num_scales=3, patch_size=(2, 4), **small)
    assert rect.shape == (3, 1, 16, 32)
    assert _abstract_out(LSM, (2, 1, 64), ndim=1, num_scales=3, **small).shape == (2, 1, 64)
    assert _abstract_out(LSM, (1, 2, 8, 8, 8), ndim=3, num_scales=2, patch_size=2, **small).shape == (1, 1, 8, 8, 8)


def test_lsm_patchify_roundtrip_and_layout():
    x = jnp.arange(2 * 8 * 12 * 3, dtype=jnp.float32).reshape(2, 8, 12, 3)
    p = patchify(x, (4, 3))
    assert p.shape == (2 * 2 * 4, 12, 3)
    np.testing.assert_array_equal(p[1], x[0, 0:4, 3:6].reshape(12, 3))  # second patch of sample 0
    np.testing.assert_array_equal(unpatchify(p, x.shape, (4, 3)), x)


def test_neural_spectral_block_is_patch_local(tiny_lsm):
    # Perturbing one pixel changes the block's output only inside that pixel's patch (Sec. 3.2:
    # attention and the latent transition act per patch).
    block = tiny_lsm.spectral[0]
    assert isinstance(block, NeuralSpectralBlock) and block.patch == (4, 4)
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 8, 8, 16))
    dx = x.at[0, 5, 6, :].add(1.0)
    apply = nnx.jit(lambda b, v: b(v))
    diff = jnp.abs(apply(block, dx) - apply(block, x)).max(axis=-1)[0]
    inside = np.zeros((8, 8), bool)
    inside[4:8, 4:8] = True
    assert float(diff[inside].max()) > 1e-3
    assert float(diff[~inside].max()) == 0.0


def test_lsm_overfits_tiny_batch(tiny_lsm):
    n = 16
    s = jnp.linspace(0.0, 1.0, n)
    gx, gy = jnp.meshgrid(s, s, indexing="ij")
    amp = jax.random.normal(jax.random.PRNGKey(0), (2, 1, 1, 1))
    x = amp * jnp.sin(2 * jnp.pi * gx) + jnp.cos(2 * jnp.pi * gy)
    y = 0.5 * jnp.roll(x, 3, axis=-1) + x**2
    losses = _fit(tiny_lsm, x, y, None)  # _fit works on a copy of the parameters
    assert np.all(np.isfinite(losses))
    assert losses[-1] < losses[0] / 100, (losses[0], losses[-1])


def test_lsm_bad_hparams_raise():
    with pytest.raises(SurrogateError, match="num_heads"):
        LSM.Hparams(width=12, num_heads=8)
    with pytest.raises(SurrogateError, match="num_scales"):
        LSM.Hparams(num_scales=0)
    with pytest.raises(SurrogateError, match="patch_size"):
        LSM.Hparams(patch_size=0)
    with pytest.raises(SurrogateError, match="norm_groups"):
        LSM.Hparams(width=8, num_heads=2, norm_groups=3)
    with pytest.raises(SurrogateError, match="patch_size"):  # 3 entries for a 2D model
        LSM(
            in_channels=1,
            out_channels=1,
            ndim=2,
            cond_dim=0,
            hparams=LSM.Hparams(patch_size=(2, 2, 2)),
            rngs=nnx.Rngs(0),
        )
    with pytest.raises(SurrogateError, match="ndim=4"):
        LSM(in_channels=1, out_channels=1, ndim=4, cond_dim=0, hparams=LSM.Hparams(), rngs=nnx.Rngs(0))


def test_lsm_bad_inputs_raise(tiny_lsm):
    with pytest.raises(SurrogateError, match=r"divisible .* = 2 \* 4 = 8"):  # 2 scales, 4x4 patches
        tiny_lsm(jnp.zeros((1, 1, 12, 16)))
    with pytest.raises(SurrogateError, match="in_channels=1"):
        tiny_lsm(jnp.zeros((1, 3, 16, 16)))
    with pytest.raises(SurrogateError, match="batch"):
        tiny_lsm(jnp.zeros((1, 16, 16)))
    with pytest.raises(SurrogateError, match="cond_dim=0"):
        tiny_lsm(jnp.zeros((1, 1, 16, 16)), jnp.zeros((1, 2)))


# --------------------------------------------------------------------------- graphs
def test_grid_graph_1d_periodic():
    g = grid_graph((10,), n_neighbors=3, periodic=True, domain_length=10.0)
    assert g.senders.shape == g.receivers.shape == (10 * 6,) and g.rel_pos.shape == (60, 1)
    pos = grid_points((10,), periodic=True, domain_length=10.0)[:, 0]
    # Minimum-image x_i - x_j in [-3, 3] \ {0}, and consistent with the node positions mod L.
    rel = g.rel_pos[:, 0]
    assert set(np.round(rel).astype(int)) == {-3, -2, -1, 1, 2, 3}
    np.testing.assert_allclose(np.mod(pos[g.receivers] - pos[g.senders] - rel, 10.0), 0.0, atol=1e-5)
    np.testing.assert_array_equal(np.bincount(g.receivers), np.full(10, 6))
    assert not np.any(g.senders == g.receivers)


def test_grid_graph_2d_nonperiodic_and_radius():
    g = grid_graph((5, 4), n_neighbors=1, periodic=False)
    # 4-neighbour stencil: each interior edge twice (both directions).
    assert len(g.senders) == 2 * (5 * 3 + 4 * 4)
    pos = grid_points((5, 4), periodic=False, domain_length=(4.0, 3.0))  # spacing 1 on both axes
    g_r = grid_graph((5, 4), radius=1.5, periodic=False, domain_length=(4.0, 3.0))  # adds diagonals
    assert len(g_r.senders) == len(g.senders) + 2 * 2 * 4 * 3
    np.testing.assert_allclose(g_r.rel_pos, pos[g_r.receivers] - pos[g_r.senders], atol=1e-6)
    with pytest.raises(SurrogateError, match="wraps around"):
        grid_graph((4,), n_neighbors=2, periodic=True)
    with pytest.raises(SurrogateError, match="exactly one"):
        grid_graph((8,), n_neighbors=1, radius=0.2)


def test_point_graph_knn():
    pts = jax.random.uniform(jax.random.PRNGKey(0), (30, 2))
    g = point_graph(pts, 5)
    d = np.linalg.norm(np.asarray(pts)[:, None] - np.asarray(pts)[None], axis=-1)
    np.fill_diagonal(d, np.inf)
    want = np.sort(np.argsort(d, axis=1)[:, :5], axis=1)
    got = np.sort(np.asarray(g.senders).reshape(30, 5), axis=1)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_allclose(g.rel_pos, pts[g.receivers] - pts[g.senders], atol=1e-6)
    # Periodic: points at 0.05 and 0.95 on a unit box are 0.1 apart.
    gp = point_graph(jnp.array([[0.05], [0.5], [0.95]]), 1, periodic=True, domain_length=1.0)
    assert int(gp.senders[0]) == 2 and float(gp.rel_pos[0, 0]) == pytest.approx(0.1, abs=1e-6)


# --------------------------------------------------------------------------- MP-PDE
def test_mppde_decoder_arithmetic():
    # Conv1d output length floor((L - k) / s) + 1; the reference's kernels give exactly K outputs.
    for k, (k1, s1, k2) in [(20, (15, 4, 10)), (25, (16, 3, 14)), (50, (12, 2, 10))]:
        assert decoder_kernels(128, k) == (k1, s1, k2)
        assert (128 - k1) // s1 + 1 - k2 + 1 == k
    assert decoder_kernels(64, 25) is None  # falls back to a linear map


def test_mppde_default_parameter_count():
    # E3 setting: time window 25, K = 25, theta = (alpha, beta, gamma, t). 639,737 equals our count
    # of the reference MP_PDE_Solver(time_window=25, hidden 128, 6 layers, 3 eq. variables):
    # encoder 20,480 + 6 x 103,168 + decoder CNN 249.
    assert _num_params(MPPDE, in_channels=25, out_channels=25, ndim=1, cond_dim=4) == 639_737


def test_mppde_output_shapes(tiny_mppde_2d):
    # Default configuration (CNN decoder, K = 25), 1D grid of 100 points; shapes traced abstractly.
    out = _abstract_out(MPPDE, (2, 25, 100), cond_dim=4, ndim=1, out_channels=25)
    assert out.shape == (2, 25, 100) and out.dtype == jnp.float32
    # (test_mppde_overfits_tiny_batch runs a small 1D model on 100 points for real.)
    # Small model on a 2D grid 16x16, run for real.
    out2 = _call(tiny_mppde_2d, jnp.ones((3, 4, 16, 16)), jnp.ones((3, 1)))
    assert out2.shape == (3, 4, 16, 16) and bool(jnp.all(jnp.isfinite(out2)))
    # Random point set with a kNN graph.
    pos = jax.random.uniform(jax.random.PRNGKey(1), (50, 2))
    g = point_graph(pos, 6)
    out3 = _call_points(tiny_mppde_2d, jnp.ones((2, 50, 4)), pos, g.senders, g.receivers, jnp.ones((2, 1)), None)
    assert out3.shape == (2, 50, 4) and bool(jnp.all(jnp.isfinite(out3)))


def test_mppde_grid_call_equals_apply_points(tiny_mppde_2d):
    hp = tiny_mppde_2d.hparams
    x = jax.random.normal(jax.random.PRNGKey(2), (3, 4, 16, 16))
    cond = jnp.array([[0.3], [0.7], [0.1]])
    g = grid_graph((16, 16), n_neighbors=hp.neighbors, periodic=hp.periodic, domain_length=hp.domain_length)
    pos = grid_points((16, 16), periodic=hp.periodic, domain_length=hp.domain_length)
    u = x.reshape(3, 4, 256).transpose(0, 2, 1)
    via_points = _call_points(tiny_mppde_2d, u, pos, g.senders, g.receivers, cond, g.rel_pos)
    np.testing.assert_allclose(
        _call(tiny_mppde_2d, x, cond), via_points.transpose(0, 2, 1).reshape(3, 4, 16, 16), atol=1e-6
    )


def test_mppde_temporal_bundling_uses_cumulative_dt(tiny_mppde_2d):
    # Same seed as the fixture, dt doubled: increments are identical, so out - u_last doubles (eq. 10).
    doubled = MPPDE(
        in_channels=4,
        out_channels=4,
        ndim=2,
        cond_dim=1,
        hparams=dataclasses.replace(_TINY_MPPDE, dt=2 * _TINY_MPPDE.dt),
        rngs=_rngs(1),
    )
    x = jax.random.normal(jax.random.PRNGKey(3), (3, 4, 16, 16))
    cond = jnp.ones((3, 1))
    d1 = _call(tiny_mppde_2d, x, cond) - x[:, -1:]
    d2 = _call(doubled, x, cond) - x[:, -1:]
    np.testing.assert_allclose(d2, 2 * d1, rtol=1e-5, atol=1e-6)
    assert float(jnp.abs(d1).max()) > 0


def test_mppde_is_permutation_equivariant(tiny_mppde_2d):
    n, k = 50, 6  # as in test_mppde_output_shapes, so the jitted call is reused
    key_pos, key_u, key_p, key_e = jax.random.split(jax.random.PRNGKey(4), 4)
    pos = jax.random.uniform(key_pos, (n, 2))
    u = jax.random.normal(key_u, (2, n, 4))
    cond = jnp.array([[0.2], [0.9]])
    g = point_graph(pos, k)
    out = _call_points(tiny_mppde_2d, u, pos, g.senders, g.receivers, cond, None)

    perm = jax.random.permutation(key_p, n)  # new node a is old node perm[a]
    inv = jnp.argsort(perm)
    edge_order = jax.random.permutation(key_e, len(g.senders))  # edge order must not matter either
    out_p = _call_points(
        tiny_mppde_2d, u[:, perm], pos[perm], inv[g.senders][edge_order], inv[g.receivers][edge_order], cond, None
    )
    # Tolerance 1e-5 (float32): only the summation order of segment_sum / means changes.
    np.testing.assert_allclose(out_p, out[:, perm], rtol=0, atol=1e-5)
    # Rebuilding the kNN graph on the permuted points gives the same answer (no distance ties).
    g_p = point_graph(pos[perm], k)
    out_rebuilt = _call_points(tiny_mppde_2d, u[:, perm], pos[perm], g_p.senders, g_p.receivers, cond, None)
    np.testing.assert_allclose(out_rebuilt, out[:, perm], rtol=0, atol=1e-5)


def test_mppde_overfits_tiny_batch():
    # Two travelling sine waves on a periodic 1D grid of 100 points: 4 past steps -> 4 future steps.
    n = 100
    s = jnp.arange(n) / n
    amp = jax.random.normal(jax.random.PRNGKey(0), (2, 1, 1))
    x = amp * jnp.sin(2 * jnp.pi * (s - 0.1 * jnp.arange(4)[None, :, None]))
    y = amp * jnp.sin(2 * jnp.pi * (s - 0.1 * (4 + jnp.arange(4))[None, :, None]))
    cond = jnp.array([[0.5], [1.0]])
    model = MPPDE(in_channels=4, out_channels=4, ndim=1, cond_dim=1, hparams=_TINY_MPPDE, rngs=_rngs(0))
    losses = _fit(model, x, y, cond)
    assert np.all(np.isfinite(losses))
    assert losses[-1] < losses[0] / 100, (losses[0], losses[-1])


def test_mppde_bad_hparams_and_inputs_raise(tiny_mppde_2d):
    with pytest.raises(SurrogateError, match="hidden"):
        MPPDE.Hparams(hidden=0)
    with pytest.raises(SurrogateError, match="dt"):
        MPPDE.Hparams(dt=-0.1)
    with pytest.raises(SurrogateError, match="domain_length"):
        MPPDE.Hparams(domain_length=0.0)
    with pytest.raises(SurrogateError, match="ndim=3"):
        MPPDE(in_channels=4, out_channels=4, ndim=3, cond_dim=0, hparams=_TINY_MPPDE, rngs=nnx.Rngs(0))
    with pytest.raises(SurrogateError, match="in_channels=4"):
        tiny_mppde_2d(jnp.zeros((1, 5, 8, 8)), jnp.zeros((1, 1)))
    with pytest.raises(SurrogateError, match=r"cond of shape \(B, 1\)"):
        tiny_mppde_2d(jnp.zeros((1, 4, 8, 8)))
    with pytest.raises(SurrogateError, match="wraps around"):  # 2 neighbours need >= 5 points per axis
        tiny_mppde_2d(jnp.zeros((1, 4, 4, 8)), jnp.zeros((1, 1)))
    with pytest.raises(SurrogateError, match="move channels last"):
        tiny_mppde_2d.apply_points(
            jnp.zeros((1, 4, 10)), jnp.zeros((10, 2)), jnp.zeros(3, int), jnp.zeros(3, int), jnp.zeros((1, 1))
        )
    with pytest.raises(SurrogateError, match=r"must be \(10, 2\)"):
        tiny_mppde_2d.apply_points(
            jnp.zeros((1, 10, 4)), jnp.zeros((10, 1)), jnp.zeros(3, int), jnp.zeros(3, int), jnp.zeros((1, 1))
        )
