"""The one data type that crosses the wire: a :class:`Chunk` of consecutive frames of one simulation.

A chunk holds

- ``sim_id``: the simulation's id (int >= 0), unique within a run;
- ``frame_index``: int64 ``(n_frames,)``, the frame index of each frame (its position among the simulation's
  saved frames, 0 = the initial condition; the solver step of frame ``j`` is ``j * solver.every``, its time
  ``j * solver.dt * solver.every``), strictly increasing;
- ``fields``: float32 C-contiguous ``(n_frames, C, *grid)``, the frames (``grid`` may be empty for
  ODE systems);
- ``params``: float32 ``(P,)``, the simulation's parameter vector (``P`` may be 0);
- ``solver``: the solver's name;
- ``offset`` / ``global_grid``: for an external MPI-parallel solver whose rank sends one slab of the
  grid, the start index of the slab along each grid axis and the full grid shape. By default the
  chunk holds the whole grid (``offset`` all zeros, ``global_grid == grid``).

Every transport (Ray pickles the dataclass; MPI sends a header and a raw buffer) shares one codec:
``header, array = chunk.to_wire()`` and ``Chunk.from_wire(header, array)``. The header holds only
plain Python types (JSON-serialisable); the array is the float32 fields, unchanged.

De-duplication keys are ``(sim_id, frame index)`` pairs (:meth:`Chunk.sample_keys`).
"""

from __future__ import annotations

import dataclasses
import math
import operator
from typing import Any

import numpy as np

WIRE_VERSION = 2
_FIELDS_DTYPE = np.dtype(np.float32)


class ChunkError(ValueError):
    """A malformed chunk or wire message; the message names the bad part and the fix."""


def _frozen_view(a: np.ndarray) -> np.ndarray:
    """A read-only view of ``a`` (the caller's array keeps its own flags)."""
    v = a.view()
    v.flags.writeable = False
    return v


def _as_int(name: str, value: Any) -> int:
    if isinstance(value, bool):
        raise ChunkError(f"chunk {name}={value!r}: expected an integer, got a bool")
    try:
        return operator.index(value)
    except TypeError:
        raise ChunkError(f"chunk {name}={value!r}: expected an integer") from None


def _as_shape(name: str, value: Any) -> tuple[int, ...]:
    try:
        items = tuple(value)
    except TypeError:
        raise ChunkError(f"chunk {name}={value!r}: expected a tuple of integers") from None
    return tuple(_as_int(name, v) for v in items)


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class Chunk:
    """Consecutive frames of one simulation; see the module docstring for the fields and shapes.

    Arrays are coerced at construction: ``frame_index`` to int64, ``fields`` and ``params`` to float32
    (a copy only when the dtype or layout differs), and are stored as read-only views.
    """

    sim_id: int
    frame_index: np.ndarray
    fields: np.ndarray
    params: np.ndarray
    solver: str
    offset: tuple[int, ...] | None = None
    global_grid: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        sim_id = _as_int("sim_id", self.sim_id)
        if sim_id < 0:
            raise ChunkError(f"chunk sim_id={sim_id}: must be >= 0")
        set_(self, "sim_id", sim_id)

        if not isinstance(self.solver, str) or not self.solver:
            raise ChunkError(f"chunk solver={self.solver!r}: expected a non-empty solver name (str)")

        frame_index = np.asarray(self.frame_index)
        if frame_index.ndim != 1 or frame_index.dtype.kind not in "iu":
            raise ChunkError(
                f"chunk frame_index: expected a 1-D integer array (n_frames,), got dtype {frame_index.dtype} "
                f"shape {frame_index.shape}"
            )
        frame_index = np.ascontiguousarray(frame_index, dtype=np.int64)
        if frame_index.size and frame_index[0] < 0:
            raise ChunkError(f"chunk frame_index: must be >= 0, got first frame index {int(frame_index[0])}")
        if frame_index.size > 1 and not np.all(np.diff(frame_index) > 0):
            raise ChunkError(f"chunk frame_index: must be strictly increasing, got {frame_index.tolist()}")

        fields = np.asarray(self.fields)
        if fields.dtype.kind != "f":
            raise ChunkError(f"chunk fields: expected a floating array (n_frames, C, *grid), got dtype {fields.dtype}")
        if fields.ndim < 2:
            raise ChunkError(
                f"chunk fields: expected shape (n_frames, C, *grid), got {fields.shape}; add the "
                "channel axis (fields[:, None]) for a single field"
            )
        if fields.shape[0] != frame_index.shape[0]:
            raise ChunkError(
                f"chunk fields: first axis {fields.shape[0]} != len(frame_index) {frame_index.shape[0]}; "
                "send one frame index per frame"
            )
        fields = np.ascontiguousarray(fields, dtype=_FIELDS_DTYPE)

        params = np.asarray(self.params)
        if params.ndim != 1 or params.dtype.kind not in "fiu":
            raise ChunkError(
                f"chunk params: expected a 1-D numeric array (P,), got dtype {params.dtype} shape {params.shape}"
            )
        params = np.ascontiguousarray(params, dtype=np.float32)

        grid = fields.shape[2:]
        offset = (0,) * len(grid) if self.offset is None else _as_shape("offset", self.offset)
        global_grid = grid if self.global_grid is None else _as_shape("global_grid", self.global_grid)
        if len(offset) != len(grid) or len(global_grid) != len(grid):
            raise ChunkError(
                f"chunk offset={offset} / global_grid={global_grid}: need one entry per grid axis "
                f"of fields {fields.shape} (grid {grid})"
            )
        for ax, (o, n, g) in enumerate(zip(offset, grid, global_grid, strict=True)):
            if o < 0 or o + n > g:
                raise ChunkError(
                    f"chunk slab on grid axis {ax}: offset {o} + local size {n} must lie in "
                    f"[0, global_grid {g}]; fix offset or global_grid"
                )
        set_(self, "frame_index", _frozen_view(frame_index))
        set_(self, "fields", _frozen_view(fields))
        set_(self, "params", _frozen_view(params))
        set_(self, "offset", offset)
        set_(self, "global_grid", global_grid)

    # ---------------------------------------------------------------- shape helpers
    @property
    def n_frames(self) -> int:
        """Number of frames in the chunk."""
        return int(self.fields.shape[0])

    @property
    def n_channels(self) -> int:
        """Number of field channels ``C``."""
        return int(self.fields.shape[1])

    @property
    def grid(self) -> tuple[int, ...]:
        """Shape of the grid held by this chunk (the slab for an MPI rank)."""
        return tuple(self.fields.shape[2:])

    @property
    def is_slab(self) -> bool:
        """True when the chunk holds only part of the global grid."""
        return self.grid != self.global_grid

    @property
    def nbytes(self) -> int:
        """Bytes of array payload: fields + frame_index + params."""
        return int(self.fields.nbytes + self.frame_index.nbytes + self.params.nbytes)

    def is_finite(self) -> bool:
        """True when every field value and parameter is finite (no NaN or Inf)."""
        return bool(np.isfinite(self.fields).all() and np.isfinite(self.params).all())

    @classmethod
    def checked(cls, sim_id: int, frame_index: np.ndarray, fields: np.ndarray, params: np.ndarray, solver: str,
                offset: tuple[int, ...], global_grid: tuple[int, ...]) -> Chunk:
        """A chunk of parts a chunk was already checked with (int64 ``frame_index``, float32 C-contiguous ``fields``
        and ``params``, tuples), e.g. sent by the process that checked it: stored as read-only views, not checked
        again."""
        out = object.__new__(cls)
        for name, value in (("sim_id", sim_id), ("frame_index", _frozen_view(frame_index)),
                            ("fields", _frozen_view(fields)), ("params", _frozen_view(params)), ("solver", solver),
                            ("offset", offset), ("global_grid", global_grid)):
            object.__setattr__(out, name, value)
        return out

    def frames(self, start: int, stop: int) -> Chunk:
        """Frames ``start .. stop - 1`` as a chunk of views into this one (a slice of a checked chunk is one)."""
        return Chunk.checked(self.sim_id, self.frame_index[start:stop], self.fields[start:stop], self.params,
                             self.solver, self.offset, self.global_grid)

    def sample_keys(self) -> np.ndarray:
        """De-duplication keys: int64 ``(n_frames, 2)``, row ``i`` is ``(sim_id, frame_index[i])`` (a frame index)."""
        keys = np.empty((self.n_frames, 2), dtype=np.int64)
        keys[:, 0] = self.sim_id
        keys[:, 1] = self.frame_index
        return keys

    # ---------------------------------------------------------------- wire codec
    def to_wire(self) -> tuple[dict[str, Any], np.ndarray]:
        """Split into a header of plain Python types and the float32 fields (no copy).

        The header is JSON-serialisable: ``version, sim_id, solver, frame_index, params, shape, dtype,
        offset, global_grid``. Float32 params go through Python floats, which is exact.
        """
        header = {
            "version": WIRE_VERSION,
            "sim_id": self.sim_id,
            "solver": self.solver,
            "frame_index": self.frame_index.tolist(),
            "params": self.params.tolist(),
            "shape": list(self.fields.shape),
            "dtype": _FIELDS_DTYPE.str,
            "offset": list(self.offset),
            "global_grid": list(self.global_grid),
        }
        return header, self.fields

    @classmethod
    def from_wire(cls, header: dict[str, Any], array: Any) -> Chunk:
        """Rebuild a chunk from :meth:`to_wire`'s header and the fields' data.

        ``array`` is the fields array itself or its raw data (a flat array, ``bytes``, ``bytearray``,
        ``memoryview`` or uint8 array as received by ``MPI.Recv``), read as ``header["dtype"]``
        (float32 by default; an external client may send float64, which is cast to float32) and
        reshaped to ``header["shape"]`` without a copy when possible.
        """
        if not isinstance(header, dict):
            raise ChunkError(f"chunk header: expected a dict, got {type(header).__name__}")
        if header.get("version") != WIRE_VERSION:
            raise ChunkError(
                f"chunk header version={header.get('version')!r}: this pdestream reads version "
                f"{WIRE_VERSION}; use the same pdestream version on both ends"
            )
        missing = [k for k in ("sim_id", "solver", "frame_index", "params", "shape") if k not in header]
        if missing:
            raise ChunkError(f"chunk header: missing key(s) {', '.join(missing)}; build it with Chunk.to_wire")
        dtype = np.dtype(header.get("dtype", _FIELDS_DTYPE.str))
        shape = _as_shape("header shape", header["shape"])
        if isinstance(array, np.ndarray) and array.dtype != np.uint8:
            data = array
        else:
            try:
                data = np.frombuffer(array, dtype=dtype)
            except (TypeError, ValueError) as e:
                raise ChunkError(f"chunk data: cannot read as {dtype} buffer ({e})") from None
        count = math.prod(shape)
        if data.size != count:
            raise ChunkError(
                f"chunk data: {data.size} values received but header shape {shape} needs {count}; "
                "slice the receive buffer to the message size"
            )
        return cls(
            sim_id=header["sim_id"],
            frame_index=np.asarray(header["frame_index"], dtype=np.int64),
            fields=data.reshape(shape),
            params=np.asarray(header["params"], dtype=np.float32),
            solver=header["solver"],
            offset=header.get("offset"),
            global_grid=header.get("global_grid"),
        )

    def __repr__(self) -> str:
        slab = f", offset={self.offset}, global_grid={self.global_grid}" if self.is_slab else ""
        frame_index = f"{int(self.frame_index[0])}..{int(self.frame_index[-1])}" if self.n_frames else "none"
        return (
            f"Chunk(sim_id={self.sim_id}, solver={self.solver!r}, frame_index={frame_index}, "
            f"fields={self.fields.dtype}{list(self.fields.shape)}, params={self.params.tolist()}{slab})"
        )


@dataclasses.dataclass(frozen=True)
class SimReport:
    """End of one simulation: ``status`` is ``"done"`` or ``"nan"`` (dropped: it produced NaN/Inf)."""

    sim_id: int
    status: str
    message: str = ""
