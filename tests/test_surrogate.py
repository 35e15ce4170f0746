"""Tests of the streamed Normalizer and of the Surrogate object (step / rollout / save / load)."""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from surrogates.errors import SurrogateError
from surrogates.models import get_model
from surrogates.normalizer import Normalizer
from surrogates.surrogate import Surrogate, SurrogateMetadata

# Small models keep compile times low on the 2-core CI machine.
FNO_SMALL = dict(width=8, modes=4, depth=2, proj_width=16)


# --------------------------------------------------------------------------- normaliser
def _chunks(seed: int = 0, n: int = 20) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """n float32 chunks (B_i, 2, 8, 8) of random size; channel 0 ~ 1e3 + 0.01 N(0,1) (mean/std
    = 1e5, where E[x^2] - E[x]^2 in float32 loses every digit), channel 1 ~ -3 + 2 N(0,1);
    conditioning vectors (B_i, 3) ~ (1e3, 0, -1) + N(0,1) * (1, 1e-3, 5)."""
    rng = np.random.default_rng(seed)
    fields, conds = [], []
    for _ in range(n):
        b = int(rng.integers(1, 9))
        x = rng.standard_normal((b, 2, 8, 8)) * np.array([0.01, 2.0])[None, :, None, None]
        fields.append((x + np.array([1e3, -3.0])[None, :, None, None]).astype(np.float32))
        conds.append(rng.standard_normal((b, 3)) * np.array([1.0, 1e-3, 5.0]) + np.array([1e3, 0.0, -1.0]))
    return fields, conds


def test_streamed_statistics_equal_numpy_on_concatenated_data() -> None:
    fields, conds = _chunks()
    norm = Normalizer(channels=2, ndim=2, cond_dim=3)
    for f, c in zip(fields, conds, strict=True):
        norm.update(f, c)
    all_f, all_c = np.concatenate(fields), np.concatenate(conds)
    # numpy reference: two-pass float64 over the concatenated data (np.std is ddof=0, like ours).
    ref_mean = all_f.mean(axis=(0, 2, 3), dtype=np.float64)
    ref_std = all_f.astype(np.float64).std(axis=(0, 2, 3))
    # Tolerance 1e-6 relative (the required bound); float64 merging of 20 chunks actually agrees to ~1e-12.
    np.testing.assert_allclose(norm.mean, ref_mean, rtol=1e-6, atol=0)
    np.testing.assert_allclose(norm.std, ref_std, rtol=1e-6, atol=0)
    np.testing.assert_allclose(norm.cond_mean, all_c.mean(axis=0), rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(norm.cond_std, all_c.std(axis=0), rtol=1e-6, atol=0)
    assert norm.count == all_f.shape[0] * 64 and norm.cond_count == all_c.shape[0]

    # Frozen float32 stats normalise the data to mean ~0, std ~1. The float32 mean of channel 0 is
    # off by up to half a float32 spacing at 1e3 (3e-5), i.e. 3e-3 after dividing by std = 0.01:
    # the tolerance on the mean is one spacing / std. The std is rounded only relatively (~1e-7).
    z = np.asarray(norm.freeze().normalize(jnp.asarray(all_f)), np.float64)
    np.testing.assert_allclose(z.mean(axis=(0, 2, 3)), 0.0, atol=float(np.spacing(np.float32(1e3))) / 0.01)
    np.testing.assert_allclose(z.std(axis=(0, 2, 3)), 1.0, atol=1e-5)
    back = np.asarray(norm.denormalize(norm.normalize(jnp.asarray(all_f))))
    # float32 round trip: a few spacings of the channel's largest magnitude (x - mean, / std, * std, + mean).
    bound = 4 * np.spacing(np.abs(all_f).max(axis=(0, 2, 3), keepdims=True))
    assert np.all(np.abs(back - all_f) <= bound)


def test_std_floor_and_state_dict_round_trip() -> None:
    norm = Normalizer(channels=2, ndim=1, cond_dim=1, eps=1e-3)
    norm.update(np.stack([np.full((4, 5), 7.0), np.arange(20.0).reshape(4, 5)], axis=1), np.ones((4, 1)))
    np.testing.assert_array_equal(norm.std[0], 1e-3)  # constant channel -> floor, not 0
    np.testing.assert_array_equal(norm.cond_std, [1e-3])
    again = Normalizer.from_state_dict(norm.freeze().state_dict())
    assert again.frozen
    np.testing.assert_array_equal(again.mean, norm.mean)
    np.testing.assert_array_equal(again.std, norm.std)
    np.testing.assert_array_equal(np.asarray(again.stats.std), np.asarray(norm.stats.std))


def test_absorbing_other_normalizers_equals_fitting_the_pooled_data() -> None:
    fields, conds = _chunks(seed=2, n=9)
    parts = [Normalizer(channels=2, ndim=2, cond_dim=3) for _ in range(3)]  # e.g. three trainer processes
    for i, (f, c) in enumerate(zip(fields, conds, strict=True)):
        parts[i % 3].update(f, c)
    pooled = Normalizer(channels=2, ndim=2, cond_dim=3)
    for part in parts:
        pooled.absorb(part.state_dict())
    whole = Normalizer(channels=2, ndim=2, cond_dim=3)
    for f, c in zip(fields, conds, strict=True):
        whole.update(f, c)
    assert pooled.count == whole.count and pooled.cond_count == whole.cond_count
    # Same Chan updates in another order: float64 round-off only (1e-12 relative).
    for a, b in ((pooled.mean, whole.mean), (pooled.std, whole.std), (pooled.cond_mean, whole.cond_mean),
                 (pooled.cond_std, whole.cond_std)):
        np.testing.assert_allclose(a, b, rtol=1e-12)
    with pytest.raises(SurrogateError, match="do not match"):
        Normalizer(channels=1, ndim=2, cond_dim=3).absorb(parts[0].state_dict())
    with pytest.raises(SurrogateError, match="frozen"):
        whole.freeze().absorb(parts[0].state_dict())


def test_updating_a_frozen_normalizer_fails() -> None:
    norm = Normalizer(channels=1, ndim=2).update(np.ones((2, 1, 4, 4)))
    norm.freeze()
    with pytest.raises(SurrogateError, match="frozen"):
        norm.update(np.ones((2, 1, 4, 4)))


def test_normalizer_rejects_bad_shapes_and_nan() -> None:
    norm = Normalizer(channels=2, ndim=2)
    with pytest.raises(SurrogateError, match=r"expected \(B, 2, \*grid\)"):
        norm.update(np.ones((3, 1, 4, 4)))
    with pytest.raises(SurrogateError, match="NaN"):
        norm.update(np.full((1, 2, 4, 4), np.nan))
    with pytest.raises(SurrogateError, match="freeze"):
        norm.normalize(jnp.ones((1, 2, 4, 4)))


# --------------------------------------------------------------------------- surrogate fixtures
@pytest.fixture(scope="module")
def fno2d() -> tuple[Surrogate, np.ndarray, np.ndarray, np.ndarray]:
    """A next-step FNO on 16x16 with one parameter (nu) and the time in its conditioning vector."""
    rng = np.random.default_rng(1)
    model = get_model("fno", in_channels=1, out_channels=1, ndim=2, cond_dim=2, rngs=nnx.Rngs(3), **FNO_SMALL)
    u = (5.0 + 2.0 * rng.standard_normal((3, 1, 16, 16))).astype(np.float32)
    nu = rng.uniform(0.1, 0.5, (3, 1)).astype(np.float32)
    t = np.array([0.0, 0.25, 0.5], np.float32)
    norm = Normalizer(channels=1, ndim=2, cond_dim=2)
    norm.update(u, np.concatenate([nu, t[:, None]], axis=1)).freeze()
    meta = SurrogateMetadata(
        kind="next_step",
        solver="heat2d",
        grid=(16, 16),
        dt=0.05,
        channels=("u",),
        cond_names=("nu",),
        time_in_cond=True,
        extra={"note": "test"},
    )
    return Surrogate.from_model(model, norm, meta), u, nu, t


def test_fno_2d_save_load_rollout_is_identical(fno2d, tmp_path) -> None:
    sur, u, nu, t = fno2d
    roll = np.asarray(sur.rollout(u, 4, nu, t))
    assert roll.shape == (3, 5, 1, 16, 16)
    np.testing.assert_array_equal(roll[:, 0], u)  # frame 0 is the given initial field

    path = sur.save(tmp_path / "sur")
    doc = json.loads((path / "surrogate.json").read_text())
    assert doc["model"]["name"] == "fno" and doc["metadata"]["dt"] == 0.05
    loaded = Surrogate.load(path)
    assert loaded.metadata == sur.metadata and loaded.model_config == sur.model_config
    for a, b in zip(loaded.normalizer.stats, sur.normalizer.stats, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # Same parameters, same compiled program on the same machine: bitwise equal.
    np.testing.assert_array_equal(np.asarray(loaded.rollout(u, 4, nu, t)), roll)

    # set_state swaps the parameters: all-zero FNO weights predict 0 in normalised space, i.e.
    # the fitted mean everywhere (exact up to float32: 0 * std + mean).
    loaded.set_state(jax.tree.map(jnp.zeros_like, nnx.state(loaded.model)))
    np.testing.assert_array_equal(
        np.asarray(loaded.step(u, nu, t)), np.broadcast_to(loaded.normalizer.stats.mean, u.shape)
    )
    np.testing.assert_array_equal(np.asarray(sur.rollout(u, 4, nu, t)), roll)  # the original is untouched
    with pytest.raises(SurrogateError, match="do not fit"):
        loaded.set_state({"lift": {"kernel": jnp.zeros((5, 3))}})


def test_step_single_vs_batch_and_rollout_consistency(fno2d) -> None:
    sur, u, nu, t = fno2d
    batch = np.asarray(sur.step(u, nu, t))
    assert batch.shape == (3, 1, 16, 16)
    for i in range(3):
        one = np.asarray(sur.step(u[i], nu[i], t[i]))
        assert one.shape == (1, 16, 16)
        # Different batch sizes may compile to different XLA kernels: float32 rounding, 1e-5 relative.
        np.testing.assert_allclose(one, batch[i], rtol=1e-5, atol=1e-5 * np.abs(batch).max())
    single_roll = np.asarray(sur.rollout(u[1], 3, nu[1], t[1]))
    assert single_roll.shape == (4, 1, 16, 16)
    np.testing.assert_allclose(single_roll[1], batch[1], rtol=1e-5, atol=1e-5 * np.abs(batch).max())
    # encode_batch: the layout the model is trained on; cond = normalised (nu, t).
    enc = sur.encode_batch(u, u, nu, t)
    stats = sur.normalizer.stats
    np.testing.assert_array_equal(np.asarray(enc["x"]), np.asarray(stats.normalize(jnp.asarray(u))))
    np.testing.assert_array_equal(np.asarray(enc["y"]), np.asarray(enc["x"]))
    raw_cond = jnp.asarray(np.concatenate([nu, t[:, None]], axis=1))
    np.testing.assert_array_equal(np.asarray(enc["cond"]), np.asarray(stats.normalize_cond(raw_cond)))
    # The time enters the conditioning vector: a later start time changes the prediction.
    assert not np.allclose(np.asarray(sur.step(u[1], nu[1], 3.0)), batch[1])


def test_frozen_border_is_copied_from_the_last_input_frame(fno2d, tmp_path) -> None:
    sur, u, nu, t = fno2d
    meta = dataclasses.replace(sur.metadata, frozen_border=1)
    walled = Surrogate(sur._graphdef, nnx.state(sur.model), sur.normalizer, meta, sur.model_config)
    free = np.asarray(sur.rollout(u, 3, nu, t))
    roll = np.asarray(walled.rollout(u, 3, nu, t))
    ring = np.ones((16, 16), bool)
    ring[1:-1, 1:-1] = False
    for k in range(4):  # the wall ring of every frame is the initial one, exactly
        np.testing.assert_array_equal(roll[:, k][..., ring], u[..., ring])
    assert not np.allclose(free[:, 1][..., ring], u[..., ring])  # the model alone does drift there
    # one step from the same input: the interior is the model's, unchanged by the constraint
    np.testing.assert_array_equal(roll[:, 1][..., ~ring], free[:, 1][..., ~ring])
    assert Surrogate.load(walled.save(tmp_path / "walled")).metadata.frozen_border == 1
    with pytest.raises(SurrogateError, match="frozen_border"):
        dataclasses.replace(sur.metadata, frozen_border=8)  # half the 16-cell grid
    with pytest.raises(SurrogateError, match="frozen_border"):
        SurrogateMetadata(kind="field", solver="heat2d", grid=(8, 8), dt=0.1, channels=("u",),
                          cond_names=("a",), frozen_border=1)


def test_fno_1d_bundle_save_load_rollout_is_identical(tmp_path) -> None:
    """1D, two channels, a window of W = 2 frames in and a bundle of K = 2 frames out per call."""
    rng = np.random.default_rng(2)
    model = get_model("fno", in_channels=4, out_channels=4, ndim=1, rngs=nnx.Rngs(0), **FNO_SMALL)
    frames = (1.0 + rng.standard_normal((2, 2, 2, 32))).astype(np.float32)  # (B, W=2, C=2, 32)
    norm = Normalizer(channels=2, ndim=1).update(frames.reshape(4, 2, 32)).freeze()
    meta = SurrogateMetadata(
        kind="bundle", solver="burgers1d", grid=(32,), dt=0.1, channels=("u", "v"), window=2, horizon=2
    )
    sur = Surrogate.from_model(model, norm, meta)
    roll = np.asarray(sur.rollout(frames, 5))  # 3 model calls, the 6th predicted frame dropped
    assert roll.shape == (2, 6, 2, 32)
    np.testing.assert_array_equal(roll[:, 0], frames[:, -1])  # frame 0 = last frame of the window

    # By hand: the model on the frame-major stacked, normalised window, read back the same way;
    # each call's K frames form the next window. Tolerance: float32 rounding of another program.
    forward = jax.jit(lambda x: model(x))  # one compile instead of one per eager op

    def by_hand(window: np.ndarray) -> np.ndarray:
        return np.asarray(sur.decode_outputs(forward(sur.encode_batch(window)["x"])))

    first = by_hand(frames)
    np.testing.assert_allclose(roll[:, 1:3], first, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(roll[:, 3:5], by_hand(first)[:, :2], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.asarray(sur.step(frames[1])), roll[1, 1:3], rtol=1e-5, atol=1e-5)

    loaded = Surrogate.load(sur.save(tmp_path / "s1d"))
    np.testing.assert_array_equal(np.asarray(loaded.rollout(frames, 5)), roll)


def test_field_kind_rollout_evaluates_the_model_at_each_time(tmp_path) -> None:
    model = get_model("mlp", in_channels=0, out_channels=1, ndim=2, cond_dim=2, grid=(4, 4), hidden=(8,))
    norm = Normalizer(channels=1, ndim=2, cond_dim=2).update(np.ones((2, 1, 4, 4)), np.eye(2)).freeze()
    meta = SurrogateMetadata(
        kind="field", solver="heat2d", grid=(4, 4), dt=0.5, channels=("T",), cond_names=("a",), time_in_cond=True
    )
    sur = Surrogate.from_model(model, norm, meta)
    roll = np.asarray(sur.rollout(None, 3, [0.3], t0=1.0))
    assert roll.shape == (4, 1, 4, 4)
    for k in range(4):
        np.testing.assert_allclose(roll[k], np.asarray(sur.predict([0.3], 1.0 + 0.5 * k)), rtol=1e-6, atol=1e-6)
    loaded = Surrogate.load(sur.save(tmp_path / "field"))
    np.testing.assert_array_equal(np.asarray(loaded.rollout(None, 3, [0.3], t0=1.0)), roll)


# --------------------------------------------------------------------------- wrong model / shape
def test_loading_into_a_wrong_model_or_shape_fails_naming_both(fno2d, tmp_path) -> None:
    sur, *_ = fno2d
    path = sur.save(tmp_path / "w8")

    # surrogate.json claims width 16 but the arrays are width 8 (the case "metadata says width
    # 32 but the arrays are width 64", at test size).
    doc = json.loads((path / "surrogate.json").read_text())
    doc["model"]["width"] = 16
    (path / "surrogate.json").write_text(json.dumps(doc))
    with pytest.raises(SurrogateError, match=r"width=8 in the checkpoint but 16 in surrogate\.json") as err:
        Surrogate.load(path)
    # lift: (C_in 1 + cond_dim 2 + 2 coordinates, width)
    assert "lift.kernel: (5, 8) float32 in the checkpoint but (5, 16) float32 in the model" in str(err.value)

    # A different model passed explicitly (only its structure is used, so an abstract one will do).
    mlp = nnx.eval_shape(
        lambda: get_model("mlp", in_channels=1, out_channels=1, ndim=2, cond_dim=2, grid=(16, 16), hidden=(4,))
    )
    with pytest.raises(SurrogateError, match=r"holds a fno\(.*but the model passed to load\(\) describes a mlp\("):
        Surrogate.load(path, model=mlp)


def test_metadata_model_and_normaliser_must_agree(fno2d, tmp_path) -> None:
    sur, *_ = fno2d
    model = sur.model  # FNO, 1 channel in and out, cond_dim 2
    norm2 = Normalizer(channels=2, ndim=2, cond_dim=2).update(np.ones((1, 2, 4, 4)), np.ones((1, 2))).freeze()
    meta = dict(
        kind="next_step",
        solver="heat2d",
        grid=[8, 8],
        dt=0.1,
        channels=["u", "v"],
        cond_names=["nu"],
        time_in_cond=True,
    )
    with pytest.raises(SurrogateError, match="in_channels is 1 but"):
        Surrogate.from_model(model, norm2, meta)
    with pytest.raises(SurrogateError, match="kind"):
        SurrogateMetadata.from_dict({**meta, "kind": "steady"})
    with pytest.raises(SurrogateError, match="cond_dim is 2 but"):
        Surrogate.from_model(model, norm2, {**meta, "channels": ["u"], "time_in_cond": False})
    one = Normalizer(channels=1, ndim=2, cond_dim=2).update(np.ones((1, 1, 4, 4)), np.ones((1, 2)))
    with pytest.raises(SurrogateError, match="not frozen"):
        Surrogate.from_model(model, one, {**meta, "channels": ["u"]})
    with pytest.raises(SurrogateError, match=r"expected \(1, \*grid\)"):
        sur.step(np.ones((2, 8, 8)), [0.1])
    with pytest.raises(SurrogateError, match=r"needs the parameters \['nu'\]"):
        sur.step(np.ones((1, 8, 8)))
    sur.save(tmp_path / "s")
    with pytest.raises(SurrogateError, match="overwrite=True"):
        sur.save(tmp_path / "s")
    sur.save(tmp_path / "s", overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]  # no temporary directory left behind
