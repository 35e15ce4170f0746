"""Tests of the wire record (streaming.chunk) and the training buffers (streaming.buffers).

Statistical tests use fixed seeds, so they are reproducible; each states the false-alarm rate its
threshold would have for an unbiased sampler over fresh seeds (1e-6), so a failure means a bias,
not bad luck, unless the seeds are changed and a 1e-6 tail is hit.
"""

from __future__ import annotations

import copy
import json
import pickle
import threading

import numpy as np
import pytest
from scipy import stats

from streaming.buffers import (
    Buffer,
    BufferConfigError,
    BufferFullError,
    BufferStateError,
    buffer_from_state_dict,
    decode_keys,
    encode_keys,
    make_buffer,
)
from streaming.chunk import Chunk, ChunkError

KINDS = ("fifo", "firo", "reservoir")


# ============================================================================ helpers
def _keys(sim_id: int, steps) -> np.ndarray:
    steps = np.asarray(steps, dtype=np.int64)
    return np.stack([np.full_like(steps, sim_id), steps], axis=1)


def _samples(sim_id: int, steps) -> dict[str, np.ndarray]:
    """Samples whose values encode their key, so a batch can be checked against its keys."""
    steps = np.asarray(steps, dtype=np.float32)
    n = steps.size
    u = np.empty((n, 2, 3), dtype=np.float32)
    u[:] = (sim_id * 1000 + steps)[:, None, None]
    return {"u": u, "p": np.full((n, 1), sim_id, dtype=np.float32)}


def _put_sim(buf: Buffer, sim_id: int, steps) -> np.ndarray:
    return buf.put_many(_keys(sim_id, steps), _samples(sim_id, steps))


def _check_batch_matches_keys(keys: np.ndarray, batch: dict[str, np.ndarray]) -> None:
    expect = (keys[:, 0] * 1000 + keys[:, 1]).astype(np.float32)
    np.testing.assert_array_equal(batch["u"][:, 0, 0], expect)
    np.testing.assert_array_equal(batch["p"][:, 0], keys[:, 0].astype(np.float32))


def _check_invariants(buf: Buffer) -> None:
    assert len(buf) == buf.n_put - buf.n_discarded - buf.n_evicted
    assert buf.put_get_balance == buf.n_put - buf.n_drawn
    assert len(buf.keys()) == len(buf.seen_counts()) == len(buf)
    assert 0 <= len(buf) <= buf.capacity


def _chunk(sim_id=3, n=4, grid=(8, 6), channels=2, **kw) -> Chunk:
    rng = np.random.default_rng(sim_id)
    return Chunk(
        sim_id=sim_id,
        frame_index=np.arange(10, 10 + n),
        fields=rng.standard_normal((n, channels, *grid)).astype(np.float32),
        params=np.array([0.5, 2.0, -1.25], dtype=np.float32),
        solver="heat2d",
        **kw,
    )


# ============================================================================ Chunk
def test_chunk_coerces_dtypes_and_is_read_only():
    fields64 = np.random.default_rng(0).standard_normal((3, 1, 5))  # float64 from an external client
    c = Chunk(sim_id=np.int32(7), frame_index=np.array([0, 2, 4], dtype=np.int32), fields=fields64, params=[1, 2],
              solver="s")
    assert c.sim_id == 7 and type(c.sim_id) is int
    assert c.frame_index.dtype == np.int64 and c.fields.dtype == np.float32 and c.params.dtype == np.float32
    assert c.fields.flags.c_contiguous
    np.testing.assert_allclose(c.fields, fields64, rtol=1e-7)  # float32 rounding: rel. 2**-24 ~ 6e-8
    with pytest.raises(ValueError):
        c.fields[0, 0, 0] = 1.0
    # a float32 contiguous input is not copied, and the caller's array stays writeable
    f32 = np.zeros((3, 1, 5), dtype=np.float32)
    c2 = Chunk(sim_id=1, frame_index=[0, 1, 2], fields=f32, params=[], solver="s")
    assert np.shares_memory(c2.fields, f32) and f32.flags.writeable
    assert c2.params.shape == (0,)
    # ODE systems: no grid axes
    assert Chunk(sim_id=0, frame_index=[5], fields=np.zeros((1, 3)), params=[1.0], solver="lorenz").grid == ()


def test_chunk_properties_and_keys():
    c = _chunk(sim_id=3, n=4)
    assert (c.n_frames, c.n_channels, c.grid) == (4, 2, (8, 6))
    assert c.offset == (0, 0) and c.global_grid == (8, 6) and not c.is_slab
    assert c.nbytes == 4 * 2 * 8 * 6 * 4 + 4 * 8 + 3 * 4
    np.testing.assert_array_equal(c.sample_keys(), [[3, 10], [3, 11], [3, 12], [3, 13]])
    assert c.sample_keys().dtype == np.int64
    assert "sim_id=3" in repr(c) and len(repr(c)) < 200  # no array dump in logs


def test_chunk_is_finite():
    c = _chunk()
    assert c.is_finite()
    f = np.array(c.fields)
    f[1, 0, 2, 3] = np.nan
    assert not Chunk(sim_id=1, frame_index=c.frame_index, fields=f, params=c.params, solver="s").is_finite()
    f = np.array(c.fields)
    f[0, 1, 0, 0] = np.inf
    assert not Chunk(sim_id=1, frame_index=c.frame_index, fields=f, params=c.params, solver="s").is_finite()
    bad_params = Chunk(sim_id=1, frame_index=c.frame_index, fields=c.fields, params=[np.inf, 0, 0], solver="s")
    assert not bad_params.is_finite()


@pytest.mark.parametrize(
    "change, needle",
    [
        ({"frame_index": np.arange(3)}, "len(frame_index)"),
        ({"frame_index": np.array([0, 2, 1, 3])}, "strictly increasing"),
        ({"frame_index": np.array([-1, 0, 1, 2])}, ">= 0"),
        ({"frame_index": np.arange(4.0)}, "integer"),
        ({"sim_id": -1}, "sim_id"),
        ({"sim_id": 1.5}, "sim_id"),
        ({"sim_id": True}, "sim_id"),
        ({"fields": np.zeros((4, 2, 8, 6), dtype=np.int32)}, "floating"),
        ({"fields": np.zeros(4, dtype=np.float32)}, "(n_frames, C, *grid)"),
        ({"params": np.zeros((1, 3))}, "params"),
        ({"solver": ""}, "solver"),
        ({"offset": (0,)}, "one entry per grid axis"),
        ({"offset": (4, 0), "global_grid": (10, 6)}, "grid axis 0"),
        ({"offset": (0, -1), "global_grid": (8, 6)}, "grid axis 1"),
    ],
)
def test_chunk_validation(change, needle):
    kw = dict(
        sim_id=3,
        frame_index=np.arange(4),
        fields=np.zeros((4, 2, 8, 6), dtype=np.float32),
        params=np.zeros(3, dtype=np.float32),
        solver="heat2d",
    )
    kw.update(change)
    with pytest.raises(ChunkError) as err:
        Chunk(**kw)
    assert needle in str(err.value)
    assert isinstance(err.value, ValueError)


def test_chunk_wire_round_trip_json_and_raw_bytes():
    c = _chunk(sim_id=11, n=5, offset=(8, 0), global_grid=(32, 6))
    assert c.is_slab
    header, array = c.to_wire()
    assert array is c.fields or np.shares_memory(array, c.fields)  # no copy on the way out
    header = json.loads(json.dumps(header))  # only plain types
    for data in (array, array.ravel(), array.tobytes(), memoryview(array.tobytes()), bytearray(array.tobytes())):
        back = Chunk.from_wire(header, data)
        assert back.sim_id == c.sim_id and back.solver == c.solver
        assert back.offset == (8, 0) and back.global_grid == (32, 6)
        np.testing.assert_array_equal(back.frame_index, c.frame_index)
        np.testing.assert_array_equal(back.params, c.params)  # exact: float32 -> Python float -> float32
        np.testing.assert_array_equal(back.fields, c.fields)
    # MPI receive buffer as uint8
    back = Chunk.from_wire(header, np.frombuffer(array.tobytes(), dtype=np.uint8))
    np.testing.assert_array_equal(back.fields, c.fields)
    # Ray path: pickle of the dataclass
    back = pickle.loads(pickle.dumps(c))
    np.testing.assert_array_equal(back.fields, c.fields)
    assert back.global_grid == (32, 6)


def test_chunk_frames_are_views_equal_to_a_checked_chunk_of_the_same_frames():
    c = _chunk(sim_id=4, n=7, offset=(8, 0), global_grid=(32, 6))
    part = c.frames(2, 5)
    ref = Chunk(c.sim_id, c.frame_index[2:5], c.fields[2:5], c.params, c.solver, c.offset, c.global_grid)
    for name in ("sim_id", "solver", "offset", "global_grid"):
        assert getattr(part, name) == getattr(ref, name)
    for name in ("frame_index", "fields", "params"):
        np.testing.assert_array_equal(getattr(part, name), getattr(ref, name))
        assert getattr(part, name).dtype == getattr(ref, name).dtype
        assert np.shares_memory(getattr(part, name), getattr(c, name))  # views, no copy
        assert not getattr(part, name).flags.writeable
    assert part.fields.flags.c_contiguous and part.n_frames == 3 and c.frames(5, 99).n_frames == 2


def test_chunk_from_wire_float64_sender_and_errors():
    c = _chunk(n=2)
    header, array = c.to_wire()
    h64 = dict(header, dtype="<f8")
    back = Chunk.from_wire(h64, array.astype(np.float64).tobytes())
    assert back.fields.dtype == np.float32
    np.testing.assert_array_equal(back.fields, c.fields)
    with pytest.raises(ChunkError, match="needs"):
        Chunk.from_wire(header, array.ravel()[:-1])
    with pytest.raises(ChunkError, match="version"):
        Chunk.from_wire(dict(header, version=99), array)
    with pytest.raises(ChunkError, match="missing key"):
        Chunk.from_wire({k: v for k, v in header.items() if k != "frame_index"}, array)


# ============================================================================ configs
@pytest.mark.parametrize(
    "kind, kw, needle",
    [
        ("lifo", dict(capacity=4, watermark=1), "kind"),
        ("fifo", dict(capacity=0, watermark=1), "capacity"),
        ("fifo", dict(capacity=2.5, watermark=1), "capacity"),
        ("fifo", dict(capacity=True, watermark=1), "capacity"),
        ("firo", dict(capacity=4, watermark=5), "watermark"),
        ("firo", dict(capacity=4, watermark=0), "watermark"),
        ("reservoir", dict(capacity=4, watermark=1, max_reuse=0), "max_reuse"),
        ("reservoir", dict(capacity=4, watermark=1, seed=-1), "seed"),
        ("reservoir", dict(capacity=4, watermark=1, dedup="yes"), "dedup"),
        ("reservoir", dict(capacity=4, watermark=1, size=3), "size"),
        ("reservoir", dict(watermark=1), "capacity"),
    ],
)
def test_bad_configs(kind, kw, needle):
    with pytest.raises(BufferConfigError) as err:
        make_buffer(kind, **kw)
    msg = str(err.value)
    assert needle in msg and "\n" not in msg and ("allowed" in msg or "missing" in msg)


def test_bad_batch_size():
    buf = make_buffer("firo", capacity=4, watermark=1)
    for bad in (0, 5, 2.0, True):
        with pytest.raises(BufferConfigError, match="batch_size"):
            buf.sample_batch(bad)


def test_make_buffer_kinds_and_case():
    for kind in KINDS:
        buf = make_buffer(kind.upper(), capacity=3, watermark=2)
        assert buf.kind == kind and buf.capacity == 3 and buf.watermark == 2 and len(buf) == 0


# ============================================================================ keys
def test_key_codec_round_trip_and_range():
    keys = np.array([[0, 0], [5, 7], [2**31 - 1, 2**32 - 1]])
    np.testing.assert_array_equal(decode_keys(encode_keys(keys)), keys)
    assert len(set(encode_keys(keys).tolist())) == 3
    for bad in ([[-1, 0]], [[2**31, 0]], [[0, 2**32]], [[0, -3]]):
        with pytest.raises(BufferStateError, match="sim_id"):
            encode_keys(bad)
    with pytest.raises(BufferStateError, match=r"\(n, 2\)"):
        encode_keys(np.zeros((3, 3), dtype=int))
    with pytest.raises(BufferStateError, match=r"\(n, 2\)"):
        encode_keys(np.zeros((3, 2)))  # float keys are refused, not truncated


# ============================================================================ FIFO
def test_fifo_order_and_consumption():
    buf = make_buffer("fifo", capacity=10, watermark=1)
    _put_sim(buf, 1, range(4))
    _put_sim(buf, 2, range(3))
    drawn = []
    while (out := buf.sample_batch(3)) is not None:
        keys, batch = out
        _check_batch_matches_keys(keys, batch)
        drawn.extend(map(tuple, keys.tolist()))
        _check_invariants(buf)
    assert drawn == [(1, 0), (1, 1), (1, 2), (1, 3), (2, 0), (2, 1)]
    assert len(buf) == 1 and buf.keys().tolist() == [[2, 2]]
    assert buf.n_evicted == 6 and buf.n_drawn == 6 and buf.put_get_balance == 1


def test_fifo_ring_wraps_and_keeps_order():
    buf = make_buffer("fifo", capacity=5, watermark=1)
    order = []
    for sim in range(6):
        assert buf.has_room(3)
        _put_sim(buf, sim, range(3))
        keys, batch = buf.sample_batch(3)
        _check_batch_matches_keys(keys, batch)
        order.extend(map(tuple, keys.tolist()))
    assert order == [(s, t) for s in range(6) for t in range(3)]


def test_fifo_max_reuse_repeats_the_oldest_batch():
    buf = make_buffer("fifo", capacity=10, watermark=1, max_reuse=2)
    _put_sim(buf, 0, range(4))
    k1 = buf.sample_batch(2)[0]
    k2 = buf.sample_batch(2)[0]
    k3 = buf.sample_batch(2)[0]
    assert k1.tolist() == k2.tolist() == [[0, 0], [0, 1]]
    assert k3.tolist() == [[0, 2], [0, 3]]
    assert buf.seen_counts().tolist() == [1, 1] and buf.n_evicted == 2


@pytest.mark.parametrize("kind", ["fifo", "firo"])
def test_backpressure_when_full(kind):
    buf = make_buffer(kind, capacity=4, watermark=1)
    assert buf.has_room(4) and not buf.has_room(5) and buf.free_slots() == 4
    _put_sim(buf, 0, range(3))
    assert buf.has_room(1) and not buf.has_room(2)
    with pytest.raises(BufferFullError, match="has_room"):
        _put_sim(buf, 1, range(2))
    # all or nothing: nothing was stored or marked as seen
    assert len(buf) == 3 and buf.n_put == 3 and buf.n_duplicates == 0
    assert _put_sim(buf, 1, range(1)).all()
    assert not buf.has_room(1) and buf.free_slots() == 0
    # duplicates need no room
    assert not _put_sim(buf, 0, [0]).any()
    buf.sample_batch(2)
    assert buf.has_room(2) and _put_sim(buf, 1, [1, 2]).all()
    with pytest.raises(BufferStateError, match="split the chunk"):
        buf.wait_for_room(5, timeout=0.01)
    _check_invariants(buf)


# ============================================================================ FIRO
def test_firo_random_out_each_sample_once():
    buf = make_buffer("firo", capacity=20, watermark=5, seed=1)
    _put_sim(buf, 0, range(20))
    drawn = []
    while (out := buf.sample_batch(5)) is not None:
        keys, batch = out
        _check_batch_matches_keys(keys, batch)
        drawn.extend(keys[:, 1].tolist())
        _check_invariants(buf)
    # after 3 batches 5 samples remain (>= watermark 5), so a 4th is served: all 20 consumed, once each.
    assert sorted(drawn) == list(range(20))
    assert drawn != list(range(20))  # not insertion order (chance 1/20! for a random order)
    assert len(buf) == 0 and buf.n_evicted == 20


def test_firo_eviction_after_max_reuse():
    buf = make_buffer("firo", capacity=12, watermark=1, max_reuse=3, seed=2)
    _put_sim(buf, 4, range(12))
    counts: dict[int, int] = {}
    while (out := buf.sample_batch(4)) is not None:
        keys = out[0]
        assert len(np.unique(keys[:, 1])) == 4
        for s in keys[:, 1].tolist():
            counts[s] = counts.get(s, 0) + 1
        # present samples have been drawn fewer than max_reuse times
        assert (buf.seen_counts() < 3).all()
        _check_invariants(buf)
    gone = set(counts) - set(buf.keys()[:, 1].tolist())
    assert len(buf) < 4 and all(counts[s] == 3 for s in gone)
    assert buf.n_evicted == len(gone) == 12 - len(buf)
    assert buf.n_drawn == 3 * len(gone) + int(buf.seen_counts().sum())


def test_firo_draws_are_uniform_over_present_samples():
    # 1000 buffers of 20 samples, one batch of 5 each: every sample is in the batch with p = 1/4,
    # expected 250 times. Chi-square with 19 dof at false-alarm 1e-6 (the per-buffer counts are
    # drawn without replacement, which makes the statistic smaller than chi2(19): conservative).
    reps, cap, bs = 1000, 20, 5
    hits = np.zeros(cap)
    for seed in range(reps):
        buf = make_buffer("firo", capacity=cap, watermark=cap, seed=seed)
        _put_sim(buf, 0, range(cap))
        keys = buf.sample_batch(bs)[0]
        hits[keys[:, 1]] += 1
    expected = reps * bs / cap
    chi2 = ((hits - expected) ** 2 / expected).sum()
    assert chi2 < stats.chi2.ppf(1 - 1e-6, df=cap - 1), (chi2, hits)


# ============================================================================ watermark
@pytest.mark.parametrize("kind", KINDS)
def test_watermark_gates_draws(kind):
    buf = make_buffer(kind, capacity=10, watermark=5)
    _put_sim(buf, 0, range(4))
    assert not buf.ready() and buf.sample_batch(2) is None and buf.n_drawn == 0
    _put_sim(buf, 0, [4])
    assert buf.ready() and buf.can_sample(5) and not buf.can_sample(6)
    assert buf.sample_batch(6) is None  # ready, but not enough samples for the batch
    keys, batch = buf.sample_batch(2)
    assert keys.shape == (2, 2) and batch["u"].shape == (2, 2, 3) and batch["p"].shape == (2, 1)
    if kind != "reservoir":
        assert not buf.ready() and buf.sample_batch(1) is None  # consumed below the watermark
    else:
        assert buf.ready() and len(buf) == 5  # reservoir keeps samples


# ============================================================================ batches, dedup, counters
@pytest.mark.parametrize("kind", KINDS)
def test_no_duplicate_within_a_batch(kind):
    buf = make_buffer(kind, capacity=30, watermark=1, max_reuse=1000, seed=3)
    _put_sim(buf, 0, range(30))
    for _ in range(50):
        keys, batch = buf.sample_batch(30 if kind == "fifo" else 17)
        assert len(np.unique(encode_keys(keys))) == len(keys)
        _check_batch_matches_keys(keys, batch)
    keys, _ = buf.sample_batch(30)  # the whole buffer: every sample exactly once
    assert sorted(keys[:, 1].tolist()) == list(range(30))


@pytest.mark.parametrize("kind", KINDS)
def test_dedup_by_key(kind):
    buf = make_buffer(kind, capacity=10, watermark=1)
    assert buf.put((1, 0), {"u": np.zeros((2, 3), np.float32), "p": np.ones(1, np.float32)})
    assert not buf.put((1, 0), {"u": np.ones((2, 3), np.float32), "p": np.ones(1, np.float32)})
    mask = buf.put_many(_keys(1, [0, 1, 2, 1, 3]), _samples(1, [0, 1, 2, 1, 3]))
    assert mask.tolist() == [False, True, True, False, True]
    assert buf.n_put == 4 and buf.n_duplicates == 3 and len(buf) == 4
    assert buf.keys().tolist() == [[1, 0], [1, 1], [1, 2], [1, 3]]
    # a key stays seen after its sample left the buffer (FIFO/FIRO consume what they serve)
    if kind != "reservoir":
        while buf.sample_batch(1) is not None:
            pass
        assert len(buf) == 0
    assert not buf.put((1, 2), {"u": np.zeros((2, 3), np.float32), "p": np.ones(1, np.float32)})
    # the same step of another simulation is a different key
    assert buf.put((2, 2), {"u": np.zeros((2, 3), np.float32), "p": np.ones(1, np.float32)})
    _check_invariants(buf)


def test_forget_bounds_the_dedup_record_to_unfinished_simulations():
    buf = make_buffer("reservoir", capacity=64, watermark=1)
    for sim in range(5):
        _put_sim(buf, sim, range(4))
    buf.forget([0, 1, 2])  # finished: their keys cannot come again
    assert buf.state_dict()["seen_keys"].tolist() == [(s << 32) | j for s in (3, 4) for j in range(4)]
    assert not _put_sim(buf, 3, [1, 2]).any()  # unfinished simulations are still de-duplicated
    assert _put_sim(buf, 0, [1]).all()  # a forgotten key counts as new, as documented
    state = buf.state_dict()
    again = make_buffer("reservoir", capacity=64, watermark=1)
    again.load_state_dict(state)
    assert not _put_sim(again, 4, [3]).any() and not _put_sim(again, 0, [1]).any()


def test_dedup_can_be_disabled():
    buf = make_buffer("firo", capacity=10, watermark=1, dedup=False)
    assert _put_sim(buf, 0, [0, 0, 1]).all() and len(buf) == 3 and buf.n_duplicates == 0
    assert buf.state_dict()["seen_keys"].size == 0


def test_seen_counters_track_draws():
    buf = make_buffer("reservoir", capacity=16, watermark=1, seed=5)
    _put_sim(buf, 2, range(16))
    tally = dict.fromkeys(range(16), 0)
    for _ in range(40):
        keys, _ = buf.sample_batch(6)
        for s in keys[:, 1].tolist():
            tally[s] += 1
    seen = dict(zip(buf.keys()[:, 1].tolist(), buf.seen_counts().tolist(), strict=True))
    assert seen == tally
    assert buf.n_drawn == 240 == sum(seen.values())
    assert buf.put_get_balance == 16 - 240
    st = buf.stats()
    assert st["seen_mean"] == pytest.approx(240 / 16) and st["seen_max"] == max(tally.values())
    assert json.dumps(st)  # plain numbers for metrics.jsonl


@pytest.mark.parametrize("kind", KINDS)
def test_counters_invariant_under_random_traffic(kind):
    rng = np.random.default_rng(0)
    buf = make_buffer(kind, capacity=25, watermark=5, max_reuse=2, seed=9)
    seen: set[tuple[int, int]] = set()
    for _ in range(300):
        if rng.random() < 0.5:
            n = int(rng.integers(1, 6))
            steps = rng.choice(8, size=n, replace=False)  # some keys repeat across calls
            sid = int(rng.integers(0, 40))
            new = [(sid, int(t)) not in seen for t in steps]
            if kind == "reservoir" or sum(new) <= buf.free_slots():
                assert _put_sim(buf, sid, steps).tolist() == new
                seen.update((sid, int(t)) for t in steps)
            else:  # duplicates need no room, so only the new keys count against free slots
                with pytest.raises(BufferFullError):
                    _put_sim(buf, sid, steps)
        else:
            out = buf.sample_batch(int(rng.integers(1, 6)))
            if out is not None:
                _check_batch_matches_keys(*out)
        _check_invariants(buf)
    assert buf.n_put > 0 and buf.n_drawn > 0 and buf.n_duplicates > 0


# ============================================================================ reservoir
def test_reservoir_never_blocks_and_stays_full():
    buf = make_buffer("reservoir", capacity=8, watermark=4, seed=0)
    for sim in range(10):
        assert buf.has_room(100) and buf.wait_for_room(100, timeout=0)
        _put_sim(buf, sim, range(5))
        assert len(buf) == min(8, 5 * (sim + 1))
        _check_invariants(buf)
    assert buf.n_put == 50 and buf.n_discarded + buf.n_evicted == 42


def _reservoir_inclusion(reps: int, cap: int, n_items: int, chunk: int) -> np.ndarray:
    """How often each of ``n_items`` streamed items ends in the reservoir, over ``reps`` seeds."""
    counts = np.zeros(n_items)
    for seed in range(reps):
        buf = make_buffer("reservoir", capacity=cap, watermark=1, seed=seed)
        items = np.arange(n_items)
        for start in range(0, n_items, chunk):
            s = items[start : start + chunk]
            buf.put_many(_keys(start // chunk, s), s.astype(np.float32))
        kept = buf.keys()[:, 1]
        assert len(kept) == cap
        counts[kept] += 1
    return counts


@pytest.mark.parametrize("chunk", [25, 1])
def test_reservoir_is_uniform_over_the_stream(chunk):
    # Stream 10x capacity items; Algorithm R keeps each with probability cap / n_items = 1/10.
    # (a) Deciles of the stream (oldest ... newest): chi-square with 9 dof at false-alarm 1e-6.
    #     Within one run the decile counts are drawn without replacement, so their variance is
    #     below multinomial and the test is conservative.
    # (b) Every single item: |freq - 0.1| below 6 binomial standard deviations (false alarm
    #     ~ 2e-9 per item, 1e-6 over all items), which catches e.g. "the last item always stays".
    # chunk=25 exercises the vectorised put_many (several replacements of one slot in one call);
    # chunk=1 the one-at-a-time path.
    reps, cap, n_items = (600, 40, 400) if chunk > 1 else (100, 10, 100)
    counts = _reservoir_inclusion(reps, cap, n_items, chunk)
    deciles = counts.reshape(10, -1).sum(axis=1)
    expected = reps * cap / 10
    chi2 = ((deciles - expected) ** 2 / expected).sum()
    assert chi2 < stats.chi2.ppf(1 - 1e-6, df=9), (chi2, deciles)
    p = cap / n_items
    sd = np.sqrt(p * (1 - p) / reps)
    assert np.abs(counts / reps - p).max() < 6 * sd


def test_reservoir_put_many_equals_one_at_a_time():
    # The vectorised Algorithm R must be the sequential one: with the same seed, feeding chunks of
    # 25 or single samples leaves the same samples in the same slots (the generator yields the same
    # uniforms either way, and a slot hit twice in one call keeps the later sample).
    for seed in range(5):
        a = make_buffer("reservoir", capacity=30, watermark=1, seed=seed)
        b = make_buffer("reservoir", capacity=30, watermark=1, seed=seed)
        for start in range(0, 400, 25):
            steps = np.arange(start, start + 25)
            a.put_many(_keys(0, steps), _samples(0, steps))
            for t in steps:
                b.put((0, int(t)), {k: v[0] for k, v in _samples(0, [t]).items()})
        np.testing.assert_array_equal(a.keys(), b.keys())
        assert a.stats() == b.stats()
        np.testing.assert_array_equal(a.sample_batch(30)[1]["u"], b.sample_batch(30)[1]["u"])


def test_reservoir_uniformity_test_has_power():
    # The same decile statistic flags a keep-the-newest buffer (what a FIFO would hold) at once.
    reps, cap, n_items = 100, 50, 500
    counts = np.zeros(n_items)
    counts[-cap:] = reps
    deciles = counts.reshape(10, -1).sum(axis=1)
    expected = reps * cap / 10
    assert ((deciles - expected) ** 2 / expected).sum() > stats.chi2.ppf(1 - 1e-6, df=9)


def test_reservoir_max_reuse_frees_slots_for_next_put():
    buf = make_buffer("reservoir", capacity=6, watermark=1, max_reuse=2, seed=4)
    _put_sim(buf, 0, range(6))
    keys1 = buf.sample_batch(3)[0]
    assert len(buf) == 6
    keys2 = buf.sample_batch(3)[0]
    twice = set(map(tuple, keys1.tolist())) & set(map(tuple, keys2.tolist()))
    assert len(buf) == 6 - len(twice) and buf.n_evicted == len(twice)
    n_free = buf.free_slots()
    assert n_free == len(twice)
    # the next puts fill the free slots directly (no coin flip), so they are all kept
    _put_sim(buf, 1, range(n_free))
    assert len(buf) == 6 and buf.n_discarded == 0
    assert {(1, s) for s in range(n_free)} <= set(map(tuple, buf.keys().tolist()))
    _check_invariants(buf)


# ============================================================================ end of reception
@pytest.mark.parametrize("kind", KINDS)
def test_end_reception_drains(kind):
    buf = make_buffer(kind, capacity=10, watermark=8, max_reuse=None, seed=0)
    _put_sim(buf, 0, range(7))
    assert not buf.ready()
    buf.end_reception()
    assert buf.reception_ended and buf.ready()
    with pytest.raises(BufferStateError, match="end_reception"):
        _put_sim(buf, 1, [0])
    drawn = []
    while (out := buf.sample_batch(3)) is not None:
        drawn.extend(out[0][:, 1].tolist())
    assert len(drawn) == 6 and len(set(drawn)) == 6  # each drawn once, remainder of 1 dropped
    assert len(buf) == 1 and buf.is_exhausted(3) and not buf.is_exhausted(1)
    assert buf.wait_for_batch(3, timeout=5) is False  # returns at once: exhausted


# ============================================================================ sample structures
def test_tuple_and_array_samples():
    buf = make_buffer("firo", capacity=4, watermark=1, seed=0)
    buf.put((0, 0), (np.zeros((2, 2), np.float32), np.float32(3.0)))
    buf.put_many([[0, 1], [0, 2]], (np.ones((2, 2, 2), np.float32), np.array([4.0, 5.0], np.float32)))
    keys, (x, t) = buf.sample_batch(3)
    assert x.shape == (3, 2, 2) and t.shape == (3,)
    np.testing.assert_array_equal(t, np.array([3.0, 4.0, 5.0])[keys[:, 1]])

    arr = make_buffer("fifo", capacity=4, watermark=1)
    arr.put_many([[0, 0], [0, 1]], np.arange(6, dtype=np.float64).reshape(2, 3))
    keys, batch = arr.sample_batch(2)
    assert batch.dtype == np.float64 and batch.shape == (2, 3)
    np.testing.assert_array_equal(batch, [[0, 1, 2], [3, 4, 5]])


def test_sample_mismatches_are_refused():
    buf = make_buffer("firo", capacity=8, watermark=1)
    _put_sim(buf, 0, [0])
    with pytest.raises(BufferStateError, match="structure"):
        buf.put((0, 1), (np.zeros((2, 3), np.float32),))
    with pytest.raises(BufferStateError, match="structure"):
        buf.put((0, 1), {"u": np.zeros((2, 3), np.float32)})
    with pytest.raises(BufferStateError, match="'u'"):
        buf.put((0, 1), {"u": np.zeros((3, 3), np.float32), "p": np.zeros(1, np.float32)})
    with pytest.raises(BufferStateError, match="cannot be stored"):
        buf.put((0, 1), {"u": np.zeros((2, 3), np.complex64), "p": np.zeros(1, np.float32)})
    with pytest.raises(BufferStateError, match="leading axis"):
        buf.put_many(_keys(0, [1, 2]), _samples(0, [1, 2, 3]))
    # float64 is cast to the stored float32; nothing above was stored
    assert buf.put((0, 1), {"u": np.full((2, 3), 7.0), "p": np.zeros(1)})
    assert len(buf) == 2 and buf.n_put == 2


def test_put_many_from_a_chunk():
    c = _chunk(sim_id=5, n=6, grid=(4, 4), channels=1)
    buf = make_buffer("reservoir", capacity=100, watermark=6, seed=0)
    n = c.n_frames
    mask = buf.put_many(
        c.sample_keys(),
        {"u": c.fields, "p": np.broadcast_to(c.params, (n, c.params.size)), "t": c.frame_index.astype(np.float32)},
    )
    assert mask.all()
    keys, batch = buf.sample_batch(6)
    order = keys[:, 1] - 10
    np.testing.assert_array_equal(batch["u"], c.fields[order])
    np.testing.assert_array_equal(batch["t"], c.frame_index[order])
    assert not buf.put_many(c.sample_keys(), {"u": c.fields, "p": batch["p"], "t": batch["t"]}).any()


# ============================================================================ checkpoints
def _traffic(buf: Buffer, rng: np.random.Generator, n_ops: int, sim0: int) -> list:
    """Random puts and draws; returns what was drawn (keys and values)."""
    log = []
    for i in range(n_ops):
        if rng.random() < 0.55:
            n = int(rng.integers(1, 5))
            if buf.has_room(n):
                _put_sim(buf, sim0 + i, range(n))
        else:
            out = buf.sample_batch(3)
            if out is not None:
                log.append((out[0].tolist(), out[1]["u"].tolist()))
    return log


@pytest.mark.parametrize("kind", KINDS)
def test_state_dict_round_trip_gives_identical_draws(kind):
    buf = make_buffer(kind, capacity=12, watermark=4, max_reuse=2 if kind != "fifo" else None, seed=7)
    _traffic(buf, np.random.default_rng(1), 60, sim0=0)
    sd = buf.state_dict()

    def plain(x):
        return isinstance(x, (int, np.ndarray)) or (isinstance(x, dict) and all(plain(v) for v in x.values()))

    assert all(plain(v) for v in sd.values()), {k: type(v) for k, v in sd.items()}
    saved = copy.deepcopy(sd)  # a checkpoint is a copy; the live buffer keeps running
    resumed = buffer_from_state_dict(saved)
    same = make_buffer(kind, capacity=12, watermark=4, max_reuse=2 if kind != "fifo" else None, seed=123)
    same.load_state_dict(saved)
    for other in (resumed, same):
        assert len(other) == len(buf) and other.stats() == buf.stats()
        np.testing.assert_array_equal(other.keys(), buf.keys())
    log = _traffic(buf, np.random.default_rng(2), 80, sim0=1000)
    assert log, "the continuation must draw something"
    assert _traffic(resumed, np.random.default_rng(2), 80, sim0=1000) == log
    assert _traffic(same, np.random.default_rng(2), 80, sim0=1000) == log
    assert resumed.stats() == buf.stats()
    # the saved dict was not aliased to the live buffer
    assert np.array_equal(saved["codes"], sd["codes"])


def test_state_dict_of_empty_buffer_and_mismatch():
    buf = make_buffer("firo", capacity=5, watermark=2, seed=3)
    back = buffer_from_state_dict(buf.state_dict())
    assert len(back) == 0 and back.sample_batch(1) is None
    _put_sim(back, 0, range(3))  # structure fixed by the first put after restore
    assert len(back) == 3
    with pytest.raises(BufferConfigError, match="capacity"):
        make_buffer("firo", capacity=6, watermark=2).load_state_dict(buf.state_dict())
    with pytest.raises(BufferConfigError, match="kind_id"):
        make_buffer("fifo", capacity=5, watermark=2).load_state_dict(buf.state_dict())


# ============================================================================ threads
def test_producer_consumer_threads_with_backpressure():
    buf = make_buffer("fifo", capacity=8, watermark=1)
    n_sims, n_steps, bs = 20, 5, 4
    errors = []

    def produce():
        try:
            for sim in range(n_sims):
                assert buf.wait_for_room(n_steps, timeout=10)
                _put_sim(buf, sim, range(n_steps))
            buf.end_reception()
        except Exception as e:  # surfaced below
            errors.append(e)

    t = threading.Thread(target=produce)
    t.start()
    got = []
    while True:
        if not buf.wait_for_batch(bs, timeout=10):
            break
        keys, batch = buf.sample_batch(bs)
        _check_batch_matches_keys(keys, batch)
        got.extend(map(tuple, keys.tolist()))
    t.join(timeout=10)
    assert not errors and not t.is_alive()
    expected = [(s, k) for s in range(n_sims) for k in range(n_steps)]
    assert got == expected[: len(got)] and len(got) == (n_sims * n_steps // bs) * bs


def test_wants_more_fills_then_matches_the_draw_rate():
    buf = make_buffer("reservoir", capacity=8, watermark=4, seed=0)
    ratio = 1.5
    assert buf.wants_more(ratio)
    _put_sim(buf, 0, range(8))  # full: n_put == capacity, nothing drawn yet
    assert not buf.wants_more(ratio) and not buf.wait_for_demand(ratio, timeout=0)
    buf.sample_batch(2)  # 2 draws allow 3 more samples (n_put < 8 + 1.5 * 2)
    assert buf.wants_more(ratio)
    _put_sim(buf, 1, range(2))
    assert buf.wants_more(ratio)
    _put_sim(buf, 1, range(2, 3))
    assert not buf.wants_more(ratio)
    with pytest.raises(BufferConfigError, match="ingest ratio"):
        buf.wait_for_demand(0)


def test_rate_matched_producer_is_held_to_the_ratio():
    """A producer thread that waits for demand puts at most capacity + ratio * draws (+ one chunk)."""
    cap, ratio, chunk, bs = 16, 2.0, 3, 4
    buf = make_buffer("reservoir", capacity=cap, watermark=4, seed=0)
    stop = threading.Event()
    over = []

    def produce():
        sim = 0
        while not stop.is_set():
            _put_sim(buf, sim, range(chunk))
            over.append(buf.n_put - (cap + ratio * buf.n_drawn))
            sim += 1
            while not buf.wait_for_demand(ratio, timeout=0.05) and not stop.is_set():
                pass

    t = threading.Thread(target=produce)
    t.start()
    for _ in range(50):
        assert buf.wait_for_batch(bs, timeout=10)
        buf.sample_batch(bs)
    caught_up = False
    for _ in range(500):  # the producer catches up with the draws (within a chunk of the allowance)
        if caught_up := buf.n_put > cap + ratio * buf.n_drawn - chunk:
            break
        threading.Event().wait(0.01)
    stop.set()
    t.join(timeout=10)
    assert not t.is_alive() and caught_up
    assert buf.n_drawn == 50 * bs and max(over) < chunk  # never a whole chunk beyond the allowance


@pytest.mark.parametrize("kind,max_reuse,ends", [("fifo", None, True), ("firo", 2, True), ("reservoir", None, False),
                                                 ("reservoir", 3, True)])
def test_buffers_that_shed_samples_end_with_the_stream(kind, max_reuse, ends):
    """A reservoir whose samples leave after max_reuse draws must end with the stream, else a finite stream leaves
    the trainer waiting for a batch that never comes; a plain reservoir keeps serving what it holds."""
    buf = make_buffer(kind, capacity=8, watermark=2, max_reuse=max_reuse)
    assert buf.ends_with_the_stream is ends
    buf.put_many(_keys(0, range(6)), np.zeros((6, 2), np.float32))
    if ends:
        buf.end_reception()
    drawn = 0
    while buf.sample_batch(2) is not None:
        drawn += 2
        assert drawn <= 6 * (max_reuse or 1) or not ends
        if drawn > 100:
            break
    assert (drawn <= 6 * (max_reuse or 1)) == ends  # the drained buffers stop; a plain reservoir serves on


def test_partial_writes_of_window_views_store_the_right_rows():
    # Samples cut from a chunk are strided views; a write of a subset of them goes straight into the slots (a
    # consecutive run as a slice, large rows one by one, small rows gathered). Every stored sample must be the
    # frames its key names, whichever path wrote it.
    from streaming.buffers.layout import SampleLayout
    from streaming.buffers.storage import SlotStorage
    from streaming.samples import SampleSpec, cut

    spec = SampleSpec("next_step", window=2, horizon=1, condition_on_params=True, frame_dt=0.1, calls=3)
    rng = np.random.default_rng(0)
    for shape, subset in (((32, 32), [0, 3, 4, 9]), ((32, 32), [2, 3, 4, 5]), ((3,), [1, 5, 6])):
        fields = rng.standard_normal((15, 1, *shape)).astype(np.float32)
        chunk = Chunk(sim_id=4, frame_index=np.arange(15), fields=fields, params=np.ones(2, np.float32), solver="t")
        keys, samples = cut(chunk, spec)
        store = SlotStorage(12)
        leaves = [samples[k] for k in ("x", "y", "cond", "t")]
        store.allocate(SampleLayout.infer({k: samples[k] for k in ("x", "y", "cond", "t")}, len(keys)))
        src = np.asarray(subset)
        slots = np.asarray([7, 1, 10, 4][: src.size])
        store.write(slots, encode_keys(keys), leaves, src)
        for slot, i in zip(slots.tolist(), src.tolist(), strict=True):
            j = int(keys[i, 1])  # first target frame
            np.testing.assert_array_equal(store.data[0][slot], fields[j - 2:j])
            np.testing.assert_array_equal(store.data[1][slot], fields[j:j + 3])
            assert store.data[3][slot] == np.float32((j - 1) * 0.1)
        np.testing.assert_array_equal(decode_keys(store.codes[slots]), keys[src])
    # the reservoir's replacement path (scattered subsets) through the public API: stored = the key's frames
    buf = make_buffer("reservoir", capacity=20, watermark=1, seed=3)
    fields = rng.standard_normal((200, 1, 32, 32)).astype(np.float32)
    for start in range(0, 190, 25):
        part = Chunk(sim_id=1, frame_index=np.arange(start, min(start + 30, 200)),
                     fields=fields[start:start + 30], params=np.ones(2, np.float32), solver="t")
        buf.put_many(*cut(part, spec))
    keys, batch = buf.sample_batch(20)
    for (_, j), x, y in zip(keys.tolist(), batch["x"], batch["y"], strict=True):
        np.testing.assert_array_equal(x, fields[j - 2:j])
        np.testing.assert_array_equal(y, fields[j:j + 3])
