"""Buffer policies: which slot a new sample takes (``admit``), which slots a batch draws (``choose``) and
what happens when samples leave (``evict``), over one :class:`~streaming.buffers.storage.SlotStorage`.

A policy is a small object with class attributes that say what the rest of the engine may rely on,
and (FIFO, Epoch) a little state of its own that goes into the buffer's checkpoint. The rules of each
kind are stated in :mod:`streaming.buffers`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from streaming.buffers.errors import BufferConfigError, BufferFullError
from streaming.buffers.storage import SlotStorage


class Policy:
    """Uniform draws without replacement among the present samples; new samples take the lowest free slots."""

    kind: ClassVar[str] = ""
    default_max_reuse: ClassVar[int | None] = 1  # draws a sample survives when the buffer's max_reuse is None
    blocks_producers: ClassVar[bool] = True  # a put needs free slots (else BufferFullError)
    drains_at_end: ClassVar[bool] = True  # after end_reception every drawn sample leaves
    ends_with_the_stream: ClassVar[bool] = True  # the stream's end is end_reception (a reservoir keeps serving)
    holds_every_put: ClassVar[bool] = True  # a put needs room: a chunk above capacity can never be stored
    accepts_max_reuse: ClassVar[bool] = True

    def admit(self, store: SlotStorage, codes: np.ndarray, leaves: list[np.ndarray], idx: np.ndarray,
              rng: np.random.Generator, n_put: int) -> tuple[int, int]:
        """Store the new samples ``idx`` (indices into ``codes`` and the leaves) of a put; ``n_put``: new samples
        offered before this put. Returns (samples replaced, new samples not kept)."""
        store.fill(store.lowest_free(idx.size), codes, leaves, idx)
        return 0, 0

    def choose(self, store: SlotStorage, batch_size: int, rng: np.random.Generator) -> np.ndarray:
        """Slots of one batch (``batch_size`` distinct occupied slots)."""
        return rng.choice(np.flatnonzero(store.occupied), size=batch_size, replace=False)

    def evict(self, store: SlotStorage, slots: np.ndarray) -> None:
        """Drawn samples in ``slots`` reached their reuse limit: they leave."""
        store.release(slots)

    def reset(self) -> None:
        """Forget the policy's own state (an empty buffer)."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, d: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output."""


class FIFO(Policy):
    """First-in first-out: batches are the oldest samples, in order."""

    kind = "fifo"

    # Slots form a ring: the queue is slots head, head+1, ... (mod capacity). Draws take a prefix of
    # the queue, so draw counts never increase along it, and the samples that reach the reuse limit
    # are always a prefix: eviction only moves the head.
    def __init__(self) -> None:
        self.head = 0

    def admit(self, store: SlotStorage, codes: np.ndarray, leaves: list[np.ndarray], idx: np.ndarray,
              rng: np.random.Generator, n_put: int) -> tuple[int, int]:
        store.fill((self.head + store.size + np.arange(idx.size)) % store.capacity, codes, leaves, idx)
        return 0, 0

    def choose(self, store: SlotStorage, batch_size: int, rng: np.random.Generator) -> np.ndarray:
        return (self.head + np.arange(batch_size)) % store.capacity

    def evict(self, store: SlotStorage, slots: np.ndarray) -> None:
        expected = (self.head + np.arange(slots.size)) % store.capacity
        assert np.array_equal(slots, expected), "FIFO evicts a prefix of the queue"
        store.release(slots)
        self.head = (self.head + int(slots.size)) % store.capacity

    def reset(self) -> None:
        self.head = 0

    def state_dict(self) -> dict[str, Any]:
        return {"head": self.head}

    def load_state_dict(self, d: Mapping[str, Any]) -> None:
        self.head = int(d["head"])


class FIRO(Policy):
    """First-in random-out: uniform draws among present samples, a sample leaves after ``max_reuse`` draws."""

    kind = "firo"


class Reservoir(Policy):
    """A uniform sample of the whole stream (Algorithm R); never blocks producers."""

    kind = "reservoir"
    default_max_reuse = None
    blocks_producers = False
    ends_with_the_stream = False
    holds_every_put = False

    def admit(self, store: SlotStorage, codes: np.ndarray, leaves: list[np.ndarray], idx: np.ndarray,
              rng: np.random.Generator, n_put: int) -> tuple[int, int]:
        fill = min(idx.size, store.free_slots())
        if fill:
            store.fill(store.lowest_free(fill), codes, leaves, idx[:fill])
        rest = idx[fill:]
        if not rest.size:
            return 0, 0
        # Full now. Algorithm R (Vitter 1985): the sample that is the c-th new sample overall draws
        # j ~ U{0, ..., c-1} and replaces slot j when j < capacity, i.e. with probability capacity / c.
        # Vectorised over the call; a slot chosen twice keeps the later sample, exactly as the
        # one-at-a-time loop would.
        counts = n_put + fill + np.arange(1, rest.size + 1, dtype=np.int64)
        # floor(U * c) is uniform on {0..c-1} up to float64 rounding (relative 2**-53), and one
        # vector draw is much cheaper than integers() with per-element bounds.
        j = np.floor(rng.random(rest.size) * counts).astype(np.int64)
        hit = np.flatnonzero(j < store.capacity)
        if hit.size:
            slots_rev, first = np.unique(j[hit][::-1], return_index=True)
            win = hit[::-1][first]  # last writer of each slot
            order = np.argsort(win)
            store.write(slots_rev[order], codes, leaves, rest[win[order]])
        return int(hit.size), int(rest.size - hit.size)  # every accepted sample replaced a slot's sample


class Epoch(Policy):
    """A fixed dataset drawn by epochs: every sample once per epoch, in a fresh random order.

    ``epochs`` counts the epochs started (0 before the first draw); ``order`` holds the slots still to
    draw in this epoch.
    """

    kind = "epoch"
    default_max_reuse = None
    blocks_producers = False
    drains_at_end = False
    accepts_max_reuse = False

    def __init__(self) -> None:
        self.reset()

    def admit(self, store: SlotStorage, codes: np.ndarray, leaves: list[np.ndarray], idx: np.ndarray,
              rng: np.random.Generator, n_put: int) -> tuple[int, int]:
        if idx.size > store.free_slots():
            raise BufferFullError(
                f"epoch buffer full: {idx.size} new samples but {store.free_slots()} free of capacity "
                f"{store.capacity}; the epoch buffer holds a whole dataset, so raise its capacity"
            )
        return super().admit(store, codes, leaves, idx, rng, n_put)

    def choose(self, store: SlotStorage, batch_size: int, rng: np.random.Generator) -> np.ndarray:
        order = self.order
        if order.size < batch_size:  # start a new epoch; the r = order.size left over finish the old one
            perm = rng.permutation(np.flatnonzero(store.occupied))
            first = np.flatnonzero(~np.isin(perm, order))[: batch_size - order.size]
            rest = np.ones(perm.size, dtype=bool)
            rest[first] = False
            order = np.concatenate([order, perm[first], perm[rest]])
            self.epochs += 1
        self.order = order[batch_size:]
        return order[:batch_size]

    def reset(self) -> None:
        self.order = np.zeros(0, dtype=np.int64)
        self.epochs = 0

    def state_dict(self) -> dict[str, Any]:
        return {"order": self.order.copy(), "epochs": self.epochs}

    def load_state_dict(self, d: Mapping[str, Any]) -> None:
        self.order = np.asarray(d["order"], dtype=np.int64).copy()
        self.epochs = int(d["epochs"])


POLICIES: dict[str, type[Policy]] = {p.kind: p for p in (FIFO, FIRO, Reservoir, Epoch)}


def make_policy(kind: str) -> Policy:
    """The policy of buffer ``kind`` (``fifo``, ``firo``, ``reservoir`` or ``epoch``)."""
    if not isinstance(kind, str) or kind.lower() not in POLICIES:
        raise BufferConfigError(f"buffer kind={kind!r}: allowed {', '.join(POLICIES)}")
    return POLICIES[kind.lower()]()
