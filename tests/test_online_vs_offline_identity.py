"""The online-vs-offline study's identity baseline (the last input frame held), scored by
``Validation.score`` on the study's own test set, against the same error computed directly from the frames."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.studies import online_vs_offline as ovo
from streaming.samples import SampleSpec
from streaming.trainer import Validation


def held_frame_errors(frames: np.ndarray, window: int, horizon: int, rollout_steps: int) -> tuple[float, float]:
    """(one step, rollout) relative L2 of holding the last input frame, mean over samples and frames."""
    def rel(p: np.ndarray, y: np.ndarray) -> np.ndarray:
        return (np.linalg.norm((p - y).reshape(len(y), -1), axis=1)
                / np.linalg.norm(y.reshape(len(y), -1), axis=1))

    t_len = frames.shape[1]
    one = [rel(np.broadcast_to(frames[:, j - 1 : j], frames[:, j : j + horizon].shape), frames[:, j : j + horizon])
           for j in range(window, t_len - horizon + 1)]
    n_roll = min(rollout_steps, t_len - window)
    roll = [rel(frames[:, window - 1], frames[:, window - 1 + i]) for i in range(1, n_roll + 1)]
    return float(np.mean(one)), float(np.mean(roll))


@pytest.mark.parametrize(("kind", "window", "horizon"), [("next_step", 1, 1), ("next_step", 3, 1), ("bundle", 2, 3)])
def test_held_frame_scores_like_the_direct_computation(kind, window, horizon):
    frames = np.random.default_rng(0).normal(size=(3, 12, 2, 5, 4)).astype(np.float32)
    spec = SampleSpec(kind, window, horizon, condition_on_params=False, frame_dt=0.1)
    s = Validation(frames, np.zeros((3, 1)), rollout_steps=6).score(ovo.HeldFrame(spec), spec)
    one, roll = held_frame_errors(frames, window, horizon, rollout_steps=6)
    assert s["val_one_step_rel_l2"] == pytest.approx(one, rel=1e-6)
    assert s["val_rollout_rel_l2"] == pytest.approx(roll, rel=1e-6)


def test_field_models_have_no_identity(tmp_path):
    with pytest.raises(ValueError, match="no input frame"):
        ovo.HeldFrame(SampleSpec("field", 0, 1, condition_on_params=True, frame_dt=0.1))
    cfg = ovo.pair_config("mlp_heat2d", "tiny", tmp_path)
    test = ovo.test_set(cfg, 2, ovo.rollout_steps("mlp_heat2d", "tiny", cfg))
    assert ovo.score_identity(test, cfg) == {"test_rel_l2_identity": None, "test_rollout_rel_l2_identity": None}


def test_identity_on_the_mppde_test_set(tmp_path):
    cfg = ovo.pair_config("mppde_burgers1d", "tiny", tmp_path)
    test = ovo.test_set(cfg, 2, ovo.rollout_steps("mppde_burgers1d", "tiny", cfg))
    got = ovo.score_identity(test, cfg)
    one, roll = held_frame_errors(test.frames, cfg.sample.window, cfg.sample.horizon, test.rollout_steps)
    assert got["test_rel_l2_identity"] == pytest.approx(one, rel=1e-5)
    assert got["test_rollout_rel_l2_identity"] == pytest.approx(roll, rel=1e-5)
    assert 0 < roll < 10  # a moving field: holding a frame is wrong, but finitely so
