"""The training-sample layout (streaming.samples): what cut() gives, that the trainer can hand it to
Surrogate.encode_batch unchanged, how the job config maps onto a SampleSpec, and that a checkpoint written with
the earlier layout (frames stacked on the channel axis) resumes into today's."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from flax import nnx

from streaming.assembly import build_solver, sample_spec, worker_args
from streaming.buffers import buffer_from_state_dict, make_buffer
from streaming.checkpoint import Checkpoints
from streaming.chunk import Chunk
from streaming.config import load_config
from streaming.job import run_job
from streaming.samples import SampleSpec, cut
from streaming.worker import chunk_bounds
from surrogates.models import get_model
from surrogates.normalizer import Normalizer
from surrogates.surrogate import Surrogate, SurrogateMetadata

C, GRID = 2, (6,)


def _chunk(n_frames: int = 12, first: int = 3, sim_id: int = 7) -> Chunk:
    rng = np.random.default_rng(0)
    return Chunk(sim_id=sim_id, frame_index=np.arange(first, first + n_frames),
                 fields=rng.standard_normal((n_frames, C, *GRID)).astype(np.float32),
                 params=np.array([0.5, 2.0], np.float32), solver="toy")


SPECS = {
    "next_step": SampleSpec("next_step", 1, 1, True, 0.1),
    "next_step_w2_s3": SampleSpec("next_step", 2, 1, True, 0.1, calls=3),
    "bundle_k2_s2": SampleSpec("bundle", 2, 2, False, 0.1, calls=2),
    "field": SampleSpec("field", 0, 1, True, 0.1),
}


@pytest.mark.parametrize("name", SPECS)
def test_cut_keeps_frames_as_frames_in_views(name) -> None:
    spec, c = SPECS[name], _chunk()
    u, w, n_t = c.fields, spec.window, spec.targets
    keys, s = cut(c, spec)
    n = c.n_frames - spec.span + 1
    assert keys.shape == (n, 2) and (keys[:, 0] == c.sim_id).all()
    np.testing.assert_array_equal(keys[:, 1], c.frame_index[w : w + n])  # frame index of each sample's first target
    shapes = spec.frame_shapes(C, GRID)
    assert {k: v.shape[1:] for k, v in s.items() if k in ("x", "y")} == shapes
    for i in range(n):
        if w:
            np.testing.assert_array_equal(s["x"][i], u[i : i + w])
        np.testing.assert_array_equal(s["y"][i], u[i + w : i + w + n_t])
    for k in shapes:  # views into the chunk: a buffer copies only what it keeps
        assert np.shares_memory(s[k], c.fields) and not s[k].flags.writeable
    last_input = c.frame_index[w : w + n] - (0 if spec.kind == "field" else 1)
    np.testing.assert_allclose(s["t"], last_input * 0.1, rtol=1e-6)
    assert ("cond" in s) == spec.condition_on_params
    assert "x" not in s if spec.kind == "field" else s["x"].dtype == np.float32
    short = Chunk(sim_id=1, frame_index=np.arange(spec.span - 1), fields=u[: spec.span - 1], params=c.params,
                  solver="toy")
    assert cut(short, spec)[0].shape == (0, 2)


def test_cut_samples_go_to_encode_batch_unchanged() -> None:
    """encode_batch takes cut()'s arrays as they are: model-space x[b, w*C + c] is frame w, channel c, normalised,
    and y holds the targets of every model call the same way."""
    spec, c = SPECS["bundle_k2_s2"], _chunk()
    keys, s = cut(c, spec)
    cin, cout = spec.channels(C)
    model = get_model("fno", in_channels=cin, out_channels=cout, ndim=1, cond_dim=0, rngs=nnx.Rngs(0),
                      width=4, modes=2, depth=1, proj_width=8)
    norm = Normalizer(channels=C, ndim=1, cond_dim=0)
    norm.update(c.fields).freeze()
    meta = SurrogateMetadata(kind="bundle", solver="toy", grid=GRID, dt=0.1, channels=("a", "b"),
                             window=spec.window, horizon=spec.horizon)
    sur = Surrogate.from_model(model, norm, meta)
    enc = sur.encode_batch(s["x"], s["y"], None, s["t"])
    mean, std = (np.asarray(a).reshape(C, 1) for a in (norm.stats.mean, norm.stats.std))
    n = len(keys)
    assert enc["x"].shape == (n, cin, *GRID) and enc["y"].shape == (n, spec.targets * C, *GRID)
    for i in range(n):
        for f in range(spec.window):
            np.testing.assert_allclose(np.asarray(enc["x"])[i, f * C : (f + 1) * C], (c.fields[i + f] - mean) / std,
                                       rtol=1e-5, atol=1e-5)
        for f in range(spec.targets):
            np.testing.assert_allclose(np.asarray(enc["y"])[i, f * C : (f + 1) * C],
                                       (c.fields[i + spec.window + f] - mean) / std, rtol=1e-5, atol=1e-5)


def test_sample_spec_names_mean_what_they_say() -> None:
    base = {"solver.config": "{ n = 14 }", "solver.steps": "20"}
    quick = load_config("configs/quickstart.toml", base)
    spec = sample_spec(quick, build_solver(quick))
    assert (spec.kind, spec.window, spec.horizon, spec.calls, spec.span) == ("next_step", 1, 1, 4, 5)  # unroll.end 4
    args = worker_args(quick, spec)
    assert (args["window"], args["targets"]) == (1, 4)
    field = load_config("configs/quickstart.toml", {**base, "sample.kind": '"field"', "model.name": '"mlp"',
                                                    "model.predict": '"state"', "optim.unroll": "none"})
    spec = sample_spec(field, build_solver(field))
    assert (spec.window, spec.horizon, spec.calls, spec.span, spec.channels(1)) == (0, 1, 1, 1, (0, 1))
    bundle = load_config("configs/quickstart.toml", {**base, "sample.kind": '"bundle"', "sample.window": "3",
                                                     "sample.horizon": "3", "optim.unroll": "{ start = 1, end = 2 }"})
    spec = sample_spec(bundle, build_solver(bundle))
    assert (spec.window, spec.horizon, spec.calls, spec.targets, spec.channels(1)) == (3, 3, 2, 6, (3, 3))
    for bad, needle in [(("field", 1, 1), "window=1, must be 0"), (("next_step", 1, 2), "horizon=2, must be 1"),
                        (("bundle", 0, 2), "need window >= 1"), (("field", 0, 1, 2), "calls=2, must be 1")]:
        kind, w, h, *calls = bad
        with pytest.raises(ValueError, match=needle):
            SampleSpec(kind, w, h, False, 0.1, *calls)


@pytest.mark.parametrize("window,targets,chunk_frames", [(1, 1, 4), (2, 3, 4), (0, 1, 5), (3, 4, 1)])
def test_chunks_of_a_simulation_give_every_sample_once(window, targets, chunk_frames) -> None:
    n_frames = 17
    spec = SampleSpec("bundle", window, targets, False, 0.1) if window else SampleSpec("field", 0, 1, False, 0.1)
    u = np.arange(n_frames, dtype=np.float32)[:, None, None] * np.ones((1, 1, 2), np.float32)
    got = []
    for lo, hi, first in chunk_bounds(n_frames, chunk_frames, window, targets):
        piece = Chunk(sim_id=0, frame_index=np.arange(lo, hi), fields=u[lo:hi], params=np.zeros(0), solver="t")
        keys, _ = cut(piece, spec)
        assert keys[0, 1] == first
        got += keys[:, 1].tolist()
    assert got == list(range(window, n_frames - targets + 1))


def test_buffer_of_the_earlier_layout_takes_todays() -> None:
    """Samples stored by the earlier cut (frames stacked on channels) read back as today's after reshape_samples."""
    spec, c = SPECS["next_step_w2_s3"], _chunk()
    keys, s = cut(c, spec)
    n = len(keys)
    old = {**s, "x": s["x"].reshape(n, -1, *GRID), "y": s["y"].reshape(n, -1, *GRID)}  # (n, W*C, *grid)...
    buf = make_buffer("reservoir", capacity=20, watermark=1, seed=3)
    buf.put_many(keys, old)
    back = buffer_from_state_dict(buf.state_dict())
    with pytest.raises(ValueError, match="expected"):
        back.put_many(np.array([[1, 0]]), {k: v[:1] for k, v in s.items()})  # today's samples do not fit yet
    back.reshape_samples(spec.frame_shapes(C, GRID))
    got_keys, batch = back.sample_batch(n)
    order = got_keys[:, 1] - keys[0, 1]
    for k in s:
        np.testing.assert_array_equal(batch[k], s[k][order])
    assert back.put_many(np.array([[9, 5]]), {k: v[:1] for k, v in s.items()}).all()  # new samples go in
    with pytest.raises(ValueError, match="cannot be read as"):
        back.reshape_samples({"x": (3, C, *GRID)})


def test_resume_of_a_checkpoint_with_the_earlier_layout_repeats_the_run(tmp_path) -> None:
    """A local run resumed from its step-10 checkpoint, rewritten in the earlier layout, repeats the
    uninterrupted run's losses exactly."""
    cfg = load_config("configs/quickstart.toml", {
        "solver.config": "{ n = 14, dt = 0.002 }", "solver.steps": "12", "optim.steps": "20",
        "optim.batch_size": "8", "optim.unroll": "{ start = 1, end = 2, ramp_steps = 10 }", "buffer.capacity": "256",
        "buffer.watermark": "32", "workers.backend": '"local"', "workers.chunk_frames": "11",
        "model.hparams": "{ modes = 4, width = 8, depth = 1 }", "validation.n_sims": "2", "validation.interval": "10",
        "validation.rollout_steps": "4", "checkpoint.interval": "10", "logging.interval": "5",
        "logging.progress": "false", "logging.tensorboard": "false", "logging.run_dir": str(tmp_path),
        "logging.name": "whole"})
    whole = run_job(cfg)
    run, old = tmp_path / "whole", tmp_path / "old"
    shutil.copytree(run, old)
    shutil.rmtree(old / "checkpoints" / "20")
    ck = Checkpoints(old, keep=5)
    train, tree, meta = ck.restore(None, step=10)
    data = tree["buffer"]["data"]
    n, grid = len(data["x"]), data["x"].shape[3:]
    assert data["x"].shape == (n, 1, 1, *grid) and data["y"].shape == (n, 2, 1, *grid)  # (W, C, *grid), (S*K, ...)
    data["x"], data["y"] = data["x"].reshape(n, 1, *grid), data["y"].reshape(n, 2, *grid)  # the earlier layout
    ck.close()
    shutil.rmtree(old / "checkpoints" / "10")
    ck = Checkpoints(old, keep=5)
    ck.save(10, train, tree, meta)
    ck.close()
    ck = Checkpoints(old, keep=5)
    assert ck.restore(None, step=10)[1]["buffer"]["data"]["y"].shape == (n, 2, *grid)
    ck.close()
    before = len((old / "metrics.jsonl").read_text().splitlines())
    resumed = run_job(resume=old)
    assert resumed["steps"] == 20 and resumed["final_loss"] == whole["final_loss"]
    assert resumed["best_val_rollout_rel_l2"] == whole["best_val_rollout_rel_l2"]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    again = [json.loads(line) for line in (old / "metrics.jsonl").read_text().splitlines()][before:]
    losses = [(r["step"], r["loss"]) for r in records if "loss" in r and r["step"] > 10]
    assert [(r["step"], r["loss"]) for r in again if "loss" in r] == losses == [(15, losses[0][1]), (20, whole[
        "final_loss"])]
