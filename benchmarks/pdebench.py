"""PDEBench HDF5 files: read both of PDEBench's layouts into our ``(N, Nt, C, *grid)`` convention, and write small ones.

PDEBench (Takamoto et al., NeurIPS 2022 Datasets & Benchmarks) ships two layouts. The dataset names below are
PDEBench's own, as read by ``pdebench/models/fno/utils.py`` (``FNODatasetSingle``, ``FNODatasetMult``) and written by
``pdebench/data_gen/data_gen_NLE/Data_Merge.py`` and ``pdebench/data_gen/gen_diff_react.py``:

- single file, scalar equations (layout ``"tensor"``): ``tensor`` ``(N, Nt, Nx[, Ny])``, ``x-coordinate`` ``(Nx,)``
  [, ``y-coordinate`` ``(Ny,)``], ``t-coordinate``; root attributes such as ``beta``, ``Nu``, ``rho``.
  Darcy flow is ``tensor`` ``(N, 1, Nx, Ny)`` plus the coefficient field ``nu`` ``(N, Nx, Ny)`` and no
  ``t-coordinate`` (then ``t`` is None and ``nu`` is an *extra*, see :meth:`PDEBenchFile.read_extra`).
- single file, compressible flow (layout ``"cfd"``): ``density``, ``pressure``, ``Vx`` [, ``Vy`` [, ``Vz``]] each
  ``(N, Nt, Nx[, Ny[, Nz]])``, the matching ``x-/y-/z-coordinate`` and ``t-coordinate``; attributes ``eta``, ``zeta``,
  ``M``. Channels keep that order (density, pressure, Vx, Vy, Vz), as in ``FNODatasetSingle``.
- one group per seed (layout ``"grouped"``; shallow water, diffusion-reaction, diffusion-sorption): groups
  ``"0000"``, ``"0001"``, ... (read in sorted order), each with ``data`` ``(Nt, Nx[, Ny], Nc)``, ``grid/x``
  [, ``grid/y``] and ``grid/t``. PDEBench's files do not name the channels; they are called ``c0``, ``c1``, ...

PDEBench's 1D generators save ``t-coordinate`` with ``Nt + 1`` entries (``arange(it_tot + 1) * dt_save``, see
``AdvectionEq/advection_multi_solution_Hydra.py``) while ``tensor`` holds ``Nt`` frames, frame ``i`` at
``t-coordinate[i]``; the reader therefore accepts ``Nt`` or ``Nt + 1`` times and keeps the first ``Nt``.

Fields are read lazily: :func:`open_pdebench` reads only metadata; :meth:`PDEBenchFile.read` reads the selected
simulations and frames with h5py slicing. Every problem with a file raises :class:`PDEBenchFileError`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

__all__ = [
    "CFD_CHANNELS",
    "PDEBenchData",
    "PDEBenchFile",
    "PDEBenchFileError",
    "open_pdebench",
    "read_pdebench",
    "write_pdebench_grouped",
    "write_pdebench_single",
]

# Order of FNODatasetSingle (pdebench/models/fno/utils.py): density, pressure, Vx, Vy, Vz.
CFD_CHANNELS = ("density", "pressure", "Vx", "Vy", "Vz")
_COORD_NAMES = ("x-coordinate", "y-coordinate", "z-coordinate")
_AXES = ("x", "y", "z")

Selector = int | slice | Sequence[int] | np.ndarray | None


class PDEBenchFileError(ValueError):
    """A PDEBench file is missing, corrupt or not in one of PDEBench's layouts, or a selection does not fit it."""


# --------------------------------------------------------------------------------------------------------------------
# Data types
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class PDEBenchData:
    """Fields read from a PDEBench file.

    ``fields`` is float32 ``(n, nt, C, *grid)`` (simulation, frame, channel, space), the layout of
    ``benchmarks.trajectories``; ``sims`` and ``frames`` are the indices that were read; ``t`` holds the times of
    those frames (None where the file has no time coordinate).
    """

    path: Path
    layout: str
    fields: np.ndarray
    channels: tuple[str, ...]
    x: np.ndarray
    y: np.ndarray | None
    z: np.ndarray | None
    t: np.ndarray | None
    sims: np.ndarray
    frames: np.ndarray
    attrs: dict = field(default_factory=dict)

    @property
    def coords(self) -> dict[str, np.ndarray]:
        """Grid coordinates by axis name (``x`` [, ``y`` [, ``z``]]), as in ``Trajectories.coords``."""
        return _coords(self.x, self.y, self.z)


@dataclass(frozen=True, eq=False)
class PDEBenchFile:
    """Metadata of an opened PDEBench file; :meth:`read` reads fields.

    ``shape`` is ``(N, Nt, C, *grid)``; ``seeds`` lists the seed groups of a grouped file (empty otherwise);
    ``extras`` names further per-simulation datasets (Darcy's ``nu``), read with :meth:`read_extra`.
    """

    path: Path
    layout: str  # "tensor" | "cfd" | "grouped"
    channels: tuple[str, ...]
    shape: tuple[int, ...]
    x: np.ndarray
    y: np.ndarray | None
    z: np.ndarray | None
    t: np.ndarray | None
    attrs: dict
    seeds: tuple[str, ...] = ()
    extras: tuple[str, ...] = ()

    @property
    def n_sims(self) -> int:
        return self.shape[0]

    @property
    def n_frames(self) -> int:
        return self.shape[1]

    @property
    def grid_shape(self) -> tuple[int, ...]:
        return self.shape[3:]

    @property
    def spatial_dims(self) -> int:
        return len(self.shape) - 3

    @property
    def coords(self) -> dict[str, np.ndarray]:
        return _coords(self.x, self.y, self.z)

    def read(self, sims: Selector = None, frames: Selector = None) -> PDEBenchData:
        """Read ``fields[sims, frames]`` as float32 ``(n, nt, C, *grid)``.

        ``sims`` / ``frames``: None (all), an int (kept as an axis of length 1), a slice, or a sequence of indices
        (any order, repeats allowed; negative indices count from the end).
        """
        sim_idx = _normalise(sims, self.n_sims, "sims", self.path)
        frame_idx = _normalise(frames, self.n_frames, "frames", self.path)
        try:
            with h5py.File(self.path, "r") as f:
                if self.layout == "tensor":
                    data = _read_rows(f["tensor"], sim_idx, frame_idx)[:, :, None]
                elif self.layout == "cfd":
                    data = np.stack([_read_rows(f[c], sim_idx, frame_idx) for c in self.channels], axis=2)
                else:
                    data = np.stack([_read_seed(f[self.seeds[i]]["data"], frame_idx) for i in sim_idx], axis=0)
        except (OSError, KeyError, RuntimeError) as e:
            raise PDEBenchFileError(
                f"{self.path}: reading the fields failed ({_short(e)}); the file is truncated or corrupt, "
                "download it again"
            ) from e
        t = None if self.t is None else self.t[frame_idx]
        return PDEBenchData(path=self.path, layout=self.layout, fields=np.ascontiguousarray(data, np.float32),
                            channels=self.channels, x=self.x, y=self.y, z=self.z, t=t, sims=sim_idx,
                            frames=frame_idx, attrs=dict(self.attrs))

    def read_extra(self, name: str, sims: Selector = None) -> np.ndarray:
        """Read the per-simulation dataset ``name`` (e.g. Darcy's ``nu``, ``(N, Nx, Ny)``) for ``sims`` as float32."""
        if name not in self.extras:
            raise PDEBenchFileError(
                f"{self.path}: no extra dataset {name!r}; this file has {list(self.extras) or 'none'}"
            )
        sim_idx = _normalise(sims, self.n_sims, "sims", self.path)
        try:
            with h5py.File(self.path, "r") as f:
                return np.asarray(_read_rows(f[name], sim_idx, None), np.float32)
        except (OSError, KeyError, RuntimeError) as e:
            raise PDEBenchFileError(f"{self.path}: reading {name!r} failed ({_short(e)}); download the file again") \
                from e


# --------------------------------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------------------------------


def open_pdebench(path: str | os.PathLike) -> PDEBenchFile:
    """Open a PDEBench HDF5 file, detect its layout and check its shapes; reads coordinates only, not fields."""
    path = Path(path)
    if not path.is_file():
        raise PDEBenchFileError(f"{path}: no such file; pass the path of a PDEBench .hdf5/.h5 file")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise PDEBenchFileError(
            f"{path}: not a readable HDF5 file ({_short(e)}); it is truncated or corrupt, download it again"
        ) from e
    try:
        with f:
            fmt = f.attrs.get("format")
            if isinstance(fmt, bytes | str) and str(_attr(fmt)).startswith("pdestream-trajectories"):
                raise PDEBenchFileError(
                    f"{path}: this is a pdestream trajectory file, not a PDEBench file; read it with "
                    "benchmarks.trajectories.read_trajectories"
                )
            if "tensor" in f:
                return _open_tensor(path, f)
            if "density" in f:
                return _open_cfd(path, f)
            if any(isinstance(f[k], h5py.Group) and "data" in f[k] for k in f):
                return _open_grouped(path, f)
            keys = sorted(f.keys())
            raise PDEBenchFileError(
                f"{path}: no PDEBench layout found (root holds {keys[:6]}{' ...' if len(keys) > 6 else ''}); "
                "expected a 'tensor' dataset, 'density'/'pressure'/'Vx' datasets, or seed groups '0000', ... "
                "with 'data' and 'grid/x'"
            )
    except (OSError, KeyError, RuntimeError, TypeError) as e:
        raise PDEBenchFileError(
            f"{path}: unreadable PDEBench file ({_short(e)}); it is truncated or corrupt, download it again"
        ) from e


def read_pdebench(path: str | os.PathLike, sims: Selector = None, frames: Selector = None) -> PDEBenchData:
    """Open a PDEBench file and read ``fields[sims, frames]`` as float32 ``(n, nt, C, *grid)``."""
    return open_pdebench(path).read(sims=sims, frames=frames)


def _open_tensor(path: Path, f: h5py.File) -> PDEBenchFile:
    d = _dataset(path, f, "tensor", "")
    if d.ndim not in (3, 4, 5):
        raise PDEBenchFileError(
            f"{path}: 'tensor' has shape {d.shape}; PDEBench stores (N, Nt, Nx[, Ny[, Nz]]), so this file does not "
            "fit the layout"
        )
    n, nt, *grid = d.shape
    xyz = _coordinates(path, f, grid, _COORD_NAMES, "")
    t = _time(path, f, "t-coordinate", nt, required=False)
    extras = tuple(sorted(
        k for k in f if k != "tensor" and k not in _COORD_NAMES and k != "t-coordinate"
        and isinstance(f[k], h5py.Dataset) and f[k].ndim >= 1 and f[k].shape[0] == n
    ))
    return PDEBenchFile(path=path, layout="tensor", channels=("u",), shape=(n, nt, 1, *grid), x=xyz[0], y=xyz[1],
                        z=xyz[2], t=t, attrs=_attrs(f), extras=extras)


def _open_cfd(path: Path, f: h5py.File) -> PDEBenchFile:
    dens = _dataset(path, f, "density", "")
    if dens.ndim not in (3, 4, 5):
        raise PDEBenchFileError(
            f"{path}: 'density' has shape {dens.shape}; PDEBench stores (N, Nt, Nx[, Ny[, Nz]]), so this file does "
            "not fit the layout"
        )
    dims = dens.ndim - 2
    channels = CFD_CHANNELS[: 2 + dims]
    for c in channels:
        d = _dataset(path, f, c, "")
        if d.shape != dens.shape:
            raise PDEBenchFileError(
                f"{path}: {c!r} has shape {d.shape} but 'density' has {dens.shape}; every field of a PDEBench CFD "
                "file must have the same shape, regenerate or re-download the file"
            )
    n, nt, *grid = dens.shape
    xyz = _coordinates(path, f, grid, _COORD_NAMES, "")
    t = _time(path, f, "t-coordinate", nt, required=False)
    return PDEBenchFile(path=path, layout="cfd", channels=channels, shape=(n, nt, len(channels), *grid), x=xyz[0],
                        y=xyz[1], z=xyz[2], t=t, attrs=_attrs(f))


def _open_grouped(path: Path, f: h5py.File) -> PDEBenchFile:
    seeds = tuple(sorted(f.keys()))
    shape0 = None
    for s in seeds:
        g = f[s]
        if not isinstance(g, h5py.Group) or "data" not in g:
            raise PDEBenchFileError(
                f"{path}: member {s!r} is not a seed group with a 'data' dataset; a grouped PDEBench file holds only "
                "groups '0000', '0001', ... each with 'data' and 'grid/x'"
            )
        d = _dataset(path, g, "data", f"{s}/")
        if shape0 is None:
            shape0 = d.shape
            if d.ndim not in (3, 4, 5):
                raise PDEBenchFileError(
                    f"{path}: '{s}/data' has shape {d.shape}; PDEBench stores (Nt, Nx[, Ny[, Nz]], Nc), so this file "
                    "does not fit the layout"
                )
        elif d.shape != shape0:
            raise PDEBenchFileError(
                f"{path}: '{s}/data' has shape {d.shape} but '{seeds[0]}/data' has {shape0}; all seeds must share "
                "one shape, drop or regenerate the odd seed"
            )
    assert shape0 is not None  # f is non-empty: the caller found a group with 'data'
    nt, *grid, nc = shape0
    g0 = f[seeds[0]]
    if "grid" not in g0 or not isinstance(g0["grid"], h5py.Group):
        raise PDEBenchFileError(f"{path}: seed '{seeds[0]}' has no 'grid' group; PDEBench stores grid/x, grid/t")
    xyz = _coordinates(path, g0["grid"], grid, _AXES, f"{seeds[0]}/grid/")
    t = _time(path, g0["grid"], "t", nt, required=False, prefix=f"{seeds[0]}/grid/")
    channels = tuple(f"c{i}" for i in range(nc))
    return PDEBenchFile(path=path, layout="grouped", channels=channels, shape=(len(seeds), nt, nc, *grid), x=xyz[0],
                        y=xyz[1], z=xyz[2], t=t, attrs=_attrs(f), seeds=seeds)


def _dataset(path: Path, g: h5py.Group, name: str, prefix: str) -> h5py.Dataset:
    if name not in g:
        raise PDEBenchFileError(
            f"{path}: dataset '{prefix}{name}' is missing; the file is incomplete, download it again"
        )
    d = g[name]
    if not isinstance(d, h5py.Dataset) or d.dtype.kind not in "fiu":
        raise PDEBenchFileError(f"{path}: '{prefix}{name}' is not a numeric dataset; the file is not in PDEBench's "
                                "layout")
    return d


def _coordinates(path: Path, g: h5py.Group, grid: Sequence[int], names: Sequence[str], prefix: str) -> list:
    out: list[np.ndarray | None] = [None, None, None]
    for i, n in enumerate(grid):
        c = np.asarray(_dataset(path, g, names[i], prefix)[()], np.float64)
        if c.shape != (n,):
            raise PDEBenchFileError(
                f"{path}: '{prefix}{names[i]}' has shape {c.shape} but the fields have {n} points along that axis; "
                "the coordinates do not belong to these fields, re-download the file"
            )
        out[i] = c
    return out


def _time(path: Path, g: h5py.Group, name: str, nt: int, *, required: bool, prefix: str = "") -> np.ndarray | None:
    if name not in g and not required:
        return None
    t = np.asarray(_dataset(path, g, name, prefix)[()], np.float64)
    if t.ndim != 1 or len(t) not in (nt, nt + 1):
        raise PDEBenchFileError(
            f"{path}: '{prefix}{name}' has shape {t.shape} but the fields have {nt} frames (expected {nt} or {nt + 1} "
            "times); the file is inconsistent, re-download it"
        )
    return t[:nt]


def _read_rows(d: h5py.Dataset, sims: np.ndarray, frames: np.ndarray | None) -> np.ndarray:
    """``d[sims, frames]`` for a dataset ``(N, Nt, ...)``; h5py needs increasing unique indices, so sort and undo."""
    s_key, s_inv = _h5_key(sims)
    if frames is None:
        if isinstance(s_key, slice):
            return np.asarray(d[s_key])
        return np.stack([np.asarray(d[i]) for i in s_key])[s_inv]
    f_key, f_inv = _h5_key(frames)
    if isinstance(s_key, slice):
        out = np.asarray(d[s_key, f_key])
    else:
        out = np.stack([np.asarray(d[i, f_key]) for i in s_key])[s_inv]
    return out if f_inv is None else out[:, f_inv]


def _read_seed(d: h5py.Dataset, frames: np.ndarray) -> np.ndarray:
    """One seed's ``data`` ``(Nt, *grid, Nc)`` -> ``(nt, Nc, *grid)``."""
    f_key, f_inv = _h5_key(frames)
    out = np.asarray(d[f_key])
    if f_inv is not None:
        out = out[f_inv]
    return np.moveaxis(out, -1, 1)


def _h5_key(idx: np.ndarray) -> tuple[slice | np.ndarray, np.ndarray | None]:
    """A contiguous increasing run becomes a slice (one read); anything else sorted unique indices + inverse."""
    if len(idx) > 0 and np.all(np.diff(idx) == 1):
        return slice(int(idx[0]), int(idx[-1]) + 1), None
    uniq, inv = np.unique(idx, return_inverse=True)
    return uniq, inv


def _normalise(sel: Selector, n: int, what: str, path: Path) -> np.ndarray:
    if sel is None:
        return np.arange(n)
    if isinstance(sel, slice):
        idx = np.arange(n)[sel]
    else:
        raw = np.atleast_1d(np.asarray(sel))
        if raw.ndim != 1 or (raw.size and raw.dtype.kind not in "iu"):
            raise PDEBenchFileError(
                f"{path}: {what}={sel!r} is not an index; pass an int, a slice or a list of ints"
            )
        bad = raw[(raw < -n) | (raw >= n)]
        if bad.size:
            raise PDEBenchFileError(
                f"{path}: {what} index {int(bad[0])} is out of range; the file holds {what} 0..{n - 1}"
            )
        idx = np.asarray(raw, np.int64) % max(n, 1)
    if idx.size == 0:
        raise PDEBenchFileError(f"{path}: {what}={sel!r} selects nothing; the file holds {what} 0..{n - 1}")
    return idx.astype(np.int64)


def _attr(v: object) -> object:
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    return v


def _attrs(g: h5py.Group) -> dict:
    return {k: _attr(v) for k, v in g.attrs.items()}


def _coords(x: np.ndarray, y: np.ndarray | None, z: np.ndarray | None) -> dict[str, np.ndarray]:
    return {k: v for k, v in zip(_AXES, (x, y, z), strict=True) if v is not None}


def _short(e: BaseException) -> str:
    return str(e).splitlines()[0][:160] if str(e) else type(e).__name__


# --------------------------------------------------------------------------------------------------------------------
# Writing (small files for tests and documentation)
# --------------------------------------------------------------------------------------------------------------------


def write_pdebench_single(
    path: str | os.PathLike,
    tensor: np.ndarray | Mapping[str, np.ndarray],
    x: np.ndarray,
    t: np.ndarray | None,
    *,
    y: np.ndarray | None = None,
    z: np.ndarray | None = None,
    extras: Mapping[str, np.ndarray] | None = None,
    attrs: Mapping[str, object] | None = None,
) -> Path:
    """Write a single-file PDEBench HDF5 file.

    ``tensor``: an array ``(N, Nt, Nx[, Ny])`` written as ``tensor`` (scalar equations), or a mapping with PDEBench's
    CFD names ``density``, ``pressure``, ``Vx`` [, ``Vy`` [, ``Vz``]] to arrays ``(N, Nt, *grid)`` (compressible flow).
    ``x`` [, ``y``, ``z``]: cell-centre coordinates, one per grid axis, written as ``x-coordinate`` etc.
    ``t``: ``Nt`` or ``Nt + 1`` times (PDEBench's 1D files carry ``Nt + 1``) written as ``t-coordinate``; None omits
    it (Darcy). ``extras``: further datasets, e.g. ``{"nu": (N, Nx, Ny)}``. ``attrs``: root attributes (``beta``...).
    Fields are stored as float32, coordinates as given. The file is written atomically.
    """
    path = Path(path)
    if isinstance(tensor, Mapping):
        names = tuple(tensor)
        dims = np.ndim(next(iter(tensor.values()))) - 2 if names else 0
        want = CFD_CHANNELS[: 2 + dims]
        if names != want:
            raise PDEBenchFileError(
                f"write_pdebench_single: CFD fields are {list(names)}; PDEBench's {dims}D files hold exactly "
                f"{list(want)} in that order"
            )
        fields = {k: np.asarray(v, np.float32) for k, v in tensor.items()}
    else:
        fields = {"tensor": np.asarray(tensor, np.float32)}
    shape = next(iter(fields.values())).shape
    for k, v in fields.items():
        if v.shape != shape or v.ndim not in (3, 4, 5):
            raise PDEBenchFileError(
                f"write_pdebench_single: {k!r} has shape {v.shape}; pass (N, Nt, Nx[, Ny[, Nz]]) arrays of one shape"
            )
    grid = shape[2:]
    coords = _check_coords("write_pdebench_single", grid, (x, y, z))
    if t is not None:
        t = np.asarray(t)
        if t.ndim != 1 or len(t) not in (shape[1], shape[1] + 1):
            raise PDEBenchFileError(
                f"write_pdebench_single: t has shape {t.shape} for {shape[1]} frames; pass {shape[1]} "
                f"(or {shape[1] + 1}) times"
            )

    def fill(f: h5py.File) -> None:
        for k, v in fields.items():
            f.create_dataset(k, data=v)
        for name, c in zip(_COORD_NAMES, coords, strict=False):
            f.create_dataset(name, data=c)
        if t is not None:
            f.create_dataset("t-coordinate", data=t)
        for k, v in (extras or {}).items():
            f.create_dataset(k, data=np.asarray(v, np.float32))
        f.attrs.update(dict(attrs or {}))

    return _atomic_write(path, fill)


def write_pdebench_grouped(
    path: str | os.PathLike,
    data_per_seed: Sequence[np.ndarray] | np.ndarray,
    x: np.ndarray,
    t: np.ndarray | None,
    *,
    y: np.ndarray | None = None,
    z: np.ndarray | None = None,
    attrs: Mapping[str, object] | None = None,
) -> Path:
    """Write a grouped (one group per seed) PDEBench HDF5 file, as PDEBench's ``gen_diff_react.py`` does.

    ``data_per_seed``: one array ``(Nt, Nx[, Ny], Nc)`` per seed (or one stacked array ``(N, Nt, Nx[, Ny], Nc)``),
    written as groups ``"0000"``, ``"0001"``, ... each with float32 ``data`` and ``grid/x`` [, ``grid/y``],
    ``grid/t``. ``attrs``: root attributes. The file is written atomically.
    """
    path = Path(path)
    seeds = [np.asarray(d, np.float32) for d in data_per_seed]
    if not seeds:
        raise PDEBenchFileError("write_pdebench_grouped: no seeds given; pass at least one (Nt, Nx[, Ny], Nc) array")
    shape = seeds[0].shape
    for i, d in enumerate(seeds):
        if d.shape != shape or d.ndim not in (3, 4, 5):
            raise PDEBenchFileError(
                f"write_pdebench_grouped: seed {i} has shape {d.shape}; pass (Nt, Nx[, Ny[, Nz]], Nc) arrays of one "
                "shape"
            )
    coords = _check_coords("write_pdebench_grouped", shape[1:-1], (x, y, z))
    if t is not None:
        t = np.asarray(t)
        if t.ndim != 1 or len(t) not in (shape[0], shape[0] + 1):
            raise PDEBenchFileError(
                f"write_pdebench_grouped: t has shape {t.shape} for {shape[0]} frames; pass {shape[0]} times"
            )

    def fill(f: h5py.File) -> None:
        for i, d in enumerate(seeds):
            g = f.create_group(f"{i:04d}")  # PDEBench: str(seed).zfill(4)
            g.create_dataset("data", data=d)
            for name, c in zip(_AXES, coords, strict=False):
                g.create_dataset(f"grid/{name}", data=np.asarray(c, np.float32))
            if t is not None:
                g.create_dataset("grid/t", data=np.asarray(t, np.float32))
        f.attrs.update(dict(attrs or {}))

    return _atomic_write(path, fill)


def _check_coords(who: str, grid: Sequence[int], given: Sequence[np.ndarray | None]) -> list[np.ndarray]:
    out = []
    for i, (axis, c) in enumerate(zip(_AXES, given, strict=True)):
        if i >= len(grid):
            if c is not None:
                raise PDEBenchFileError(f"{who}: {axis} given but the fields have only {len(grid)} grid axes; drop it")
            continue
        if c is None:
            raise PDEBenchFileError(f"{who}: the fields have {len(grid)} grid axes; pass {axis} too")
        c = np.asarray(c)
        if c.shape != (grid[i],):
            raise PDEBenchFileError(
                f"{who}: {axis} has shape {c.shape} but the fields have {grid[i]} points along it; pass ({grid[i]},)"
            )
        out.append(c)
    return out


def _atomic_write(path: Path, fill: Callable[[h5py.File], None]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    try:
        with h5py.File(tmp, "w") as f:
            fill(f)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def trajectories_to_pdebench(src: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Rewrite a ``pdestream solve`` file in PDEBench's layout, so PDEBench tooling (and ``--suite pdebench``) reads it.

    A one-channel solver gives the single-file layout: ``tensor`` ``(N, Nt, *grid)``, ``x-coordinate`` [...],
    ``t-coordinate``, and one dataset ``(N,)`` per solver parameter named after it (PDEBench keeps one parameter set
    per file in root attributes; ours vary per simulation, and the evaluator reads either). Several channels give
    the grouped layout, one group per simulation with ``data`` ``(Nt, *grid, C)``, and the parameters, when they are
    the same for every simulation, as root attributes. The whole file is read into memory.
    """
    from benchmarks.trajectories import read_trajectories

    traj = read_trajectories(src)
    fields = traj.fields()  # (N, Nt, C, *grid)
    xyz = [traj.coords.get(a) for a in _AXES]
    attrs = {"solver": traj.solver, "channels": list(traj.channels)}
    if len(traj.channels) == 1:
        extras = {name: traj.params[:, i] for i, name in enumerate(traj.param_names)}
        return write_pdebench_single(out, fields[:, :, 0], xyz[0], traj.t, y=xyz[1], z=xyz[2], extras=extras,
                                     attrs=attrs)
    fixed = np.all(traj.params == traj.params[:1], axis=0)
    attrs.update({name: float(traj.params[0, i]) for i, name in enumerate(traj.param_names) if fixed[i]})
    return write_pdebench_grouped(out, np.moveaxis(fields, 2, -1), xyz[0], traj.t, y=xyz[1], z=xyz[2], attrs=attrs)
