"""The CFDBench-style CFD suite: cases, seeded splits, cached test trajectories, and the evaluation of a surrogate.

CFDBench (Luo, Chen & Zhang 2023, arXiv:2310.05963) spreads the cases of each of its four problems (cavity, tube,
dam, cylinder) along three axes that vary one group of parameters from a baseline: ``bc`` (lid or inlet velocity),
``prop`` (density x viscosity) and ``geo`` (geometry), plus ``all`` (their union), and splits them into train / val
/ test *by case*. Here the cases are listed in one readable file (``benchmarks/cfd_cases.toml``, loaded and checked
by :func:`load_cases`), the trajectories of a split are generated on demand by our solvers (:mod:`solvers.cfd`) and
cached in HDF5 in the layout of ``pdestream solve`` (:func:`generate_cases`), and :func:`evaluate_cfd` scores a
surrogate on them with :mod:`benchmarks.evaluate`: one-step (teacher forced), 20-step and full-length autoregressive
rollouts; MSE, RMSE, MAE and NMSE = MSE / mean(target^2) (CFDBench's definitions) per field and per split, always
beside the identity baseline (copy the input, CFDBench's "Identity" row).

Sample formats (chosen from the surrogate's channels by :func:`sample_format`):

- ``native``: the solver's channels ``(u, v, p)`` on its grid, as ``pdestream train`` streams them; the case file
  uses CFDBench's 64 x 64 grid, so ``u`` and ``v`` sit on CFDBench's sample points;
- ``cfdbench``: CFDBench's ``(u, v, mask)`` samples on 64 x 64 (:meth:`solvers.cfd.problem.MACSolver.to_cfdbench`),
  for surrogates whose channels are ``("u", "v", "mask")``.

Cache: one file per (problem, axis, part, format) under :func:`cache_dir` (``$PDESTREAM_CFD_CACHE``, else
``$XDG_CACHE_HOME/pdestream/cfd``, else ``~/.cache/pdestream/cfd``). Its name and its ``cfd_suite_key`` attribute
carry a hash of the case parameters, the full solver config, steps, cadence, format and the source of the solvers
(``solvers/cfd/*.py``, ``solvers/base.py``), so any change to the case file, a solver config default or the
numerics regenerates it; a file whose key does not match is never used.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import math
import os
import tomllib
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import jax
import numpy as np

import solvers.base as solvers_base
import solvers.cfd as solvers_cfd
from benchmarks.evaluate import (
    DT_RTOL,
    POOLED_KEYS,
    EvaluationError,
    check_fit,
    cond_from_params,
    evaluate_trajectories,
    format_markdown,
)
from benchmarks.trajectories import TrajectoryWriter, read_trajectories
from solvers import Solver, check_finite, get_solver
from solvers.cfd.resample import CFDBENCH_SHAPE
from solvers.errors import SolverError
from surrogates.surrogate import Surrogate

__all__ = [
    "AXES",
    "CACHE_ENV",
    "DEFAULT_CASES",
    "PARTS",
    "PROBLEMS",
    "SPLITS",
    "Case",
    "CaseFile",
    "CaseFileError",
    "ProblemCases",
    "cache_dir",
    "evaluate_cfd",
    "format_cfd_markdown",
    "generate_cases",
    "list_cases",
    "load_cases",
    "sample_format",
]

PROBLEMS = ("cavity", "tube", "dam", "cylinder")
AXES = ("bc", "prop", "geo")
SPLITS = (*AXES, "all")
PARTS = ("train", "val", "test")
FORMATS = ("native", "cfdbench")
CFDBENCH_CHANNELS = ("u", "v", "mask")
DEFAULT_CASES = Path(__file__).with_name("cfd_cases.toml")
CACHE_ENV = "PDESTREAM_CFD_CACHE"
# Bump when the generated files change for a reason the key does not see (the key already covers the case
# parameters, the solver config and the source of solvers/cfd, so a change of numerics regenerates the cache).
CACHE_VERSION = 1
_PROBLEM_KEYS = {"solver", "steps", "every", "baseline", *AXES}


class CaseFileError(ValueError):
    """The case file is missing, not TOML, or has a bad key or value; the message names it and the fix."""


# ---------------------------------------------------------------------------------------------------------------------
# The case file
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One case: ``name`` (axis + number, e.g. ``bc003``), its ``axis``, ``sim_id`` (unique within the problem,
    the ``sim_id`` of its trajectory) and ``params`` (the solver's parameter vector, in ``param_space`` order)."""

    name: str
    axis: str
    sim_id: int
    params: tuple[float, ...]


@dataclass(frozen=True)
class ProblemCases:
    """The cases of one problem, their split into parts, and how to simulate them.

    ``parts[axis][part]`` lists case names; ``solver_config``, ``steps`` and ``every`` are the solver settings
    (frames ``steps // every + 1``, ``frame_dt = dt * every`` apart).
    """

    problem: str
    solver_config: Mapping[str, Any]
    steps: int
    every: int
    param_names: tuple[str, ...]
    baseline: tuple[float, ...]
    cases: tuple[Case, ...]
    parts: Mapping[str, Mapping[str, tuple[str, ...]]]

    @functools.cached_property
    def solver(self) -> Solver:
        """The problem's solver with the case file's config (one instance, so its compiled rollout is reused)."""
        return get_solver(self.problem, **self.solver_config)

    def select(self, split: str = "all", part: str = "test") -> list[Case]:
        """Cases of ``split`` (``bc``, ``prop``, ``geo`` or ``all``) in ``part`` (``train``, ``val``, ``test``)."""
        _check_choice("split", split, SPLITS)
        _check_choice("part", part, PARTS)
        names = {n for axis in (AXES if split == "all" else (split,)) for n in self.parts[axis][part]}
        return [c for c in self.cases if c.name in names]


@dataclass(frozen=True)
class CaseFile:
    """A loaded case file: ``problems[name]``, the split ``fractions`` (``val``, ``test``) and ``seed``."""

    path: Path
    seed: int
    fractions: Mapping[str, float]
    problems: Mapping[str, ProblemCases]


def _check_choice(name: str, value: Any, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise CaseFileError(f"{name}={value!r} is not one of {', '.join(allowed)}; pass one of them")


def load_cases(path: str | os.PathLike | None = None, *, check_cfl: bool = True) -> CaseFile:
    """Read and check a case file (default ``benchmarks/cfd_cases.toml``); see that file for the layout.

    Every error is a :class:`CaseFileError` naming the file and the bad key: an unknown problem, section or
    parameter, a missing key, a value outside the solver's parameter range, a case listed twice, a split that
    leaves no training case, or (with ``check_cfl``) a case whose time step breaks the solver's CFL limit.
    """
    p = Path(path) if path is not None else DEFAULT_CASES
    if not p.is_file():
        raise CaseFileError(f"{p}: no such case file; pass a TOML file laid out like {DEFAULT_CASES}")
    try:
        data = tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as e:
        raise CaseFileError(f"{p}: not valid TOML ({e})") from None
    unknown = sorted(set(data) - {"splits", *PROBLEMS})
    if unknown:
        raise CaseFileError(
            f"{p}: [{unknown[0]}] is not a CFD problem; the sections are [splits] and {', '.join(PROBLEMS)}"
        )
    seed, fractions = _read_splits(p, data.get("splits"))
    problems = {
        name: _read_problem(p, name, data[name], seed, fractions, check_cfl) for name in PROBLEMS if name in data
    }
    if not problems:
        raise CaseFileError(f"{p}: no problem defined; add at least one of [{'], ['.join(PROBLEMS)}]")
    return CaseFile(path=p, seed=seed, fractions=fractions, problems=problems)


def _read_splits(p: Path, section: Any) -> tuple[int, dict[str, float]]:
    if not isinstance(section, dict):
        raise CaseFileError(f"{p}: missing [splits] with seed, val and test (fractions of each axis's cases)")
    unknown = sorted(set(section) - {"seed", "val", "test"})
    if unknown:
        raise CaseFileError(f"{p}: [splits] {unknown[0]!r} is not a key; use seed, val and test")
    for key in ("seed", "val", "test"):
        if key not in section:
            raise CaseFileError(f"{p}: [splits] needs {key!r}")
    seed = section["seed"]
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise CaseFileError(f"{p}: [splits] seed={seed!r} must be an integer >= 0")
    fractions = {}
    for key in ("val", "test"):
        v = section[key]
        if isinstance(v, bool) or not isinstance(v, int | float) or not 0 <= v < 1:
            raise CaseFileError(f"{p}: [splits] {key}={v!r} must be a fraction in [0, 1)")
        fractions[key] = float(v)
    if fractions["val"] + fractions["test"] >= 1:
        total = fractions["val"] + fractions["test"]
        raise CaseFileError(f"{p}: [splits] val + test = {total:g} leaves no training cases; lower them")
    return seed, fractions


def _read_problem(
    p: Path, name: str, section: Any, seed: int, fractions: Mapping[str, float], check_cfl: bool
) -> ProblemCases:
    where = f"{p}: [{name}]"
    if not isinstance(section, dict):
        raise CaseFileError(f"{where} must be a table")
    unknown = sorted(set(section) - _PROBLEM_KEYS)
    if unknown:
        raise CaseFileError(f"{where} {unknown[0]!r} is not a key; use {', '.join(sorted(_PROBLEM_KEYS))}")
    missing = [k for k in ("solver", "steps", "every", "baseline", *AXES) if k not in section]
    if missing:
        raise CaseFileError(f"{where} needs {missing[0]!r}")
    config = section["solver"]
    if not isinstance(config, dict):
        raise CaseFileError(f"{where} solver must be a table of solver config values, e.g. {{ nx = 64, ny = 64 }}")
    try:
        solver = get_solver(name, **config)
    except SolverError as e:
        raise CaseFileError(f"{where} solver: {e}") from None
    steps, every = section["steps"], section["every"]
    for key, v in (("steps", steps), ("every", every)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise CaseFileError(f"{where} {key}={v!r} must be an integer >= 1")
    if steps % every or steps // every < 2:
        raise CaseFileError(f"{where} steps={steps} must be a multiple of every={every} giving at least 3 frames")
    names = tuple(solver.param_space.names)
    baseline = _read_values(f"{where} baseline", section["baseline"], names, solver, require_all=True)
    cases: list[Case] = []
    parts: dict[str, dict[str, tuple[str, ...]]] = {}
    for axis in AXES:
        grid = _read_axis(f"{p}: [{name}.{axis}]", section[axis], names, solver)
        keys = list(grid)
        rows = np.array(np.meshgrid(*grid.values(), indexing="ij")).reshape(len(keys), -1).T
        axis_cases = []
        for i, row in enumerate(rows):
            vec = list(baseline)
            for k, v in zip(keys, row, strict=True):
                vec[names.index(k)] = float(v)
            axis_cases.append(Case(f"{axis}{i:03d}", axis, len(cases) + i, tuple(vec)))
        cases += axis_cases
        parts[axis] = _split(p, name, axis, [c.name for c in axis_cases], seed, fractions)
    seen: dict[tuple[float, ...], str] = {}
    for c in cases:
        if c.params in seen:
            raise CaseFileError(
                f"{where} case {c.name} repeats case {seen[c.params]} ({_fmt_params(names, c.params)}); a case must "
                "belong to one axis so that the splits stay disjoint: change one of the values"
            )
        seen[c.params] = c.name
    if check_cfl:
        for c in cases:
            try:
                solver.check_cfl(np.asarray(c.params))
            except SolverError as e:
                raise CaseFileError(f"{p}: [{name}.{c.axis}] case {c.name}: {e}") from None
    return ProblemCases(
        problem=name,
        solver_config=dict(config),
        steps=steps,
        every=every,
        param_names=names,
        baseline=baseline,
        cases=tuple(cases),
        parts=parts,
    )


def _read_values(
    where: str, table: Any, names: Sequence[str], solver: Solver, *, require_all: bool
) -> tuple[float, ...]:
    if not isinstance(table, dict):
        raise CaseFileError(f"{where} must be a table {{ name = value, ... }} of {', '.join(names)}")
    _unknown_params(where, table, names, solver)
    missing = [n for n in names if n not in table]
    if require_all and missing:
        raise CaseFileError(f"{where} needs a value for {missing[0]!r} (all of {', '.join(names)})")
    vec = []
    for n in names:
        v = table[n]
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise CaseFileError(f"{where} {n}={v!r} must be a number")
        vec.append(float(v))
    try:
        solver.param_space.validate(np.asarray(vec))
    except SolverError as e:
        raise CaseFileError(f"{where}: {e}") from None
    return tuple(vec)


def _unknown_params(where: str, table: Mapping[str, Any], names: Sequence[str], solver: Solver) -> None:
    unknown = sorted(set(table) - set(names))
    if unknown:
        raise CaseFileError(
            f"{where} {unknown[0]!r} is not a parameter of {solver.name}; its parameters are {', '.join(names)}"
        )


def _read_axis(where: str, table: Any, names: Sequence[str], solver: Solver) -> dict[str, list[float]]:
    if not isinstance(table, dict) or not table:
        raise CaseFileError(f"{where} must list at least one parameter: name = [value, ...]")
    _unknown_params(where, table, names, solver)
    out = {}
    space = {q.name: q for q in solver.param_space.params}
    for n, values in table.items():
        if not isinstance(values, list) or not values:
            raise CaseFileError(f"{where} {n} must be a non-empty list of numbers, e.g. {n} = [1.0, 2.0]")
        for v in values:
            if isinstance(v, bool) or not isinstance(v, int | float):
                raise CaseFileError(f"{where} {n}: {v!r} is not a number")
            q = space[n]
            if not q.low <= v <= q.high:
                raise CaseFileError(
                    f"{where} {n}={v:g} is outside the solver's range [{q.low:g}, {q.high:g}] {q.unit}; choose a "
                    "value inside it"
                )
        if len(set(values)) != len(values):
            raise CaseFileError(f"{where} {n} lists a value twice: {values}")
        out[n] = [float(v) for v in values]
    return out


def _split(
    p: Path, problem: str, axis: str, names: list[str], seed: int, fractions: Mapping[str, float]
) -> dict[str, tuple[str, ...]]:
    """Seeded split of one axis's cases: a permutation from (seed, problem, axis), test first, then val."""
    n = len(names)
    n_test = max(1, round(fractions["test"] * n)) if fractions["test"] > 0 else 0
    n_val = max(1, round(fractions["val"] * n)) if fractions["val"] > 0 else 0
    if n - n_test - n_val < 1:
        raise CaseFileError(
            f"{p}: [{problem}.{axis}] {n} case(s) leave none for training after {n_test} test and {n_val} val; "
            "add values or lower [splits] val/test"
        )
    order = np.random.default_rng([seed, zlib.crc32(f"{problem}/{axis}".encode())]).permutation(n)
    pick = [names[i] for i in order]
    return {
        "test": tuple(sorted(pick[:n_test])),
        "val": tuple(sorted(pick[n_test : n_test + n_val])),
        "train": tuple(sorted(pick[n_test + n_val :])),
    }


def _fmt_params(names: Sequence[str], values: Sequence[float]) -> str:
    return ", ".join(f"{n}={v:g}" for n, v in zip(names, values, strict=True))


def _problem(cases: CaseFile, problem: str) -> ProblemCases:
    if problem not in cases.problems:
        raise CaseFileError(
            f"problem {problem!r} is not in {cases.path}; it defines {', '.join(cases.problems)}"
        )
    return cases.problems[problem]


def _as_casefile(cases: CaseFile | str | os.PathLike | None) -> CaseFile:
    return cases if isinstance(cases, CaseFile) else load_cases(cases)


def list_cases(
    problem: str, split: str = "all", part: str = "test", cases: CaseFile | str | os.PathLike | None = None
) -> list[Case]:
    """The cases of ``problem`` in ``split`` (``bc``, ``prop``, ``geo``, ``all``) and ``part`` (``train``, ``val``,
    ``test``)."""
    return _problem(_as_casefile(cases), problem).select(split, part)


# ---------------------------------------------------------------------------------------------------------------------
# Generation and cache
# ---------------------------------------------------------------------------------------------------------------------


def cache_dir(path: str | os.PathLike | None = None) -> Path:
    """The cache directory: ``path``, else ``$PDESTREAM_CFD_CACHE``, else ``$XDG_CACHE_HOME/pdestream/cfd``, else
    ``~/.cache/pdestream/cfd``."""
    if path is not None:
        return Path(path).expanduser()
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "pdestream" / "cfd"


@functools.cache
def _solver_source_hash() -> str:
    """Hash of the source files of :mod:`solvers.cfd` (its numerics) and :mod:`solvers.base` (the rollout)."""
    h = hashlib.sha256()
    for f in sorted(Path(solvers_cfd.__file__).parent.glob("*.py")) + [Path(solvers_base.__file__)]:
        h.update(f.name.encode() + f.read_bytes())
    return h.hexdigest()


def _cache_key(pc: ProblemCases, solver: Solver, cases: Sequence[Case], fmt: str) -> str:
    spec = {
        "version": CACHE_VERSION,
        "source": _solver_source_hash(),
        "problem": pc.problem,
        "solver_config": solver.describe()["config"],
        "steps": pc.steps,
        "every": pc.every,
        "format": fmt,
        "param_names": list(pc.param_names),
        "cases": [[c.name, c.sim_id, *c.params] for c in cases],
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


def _cached(path: Path, key: str) -> bool:
    try:
        with h5py.File(path, "r") as f:
            return f.attrs.get("cfd_suite_key") == key
    except OSError:
        return False


def generate_cases(
    problem: str,
    split: str,
    part: str = "test",
    *,
    fmt: str = "native",
    cases: CaseFile | str | os.PathLike | None = None,
    cache: str | os.PathLike | None = None,
    batch: int = 4,
    progress: bool = True,
    force: bool = False,
) -> Path:
    """The HDF5 file of the trajectories of one axis (``bc``, ``prop`` or ``geo``) and part, generated if not cached.

    Layout of ``pdestream solve`` (:mod:`benchmarks.trajectories`): ``fields (N, T, C, *grid)``, ``params``, ``sim_id``
    (the cases' ids), ``t``; plus attributes ``cfd_suite_key`` and ``cases`` (the case names). ``fmt``: ``native``
    (the solver's channels on its grid) or ``cfdbench`` (``(u, v, mask)`` on 64 x 64). Cases run ``batch`` at a time
    (vmapped, the last batch padded so the solver compiles once); a blow-up raises
    :class:`solvers.SimulationBlowUp` naming the case's parameters. ``force`` regenerates a cached file.
    Calls for the same cases at once (threads or processes sharing the cache) take turns on a lock file
    (``<stem>.lock`` beside the cache file): one generates, the others wait and reuse its file.
    """
    if split not in AXES:
        raise CaseFileError(f"split={split!r}: trajectories are cached per axis; pass one of {', '.join(AXES)}")
    _check_choice("fmt", fmt, FORMATS)
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise CaseFileError(f"batch={batch!r} must be an integer >= 1")
    pc = _problem(_as_casefile(cases), problem)
    selected = pc.select(split, part)
    if not selected:
        raise CaseFileError(f"[{problem}.{split}] has no {part} cases; raise [splits] {part} or add values")
    solver = pc.solver
    key = _cache_key(pc, solver, selected, fmt)
    stem = f"{problem}-{split}-{part}-{fmt}"
    path = cache_dir(cache) / f"{stem}-{key[:16]}.h5"
    path.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive(path.parent / f"{stem}.lock"):  # another process generating these cases: wait, then reuse
        if not force and path.is_file() and _cached(path, key):
            return path
        return _generate(pc, selected, key, path, stem, fmt, batch, f"{problem} {split} {part}", progress)


@contextlib.contextmanager
def _exclusive(lock: Path) -> Iterator[None]:
    """Hold an exclusive lock on the file ``lock`` (POSIX ``flock``; created if missing) for the block."""
    import fcntl

    with open(lock, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _generate(pc: ProblemCases, selected: Sequence[Case], key: str, path: Path, stem: str, fmt: str, batch: int,
              title: str, progress: bool) -> Path:
    """Run ``selected`` and write them to ``path`` (stale files of the same ``stem`` removed); see generate_cases."""
    solver = pc.solver
    for stale in path.parent.glob(f"{stem}-*.h5"):
        stale.unlink(missing_ok=True)
    params = np.asarray([c.params for c in selected], np.float64)
    ids = np.asarray([c.sim_id for c in selected], np.int64)
    writer = _writer(solver, pc, path, len(selected), fmt)
    size = min(batch, len(selected))
    with writer as w, _progress(title, len(selected), progress) as advance:
        for start in range(0, len(selected), size):
            stop = min(start + size, len(selected))
            rows = np.concatenate([params[start:stop], np.repeat(params[stop - 1 : stop], size - (stop - start), 0)])
            keys = jax.vmap(jax.random.key)(np.arange(size, dtype=np.uint32))
            frames = solver.rollout(keys, rows, pc.steps, pc.every)[: stop - start]
            check_finite(frames, params[start:stop], pc.param_names, ids[start:stop])
            if fmt == "cfdbench":
                frames = solver.to_cfdbench(frames, params[start:stop])
            w.write(start, np.asarray(frames, np.float32), params[start:stop], ids[start:stop])
            advance(stop - start)
    with h5py.File(path, "r+") as f:
        f.attrs["cfd_suite_key"] = key
        f.attrs["cases"] = [c.name for c in selected]
    return path


def _writer(solver: Solver, pc: ProblemCases, path: Path, n: int, fmt: str) -> TrajectoryWriter:
    if fmt == "native":
        return TrajectoryWriter.for_solver(solver, path, n, pc.steps, pc.every)
    n_out = pc.steps // pc.every + 1
    nx, ny = CFDBENCH_SHAPE
    return TrajectoryWriter(
        path=path,
        n_sims=n,
        frame_shape=(n_out, len(CFDBENCH_CHANNELS), nx, ny),
        n_params=len(pc.param_names),
        solver=solver.name,
        channels=CFDBENCH_CHANNELS,
        param_names=pc.param_names,
        coords={"x": (np.arange(nx) + 0.5) / nx, "y": (np.arange(ny) + 0.5) / ny},
        times=np.arange(n_out) * pc.every * solver.dt,
        config=solver.describe()["config"],
        dt=solver.dt,
        every=pc.every,
    )


class _progress:
    """A rich progress bar on stderr (``advance(n)``), or a no-op."""

    def __init__(self, label: str, total: int, enabled: bool) -> None:
        self.label, self.total, self.enabled = label, total, enabled

    def __enter__(self) -> Any:
        if not self.enabled:
            return lambda n: None
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self._bar = Progress(
            TextColumn("[bold]generating {task.description} cases"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=Console(stderr=True),
        )
        self._bar.__enter__()
        task = self._bar.add_task(self.label, total=self.total)
        return lambda n: self._bar.advance(task, n)

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            self._bar.__exit__(*exc)


# ---------------------------------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------------------------------


def sample_format(sur: Surrogate, pc: ProblemCases) -> str:
    """``cfdbench`` for a surrogate of channels ``(u, v, mask)``, else ``native``; checks channels, grid and frame
    spacing against the suite's and raises :class:`EvaluationError` naming the mismatch and the fix."""
    m = sur.metadata
    solver = pc.solver
    if tuple(m.channels) == CFDBENCH_CHANNELS:
        fmt, channels, grid = "cfdbench", CFDBENCH_CHANNELS, CFDBENCH_SHAPE
    else:
        fmt, channels, grid = "native", tuple(solver.channels), tuple(solver.grid)
    source = f"CFD suite ({pc.problem})"
    n_frames = pc.steps // pc.every + 1
    check_fit(sur, (1, n_frames, len(channels), *grid), source)
    if tuple(m.channels) != channels:
        raise EvaluationError(
            f"{source}: the suite's frames have channels {list(channels)} but the surrogate predicts "
            f"{list(m.channels)}; train on the {pc.problem} solver (channels {list(solver.channels)}) or on "
            f"CFDBench samples {list(CFDBENCH_CHANNELS)}"
        )
    frame_dt = solver.dt * pc.every
    if not math.isclose(frame_dt, m.dt, rel_tol=DT_RTOL):
        raise EvaluationError(
            f"{source}: the suite's frames are {frame_dt:g} apart (dt={solver.dt:g} x every={pc.every}) but the "
            f"surrogate steps {m.dt:g}; train with the suite's solver settings (configs/cfd_{pc.problem}.toml)"
        )
    if m.window + 1 > n_frames:
        raise EvaluationError(f"{source}: the surrogate reads {m.window} frames but a case has only {n_frames}")
    return fmt


def _resolve_problem(sur: Surrogate, problem: str | None, cf: CaseFile) -> str:
    if problem is None:
        problem = sur.metadata.solver
        if problem not in PROBLEMS:
            raise EvaluationError(
                f"the surrogate was trained on {problem!r}, not on a CFD problem ({', '.join(PROBLEMS)}); train one "
                "with configs/cfd_<problem>.toml, or name the problem to evaluate on (--problem P)"
            )
    elif problem not in PROBLEMS:
        raise EvaluationError(f"problem={problem!r} is not a CFD problem; choose one of {', '.join(PROBLEMS)}")
    _problem(cf, problem)
    return problem


def _load(path: Path, sur: Surrogate, solver: Solver,
          fmt: str) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, float, np.ndarray | None]:
    """Frames, the surrogate's conditioning, the sim ids, the frame spacing of a cached file, and (native samples of
    a problem with obstacles) the cells the surrogate holds, the solver's ``boundary`` mask per simulation."""
    traj = read_trajectories(path)
    cond = cond_from_params(sur, traj.params, traj.param_names, str(path))
    hold = None
    if fmt == "native":
        order = [list(traj.param_names).index(name) for name in solver.param_space.names]
        hold = solver.held_cells(np.asarray(traj.params)[:, order])
    return traj.fields(), cond, traj.sim_id, float(traj.t[1] - traj.t[0]), hold


def evaluate_cfd(
    sur: Surrogate,
    problem: str | None = None,
    split: str = "all",
    part: str = "test",
    *,
    cases: CaseFile | str | os.PathLike | None = None,
    cache: str | os.PathLike | None = None,
    rollout_steps: Sequence[int] | None = None,
    batch: int = 32,
    n_examples: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Score ``sur`` on the CFD suite, beside the identity baseline (see the module docstring).

    problem: ``cavity``, ``tube``, ``dam`` or ``cylinder`` (default: the surrogate's training solver).
    split: ``bc``, ``prop``, ``geo`` or ``all``; part: ``test`` (default), ``val`` or ``train``.
    cases: a case file (path or :class:`CaseFile`; default ``benchmarks/cfd_cases.toml``); cache: the cache
    directory (default :func:`cache_dir`). rollout_steps, batch, n_examples: as
    :func:`benchmarks.evaluate.evaluate_trajectories` (default horizon 20; the full rollout always).

    Returns the result of :func:`~benchmarks.evaluate.evaluate_trajectories` on the split's cases with ``suite =
    "cfd"``, ``data`` naming the problem, split, part, format, case names and cache files, and for ``split = "all"``
    ``by_split[axis]`` with each axis's ``results`` (the same keys). Misfits raise :class:`EvaluationError`.
    """
    cf = _as_casefile(cases)
    problem = _resolve_problem(sur, problem, cf)
    _check_choice("split", split, SPLITS)
    _check_choice("part", part, PARTS)
    pc = cf.problems[problem]
    fmt = sample_format(sur, pc)
    axes = [a for a in (AXES if split == "all" else (split,)) if pc.select(a, part)]
    if not axes:
        raise EvaluationError(f"[{problem}] has no {part} cases in split {split!r}; see {cf.path}")
    files = {
        a: generate_cases(problem, a, part, fmt=fmt, cases=cf, cache=cache, progress=progress) for a in axes
    }
    loaded = {a: _load(p, sur, pc.solver, fmt) for a, p in files.items()}
    dt = loaded[axes[0]][3]
    kw = {"rollout_steps": rollout_steps, "batch": batch}

    def run(parts: list[tuple], n_ex: int) -> dict[str, Any]:
        frames = np.concatenate([x[0] for x in parts])
        cond = None if parts[0][1] is None else np.concatenate([x[1] for x in parts])
        ids = np.concatenate([x[2] for x in parts])
        holds = [x[4] if x[4] is not None else np.zeros(x[0].shape[:1] + x[0].shape[2:], bool) for x in parts]
        hold = np.concatenate(holds) if any(x[4] is not None for x in parts) else None
        return evaluate_trajectories(sur, frames, cond, dt, n_examples=n_ex, sim_ids=ids, hold=hold, **kw)

    result = run(list(loaded.values()), n_examples)
    names = {c.sim_id: c.name for c in pc.cases}
    result["suite"] = "cfd"
    result["data"].update(
        problem=problem,
        split=split,
        part=part,
        format=fmt,
        cases=[names[int(i)] for x in loaded.values() for i in x[2]],
        files={a: str(p) for a, p in files.items()},
        case_file=str(cf.path),
        solver_config=pc.solver.describe()["config"],
        steps=pc.steps,
        every=pc.every,
    )
    if split == "all" and len(axes) > 1:
        result["by_split"] = {}
        for a in axes:
            sub = run([loaded[a]], 0)
            result["by_split"][a] = {"n_cases": sub["data"]["n_sims"], "results": sub["results"]}
            result["warnings"] += [w for w in sub["warnings"] if w not in result["warnings"]]
    if n_examples and "examples" in result:
        result["examples"]["case_names"] = [names[int(i)] for i in result["examples"]["sims"]]
    return result


def format_cfd_markdown(result: Mapping[str, Any]) -> str:
    """Markdown of :func:`evaluate_cfd`: the table of :func:`~benchmarks.evaluate.format_markdown` (per field), and
    for ``split = "all"`` one more table of the pooled metrics of each axis."""
    dat = result["data"]
    label = f"CFD suite {dat['problem']} / split {dat['split']} / {dat['part']} cases ({dat['format']} samples)"
    text = format_markdown({**result, "data": {**dat, "file": label}})
    by = result.get("by_split")
    if not by:
        return text
    keys = [k for k in POOLED_KEYS if k != "rel_L2"]
    lines = ["", "Per split (all fields pooled):", "", "| split | cases | evaluation | steps | model | "
             + " | ".join(keys) + " |", "|" + "---|" * (5 + len(keys))]
    for axis, block in by.items():
        for name, res in block["results"].items():
            for model in ("surrogate", "identity"):
                m = res[model]["overall"]
                lines.append(
                    f"| {axis} | {block['n_cases']} | {name} | {res['steps']} | {model} | "
                    + " | ".join(f"{m[k]:.3e}" if m[k] is not None and math.isfinite(m[k]) else "nan" for k in keys)
                    + " |"
                )
    return text + "\n" + "\n".join(lines)
