"""The training buffer: one :class:`~streaming.buffers.storage.SlotStorage`, one policy, de-duplication,
counters, watermark, flow control and checkpoints (the rules are stated in :mod:`streaming.buffers`)."""

from __future__ import annotations

import numbers
import threading
from collections.abc import Mapping
from typing import Any

import numpy as np

from streaming.buffers.errors import BufferConfigError, BufferFullError, BufferStateError, check_int
from streaming.buffers.keys import STEP_MASK, decode_keys, encode_keys
from streaming.buffers.layout import Sample, SampleLayout, add_axis
from streaming.buffers.policies import POLICIES, Policy, make_policy
from streaming.buffers.rng_state import rng_from_array, rng_to_array
from streaming.buffers.storage import SlotStorage

_COUNTERS = ("n_put", "n_duplicates", "n_discarded", "n_evicted", "n_drawn")
_KIND_IDS = {"fifo": 0, "firo": 1, "reservoir": 2, "epoch": 3}  # checkpoint codes
_ARGS = ("capacity", "watermark", "max_reuse", "seed", "dedup")


class Buffer:
    """A training buffer of ``policy``'s kind; build one with :func:`make_buffer`.

    Args:
      policy: a :class:`~streaming.buffers.policies.Policy` (FIFO, FIRO, Reservoir, Epoch).
      capacity: number of sample slots (> 0).
      watermark: samples needed before the first draw, ``1 <= watermark <= capacity``.
      max_reuse: draws a sample survives (>= 1), or None for the policy's default.
      seed: seed of the buffer's own random generator (draws, reservoir replacement).
      dedup: keep the set of seen keys and drop repeated ``(sim_id, frame)`` keys.

    The policy's class attributes (``kind``, ``blocks_producers``, ``drains_at_end``,
    ``ends_with_the_stream``, ``holds_every_put``) are read through the buffer.
    """

    n_put: int  # counters: see streaming.buffers
    n_duplicates: int
    n_discarded: int
    n_evicted: int
    n_drawn: int

    def __init__(self, policy: Policy, capacity: int, watermark: int, max_reuse: int | None = None, seed: int = 0,
                 *, dedup: bool = True):
        self.policy = policy
        self.capacity = check_int("capacity", capacity, 1, "an integer >= 1")
        self.watermark = check_int("watermark", watermark, 1, f"an integer in [1, capacity={self.capacity}]")
        if self.watermark > self.capacity:
            raise BufferConfigError(
                f"buffer watermark={watermark!r}: allowed an integer in [1, capacity={self.capacity}]"
            )
        if max_reuse is not None and not policy.accepts_max_reuse:
            raise BufferConfigError(
                f"buffer max_reuse={max_reuse!r}: the {policy.kind} buffer keeps every sample; allowed None"
            )
        self.max_reuse = None if max_reuse is None else check_int("max_reuse", max_reuse, 1, "None or an integer >= 1")
        self.seed = check_int("seed", seed, 0, "an integer >= 0")
        if not isinstance(dedup, bool):
            raise BufferConfigError(f"buffer dedup={dedup!r}: allowed True or False")
        self.dedup = dedup
        self._cond = threading.Condition(threading.RLock())
        self._rng = np.random.default_rng(self.seed)
        self._reset()

    def _reset(self) -> None:
        self._store = SlotStorage(self.capacity)
        self.policy.reset()
        self._seen_steps: dict[int, set[int]] = {}  # sim id -> steps seen (de-duplication)
        self._ended = False
        for name in _COUNTERS:
            setattr(self, name, 0)

    # ------------------------------------------------------------ what the policy promises
    @property
    def kind(self) -> str:
        return self.policy.kind

    @property
    def blocks_producers(self) -> bool:
        return self.policy.blocks_producers

    @property
    def drains_at_end(self) -> bool:
        return self.policy.drains_at_end

    @property
    def ends_with_the_stream(self) -> bool:
        """The stream's end is :meth:`end_reception`: the policy's rule, or samples that leave after
        ``max_reuse`` draws (a reservoir that sheds samples would otherwise wait for puts that never come)."""
        return self.policy.ends_with_the_stream or self.max_reuse is not None

    @property
    def holds_every_put(self) -> bool:
        return self.policy.holds_every_put

    # ------------------------------------------------------------ queries
    @property
    def reuse_limit(self) -> int | None:
        """Draws after which a sample leaves (``max_reuse`` or the policy's default); None: never."""
        return self.max_reuse if self.max_reuse is not None else self.policy.default_max_reuse

    @property
    def put_get_balance(self) -> int:
        """``n_put - n_drawn``: +1 per new sample in, -1 per sample drawn."""
        return self.n_put - self.n_drawn

    @property
    def reception_ended(self) -> bool:
        """True after :meth:`end_reception`."""
        return self._ended

    def __len__(self) -> int:
        return self._store.size

    def free_slots(self) -> int:
        """Empty slots: ``capacity - len(buf)``."""
        return self._store.free_slots()

    def has_room(self, n: int = 1) -> bool:
        """True when ``n`` new samples can be put now without :class:`BufferFullError`."""
        return (not self.blocks_producers) or self.free_slots() >= n

    def ready(self) -> bool:
        """``len >= watermark`` (after :meth:`end_reception`: ``len > 0``)."""
        return len(self) > 0 if self._ended else len(self) >= self.watermark

    def can_sample(self, batch_size: int) -> bool:
        """True when :meth:`sample_batch` would return a batch of ``batch_size`` now."""
        return self.ready() and len(self) >= batch_size

    def is_exhausted(self, batch_size: int) -> bool:
        """True after :meth:`end_reception` once fewer than ``batch_size`` samples remain."""
        return self._ended and len(self) < batch_size

    def keys(self) -> np.ndarray:
        """Keys of the present samples, int64 ``(len, 2)``, oldest first."""
        with self._cond:
            return decode_keys(self._store.codes[self._store.live()])

    def seen_counts(self) -> np.ndarray:
        """How many times each present sample was drawn, int64 ``(len,)``, aligned with :meth:`keys`."""
        with self._cond:
            return self._store.seen[self._store.live()].copy()

    def stats(self) -> dict[str, int | float]:
        """Counters and occupancy for metrics logging (plain Python numbers)."""
        with self._cond:
            seen = self._store.seen[self._store.occupied]
            out: dict[str, int | float] = {"size": len(self), "capacity": self.capacity}
            out.update({name: getattr(self, name) for name in _COUNTERS})
            out["put_get_balance"] = self.put_get_balance
            out["seen_mean"] = float(seen.mean()) if seen.size else 0.0
            out["seen_max"] = int(seen.max()) if seen.size else 0
            return out

    # ------------------------------------------------------------ put
    def put(self, key: tuple[int, int], sample: Sample) -> bool:
        """Add one sample with key ``(sim_id, frame)``; False if the key was already seen."""
        return bool(self.put_many(np.asarray([key]), add_axis(sample))[0])

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
            store = self._store
            layout = store.layout if store.layout is not None else SampleLayout.infer(samples, n)
            leaves = layout.flatten(samples, n)
            new = self._new_mask(codes)
            idx = np.flatnonzero(new)
            if self.blocks_producers and idx.size > self.free_slots():
                raise BufferFullError(
                    f"{self.kind} buffer full: {idx.size} new samples but {self.free_slots()} free of "
                    f"capacity {self.capacity}; wait for has_room({idx.size}) before putting"
                    + ("" if idx.size <= self.capacity else ", and split the chunk")
                )
            if store.layout is None:
                store.allocate(layout)
            if idx.size:
                replaced, discarded = self.policy.admit(store, codes, leaves, idx, self._rng, self.n_put)
                self.n_evicted += replaced
                self.n_discarded += discarded
                if self.dedup:
                    self._remember(codes[idx])
            self.n_put += int(idx.size)
            self.n_duplicates += int(n - idx.size)
            self._cond.notify_all()
            return new

    def _new_mask(self, codes: np.ndarray) -> np.ndarray:
        new = np.zeros(codes.size, dtype=bool)
        if not self.dedup:
            new[:] = True
            return new
        ordered = codes.size < 2 or bool(np.all(codes[1:] > codes[:-1]))
        if not ordered:  # repeats within the call
            _, first = np.unique(codes, return_index=True)
            new[first] = True
        else:  # sorted distinct keys, as Chunk.sample_keys gives: skip the sort
            new[:] = True
        if self._seen_steps:
            sids = codes >> 32
            for sid in _sim_ids(sids, ordered):  # usually a single simulation per call
                steps = self._seen_steps.get(sid)
                if steps:
                    at = np.flatnonzero(sids == sid)
                    new[at] &= np.fromiter(((int(c) & STEP_MASK) not in steps for c in codes[at].tolist()),
                                           dtype=bool, count=at.size)
        return new

    def _remember(self, codes: np.ndarray) -> None:
        sids = codes >> 32
        if sids.size and sids[0] == sids[-1] and (sids.size < 3 or bool(np.all(sids == sids[0]))):
            self._seen_steps.setdefault(int(sids[0]), set()).update((codes & STEP_MASK).tolist())
            return
        for sid in np.unique(sids).tolist():
            self._seen_steps.setdefault(sid, set()).update((codes[sids == sid] & STEP_MASK).tolist())

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

    # ------------------------------------------------------------ draw
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
            store = self._store
            slots = self.policy.choose(store, batch_size, self._rng)
            batch = store.gather(slots)
            keys = decode_keys(store.codes[slots])
            store.seen[slots] += 1
            self.n_drawn += batch_size
            limit = 1 if self._ended and self.drains_at_end else self.reuse_limit
            if limit is not None:
                gone = slots[store.seen[slots] >= limit]
                if gone.size:
                    self.policy.evict(store, gone)
                    self.n_evicted += int(gone.size)
            self._cond.notify_all()
            return keys, batch

    # ------------------------------------------------------------ flow control
    def end_reception(self) -> None:
        """Mark the end of the stream: no more puts; draws drain the buffer (see streaming.buffers)."""
        with self._cond:
            self._ended = True
            self._cond.notify_all()

    def reopen_reception(self) -> None:
        """Undo :meth:`end_reception` (a stream stopped by an error, not ended: a resumed run takes in more)."""
        with self._cond:
            self._ended = False

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
        """Contents, counters, RNG, seen keys and the policy's state as ints and numpy arrays (copies; nested
        ``data`` dict). ``max_reuse`` is stored as 0 for None."""
        with self._cond:
            d: dict[str, Any] = {
                "kind_id": _KIND_IDS[self.kind],
                "capacity": self.capacity,
                "watermark": self.watermark,
                "max_reuse": 0 if self.max_reuse is None else self.max_reuse,
                "dedup": int(self.dedup),
                "seed": self.seed,
                "ended": int(self._ended),
                "head": 0,  # FIFO's ring head (its policy state overrides it)
                "rng": rng_to_array(self._rng),
                "seen_keys": self._seen_codes(),
                **self._store.state_dict(),
                **self.policy.state_dict(),
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
            self._reset()
            self._store.load_state_dict(d)
            self.policy.load_state_dict(d)
            self._ended = bool(int(d["ended"]))
            self._remember(np.asarray(d["seen_keys"], dtype=np.int64))
            self._rng = rng_from_array(d["rng"])
            for name in _COUNTERS:
                setattr(self, name, int(d[name]))
            self._cond.notify_all()

    def reshape_samples(self, shapes: Mapping[str, tuple[int, ...]]) -> None:
        """Give the stored leaves named in ``shapes`` (a dict sample's keys) those per-sample shapes when only the
        shape differs: the same number of values per sample, read in C order (no copy). A buffer restored from a
        checkpoint written with another layout of the same values (e.g. frames stacked on the channel axis) then
        takes the samples of today's layout. Leaves not stored are skipped; an empty buffer has nothing to do.

        Raises:
          BufferStateError: a leaf holds a different number of values per sample than its new shape.
        """
        with self._cond:
            layout = self._store.layout
            if layout is None or layout.kind != "dict":
                return
            for i, name in enumerate(layout.names):
                if name not in shapes or tuple(layout.shapes[i]) == tuple(shapes[name]):
                    continue
                new = tuple(int(d) for d in shapes[name])
                if int(np.prod(new)) != int(np.prod(layout.shapes[i])):
                    raise BufferStateError(
                        f"buffer sample {name!r}: stored shape {tuple(layout.shapes[i])} cannot be read as {new} "
                        "(a different number of values); resume with the sample settings the checkpoint was "
                        "written with"
                    )
                self._store.data[i] = self._store.data[i].reshape(self.capacity, *new)
                layout.shapes[i] = new

    def __repr__(self) -> str:
        return (
            f"Buffer({self.kind!r}, capacity={self.capacity}, watermark={self.watermark}, "
            f"max_reuse={self.max_reuse}, size={len(self)})"
        )


def _sim_ids(sids: np.ndarray, ordered: bool) -> list[int]:
    """The distinct simulation ids of ``sids`` (key codes >> 32); ``ordered``: the codes were increasing."""
    if ordered and sids.size and sids[0] == sids[-1]:  # increasing codes with equal ends: a single simulation
        return [int(sids[0])]
    return np.unique(sids).tolist()


def make_buffer(kind: str, **kw: Any) -> Buffer:
    """Build a training buffer.

    Args:
      kind: ``"fifo"``, ``"firo"``, ``"reservoir"`` or ``"epoch"`` (see :mod:`streaming.buffers`).
      **kw: ``capacity`` and ``watermark`` (required), ``max_reuse=None``, ``seed=0``, ``dedup=True``.

    Raises:
      BufferConfigError: unknown kind or key, missing key, or a bad number.
    """
    policy = make_policy(kind)
    unknown = sorted(set(kw) - set(_ARGS))
    if unknown:
        raise BufferConfigError(f"buffer: unknown key(s) {', '.join(unknown)}; allowed {', '.join(_ARGS)}")
    for required in ("capacity", "watermark"):
        if required not in kw:
            raise BufferConfigError(f"buffer: missing {required!r}; give an integer {required}")
    return Buffer(policy, **kw)


def buffer_from_state_dict(d: Mapping[str, Any]) -> Buffer:
    """A buffer with the settings and contents of a :meth:`Buffer.state_dict` (checkpoint resume)."""
    try:
        kind = {v: k for k, v in _KIND_IDS.items()}[int(d["kind_id"])]
    except (KeyError, TypeError, ValueError):
        raise BufferConfigError(
            "buffer state: missing or bad 'kind_id'; pass a dict from Buffer.state_dict()"
        ) from None
    buf = make_buffer(kind, capacity=int(d["capacity"]), watermark=int(d["watermark"]),
                      max_reuse=int(d["max_reuse"]) or None, seed=int(d["seed"]), dedup=bool(int(d["dedup"])))
    buf.load_state_dict(d)
    return buf


assert set(_KIND_IDS) == set(POLICIES), "every policy needs a checkpoint code"
