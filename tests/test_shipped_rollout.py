"""Rollouts that cover what they claim: a bundle model (MP-PDE, K frames per call) chains its bundles, the
online-vs-offline study scores MP-PDE over the whole test trajectory, and the trainer's full validation
rollout reports every channel beside the identity baseline."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.studies import online_vs_offline as ovo
from streaming.assembly import build_model, build_solver, sample_spec
from streaming.config import load_config
from streaming.trainer import Validation
from surrogates.normalizer import Normalizer
from surrogates.surrogate import Surrogate


@pytest.fixture(scope="module")
def tiny_mppde(tmp_path_factory):
    """The study's tiny MP-PDE pair (burgers1d, window = K = 4, 21 frames): config, untrained surrogate, 2 test
    simulations."""
    cfg = ovo.pair_config("mppde_burgers1d", "tiny", tmp_path_factory.mktemp("runs"))
    solver = build_solver(cfg)
    spec = sample_spec(cfg, solver)
    model, meta = build_model(cfg, solver, spec)
    sur = Surrogate.from_model(model, Normalizer.identity(len(solver.channels), len(solver.grid), meta.cond_dim),
                               meta)
    test = ovo.test_set(cfg, 2, ovo.rollout_steps("mppde_burgers1d", "tiny", cfg))
    return cfg, spec, sur, test


def test_bundle_rollout_feeds_each_bundle_into_the_next(tiny_mppde):
    cfg, _, sur, test = tiny_mppde
    w = k = cfg.sample.window
    assert cfg.sample.horizon == k == 4
    cond = test.params.astype(np.float32)
    out = np.asarray(sur.rollout(test.frames[:, :w], 2 * k + 2, cond=cond))  # two bundles and part of a third
    assert out.shape == (2, 2 * k + 3, *test.frames.shape[2:])
    np.testing.assert_array_equal(out[:, 0], test.frames[:, w - 1])
    first = np.asarray(sur.step(test.frames[:, :w], cond=cond))
    np.testing.assert_allclose(out[:, 1 : k + 1], first, rtol=1e-5, atol=1e-5)
    # the second call's input window is the first call's output, and so on
    second = np.asarray(sur.step(out[:, 1 : k + 1], cond=cond))
    np.testing.assert_allclose(out[:, k + 1 : 2 * k + 1], second, rtol=1e-5, atol=1e-5)
    third = np.asarray(sur.step(out[:, k + 1 : 2 * k + 1], cond=cond))
    np.testing.assert_allclose(out[:, 2 * k + 1 :], third[:, :2], rtol=1e-5, atol=1e-5)
    assert not np.allclose(second, first, atol=1e-3)  # the bundles differ: not one bundle repeated


def test_study_scores_mppde_over_the_full_trajectory(tiny_mppde):
    cfg, spec, sur, test = tiny_mppde
    n_frames = test.frames.shape[1]
    assert n_frames == cfg.solver.steps // cfg.solver.every + 1 == 21
    full = n_frames - cfg.sample.window
    assert cfg.validation.rollout_steps == test.rollout_steps == full == 17
    assert ovo.rollout_extent(test, cfg) == {"test_rollout_steps": 17, "test_rollout_calls": 5}
    # the score is the mean relative L2 over all 17 rolled-out frames, recomputed here by hand
    cond = test.params.astype(np.float32)
    roll = np.asarray(sur.rollout(test.frames[:, :4], full, cond=cond))[:, 1:]
    truth = test.frames[:, 4:]
    err = np.linalg.norm((roll - truth).reshape(2, full, -1), axis=2) / np.linalg.norm(truth.reshape(2, full, -1),
                                                                                        axis=2)
    got = test.score(sur, spec)["val_rollout_rel_l2"]
    assert got == pytest.approx(float(err.mean()), rel=1e-5)
    assert got != pytest.approx(float(err[:, :4].mean()), rel=1e-3)  # not the first bundle's error


def test_rollout_full_per_channel_beside_identity(tiny_mppde):
    _, spec, sur, test = tiny_mppde
    res = test.rollout_full(sur, spec)
    assert res["steps"] == 17 and set(res["surrogate"]) == set(res["identity"]) == set(sur.channels)
    truth, last = test.frames[:, 4:], test.frames[:, 3:4]
    c = 0
    ident = np.linalg.norm((truth - last)[:, :, c].reshape(2, 17, -1), axis=2)
    ident /= np.linalg.norm(truth[:, :, c].reshape(2, 17, -1), axis=2)
    assert res["identity"][sur.channels[c]] == pytest.approx(float(ident.mean()), rel=1e-5)
    assert np.isfinite(res["surrogate"][sur.channels[c]])


def test_rollout_full_of_a_field_model_has_no_identity():
    """Kind "field" ((parameters, t) -> u, heat_mlp) reads no input frame: there is no identity to compare with."""
    cfg = load_config("configs/heat_mlp.toml", {"solver.config": "{ n = 6 }", "solver.steps": "4",
                                                "model.hparams": "{ hidden = [8] }"})
    solver = build_solver(cfg)
    spec = sample_spec(cfg, solver)
    model, meta = build_model(cfg, solver, spec)
    sur = Surrogate.from_model(model, Normalizer.identity(1, 2, meta.cond_dim), meta)
    params = np.stack([solver.param_space.low, solver.param_space.high]).astype(np.float32)
    frames = np.random.default_rng(0).uniform(100, 500, (2, 5, 1, 8, 8)).astype(np.float32)
    res = Validation(frames, params, rollout_steps=2).rollout_full(sur, spec)
    assert res["identity"] is None and res["steps"] == 4
    pred = np.asarray(sur.rollout(None, 4, cond=params))[:, 1:]
    err = np.linalg.norm((pred - frames[:, 1:]).reshape(2, 4, -1), axis=2)
    err /= np.linalg.norm(frames[:, 1:].reshape(2, 4, -1), axis=2)
    assert res["surrogate"] == {"T": pytest.approx(float(err.mean()), rel=1e-5)}


def test_job_summary_reports_the_exported_surrogates_full_rollout(tmp_path):
    """summary.json: the exported surrogate over every validation frame, per channel, beside the identity."""
    import json

    from streaming.job import build_validation, run_job

    cfg = load_config("configs/quickstart.toml", {
        "solver.config": "{ n = 6, dt = 0.002 }", "solver.steps": "6", "model.hparams": "{ modes = 2, width = 4, "
        "depth = 1 }", "optim.steps": "4", "optim.batch_size": "4", "buffer.capacity": "64", "buffer.watermark": "8",
        "workers.backend": "local", "workers.chunk_frames": "6", "workers.sims_per_task": "2",
        "validation.n_sims": "2", "validation.interval": "2", "validation.rollout_steps": "2",
        "logging.progress": "false", "logging.tensorboard": "false", "logging.run_dir": str(tmp_path),
        "logging.name": "full"})
    summary = run_job(cfg)
    full = json.loads((tmp_path / "full" / "summary.json").read_text())["val_rollout_full"]
    assert full == summary["val_rollout_full"] and full["steps"] == 6  # all 6 frames after the first, not 2
    val = build_validation(cfg, build_solver(cfg))
    sur = Surrogate.load(tmp_path / "full" / "surrogate")
    want = val.rollout_full(sur, sample_spec(cfg, build_solver(cfg)))
    assert full["surrogate"] == pytest.approx(want["surrogate"], rel=1e-6)
    truth, first = val.frames[:, 1:, 0], val.frames[:, :1, 0]
    ident = np.linalg.norm((truth - first).reshape(2, 6, -1), axis=2) / np.linalg.norm(truth.reshape(2, 6, -1), axis=2)
    assert full["identity"] == {"T": pytest.approx(float(ident.mean()), rel=1e-5)}
