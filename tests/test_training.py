"""Losses/metrics, the split+jit train step against a plain NNX reference, pushforward, eval step."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from surrogates import (
    LOSSES,
    SurrogateError,
    get_model,
    losses,
    make_eval_step,
    make_train_step,
    mse,
    nrmse,
    relative_l2,
)


def arr(*shape: int, seed: int = 0) -> jax.Array:
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


# --------------------------------------------------------------------------- losses
def test_losses_on_hand_computed_values():
    target = jnp.array([[[3.0, 4.0]], [[0.0, 2.0]]])  # (B=2, C=1, N=2); norms 5 and 2
    pred = jnp.array([[[3.0, 1.0]], [[0.0, 3.0]]])  # errors (0, -3) and (0, 1)
    assert float(mse(pred, target)) == pytest.approx((9 + 1) / 4)
    # relative L2: mean(3/5, 1/2) = 0.55; with C=1 nrmse is the same number.
    assert float(relative_l2(pred, target)) == pytest.approx(0.55, rel=1e-6)
    assert float(nrmse(pred, target)) == pytest.approx(0.55, rel=1e-6)
    assert losses is LOSSES and set(LOSSES) == {"mse", "relative_l2", "nrmse"}


def test_nrmse_normalises_channels_separately():
    # One sample, two channels with very different scales: channel 0 = 100*(1, 1), channel 1 = (1, 1);
    # the same absolute error 1 on each channel.
    target = jnp.array([[[100.0, 100.0], [1.0, 1.0]]])
    pred = target + 1.0
    # nrmse: mean(1/100, 1/1) = 0.505. relative_l2 pools channels: sqrt(4)/sqrt(20002) = 0.01414.
    assert float(nrmse(pred, target)) == pytest.approx(0.505, rel=1e-6)
    assert float(relative_l2(pred, target)) == pytest.approx(2 / np.sqrt(20002), rel=1e-5)


def test_losses_have_finite_gradient_at_zero_error_and_check_shapes():
    t = arr(2, 1, 4, seed=1)
    for fn in (relative_l2, nrmse, mse):
        g = jax.grad(lambda p, fn=fn: fn(p, t))(t)
        assert bool(jnp.all(jnp.isfinite(g))) and float(jnp.max(jnp.abs(g))) == 0.0
    with pytest.raises(SurrogateError, match=r"pred shape \(2, 1, 4\) differs from target shape \(2, 1, 5\)"):
        relative_l2(t, jnp.ones((2, 1, 5)))


# --------------------------------------------------------------------------- train step vs reference
def small_mlp(seed: int = 0):
    return get_model(
        "mlp", in_channels=0, out_channels=2, ndim=2, cond_dim=3, grid=(8, 8), hidden=(32, 32), rngs=nnx.Rngs(seed)
    )


def test_split_jit_step_matches_plain_nnx_reference():
    cond, y = arr(4, 3, seed=1), arr(4, 2, 8, 8, seed=2)
    batch = {"cond": cond, "y": y}
    tx = optax.adamw(1e-2, weight_decay=1e-4)

    ref_model = small_mlp()
    ref_opt = nnx.Optimizer(ref_model, tx, wrt=nnx.Param)

    @nnx.jit
    def ref_step(m, opt):  # the textbook NNX step: nnx.jit over the objects, no split
        loss, grads = nnx.value_and_grad(lambda m: relative_l2(m(None, cond), y))(m)
        opt.update(m, grads)
        return loss

    ref_losses = [float(ref_step(ref_model, ref_opt)) for _ in range(6)]

    model = small_mlp()
    step = make_train_step(model, nnx.Optimizer(model, tx, wrt=nnx.Param), loss="relative_l2")
    got = [float(step(batch)) for _ in range(6)]
    # Same float32 maths, two compilations (nnx.jit vs split + jax.jit): the losses agree to ~1e-6
    # relative; 1e-4 leaves room for XLA fusing/reordering differently.
    np.testing.assert_allclose(got, ref_losses, rtol=1e-4)
    assert got[-1] < 0.9 * got[0]  # and it actually trains

    step.sync()
    ref_params = nnx.state(ref_model, nnx.Param)
    new_params = nnx.state(model, nnx.Param)
    for a, b in zip(jax.tree.leaves(ref_params), jax.tree.leaves(new_params), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
    assert int(step.optimizer.step[...]) == 6


def test_state_lives_in_the_step_until_sync_and_eval_step_reads_it():
    model = small_mlp()
    before = np.asarray(model.layers[0].kernel[...])
    step = make_train_step(model, nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param))
    predict = make_eval_step(model)
    batch = {"cond": arr(4, 3, seed=3), "y": arr(4, 2, 8, 8, seed=4)}
    step(batch)
    # Before sync, the step's state is current; prediction with it must differ from the initial model.
    p_step = predict(None, batch["cond"], state=step.model_state)
    model2 = small_mlp()  # same seed -> the initial parameters
    p_init = model2(None, batch["cond"])
    assert float(jnp.max(jnp.abs(p_step - p_init))) > 1e-5
    step.sync()
    after = np.asarray(model.layers[0].kernel[...])
    assert not np.allclose(before, after)
    np.testing.assert_allclose(np.asarray(predict(None, batch["cond"])), np.asarray(p_step), rtol=1e-6)
    # resplit: changes made to the nnx objects are picked up by the next step.
    model.layers[0].kernel[...] = jnp.zeros_like(model.layers[0].kernel[...])
    step.resplit()
    assert float(jnp.max(jnp.abs(step.model_state["layers"][0]["kernel"][...]))) == 0.0


def test_bad_arguments_raise_surrogate_errors():
    model = small_mlp()
    opt = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)
    with pytest.raises(SurrogateError, match="unknown loss 'l3'"):
        make_train_step(model, opt, loss="l3")
    with pytest.raises(SurrogateError, match="in_channels=0 != out_channels=2"):
        make_train_step(model, opt, pushforward=1)
    with pytest.raises(SurrogateError, match="pushforward=-1 must be an integer >= 0"):
        make_train_step(model, opt, pushforward=-1)
    step = make_train_step(model, opt)
    with pytest.raises(SurrogateError, match=r"unknown batch key\(s\) \['target'\]"):
        step({"cond": arr(4, 3), "y": arr(4, 2, 8, 8), "target": arr(4, 2, 8, 8)})
    with pytest.raises(SurrogateError, match='a batch must be a dict with keys "x", "y"'):
        step({"cond": arr(4, 3)})


# --------------------------------------------------------------------------- pushforward
def tiny_fno(seed: int = 0):
    return get_model("fno", in_channels=1, out_channels=1, ndim=1, modes=3, width=4, depth=2, rngs=nnx.Rngs(seed))


def test_pushforward_loss_and_gradient_do_not_flow_through_pushed_steps():
    x, y = arr(3, 1, 16, seed=5), arr(3, 1, 16, seed=6)
    n = 2

    # With SGD(lr=1) the update is params -= grads, so the step's gradient is params_before - params_after.
    model = tiny_fno()
    p0 = jax.tree.map(np.asarray, nnx.state(model, nnx.Param))
    step = make_train_step(model, nnx.Optimizer(model, optax.sgd(1.0), wrt=nnx.Param), pushforward=n)
    loss = float(step({"x": x, "y": y}))
    step.sync()
    g_step = jax.tree.map(lambda a, b: a - np.asarray(b), p0, nnx.state(model, nnx.Param))

    ref = tiny_fno()

    def push(m, u):
        for _ in range(n):
            u = m(u)
        return u

    @nnx.jit
    def reference(m):
        x_pushed = jax.lax.stop_gradient(push(m, x))
        loss = mse(m(x_pushed), y)
        g_cut = nnx.grad(lambda m: mse(m(x_pushed), y))(m)  # pushforward: no gradient through the pushes
        g_full = nnx.grad(lambda m: mse(m(push(m, x)), y))(m)  # back-propagation through the whole unroll
        return loss, g_cut, g_full

    expected_loss, g_cut, g_full = reference(ref)
    expected_loss = float(expected_loss)

    assert loss == pytest.approx(expected_loss, rel=1e-5)
    leaves_step, leaves_cut, leaves_full = (jax.tree.leaves(t) for t in (g_step, g_cut, g_full))
    for a, b in zip(leaves_step, leaves_cut, strict=True):
        np.testing.assert_allclose(a, np.asarray(b), rtol=1e-4, atol=1e-6)  # float32 round-off
    # The test can fail: the full-unroll gradient is clearly different.
    diff = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(leaves_cut, leaves_full, strict=True))
    scale = max(float(jnp.max(jnp.abs(a))) for a in leaves_cut)
    assert diff > 1e-2 * scale


def test_pushforward_unroll_per_batch_without_recompiling():
    x, y = arr(3, 1, 16, seed=7), arr(3, 1, 16, seed=8)
    model = tiny_fno(1)
    ref = tiny_fno(1)  # identical parameters; lr 0 keeps them identical across steps
    step = make_train_step(model, nnx.Optimizer(model, optax.sgd(0.0), wrt=nnx.Param), pushforward=3)
    for k in (0, 1, 3):
        got = float(step({"x": x, "y": y, "unroll": jnp.asarray(k, jnp.int32)}))
        u = x
        for _ in range(k):
            u = ref(u)
        assert got == pytest.approx(float(mse(ref(u), y)), rel=1e-5), k
    assert step._jitted._cache_size() == 1  # one compilation for every unroll count
