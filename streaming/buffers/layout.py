"""The layout of the samples a buffer stores: structure (array / tuple / dict), leaf names, shapes, dtypes.

A *sample* is one numpy record: a ``dict`` of arrays (str keys), a ``tuple`` of arrays, or a single
array. The first put fixes the layout; later puts are checked against it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from streaming.buffers.errors import BufferStateError

Sample = Any  # dict[str, np.ndarray] | tuple[np.ndarray, ...] | np.ndarray


class SampleLayout:
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
    def infer(cls, samples: Sample, n: int) -> SampleLayout:
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


def add_axis(sample: Sample) -> Sample:
    """One sample as a batch of one: a leading axis of length 1 on every leaf."""
    if isinstance(sample, Mapping):
        return {k: np.asarray(v)[None] for k, v in sample.items()}
    if isinstance(sample, tuple):
        return tuple(np.asarray(v)[None] for v in sample)
    return np.asarray(sample)[None]
