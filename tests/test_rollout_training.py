"""Unrolled training with a curriculum, input noise, increments, and model selection by rollout error."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from streaming.assembly import build_solver, sample_spec
from streaming.config import ConfigError, load_config
from streaming.job import build_validation, run_job
from streaming.metrics import read_metrics
from surrogates.errors import SurrogateError
from surrogates.models import get_model
from surrogates.surrogate import Surrogate
from surrogates.training import chain, hold, increment, linear_unroll, make_train_step, mse


def arr(*shape: int, seed: int = 0) -> jax.Array:
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def tiny_fno(seed: int = 0) -> nnx.Module:
    return get_model("fno", in_channels=1, out_channels=1, ndim=1, modes=3, width=4, depth=2, rngs=nnx.Rngs(seed))


def test_linear_unroll_curriculum() -> None:
    n = linear_unroll(1, 4, 90)
    assert [n(s) for s in (0, 29, 30, 59, 60, 89, 90, 10_000)] == [1, 1, 2, 2, 3, 3, 4, 4]
    assert [linear_unroll(2, 5, 0)(s) for s in (0, 7)] == [5, 5]  # no ramp: the end length at once
    assert [linear_unroll(3, 3, 50)(s) for s in (0, 50)] == [3, 3]
    for bad in ((0, 2, 10), (3, 2, 10), (1, 2, -1)):
        with pytest.raises(SurrogateError, match="unroll curriculum"):
            linear_unroll(*bad)


def test_unrolled_loss_and_gradient_match_a_hand_unrolled_computation() -> None:
    x, y = arr(3, 1, 16, seed=1), arr(3, 3, 16, seed=2)  # targets of 3 consecutive calls
    wall = np.zeros(16, bool)
    wall[[0, -1]] = True
    out_map = chain(increment(1), hold(wall, 1))
    model = tiny_fno()
    p0 = jax.tree.map(np.asarray, nnx.state(model, nnx.Param))
    step = make_train_step(model, nnx.Optimizer(model, optax.sgd(1.0), wrt=nnx.Param), output_map=out_map)
    loss = float(step({"x": x, "y": y}, steps=3))
    step.sync()
    g_step = jax.tree.map(lambda a, b: a - np.asarray(b), p0, nnx.state(model, nnx.Param))

    def hand(m: nnx.Module) -> jax.Array:
        u, losses = x, []
        for i in range(3):
            u = jnp.where(wall, u, u + m(u))  # the model's increment, the walls held
            losses.append(mse(u, y[:, i : i + 1]))
        return sum(losses) / 3

    ref_loss, g_ref = nnx.value_and_grad(hand)(tiny_fno())
    assert loss == pytest.approx(float(ref_loss), rel=1e-5)
    for a, b in zip(jax.tree.leaves(g_step), jax.tree.leaves(g_ref), strict=True):
        np.testing.assert_allclose(a, np.asarray(b), rtol=1e-4, atol=1e-6)
    # The test can fail: one call from the same start gives a different loss.
    one = make_train_step(tiny_fno(), nnx.Optimizer(tiny_fno(), optax.sgd(0.0), wrt=nnx.Param), output_map=out_map)
    assert float(one({"x": x, "y": y})) != pytest.approx(loss, rel=1e-3)
    with pytest.raises(SurrogateError, match="need 4"):
        step({"x": x, "y": y}, steps=4)


def test_pushforward_with_a_target_per_call_takes_the_targets_after_the_pushed_calls() -> None:
    x, y = arr(2, 1, 16, seed=3), arr(2, 3, 16, seed=4)
    model, ref = tiny_fno(2), tiny_fno(2)
    step = make_train_step(model, nnx.Optimizer(model, optax.sgd(0.0), wrt=nnx.Param), pushforward=1)
    got = float(step({"x": x, "y": y}, steps=2))
    u1 = ref(x)
    u2 = ref(u1)
    assert got == pytest.approx(float((mse(u2, y[:, 1:2]) + mse(ref(u2), y[:, 2:3])) / 2), rel=1e-5)


def test_noise_off_is_the_plain_step_and_noise_on_is_reproducible() -> None:
    x, y = arr(4, 1, 16, seed=5), arr(4, 1, 16, seed=6)

    def run(**kw) -> tuple[list[float], list[np.ndarray]]:
        m = tiny_fno(3)
        step = make_train_step(m, nnx.Optimizer(m, optax.adam(1e-2), wrt=nnx.Param), **kw)
        losses = [float(step({"x": x, "y": y})) for _ in range(3)]
        step.sync()
        return losses, [np.asarray(a) for a in jax.tree.leaves(nnx.state(m, nnx.Param))]

    plain, off, noisy, again = run(), run(input_noise=0.0, seed=9), run(input_noise=0.1), run(input_noise=0.1)
    assert off[0] == plain[0]  # bitwise
    for a, b in zip(off[1], plain[1], strict=True):
        np.testing.assert_array_equal(a, b)
    assert noisy[0] == again[0] and noisy[0] != plain[0]
    # the first noisy loss is the model on x + 0.1 N(0, 1), the draw keyed by the optimiser's step 0
    ref = tiny_fno(3)
    noise = jax.random.normal(jax.random.fold_in(jax.random.key(0), 0), x.shape)
    assert noisy[0][0] == pytest.approx(float(mse(ref(x + 0.1 * noise), y)), rel=1e-5)


def _job(tmp_path, name: str, **extra: str):
    overrides = {
        "solver.config": "{ n = 14, dt = 0.002 }", "solver.steps": "20", "solver.n_sims": "0",
        "model.hparams": "{ modes = 6, width = 12, depth = 2 }", "optim.batch_size": "16", "optim.lr": "3e-3",
        "optim.steps": "60", "buffer.capacity": "1024", "buffer.watermark": "64", "workers.backend": "local",
        "workers.chunk_frames": "10", "validation.n_sims": "2", "validation.interval": "10",
        "validation.rollout_steps": "10", "checkpoint.interval": "100", "logging.interval": "10",
        "logging.progress": "false", "logging.tensorboard": "false", "logging.run_dir": str(tmp_path),
        "logging.name": name, **extra,
    }
    cfg = load_config("configs/quickstart.toml", overrides)
    return cfg, run_job(cfg), tmp_path / name


@pytest.mark.parametrize("select", ["rollout", "one_step"])
def test_exported_surrogate_is_the_best_by_the_selected_validation_error(tmp_path, select) -> None:
    extra = {"validation.select": f'"{select}"'}
    if select == "rollout":  # and the new training options, end to end
        extra.update({"optim.unroll": "{ start = 1, end = 3, ramp_steps = 30 }", "optim.input_noise": "0.01",
                      "model.predict": '"increment"'})
    cfg, summary, run = _job(tmp_path, select, **extra)
    vals = [r for r in read_metrics(run / "metrics.jsonl") if "val_rollout_rel_l2" in r]
    assert [r["step"] for r in vals] == [10, 20, 30, 40, 50, 60]
    best = min(vals, key=lambda r: r[f"val_{select}_rel_l2"])
    assert summary["select"] == select and summary["best_step"] == best["step"]
    assert summary["best_val_rollout_rel_l2"] == best["val_rollout_rel_l2"]
    assert summary["best_val_one_step_rel_l2"] == best["val_one_step_rel_l2"]
    assert json.loads((run / "summary.json").read_text())["best_step"] == best["step"]
    # the exported surrogate scores what the summary says (it is that checkpoint, constraint included)
    sur = Surrogate.load(run / "surrogate")
    assert sur.metadata.frozen_border == 1 and sur.metadata.predict == cfg.model.predict
    solver = build_solver(cfg)
    scores = build_validation(cfg, solver).score(sur, sample_spec(cfg, solver))
    assert scores["val_rollout_rel_l2"] == pytest.approx(best["val_rollout_rel_l2"], rel=1e-5)


def test_unroll_and_increment_config_errors(tmp_path) -> None:
    with pytest.raises(ConfigError, match="unroll.end=1 is below unroll.start=2"):
        load_config(None, {"optim.unroll": "{ start = 2, end = 1 }"})
    with pytest.raises(ConfigError, match="need input frames"):
        load_config(None, {"sample.kind": '"field"', "model.predict": '"increment"'})
    with pytest.raises(ConfigError, match="a sample needs 23 frames"):
        load_config(None, {"solver.steps": "20", "optim.unroll.end": "22"})
