"""Training buffers between the transport and the batcher: FIFO, FIRO, Reservoir and Epoch (pure numpy).

The buffers follow Melissa's online-training buffers (Meyer et al., "High Throughput Training of
Deep Surrogates from Large Ensemble Runs", SC23 workshops, arXiv 2309.16743; Melissa's
``melissa.server.deep_learning.reservoir``); the exact rules below are ours and are stated here.

Samples and keys
    A *sample* is one numpy record: a ``dict`` of arrays (str keys), a ``tuple`` of arrays, or a
    single array. The first put fixes the structure, per-sample shapes and dtypes; storage is then
    preallocated as one array ``(capacity, *sample_shape)`` per leaf, so a batch is one fancy-index
    gather per leaf. Every sample carries a key ``(sim_id, step)`` with ``0 <= sim_id < 2**31`` and
    ``0 <= step < 2**32``.

    ``put(key, sample)`` takes one sample; ``put_many(keys, samples)`` takes ``keys`` int ``(n, 2)``
    (e.g. :meth:`streaming.chunk.Chunk.sample_keys`) and the same structure with a leading axis
    ``n`` on every leaf (e.g. ``{"u": chunk.fields, "p": np.broadcast_to(chunk.params, (n, P))}``).

De-duplication
    A key already seen (by this buffer, or earlier in the same call) is dropped and ``put``
    returns False. Seen steps live in a Python ``set`` per simulation, about 60-70 bytes per key;
    :meth:`Buffer.forget` drops the sets of finished simulations (whose keys cannot come again),
    so memory stays bounded by the simulations in flight over a job of any length (the trainer
    forgets a simulation when its done/dropped report arrives). ``dedup=False`` skips it all.

Kinds (``max_reuse``: how many draws a sample survives; ``None`` picks the kind's default)
    ``fifo``       Draws the ``batch_size`` oldest samples, in insertion order. A sample leaves
                   after ``max_reuse`` draws (default 1: each sample is used once; with ``k > 1``
                   the same oldest batch is served ``k`` times in a row). Put on a full FIFO raises
                   :class:`BufferFullError`; producers wait for ``has_room(n)``.
    ``firo``       First-in random-out: draws uniformly without replacement among the present
                   samples; a sample leaves after ``max_reuse`` draws (default 1, like Melissa's
                   FIRO where a read consumes). Backpressure as for FIFO.
    ``reservoir``  Uniform over everything offered (Vitter's Algorithm R, ACM TOMS 11(1), 1985):
                   while a slot is free the sample takes it; otherwise the ``n``-th new sample
                   overall replaces a uniformly chosen slot with probability ``capacity / n``.
                   Draws as FIRO. Samples are kept however often drawn (default ``max_reuse=None``);
                   with ``max_reuse`` they leave after that many draws, freeing a slot that the
                   next put fills directly. Never blocks producers (``has_room`` is always True).
    ``epoch``      A fixed dataset served by epochs (the offline baseline, ``pdestream train --offline``):
                   each epoch draws every sample present when it starts exactly once, in a fresh
                   random order. When the dataset size is not a multiple of the batch size, the batch
                   that straddles two epochs takes the ``r`` samples left from the old epoch and the
                   first ``batch_size - r`` samples of the new epoch's order that are not among them
                   (the new epoch is still a permutation of all samples), so a batch never holds one
                   sample twice. Samples put during an epoch join at the next one. Samples never
                   leave (``max_reuse`` must be None) and ``end_reception`` stops puts without
                   draining. A put beyond ``capacity`` raises :class:`BufferFullError`: size the
                   buffer to hold the whole dataset.

Watermark and end of reception
    ``ready()`` is ``len(buf) >= watermark``; ``sample_batch`` serves only when ready and at least
    ``batch_size`` samples are present, else returns None. After ``end_reception()`` the
    watermark no longer applies, every drawn sample leaves (the buffer drains, as Melissa's does
    at the end of a study), puts raise, and ``is_exhausted(batch_size)`` turns True when fewer than
    ``batch_size`` samples remain (the remainder is dropped, so batch shapes never change).
    The ``epoch`` buffer does not drain: it keeps serving epochs of its fixed dataset.

Counters
    ``n_put`` new (non-duplicate) samples offered, ``n_duplicates`` dropped keys, ``n_discarded``
    new samples the reservoir did not keep, ``n_evicted`` samples that left (consumed, replaced or
    drained), ``n_drawn`` sample draws (``batch_size`` per batch); ``put_get_balance = n_put -
    n_drawn`` (Melissa's ``put_get_inc``: near 0 means training keeps pace with generation).
    Invariant: ``len(buf) == n_put - n_discarded - n_evicted``.

Threads
    All public methods take one lock, so a receiver thread may ``put`` while the train loop draws;
    ``wait_for_room`` and ``wait_for_batch`` block on a condition instead of polling.

Rate matching
    ``wants_more(ratio)`` is ``n_put < capacity + ratio * n_drawn``: a producer that waits for it
    (``wait_for_demand``) fills the buffer at full speed and then takes at most ``ratio`` new samples
    per sample drawn. The trainer does so when ``buffer.ingest_ratio`` is set, so workers faster
    than training are held by the transport's backpressure instead of sending samples that a
    reservoir would mostly discard (Algorithm R keeps the ``n``-th sample with probability
    ``capacity / n``).

Checkpoints
    ``state_dict()`` returns ints and numpy arrays only (contents, counters, RNG state, seen keys);
    ``load_state_dict`` on a buffer built with the same settings, or
    :func:`buffer_from_state_dict`, continues with identical draws.
"""

from __future__ import annotations

import numbers
import threading
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

Sample = Any  # dict[str, np.ndarray] | tuple[np.ndarray, ...] | np.ndarray

_SID_LIMIT = 2**31
_STEP_LIMIT = 2**32
_STEP_MASK = _STEP_LIMIT - 1
_U64 = (1 << 64) - 1


class BufferConfigError(ValueError):
    """A bad buffer setting (kind, capacity, watermark, ...); the message names it and what is allowed."""


class BufferStateError(ValueError):
    """A buffer call that does not fit its state or its samples (wrong shapes, put after the end)."""


class BufferFullError(BufferStateError):
    """A put on a full FIFO/FIRO buffer; wait for ``has_room(n)`` before putting."""


def _check_int(name: str, value: Any, low: int, allowed: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < low:
        raise BufferConfigError(f"buffer {name}={value!r}: allowed {allowed}")
    return int(value)


# ---------------------------------------------------------------------------- keys
def encode_keys(keys: Any) -> np.ndarray:
    """``(sim_id, step)`` pairs, int ``(n, 2)``, to int64 codes ``(n,)`` = ``sim_id * 2**32 + step``."""
    k = np.asarray(keys)
    if k.ndim == 1 and k.shape == (2,):
        k = k[None]
    if k.size == 0:
        return np.zeros(0, dtype=np.int64)
    if k.ndim != 2 or k.shape[1] != 2 or k.dtype.kind not in "iu":
        raise BufferStateError(
            f"buffer keys: expected integer (sim_id, step) pairs of shape (n, 2), got dtype {k.dtype} "
            f"shape {k.shape}; use Chunk.sample_keys()"
        )
    k = k.astype(np.int64, copy=False)
    sid, step = k[:, 0], k[:, 1]
    bad = (sid < 0) | (sid >= _SID_LIMIT) | (step < 0) | (step >= _STEP_LIMIT)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise BufferStateError(
            f"buffer key ({int(sid[i])}, {int(step[i])}): need 0 <= sim_id < 2**31 and 0 <= step < 2**32"
        )
    return (sid << 32) | step


def decode_keys(codes: np.ndarray) -> np.ndarray:
    """Inverse of :func:`encode_keys`: int64 codes ``(n,)`` to int64 ``(n, 2)`` pairs."""
    codes = np.asarray(codes, dtype=np.int64)
    return np.stack([codes >> 32, codes & (_STEP_LIMIT - 1)], axis=-1)


# ---------------------------------------------------------------------------- sample layout
class _Layout:
    """Structure (array / tuple / dict), leaf names, per-sample shapes and dtypes of the samples."""

    KINDS = ("array", "tuple", "dict")

    def __init__(self, kind: str, names: tuple[str, ...], shapes: list[tuple[int, ...]], dtypes: list[np.dtype]):
        self.kind, self.names, self.shapes, self.dtypes = kind, names, shapes, dtypes

    @staticmethod
    def structure(samples: Sample) -> tuple[str, tuple[str, ...], list[Any]]:
        if isinstance(samples, Mapping):
            names = tuple(samples)
            if not names or not all(isinstance(n, str) for n in names):
                raise BufferStateError(f"buffer sample: a dict sample needs str keys, got {list(names)}")
            return "dict", names, [samples[n] for n in names]
        if isinstance(samples, tuple):
            if not samples:
                raise BufferStateError("buffer sample: got an empty tuple; give at least one array")
            return "tuple", tuple(str(i) for i in range(len(samples))), list(samples)
        return "array", ("array",), [samples]

    def flatten(self, samples: Sample, n: int) -> list[np.ndarray]:
        """Leaves of a batched structure (leading axis ``n``), checked against the layout."""
        kind, names, leaves = self.structure(samples)
        if kind != self.kind or (kind == "dict" and set(names) != set(self.names)) or len(names) != len(self.names):
            raise BufferStateError(
                f"buffer sample: structure {kind}{list(names)} differs from the first sample's "
                f"{self.kind}{list(self.names)}; put samples of one structure"
            )
        if kind == "dict":
            leaves = [samples[name] for name in self.names]
        out = []
        for name, leaf, shape, dtype in zip(self.names, leaves, self.shapes, self.dtypes, strict=True):
            a = np.asarray(leaf)
            if a.shape != (n, *shape):
                raise BufferStateError(
                    f"buffer sample {name!r}: shape {a.shape[1:] if a.ndim else ()} (with leading axis "
                    f"{a.shape[:1]}) but expected ({n}, *{shape}); every sample must match the first"
                )
            if not np.can_cast(a.dtype, dtype, "same_kind"):
                raise BufferStateError(
                    f"buffer sample {name!r}: dtype {a.dtype} cannot be stored as {dtype}; cast it first"
                )
            out.append(a)
        return out

    @classmethod
    def infer(cls, samples: Sample, n: int) -> _Layout:
        kind, names, leaves = cls.structure(samples)
        arrays = [np.asarray(leaf) for leaf in leaves]
        for name, a in zip(names, arrays, strict=True):
            if a.ndim == 0 or a.shape[0] != n:
                raise BufferStateError(
                    f"buffer sample {name!r}: shape {a.shape}, expected a leading axis of {n} (one row per key)"
                )
            if a.dtype.kind not in "biuf":
                raise BufferStateError(f"buffer sample {name!r}: dtype {a.dtype} is not numeric; give numeric arrays")
        return cls(kind, names, [a.shape[1:] for a in arrays], [a.dtype for a in arrays])

    def unflatten(self, leaves: list[np.ndarray]) -> Sample:
        if self.kind == "dict":
            return dict(zip(self.names, leaves, strict=True))
        if self.kind == "tuple":
            return tuple(leaves)
        return leaves[0]


def _add_axis(sample: Sample) -> Sample:
    if isinstance(sample, Mapping):
        return {k: np.asarray(v)[None] for k, v in sample.items()}
    if isinstance(sample, tuple):
        return tuple(np.asarray(v)[None] for v in sample)
    return np.asarray(sample)[None]


# ---------------------------------------------------------------------------- RNG state
def _rng_to_array(rng: np.random.Generator) -> np.ndarray:
    st = rng.bit_generator.state
    if st["bit_generator"] != "PCG64":
        raise BufferStateError(f"buffer RNG: cannot save {st['bit_generator']} state, only PCG64")
    s, inc = st["state"]["state"], st["state"]["inc"]
    words = [s >> 64, s & _U64, inc >> 64, inc & _U64, st["has_uint32"], st["uinteger"]]
    return np.array(words, dtype=np.uint64)


def _rng_from_array(words: np.ndarray) -> np.random.Generator:
    w = [int(x) for x in np.asarray(words, dtype=np.uint64)]
    rng = np.random.Generator(np.random.PCG64())
    rng.bit_generator.state = {
        "bit_generator": "PCG64",
        "state": {"state": (w[0] << 64) | w[1], "inc": (w[2] << 64) | w[3]},
        "has_uint32": w[4],
        "uinteger": w[5],
    }
    return rng


# ---------------------------------------------------------------------------- buffers
_COUNTERS = ("n_put", "n_duplicates", "n_discarded", "n_evicted", "n_drawn")


class Buffer:
    """Common machinery of the training buffers; build one with :func:`make_buffer`.

    Args:
      capacity: number of sample slots (> 0).
      watermark: samples needed before the first draw, ``1 <= watermark <= capacity``.
      max_reuse: draws a sample survives (>= 1), or None for the kind's default (module docstring).
      seed: seed of the buffer's own random generator (draws, reservoir replacement).
      dedup: keep the set of seen keys and drop repeated ``(sim_id, step)`` keys.
    """

    kind: ClassVar[str] = ""
    default_max_reuse: ClassVar[int | None] = 1
    blocks_producers: ClassVar[bool] = True
    drains_at_end: ClassVar[bool] = True  # after end_reception every drawn sample leaves
    ends_with_the_stream: ClassVar[bool] = True  # the stream's end is end_reception (a reservoir keeps serving)
    holds_every_put: ClassVar[bool] = True  # a put needs room: a chunk above capacity can never be stored
    n_put: int  # counters: see the module docstring
    n_duplicates: int
    n_discarded: int
    n_evicted: int
    n_drawn: int

    def __init__(
        self, capacity: int, watermark: int, max_reuse: int | None = None, seed: int = 0, *, dedup: bool = True
    ):
        self.capacity = _check_int("capacity", capacity, 1, "an integer >= 1")
        self.watermark = _check_int("watermark", watermark, 1, f"an integer in [1, capacity={self.capacity}]")
        if self.watermark > self.capacity:
            raise BufferConfigError(
                f"buffer watermark={watermark!r}: allowed an integer in [1, capacity={self.capacity}]"
            )
        self.max_reuse = None if max_reuse is None else _check_int("max_reuse", max_reuse, 1, "None or an integer >= 1")
        self.seed = _check_int("seed", seed, 0, "an integer >= 0")
        if not isinstance(dedup, bool):
            raise BufferConfigError(f"buffer dedup={dedup!r}: allowed True or False")
        self.dedup = dedup
        self._cond = threading.Condition(threading.RLock())
        self._rng = np.random.default_rng(self.seed)
        self._reset_storage()

    def _reset_storage(self) -> None:
        cap = self.capacity
        self._layout: _Layout | None = None
        self._data: list[np.ndarray] = []
        self._occupied = np.zeros(cap, dtype=bool)
        self._codes = np.zeros(cap, dtype=np.int64)
        self._seen = np.zeros(cap, dtype=np.int64)
        self._seq = np.zeros(cap, dtype=np.int64)
        self._size = 0
        self._head = 0
        self._next_seq = 0
        self._seen_steps: dict[int, set[int]] = {}  # sim id -> steps seen (de-duplication)
        self._ended = False
        for name in _COUNTERS:
            setattr(self, name, 0)

    # ------------------------------------------------------------ queries
    @property
    def reuse_limit(self) -> int | None:
        """Draws after which a sample leaves (``max_reuse`` or the kind's default); None: never."""
        return self.max_reuse if self.max_reuse is not None else self.default_max_reuse

    @property
    def put_get_balance(self) -> int:
        """``n_put - n_drawn``: +1 per new sample in, -1 per sample drawn."""
        return self.n_put - self.n_drawn

    @property
    def reception_ended(self) -> bool:
        """True after :meth:`end_reception`."""
        return self._ended

    def __len__(self) -> int:
        return self._size

    def free_slots(self) -> int:
        """Empty slots: ``capacity - len(buf)``."""
        return self.capacity - self._size

    def has_room(self, n: int = 1) -> bool:
        """True when ``n`` new samples can be put now without :class:`BufferFullError`."""
        return (not self.blocks_producers) or self.free_slots() >= n

    def ready(self) -> bool:
        """``len >= watermark`` (after :meth:`end_reception`: ``len > 0``)."""
        return self._size > 0 if self._ended else self._size >= self.watermark

    def can_sample(self, batch_size: int) -> bool:
        """True when :meth:`sample_batch` would return a batch of ``batch_size`` now."""
        return self.ready() and self._size >= batch_size

    def is_exhausted(self, batch_size: int) -> bool:
        """True after :meth:`end_reception` once fewer than ``batch_size`` samples remain."""
        return self._ended and self._size < batch_size

    def _live(self) -> np.ndarray:
        """Occupied slots in insertion order."""
        live = np.flatnonzero(self._occupied)
        return live[np.argsort(self._seq[live], kind="stable")]

    def keys(self) -> np.ndarray:
        """Keys of the present samples, int64 ``(len, 2)``, oldest first."""
        with self._cond:
            return decode_keys(self._codes[self._live()])

    def seen_counts(self) -> np.ndarray:
        """How many times each present sample was drawn, int64 ``(len,)``, aligned with :meth:`keys`."""
        with self._cond:
            return self._seen[self._live()].copy()

    def stats(self) -> dict[str, int | float]:
        """Counters and occupancy for metrics logging (plain Python numbers)."""
        with self._cond:
            seen = self._seen[self._occupied]
            out: dict[str, int | float] = {"size": self._size, "capacity": self.capacity}
            out.update({name: getattr(self, name) for name in _COUNTERS})
            out["put_get_balance"] = self.put_get_balance
            out["seen_mean"] = float(seen.mean()) if seen.size else 0.0
            out["seen_max"] = int(seen.max()) if seen.size else 0
            return out

    # ------------------------------------------------------------ put
    def put(self, key: tuple[int, int], sample: Sample) -> bool:
        """Add one sample with key ``(sim_id, step)``; False if the key was already seen."""
        return bool(self.put_many(np.asarray([key]), _add_axis(sample))[0])

    def put_many(self, keys: Any, samples: Sample) -> np.ndarray:
        """Add ``n`` samples: ``keys`` int ``(n, 2)``, every leaf of ``samples`` shaped ``(n, ...)``.

        Returns a bool ``(n,)`` mask of the keys that were new (the others were dropped as
        duplicates). All or nothing: on :class:`BufferFullError` nothing is added.
        """
        codes = encode_keys(keys)
        n = codes.size
        with self._cond:
            if self._ended:
                raise BufferStateError(
                    f"{self.kind} buffer: put after end_reception(); stop producers before ending reception"
                )
            if n == 0:
                return np.zeros(0, dtype=bool)
            layout = self._layout if self._layout is not None else _Layout.infer(samples, n)
            leaves = layout.flatten(samples, n)
            new = self._new_mask(codes)
            idx = np.flatnonzero(new)
            if self.blocks_producers and idx.size > self.free_slots():
                raise BufferFullError(
                    f"{self.kind} buffer full: {idx.size} new samples but {self.free_slots()} free of "
                    f"capacity {self.capacity}; wait for has_room({idx.size}) before putting"
                    + ("" if idx.size <= self.capacity else ", and split the chunk")
                )
            if self._layout is None:
                self._allocate(layout)
            if idx.size:
                self._store(codes, leaves, idx)
                if self.dedup:
                    self._remember(codes[idx])
            self.n_put += int(idx.size)
            self.n_duplicates += int(n - idx.size)
            self._cond.notify_all()
            return new

    def _allocate(self, layout: _Layout) -> None:
        self._layout = layout
        self._data = [np.empty((self.capacity, *s), dtype=d) for s, d in zip(layout.shapes, layout.dtypes, strict=True)]

    def _new_mask(self, codes: np.ndarray) -> np.ndarray:
        new = np.zeros(codes.size, dtype=bool)
        if not self.dedup:
            new[:] = True
            return new
        if codes.size > 1 and not np.all(codes[1:] > codes[:-1]):  # repeats within the call
            _, first = np.unique(codes, return_index=True)
            new[first] = True
        else:  # sorted distinct keys, as Chunk.sample_keys gives: skip the sort
            new[:] = True
        if self._seen_steps:
            sids = codes >> 32
            for sid in np.unique(sids).tolist():  # usually a single simulation per call
                steps = self._seen_steps.get(sid)
                if steps:
                    at = np.flatnonzero(sids == sid)
                    new[at] &= np.fromiter(((int(c) & _STEP_MASK) not in steps for c in codes[at].tolist()),
                                           dtype=bool, count=at.size)
        return new

    def _remember(self, codes: np.ndarray) -> None:
        sids = codes >> 32
        for sid in np.unique(sids).tolist():
            self._seen_steps.setdefault(sid, set()).update((codes[sids == sid] & _STEP_MASK).tolist())

    def forget(self, sim_ids: Any) -> None:
        """Drop the de-duplication record of finished simulations ``sim_ids`` (their keys will not come again).

        Call it once a simulation is done or dropped, never while it may still be re-sent (e.g. a
        task requeued after a worker died): a forgotten key put again is accepted as new.
        """
        with self._cond:
            for sid in np.atleast_1d(np.asarray(sim_ids, dtype=np.int64)).tolist():
                self._seen_steps.pop(sid, None)

    def _seen_codes(self) -> np.ndarray:
        """Every remembered key as a sorted int64 code array."""
        codes = [(sid << 32) | np.fromiter(steps, dtype=np.int64, count=len(steps))
                 for sid, steps in self._seen_steps.items()]
        return np.sort(np.concatenate(codes)) if codes else np.zeros(0, np.int64)

    def _write(self, slots: np.ndarray, codes: np.ndarray, leaves: list[np.ndarray], src: np.ndarray) -> None:
        """Write samples ``leaves[:][src]`` with ``codes[src]`` into ``slots`` (in that order)."""
        # src is always a sorted subset of range(n), so full size means arange(n): skip the gather copy.
        whole = src.size == leaves[0].shape[0]
        for store, leaf in zip(self._data, leaves, strict=True):
            store[slots] = leaf if whole else leaf[src]
        self._occupied[slots] = True
        self._codes[slots] = codes[src]
        self._seen[slots] = 0
        self._seq[slots] = np.arange(self._next_seq, self._next_seq + slots.size)
        self._next_seq += int(slots.size)

    def _alloc(self, n: int) -> np.ndarray:
        """``n`` free slots for new samples (lowest first)."""
        return np.flatnonzero(~self._occupied)[:n]

    def _store(self, codes: np.ndarray, leaves: list[np.ndarray], idx: np.ndarray) -> None:
        """Place the new samples ``idx`` (room was checked for blocking kinds)."""
        slots = self._alloc(idx.size)
        self._write(slots, codes, leaves, idx)
        self._size += int(idx.size)

    # ------------------------------------------------------------ draw
    def _choose(self, batch_size: int) -> np.ndarray:
        """Slots of one batch: uniform without replacement among the present samples."""
        return self._rng.choice(np.flatnonzero(self._occupied), size=batch_size, replace=False)

    def _evict(self, slots: np.ndarray) -> None:
        self._occupied[slots] = False
        self._size -= int(slots.size)
        self.n_evicted += int(slots.size)

    def sample_batch(self, batch_size: int) -> tuple[np.ndarray, Sample] | None:
        """Draw ``batch_size`` distinct samples, or None when :meth:`can_sample` is False.

        Returns ``(keys, batch)``: keys int64 ``(batch_size, 2)`` and the sample structure with a
        leading ``batch_size`` axis on every leaf (fresh arrays, safe to keep).
        """
        if (
            isinstance(batch_size, bool)
            or not isinstance(batch_size, numbers.Integral)
            or not (1 <= batch_size <= self.capacity)
        ):
            raise BufferConfigError(
                f"batch_size={batch_size!r}: allowed an integer in [1, buffer capacity={self.capacity}]"
            )
        batch_size = int(batch_size)
        with self._cond:
            if not self.can_sample(batch_size):
                return None
            assert self._layout is not None
            slots = self._choose(batch_size)
            batch = self._layout.unflatten([store[slots] for store in self._data])
            keys = decode_keys(self._codes[slots])
            self._seen[slots] += 1
            self.n_drawn += batch_size
            limit = 1 if self._ended and self.drains_at_end else self.reuse_limit
            if limit is not None:
                gone = slots[self._seen[slots] >= limit]
                if gone.size:
                    self._evict(gone)
            self._cond.notify_all()
            return keys, batch

    # ------------------------------------------------------------ flow control
    def end_reception(self) -> None:
        """Mark the end of the stream: no more puts; draws drain the buffer (module docstring)."""
        with self._cond:
            self._ended = True
            self._cond.notify_all()

    def wait_for_room(self, n: int = 1, timeout: float | None = None) -> bool:
        """Block until ``has_room(n)`` (or ``timeout`` seconds); returns ``has_room(n)``."""
        if self.blocks_producers and n > self.capacity:
            raise BufferStateError(
                f"{self.kind} buffer: room for {n} samples never comes with capacity {self.capacity}; split the chunk"
            )
        with self._cond:
            self._cond.wait_for(lambda: self.has_room(n) or self._ended, timeout)
            return self.has_room(n)

    def wants_more(self, ratio: float) -> bool:
        """Rate matching: True while ``n_put < capacity + ratio * n_drawn``, i.e. once the buffer has
        been filled, the stream is allowed ``ratio`` new samples per sample drawn (``ratio > 0``)."""
        return self.n_put < self.capacity + ratio * self.n_drawn

    def wait_for_demand(self, ratio: float, timeout: float | None = None) -> bool:
        """Block until :meth:`wants_more` (a draw makes room), the reception ended, or ``timeout``;
        returns ``wants_more(ratio)``."""
        if not ratio > 0:
            raise BufferConfigError(f"ingest ratio={ratio!r}: allowed a number > 0")
        with self._cond:
            self._cond.wait_for(lambda: self.wants_more(ratio) or self._ended, timeout)
            return self.wants_more(ratio)

    def wait_for_batch(self, batch_size: int, timeout: float | None = None) -> bool:
        """Block until a batch can be drawn, the buffer is exhausted, or ``timeout``; returns ``can_sample``."""
        with self._cond:
            self._cond.wait_for(lambda: self.can_sample(batch_size) or self.is_exhausted(batch_size), timeout)
            return self.can_sample(batch_size)

    # ------------------------------------------------------------ checkpoint
    def state_dict(self) -> dict[str, Any]:
        """Contents, counters, RNG and seen keys as ints and numpy arrays (copies; nested ``data`` dict).

        ``max_reuse`` is stored as 0 for None; ``layout`` is 0 (no sample yet), 1 array, 2 tuple, 3 dict.
        """
        with self._cond:
            live = self._live()
            d: dict[str, Any] = {
                "kind_id": _KIND_IDS[self.kind],
                "capacity": self.capacity,
                "watermark": self.watermark,
                "max_reuse": 0 if self.max_reuse is None else self.max_reuse,
                "dedup": int(self.dedup),
                "seed": self.seed,
                "ended": int(self._ended),
                "head": self._head,
                "next_seq": self._next_seq,
                "slots": live.astype(np.int64),
                "codes": self._codes[live],
                "seen": self._seen[live],
                "seq": self._seq[live],
                "rng": _rng_to_array(self._rng),
                "seen_keys": self._seen_codes(),
                "layout": 0 if self._layout is None else 1 + _Layout.KINDS.index(self._layout.kind),
                "data": {}
                if self._layout is None
                else {name: store[live] for name, store in zip(self._layout.names, self._data, strict=True)},
            }
            d.update({name: getattr(self, name) for name in _COUNTERS})
            return d

    def load_state_dict(self, d: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output into a buffer built with the same kind and settings."""
        want = {
            "kind_id": _KIND_IDS[self.kind],
            "capacity": self.capacity,
            "watermark": self.watermark,
            "max_reuse": 0 if self.max_reuse is None else self.max_reuse,
            "dedup": int(self.dedup),
        }
        for key, value in want.items():
            if key not in d:
                raise BufferConfigError(f"buffer state: missing {key!r}; pass a dict from Buffer.state_dict()")
            if int(d[key]) != value:
                raise BufferConfigError(
                    f"buffer state {key}={int(d[key])} but this buffer has {key}={value}; build the buffer "
                    "with the checkpoint's settings (buffer_from_state_dict)"
                )
        with self._cond:
            self._reset_storage()
            layout_id = int(d["layout"])
            if layout_id:
                data = d["data"]
                kind = _Layout.KINDS[layout_id - 1]
                names = tuple(data) if kind != "tuple" else tuple(str(i) for i in range(len(data)))
                arrays = [np.asarray(data[name]) for name in names]
                self._allocate(_Layout(kind, names, [a.shape[1:] for a in arrays], [a.dtype for a in arrays]))
                slots = np.asarray(d["slots"], dtype=np.int64)
                for store, a in zip(self._data, arrays, strict=True):
                    store[slots] = a
                self._occupied[slots] = True
                self._codes[slots] = np.asarray(d["codes"], dtype=np.int64)
                self._seen[slots] = np.asarray(d["seen"], dtype=np.int64)
                self._seq[slots] = np.asarray(d["seq"], dtype=np.int64)
                self._size = int(slots.size)
            self._head = int(d["head"])
            self._next_seq = int(d["next_seq"])
            self._ended = bool(int(d["ended"]))
            self._remember(np.asarray(d["seen_keys"], dtype=np.int64))
            self._rng = _rng_from_array(d["rng"])
            for name in _COUNTERS:
                setattr(self, name, int(d[name]))
            self._cond.notify_all()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(capacity={self.capacity}, watermark={self.watermark}, "
            f"max_reuse={self.max_reuse}, size={self._size})"
        )


class FIFOBuffer(Buffer):
    """First-in first-out queue: batches are the oldest samples, in order (module docstring)."""

    kind = "fifo"
    default_max_reuse = 1

    # Slots form a ring: the queue is slots head, head+1, ... (mod capacity). Draws take a prefix of
    # the queue, so draw counts never increase along it, and the samples that reach the reuse limit
    # are always a prefix: eviction only moves the head.
    def _alloc(self, n: int) -> np.ndarray:
        return (self._head + self._size + np.arange(n)) % self.capacity

    def _choose(self, batch_size: int) -> np.ndarray:
        return (self._head + np.arange(batch_size)) % self.capacity

    def _evict(self, slots: np.ndarray) -> None:
        expected = (self._head + np.arange(slots.size)) % self.capacity
        assert np.array_equal(slots, expected), "FIFO evicts a prefix of the queue"
        super()._evict(slots)
        self._head = (self._head + int(slots.size)) % self.capacity


class FIROBuffer(Buffer):
    """First-in random-out: uniform draws among present samples, evicted after ``max_reuse`` draws."""

    kind = "firo"
    default_max_reuse = 1


class ReservoirBuffer(Buffer):
    """Uniform sample of the whole stream (Algorithm R); never blocks producers."""

    kind = "reservoir"
    default_max_reuse = None
    blocks_producers = False
    ends_with_the_stream = False
    holds_every_put = False

    def _store(self, codes: np.ndarray, leaves: list[np.ndarray], idx: np.ndarray) -> None:
        fill = min(idx.size, self.free_slots())
        if fill:
            super()._store(codes, leaves, idx[:fill])
        rest = idx[fill:]
        if not rest.size:
            return
        # Buffer is full now. Algorithm R (Vitter 1985): the sample that is the c-th new sample
        # overall draws j ~ U{0, ..., c-1} and replaces slot j when j < capacity, i.e. with
        # probability capacity / c. Vectorised over the call; a slot chosen twice keeps the later
        # sample, exactly as the one-at-a-time loop would.
        counts = self.n_put + fill + np.arange(1, rest.size + 1, dtype=np.int64)
        # floor(U * c) is uniform on {0..c-1} up to float64 rounding (relative 2**-53), and one
        # vector draw is much cheaper than integers() with per-element bounds.
        j = np.floor(self._rng.random(rest.size) * counts).astype(np.int64)
        hit = np.flatnonzero(j < self.capacity)
        if hit.size:
            slots_rev, first = np.unique(j[hit][::-1], return_index=True)
            win = hit[::-1][first]  # last writer of each slot
            order = np.argsort(win)
            self._write(slots_rev[order], codes, leaves, rest[win[order]])
        self.n_evicted += int(hit.size)  # every accepted sample replaced the slot's previous one
        self.n_discarded += int(rest.size - hit.size)


class EpochBuffer(Buffer):
    """A fixed dataset drawn by epochs: every sample once per epoch, fresh random order (module docstring).

    ``epochs`` counts the epochs started (0 before the first draw).
    """

    kind = "epoch"
    default_max_reuse = None
    blocks_producers = False
    drains_at_end = False

    def __init__(
        self, capacity: int, watermark: int, max_reuse: int | None = None, seed: int = 0, *, dedup: bool = True
    ):
        if max_reuse is not None:
            raise BufferConfigError(
                f"buffer max_reuse={max_reuse!r}: the epoch buffer keeps every sample; allowed None"
            )
        super().__init__(capacity, watermark, None, seed, dedup=dedup)

    def _reset_storage(self) -> None:
        super()._reset_storage()
        self._order = np.zeros(0, dtype=np.int64)  # slots still to draw in this epoch, in order
        self.epochs = 0

    def _store(self, codes: np.ndarray, leaves: list[np.ndarray], idx: np.ndarray) -> None:
        if idx.size > self.free_slots():
            raise BufferFullError(
                f"epoch buffer full: {idx.size} new samples but {self.free_slots()} free of capacity "
                f"{self.capacity}; the epoch buffer holds a whole dataset, so raise its capacity"
            )
        super()._store(codes, leaves, idx)

    def _choose(self, batch_size: int) -> np.ndarray:
        order = self._order
        if order.size < batch_size:  # start a new epoch; the r = order.size left over finish the old one
            perm = self._rng.permutation(np.flatnonzero(self._occupied))
            first = np.flatnonzero(~np.isin(perm, order))[: batch_size - order.size]
            rest = np.ones(perm.size, dtype=bool)
            rest[first] = False
            order = np.concatenate([order, perm[first], perm[rest]])
            self.epochs += 1
        self._order = order[batch_size:]
        return order[:batch_size]

    def state_dict(self) -> dict[str, Any]:
        """:meth:`Buffer.state_dict` plus the rest of the epoch's order (slots) and the epoch count."""
        with self._cond:
            return {**super().state_dict(), "order": self._order.copy(), "epochs": self.epochs}

    def load_state_dict(self, d: Mapping[str, Any]) -> None:
        with self._cond:
            super().load_state_dict(d)
            self._order = np.asarray(d["order"], dtype=np.int64).copy()
            self.epochs = int(d["epochs"])


_KINDS: dict[str, type[Buffer]] = {
    "fifo": FIFOBuffer, "firo": FIROBuffer, "reservoir": ReservoirBuffer, "epoch": EpochBuffer,
}
_KIND_IDS = {"fifo": 0, "firo": 1, "reservoir": 2, "epoch": 3}
_ARGS = ("capacity", "watermark", "max_reuse", "seed", "dedup")


def make_buffer(kind: str, **kw: Any) -> Buffer:
    """Build a training buffer.

    Args:
      kind: ``"fifo"``, ``"firo"``, ``"reservoir"`` or ``"epoch"`` (module docstring).
      **kw: ``capacity`` and ``watermark`` (required), ``max_reuse=None``, ``seed=0``, ``dedup=True``.

    Raises:
      BufferConfigError: unknown kind or key, missing key, or a bad number.
    """
    if not isinstance(kind, str) or kind.lower() not in _KINDS:
        raise BufferConfigError(f"buffer kind={kind!r}: allowed {', '.join(_KINDS)}")
    unknown = sorted(set(kw) - set(_ARGS))
    if unknown:
        raise BufferConfigError(f"buffer: unknown key(s) {', '.join(unknown)}; allowed {', '.join(_ARGS)}")
    for required in ("capacity", "watermark"):
        if required not in kw:
            raise BufferConfigError(f"buffer: missing {required!r}; give an integer {required}")
    return _KINDS[kind.lower()](**kw)


def buffer_from_state_dict(d: Mapping[str, Any]) -> Buffer:
    """A buffer with the settings and contents of a :meth:`Buffer.state_dict` (checkpoint resume)."""
    try:
        kind = {v: k for k, v in _KIND_IDS.items()}[int(d["kind_id"])]
    except (KeyError, TypeError, ValueError):
        raise BufferConfigError(
            "buffer state: missing or bad 'kind_id'; pass a dict from Buffer.state_dict()"
        ) from None
    max_reuse = int(d["max_reuse"]) or None
    buf = make_buffer(
        kind,
        capacity=int(d["capacity"]),
        watermark=int(d["watermark"]),
        max_reuse=max_reuse,
        seed=int(d["seed"]),
        dedup=bool(int(d["dedup"])),
    )
    buf.load_state_dict(d)
    return buf
