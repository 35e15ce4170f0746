"""Trajectory files: the HDF5 layout written by ``pdestream solve`` and read everywhere else.

Layout (one file, N simulations of T frames):

- ``fields``   float32 ``(N, T, C, *grid)``, chunked one frame at a time, gzip-compressed;
- ``params``   float64 ``(N, P)``, with attribute ``names``;
- ``sim_id``   int64 ``(N,)``;
- ``t``        float64 ``(T,)`` (time of each frame, solver units); ``x`` [, ``y``] grid coordinates;
- attributes: ``solver``, ``channels``, ``config`` (JSON), ``dt``, ``every``, ``format`` = "pdestream-trajectories/1".

Files are written to ``NAME.partial`` and renamed on success, so a failed run leaves nothing behind.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

FORMAT = "pdestream-trajectories/1"


class TrajectoryFileError(ValueError):
    """A trajectory file is missing, corrupt or not in the expected layout."""


@dataclass
class TrajectoryWriter:
    """Incremental writer: ``with TrajectoryWriter(path, ...) as w: w.write(i0, frames, params, ids)``.

    ``frames`` is ``(b, T, C, *grid)``. On an exception inside the block the partial file is deleted.
    """

    path: Path
    n_sims: int
    frame_shape: tuple[int, ...]  # (T, C, *grid)
    n_params: int
    solver: str
    channels: Sequence[str]
    param_names: Sequence[str]
    coords: dict[str, np.ndarray]
    times: np.ndarray
    config: dict
    dt: float
    every: int

    @classmethod
    def for_solver(cls, solver: Any, path: str | Path, n_sims: int, n_steps: int, every: int) -> TrajectoryWriter:
        """A writer for ``n_sims`` rollouts of ``n_steps`` steps (a frame every ``every``) of ``solver``."""
        n_out = n_steps // every + 1
        return cls(path=Path(path), n_sims=n_sims, frame_shape=(n_out, len(solver.channels), *solver.grid),
                   n_params=len(solver.param_space), solver=solver.name, channels=solver.channels,
                   param_names=solver.param_space.names, coords=solver.coords(),
                   times=np.arange(n_out) * every * solver.dt, config=solver.describe()["config"], dt=solver.dt,
                   every=every)

    def __enter__(self) -> TrajectoryWriter:
        self.path = Path(self.path)
        self._tmp = self.path.with_name(self.path.name + ".partial")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        f = self._file = h5py.File(self._tmp, "w")
        chunk = (1, 1, *self.frame_shape[1:])
        f.create_dataset(
            "fields",
            (self.n_sims, *self.frame_shape),
            "f4",
            chunks=chunk,
            compression="gzip",
            compression_opts=1,
            shuffle=True,
        )
        f.create_dataset("params", (self.n_sims, self.n_params), "f8").attrs["names"] = list(self.param_names)
        f.create_dataset("sim_id", (self.n_sims,), "i8")
        f["t"] = np.asarray(self.times, np.float64)
        for name, c in self.coords.items():
            f[name] = np.asarray(c, np.float64)
        f.attrs.update(
            format=FORMAT,
            solver=self.solver,
            channels=list(self.channels),
            config=json.dumps(self.config),
            dt=self.dt,
            every=self.every,
        )
        return self

    def write(self, start: int, frames: np.ndarray, params: np.ndarray, sim_ids: np.ndarray) -> None:
        b = len(frames)
        self._file["fields"][start : start + b] = np.asarray(frames, np.float32)
        self._file["params"][start : start + b] = params
        self._file["sim_id"][start : start + b] = sim_ids

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self._file.close()
        if exc_type is None:
            os.replace(self._tmp, self.path)
        else:
            self._tmp.unlink(missing_ok=True)


@dataclass
class Trajectories:
    """Contents of a trajectory file (arrays loaded lazily through ``fields``)."""

    path: Path
    solver: str
    channels: list[str]
    param_names: list[str]
    params: np.ndarray
    sim_id: np.ndarray
    t: np.ndarray
    coords: dict[str, np.ndarray]
    config: dict
    shape: tuple[int, ...]

    def fields(self, sims: slice | Sequence[int] | int = slice(None), frames: slice = slice(None)) -> np.ndarray:
        """Read ``fields[sims, frames]`` as float32."""
        with h5py.File(self.path, "r") as f:
            return np.asarray(f["fields"][sims, frames], np.float32)


def read_trajectories(path: str | os.PathLike) -> Trajectories:
    """Open a ``pdestream solve`` file; a missing, corrupt or foreign file raises TrajectoryFileError."""
    path = Path(path)
    if not path.exists():
        raise TrajectoryFileError(f"{path}: no such file; write one with `pdestream solve ... --out {path}`")
    try:
        with h5py.File(path, "r") as f:
            if f.attrs.get("format") != FORMAT:
                raise TrajectoryFileError(
                    f"{path}: not a pdestream trajectory file (format attribute {f.attrs.get('format')!r}); "
                    "PDEBench files are read with benchmarks.pdebench"
                )
            coords = {k: np.asarray(f[k]) for k in ("x", "y", "z") if k in f}
            return Trajectories(
                path=path,
                solver=str(f.attrs["solver"]),
                channels=[str(c) for c in f.attrs["channels"]],
                param_names=[str(n) for n in f["params"].attrs["names"]],
                params=np.asarray(f["params"]),
                sim_id=np.asarray(f["sim_id"]),
                t=np.asarray(f["t"]),
                coords=coords,
                config=json.loads(f.attrs["config"]),
                shape=tuple(f["fields"].shape),
            )
    except (OSError, KeyError) as e:
        raise TrajectoryFileError(f"{path}: unreadable or incomplete trajectory file ({e}); regenerate it") from e
