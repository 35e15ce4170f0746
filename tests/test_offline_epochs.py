"""Offline training shuffles by epoch: the ``epoch`` buffer and ``pdestream train --offline``."""

from __future__ import annotations

import json

import numpy as np
import pytest

from streaming.buffers import (
    BufferConfigError,
    BufferFullError,
    BufferStateError,
    buffer_from_state_dict,
    make_buffer,
)
from streaming.config import load_config
from streaming.offline import offline_config


def _filled(n: int, seed: int = 0, capacity: int | None = None):
    buf = make_buffer("epoch", capacity=capacity or n, watermark=n, seed=seed)
    keys = np.stack([np.arange(n) // 10, np.arange(n) % 10], axis=1)
    buf.put_many(keys, {"x": np.arange(n, dtype=np.float32)[:, None]})
    return buf


def _draws(buf, batch: int, n_batches: int) -> np.ndarray:
    """Sample values drawn, ``(n_batches, batch)``."""
    return np.stack([buf.sample_batch(batch)[1]["x"][:, 0] for _ in range(n_batches)]).astype(int)


@pytest.mark.parametrize("n, batch", [(100, 10), (103, 10), (37, 36), (50, 1)])
def test_every_epoch_is_a_permutation_and_batches_are_distinct(n, batch):
    buf = _filled(n)
    n_batches = (5 * n) // batch + 1
    draws = _draws(buf, batch, n_batches)
    for row in draws:  # no batch holds one sample twice, also the batch that straddles two epochs
        assert len(set(row.tolist())) == batch
    flat = draws.ravel()
    for e in range(len(flat) // n):  # the stream of draws, cut into epochs of n, is permutation after permutation
        assert sorted(flat[e * n:(e + 1) * n].tolist()) == list(range(n))
    assert buf.policy.epochs == -(-len(flat) // n)
    seen = buf.seen_counts()  # epochs keep draws even: every count is floor or ceil of draws / n
    assert len(buf) == n and seen.max() - seen.min() <= 1 and seen.sum() == len(flat)  # nothing ever leaves


def test_orders_are_fresh_each_epoch_and_seeded():
    n, batch = 60, 6
    a = _draws(_filled(n, seed=3), batch, 30).ravel()
    b = _draws(_filled(n, seed=3), batch, 30).ravel()
    c = _draws(_filled(n, seed=4), batch, 30).ravel()
    np.testing.assert_array_equal(a, b)  # same seed: same orders
    assert not np.array_equal(a, c)
    epochs = a.reshape(3, n)
    # three epochs of 60 in the same order by chance: probability (1/60!)^2, i.e. never
    assert not np.array_equal(epochs[0], epochs[1]) and not np.array_equal(epochs[1], epochs[2])
    assert not np.array_equal(epochs[0], np.arange(n))  # shuffled, not insertion order


def test_end_of_reception_keeps_serving_epochs():
    buf = _filled(20)
    buf.end_reception()
    draws = _draws(buf, 5, 12).ravel()  # 3 epochs after the end: nothing drained
    assert len(buf) == 20 and not buf.is_exhausted(5)
    for e in range(3):
        assert sorted(draws[e * 20:(e + 1) * 20].tolist()) == list(range(20))
    with pytest.raises(BufferStateError, match="after end_reception"):
        buf.put((99, 0), {"x": np.zeros(1, np.float32)})


def test_samples_put_mid_epoch_join_at_the_next_epoch():
    buf = _filled(10, capacity=15)
    first = _draws(buf, 5, 1).ravel()
    buf.put_many(np.array([[50, i] for i in range(5)]), {"x": np.arange(100, 105, dtype=np.float32)[:, None]})
    second = _draws(buf, 5, 1).ravel()
    assert sorted([*first, *second]) == list(range(10))  # epoch 1: the 10 samples present when it began
    epoch2 = _draws(buf, 5, 3).ravel()
    assert sorted(epoch2.tolist()) == [*range(10), *range(100, 105)]


def test_bad_settings_and_overfull_puts():
    with pytest.raises(BufferConfigError, match="max_reuse"):
        make_buffer("epoch", capacity=10, watermark=5, max_reuse=1)
    buf = _filled(10)
    with pytest.raises(BufferFullError, match="raise its capacity"):
        buf.put((99, 0), {"x": np.zeros(1, np.float32)})
    assert len(buf) == 10 and buf.n_put == 10  # all or nothing


def test_checkpoint_resumes_mid_epoch_with_identical_draws():
    buf = _filled(23, seed=7)
    _draws(buf, 4, 4)  # 16 of 23 drawn: mid-epoch
    copy = buffer_from_state_dict(buf.state_dict())
    assert copy.kind == "epoch" and copy.policy.epochs == buf.policy.epochs == 1
    np.testing.assert_array_equal(_draws(buf, 4, 20), _draws(copy, 4, 20))


def test_offline_config_sizes_an_epoch_buffer():
    cfg = load_config("configs/quickstart.toml", {"solver.config": "{ n = 14 }", "solver.steps": "10",
                                                    "optim.batch_size": "8", "workers.chunk_frames": "10"})
    from streaming.chunk import Chunk

    msgs = [Chunk(sim_id=i, frame_index=np.arange(11), fields=np.zeros((11, 1, 16, 16), np.float32),
                  params=np.zeros(5, np.float32), solver="heat2d") for i in range(3)]
    out = offline_config(cfg, msgs)
    b = out.buffer
    # the quickstart trains through 4 model calls: a sample spans 1 input + 4 targets, 7 of 11 frames per simulation
    assert (b.kind, b.capacity, b.watermark, b.max_reuse) == ("epoch", 21, 21, None)
    assert cfg.buffer.kind == "reservoir"  # a copy: the online config is untouched
    wide = offline_config(cfg.model_copy(update={"workers": cfg.workers.model_copy(update={"chunk_frames": 50})}), msgs)
    assert (wide.buffer.capacity, wide.buffer.watermark) == (50, 21)  # run_job wants capacity >= chunk_frames
    from streaming.config import ConfigError

    with pytest.raises(ConfigError, match="fewer than optim.batch_size"):
        offline_config(cfg, msgs[:0])
    one_step = load_config("configs/quickstart.toml", {"solver.config": "{ n = 14 }", "solver.steps": "10",
                                                         "optim.batch_size": "8", "workers.chunk_frames": "10",
                                                         "optim.unroll": "{ start = 1, end = 1 }"})
    assert offline_config(one_step, msgs).buffer.watermark == 3 * 10  # one-step samples: 10 of 11 frames


def test_train_offline_sees_every_sample_once_per_epoch(tmp_path):
    from streaming.cli import main

    common = ["--set", "solver.config={ n = 14 }", "--set", "solver.steps=10", "--set", "solver.n_sims=6",
              "--set", "workers.sims_per_task=6", "--set", "logging.progress=false",
              "--set", "logging.tensorboard=false", "--set", f"logging.run_dir={tmp_path}"]
    data = tmp_path / "data.h5"
    assert main(["generate", "configs/quickstart.toml", *common, "--out", str(data), "--quiet"]) == 0
    # 6 sims x 10 samples = 60; batch 8 x 15 steps = 120 draws = exactly 2 epochs
    assert main(["train", "configs/quickstart.toml", *common, "--offline", str(data), "--backend", "local",
                 "--set", "optim.steps=15", "--set", "optim.batch_size=8", "--set", "optim.unroll={start=1, end=1}",
                 "--set", "model.hparams={ modes = 4, width = 8, depth = 1 }", "--set", "validation.n_sims=2",
                 "--set", "validation.interval=100", "--set", "logging.name=offline"]) == 0
    summary = json.loads((tmp_path / "offline" / "summary.json").read_text())
    buf = summary["buffer"]
    assert summary["steps"] == 15 and buf["size"] == 60 and buf["n_drawn"] == 120
    assert buf["seen_max"] == 2 and buf["seen_mean"] == 2.0  # every sample drawn exactly twice
    assert 'kind = "epoch"' in (tmp_path / "offline" / "config.resolved.toml").read_text()
