"""The one storage class of the training buffers: ``capacity`` preallocated sample slots.

One array ``(capacity, *sample_shape)`` per leaf of the :class:`~streaming.buffers.layout.SampleLayout`
(allocated at the first put), so a batch is one fancy-index gather per leaf; per slot: occupied or
not, its key code (:mod:`streaming.buffers.keys`), how many times it was drawn and its insertion
number (the order of arrival). Which slot a new sample takes, which slots a batch draws and when a
sample leaves is the policy's business (:mod:`streaming.buffers.policies`), not the storage's.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from streaming.buffers.layout import Sample, SampleLayout

_ROW_BYTES = 1 << 12  # bytes per sample of a leaf from which a partial write copies row by row (no temporary)


class SlotStorage:
    """``capacity`` sample slots; attributes are plain numpy arrays read and written by the buffer and its policy."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.layout: SampleLayout | None = None
        self.data: list[np.ndarray] = []
        self.occupied = np.zeros(capacity, dtype=bool)
        self.codes = np.zeros(capacity, dtype=np.int64)  # key code of each slot's sample
        self.seen = np.zeros(capacity, dtype=np.int64)  # draws of each slot's sample
        self.seq = np.zeros(capacity, dtype=np.int64)  # insertion number of each slot's sample
        self.size = 0
        self.next_seq = 0

    def allocate(self, layout: SampleLayout) -> None:
        """Fix the layout and preallocate one array per leaf."""
        self.layout = layout
        self.data = [np.empty((self.capacity, *s), dtype=d) for s, d in zip(layout.shapes, layout.dtypes, strict=True)]

    def free_slots(self) -> int:
        return self.capacity - self.size

    def live(self) -> np.ndarray:
        """Occupied slots in insertion order."""
        live = np.flatnonzero(self.occupied)
        return live[np.argsort(self.seq[live], kind="stable")]

    def lowest_free(self, n: int) -> np.ndarray:
        """The ``n`` lowest free slots."""
        return np.flatnonzero(~self.occupied)[:n]

    def write(self, slots: np.ndarray, codes: np.ndarray, leaves: list[np.ndarray], src: np.ndarray) -> None:
        """Write samples ``leaves[:][src]`` with ``codes[src]`` into ``slots`` (in that order; occupied or not)."""
        # src is always a sorted subset of range(n): full size means arange(n), and a run of consecutive rows is a
        # slice; either way the rows go straight into the slots. Large rows of any other subset are copied one by
        # one: a gathered temporary would double the memory traffic (and its fresh pages cost faults).
        whole = src.size == leaves[0].shape[0]
        run = whole or (src.size > 0 and int(src[-1]) - int(src[0]) + 1 == src.size)
        pairs = None
        for store, leaf in zip(self.data, leaves, strict=True):
            if run:
                store[slots] = leaf if whole else leaf[int(src[0]):int(src[-1]) + 1]
            elif leaf.itemsize * leaf[0].size < _ROW_BYTES:
                store[slots] = leaf[src]
            else:
                pairs = pairs or list(zip(slots.tolist(), src.tolist(), strict=True))
                for slot, i in pairs:
                    store[slot] = leaf[i]
        self.occupied[slots] = True
        self.codes[slots] = codes[src]
        self.seen[slots] = 0
        self.seq[slots] = np.arange(self.next_seq, self.next_seq + slots.size)
        self.next_seq += int(slots.size)

    def fill(self, slots: np.ndarray, codes: np.ndarray, leaves: list[np.ndarray], src: np.ndarray) -> None:
        """:meth:`write` into free ``slots``: the storage grows by ``len(slots)``."""
        self.write(slots, codes, leaves, src)
        self.size += int(slots.size)

    def release(self, slots: np.ndarray) -> None:
        """Free ``slots`` (their samples leave)."""
        self.occupied[slots] = False
        self.size -= int(slots.size)

    def gather(self, slots: np.ndarray) -> Sample:
        """The samples in ``slots`` as fresh arrays with a leading ``len(slots)`` axis."""
        assert self.layout is not None
        return self.layout.unflatten([store[slots] for store in self.data])

    def state_dict(self) -> dict[str, Any]:
        """Occupied slots with their codes, draw counts, insertion numbers and data; ``layout`` 0 (empty), 1 array,
        2 tuple, 3 dict."""
        live = self.live()
        return {
            "next_seq": self.next_seq,
            "slots": live.astype(np.int64),
            "codes": self.codes[live],
            "seen": self.seen[live],
            "seq": self.seq[live],
            "layout": 0 if self.layout is None else 1 + SampleLayout.KINDS.index(self.layout.kind),
            "data": {}
            if self.layout is None
            else {name: store[live] for name, store in zip(self.layout.names, self.data, strict=True)},
        }

    def load_state_dict(self, d: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output into an empty storage of the same capacity."""
        layout_id = int(d["layout"])
        if layout_id:
            data = d["data"]
            kind = SampleLayout.KINDS[layout_id - 1]
            names = tuple(data) if kind != "tuple" else tuple(str(i) for i in range(len(data)))
            arrays = [np.asarray(data[name]) for name in names]
            self.allocate(SampleLayout(kind, names, [a.shape[1:] for a in arrays], [a.dtype for a in arrays]))
            slots = np.asarray(d["slots"], dtype=np.int64)
            for store, a in zip(self.data, arrays, strict=True):
                store[slots] = a
            self.occupied[slots] = True
            self.codes[slots] = np.asarray(d["codes"], dtype=np.int64)
            self.seen[slots] = np.asarray(d["seen"], dtype=np.int64)
            self.seq[slots] = np.asarray(d["seq"], dtype=np.int64)
            self.size = int(slots.size)
        self.next_seq = int(d["next_seq"])
