"""Several trainer processes (multi-node data parallelism) through ``jax.distributed``.

Each of the N trainer processes (one per node or GPU host) runs its own solver workers and buffer;
process ``k`` streams the simulations with ids ``k, k + N, k + 2N, ...`` (see
:class:`~streaming.design.DesignCursor`'s ``offset``/``stride``), so ids stay globally unique and
simulation ``i`` has the same parameters and initial condition whichever process runs it.
``optim.batch_size`` is the global batch: each process draws ``batch_size / N`` samples from its own
buffer, and :func:`jax.make_array_from_process_local_data` assembles the global batch, sharded over
the mesh of every device of every process; parameters are replicated. The normaliser's moments are
merged across processes before it is frozen, so every process normalises alike. Process 0 validates
and writes the metrics and ``summary.json`` (the best surrogate through a child process, see
:class:`SurrogateExporter`); every process writes
``processes/process-K.json`` (its simulation ids and a parameter checksum) and its own buffer state
with each checkpoint.

``jax.distributed.initialize`` must run before any other JAX call of the process: :func:`initialize`
does that (and selects gloo for CPU collectives, without which cross-process CPU collectives fail).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from streaming.config import ConfigError
from streaming.transport import BACKENDS, get_backend
from surrogates.normalizer import Normalizer

ENV_COORDINATOR = "PDESTREAM_COORDINATOR"
ENV_NUM_PROCESSES = "PDESTREAM_NUM_PROCESSES"
ENV_PROCESS_ID = "PDESTREAM_PROCESS_ID"
RUN_DIR_BYTES = 4096  # the run directory's path is broadcast from process 0 as this many bytes


class DistributedError(ConfigError):
    """A bad multi-process setting (coordinator, process counts, batch size, backend)."""


@dataclass(frozen=True)
class DistSpec:
    """Where the coordinator listens (``HOST:PORT``), how many trainer processes, and which one this is."""

    coordinator: str
    num_processes: int
    process_id: int


def _int(name: str, text: str | int) -> int:
    try:
        return int(text)
    except (TypeError, ValueError):
        raise DistributedError(f"{name}={text!r} is not an integer") from None


def resolve_spec(coordinator: str | None = None, num_processes: int | str | None = None,
                 process_id: int | str | None = None, env: Mapping[str, str] | None = None) -> DistSpec | None:
    """The multi-process setting from the command line, else from ``PDESTREAM_*`` variables; None if neither.

    Counts are explicit (never guessed from SLURM or MPI), so solver ranks are never counted as trainer processes.
    """
    env = os.environ if env is None else env
    given: dict[str, Any] = {}
    for flag, value, var in (("--coordinator", coordinator, ENV_COORDINATOR),
                             ("--num-processes", num_processes, ENV_NUM_PROCESSES),
                             ("--process-id", process_id, ENV_PROCESS_ID)):
        given[flag] = (flag, value) if value is not None else (var, env.get(var) or None)
    if all(v is None for _, v in given.values()):
        return None
    missing = [k for k, (_, v) in given.items() if v is None]
    if missing:
        raise DistributedError(f"several trainer processes need --coordinator, --num-processes and --process-id "
                               f"(or {ENV_COORDINATOR}, {ENV_NUM_PROCESSES}, {ENV_PROCESS_ID}); missing "
                               f"{', '.join(missing)}")
    (c_name, coord), (n_name, n), (k_name, k) = given.values()
    n, k = _int(n_name, n), _int(k_name, k)
    host, sep, port = str(coord).rpartition(":")
    if not sep or not host or not port.isdigit():
        raise DistributedError(f"{c_name}={coord!r}: expected HOST:PORT of trainer process 0, e.g. node0:12345")
    if n < 1:
        raise DistributedError(f"{n_name}={n} must be >= 1")
    if not 0 <= k < n:
        raise DistributedError(f"{k_name}={k} must be in [0, {n - 1}] for {n} trainer processes")
    return DistSpec(str(coord), n, k)


def check_config(cfg: Any, spec: DistSpec, offline: bool = False) -> None:
    """Refuse what multi-process training does not support, before any process starts working."""
    if offline:
        raise DistributedError("--offline trains from one file in one process; drop --coordinator/--num-processes")
    backend = cfg.workers.backend
    if not get_backend(backend).several_trainers:
        usable = ", ".join(repr(b.name) for b in BACKENDS.values() if b.several_trainers)
        raise DistributedError(f"workers.backend={backend!r} is not supported with several trainer processes; "
                               f"use one of {usable} (each trainer process has workers of its own)")
    if cfg.optim.batch_size % spec.num_processes:
        raise DistributedError(f"optim.batch_size={cfg.optim.batch_size} (the global batch) must be a multiple of "
                               f"--num-processes={spec.num_processes}")


def check_resume(run_dir: Path, num_processes: int | None) -> None:
    """Refuse to resume a run with another number of trainer processes than it was trained with (None: one)."""
    saved = len(list((Path(run_dir) / "process_state").glob("process-*")))
    if saved != (num_processes or 0) and (Path(run_dir) / "checkpoints").exists():
        was = f"--num-processes {saved}" if saved else "a single trainer process (no --num-processes)"
        now = f"--num-processes {num_processes}" if num_processes else "a single trainer process"
        raise DistributedError(f"--resume {run_dir}: the run was trained with {was}; resume it the same way, not "
                               f"with {now}")


def initialize(spec: DistSpec, timeout_s: int = 300) -> None:
    """Start ``jax.distributed`` for this process; call before any other JAX use."""
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=spec.coordinator, num_processes=spec.num_processes,
                               process_id=spec.process_id, initialization_timeout=timeout_s)
    if jax.process_count() != spec.num_processes or jax.process_index() != spec.process_id:
        raise DistributedError(f"jax.distributed reports process {jax.process_index()} of {jax.process_count()}, "
                               f"expected {spec.process_id} of {spec.num_processes}")


# ---------------------------------------------------------------------------------------------- collectives
def _as_words(x: np.ndarray) -> np.ndarray:
    """Bit-exact uint32 view of a float64/int64 array (collectives run in 32 bits without jax x64)."""
    return np.ascontiguousarray(x).view(np.uint32)


def allgather(x: np.ndarray) -> np.ndarray:
    """``(N, *x.shape)``: ``x`` of every process, bit-exact (float64 and int64 survive)."""
    from jax.experimental import multihost_utils

    x = np.ascontiguousarray(x)
    got = np.asarray(multihost_utils.process_allgather(_as_words(x.reshape(-1))))
    return got.view(x.dtype).reshape(len(got), *x.shape)


def broadcast_text(text: str | None) -> str | None:
    """Process 0's ``text`` on every process (None on process 0 arrives as None everywhere)."""
    from jax.experimental import multihost_utils

    raw = b"" if text is None else text.encode()
    if len(raw) >= RUN_DIR_BYTES:
        raise DistributedError(f"text of {len(raw)} bytes is too long to broadcast (max {RUN_DIR_BYTES - 1})")
    buf = np.zeros(RUN_DIR_BYTES, np.uint8)
    buf[0] = text is not None
    buf[1 : 1 + len(raw)] = np.frombuffer(raw, np.uint8)
    out = np.asarray(multihost_utils.broadcast_one_to_all(buf))
    return bytes(out[1:]).rstrip(b"\0").decode() if out[0] else None


def merge_normalizers(norm: Normalizer) -> Normalizer:
    """A new unfrozen normaliser holding the statistics of ``norm`` pooled over every process.

    Each process's moments are gathered bit-exactly and folded in process order, so every process
    computes the identical result.
    """
    state = norm.state_dict()
    groups = [g for g in ("fields", "cond") if g in state]
    flat = np.concatenate([np.concatenate([np.asarray([float(state[g]["count"])]),
                                           np.asarray(state[g]["mean"], np.float64),
                                           np.asarray(state[g]["m2"], np.float64)]) for g in groups])
    pooled = Normalizer(norm.channels, norm.ndim, norm.cond_dim, norm.eps)
    for row in allgather(flat):
        part, at = {"config": {**state["config"], "frozen": np.asarray(False)}}, 0
        for g in groups:
            k = len(state[g]["mean"])
            part[g] = {"count": np.asarray(int(row[at]), np.int64), "mean": row[at + 1 : at + 1 + k],
                       "m2": row[at + 1 + k : at + 1 + 2 * k]}
            at += 1 + 2 * k
        pooled.absorb(part)
    return pooled


# ---------------------------------------------------------------------------------------------- the runtime
class Parallel:
    """The global mesh and the collectives the trainer needs when it runs as one of N processes."""

    def __init__(self, spec: DistSpec) -> None:
        import jax
        from jax.sharding import Mesh, NamedSharding
        from jax.sharding import PartitionSpec as P

        self.spec = spec
        self.process_id, self.num_processes = spec.process_id, spec.num_processes
        self.is_main = spec.process_id == 0
        self.mesh = Mesh(np.array(jax.devices()), ("data",))
        self.batch_sharding = NamedSharding(self.mesh, P("data"))
        self.replicated = NamedSharding(self.mesh, P())

    def local_batch_size(self, batch_size: int) -> int:
        """This process's share of the global ``batch_size``; checks it splits over every device."""
        import jax

        n_dev = jax.device_count()
        if batch_size % n_dev:
            raise DistributedError(f"optim.batch_size={batch_size} (the global batch) must be a multiple of the "
                                   f"{n_dev} devices of the {self.num_processes} trainer processes")
        return batch_size // self.num_processes

    def global_batch(self, local: dict[str, np.ndarray]) -> dict:
        """The global batch (sharded over every device) from this process's ``(B/N, ...)`` samples."""
        import jax

        return jax.make_array_from_process_local_data(self.batch_sharding, local)

    def replicate(self, tree: Any) -> Any:
        """``tree`` (identical on every process) replicated on every device; fails if the processes disagree."""
        import jax

        digest = np.frombuffer(hashlib.sha256(tree_bytes(tree)).digest(), np.uint32)
        if not (allgather(digest) == digest).all():
            raise DistributedError("the initial parameters differ between trainer processes; give every process "
                                   "the same config (optim.seed, model) and the same package versions")
        return jax.device_put(tree, self.replicated)

    def all_true(self, flag: bool) -> bool:
        """True when ``flag`` is true on every process (a collective: every process must call it)."""
        return bool(allgather(np.asarray([int(flag)], np.int32)).all())

    def sum(self, values: np.ndarray) -> np.ndarray:
        """Element-wise sum of ``values`` (int64 or float64) over the processes."""
        return allgather(np.asarray(values)).sum(axis=0)


class SurrogateExporter:
    """Process 0's export of the best surrogate, written by a child process.

    Orbax keeps process-wide state for its multi-process protocol (barrier and signal keys, an
    operation counter), so a save made by process 0 alone from inside the job would put it out of
    step with the others for the next collective checkpoint. The child is a plain single-process
    JAX on the CPU: it rebuilds the model from ``config.resolved.toml``, loads the parameters and
    normaliser that process 0 left in ``run_dir/.export/`` and calls ``Surrogate.save``. One export
    runs at a time; :meth:`wait` returns when the last one is written, :meth:`close` also removes the stage.
    """

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir).absolute()
        self._proc: subprocess.Popen | None = None

    def export(self, params: Any, normalizer_state: dict) -> None:
        """Write ``run_dir/surrogate`` from ``params`` (a pure dict of arrays) and a normaliser state, in a child."""
        import jax

        from streaming.checkpoint import pack

        self.wait()
        stage = self.run_dir / ".export"
        stage.mkdir(exist_ok=True)
        arrays, plain = pack({"model": jax.tree.map(np.asarray, params), "normalizer": normalizer_state})
        np.savez(stage / "state.npz", **arrays)
        (stage / "state.json").write_text(json.dumps({"plain": plain, "arrays": sorted(arrays)}))
        env = {**os.environ, "JAX_PLATFORMS": "cpu"}  # the child never takes the trainer's GPU
        self._proc = subprocess.Popen([sys.executable, "-m", "streaming.distributed", "export", str(self.run_dir)],
                                      env=env)

    def wait(self) -> None:
        if self._proc is not None:
            rc, self._proc = self._proc.wait(), None
            if rc:
                raise RuntimeError(f"exporting the surrogate to {self.run_dir / 'surrogate'} failed (exit status "
                                   f"{rc}); see the message above")

    def close(self) -> None:
        """Wait for the last export and remove the staging directory."""
        self.wait()
        import shutil

        shutil.rmtree(self.run_dir / ".export", ignore_errors=True)


def export_surrogate(run_dir: Path) -> Path:
    """The child's side of :class:`SurrogateExporter`: ``run_dir/.export/state.*`` -> ``run_dir/surrogate``."""
    from streaming.assembly import build_model, build_solver, sample_spec
    from streaming.checkpoint import unpack
    from streaming.config import load_config
    from surrogates.normalizer import Normalizer
    from surrogates.surrogate import Surrogate

    run_dir = Path(run_dir)
    cfg = load_config(run_dir / "config.resolved.toml")
    solver = build_solver(cfg)
    model, meta = build_model(cfg, solver, sample_spec(cfg, solver))
    doc = json.loads((run_dir / ".export" / "state.json").read_text())
    with np.load(run_dir / ".export" / "state.npz") as f:
        tree = unpack({k: f[k] for k in doc["arrays"]}, doc["plain"])
    sur = Surrogate.from_model(model, Normalizer.from_state_dict(tree["normalizer"]), meta)
    sur.set_state(tree["model"])
    return sur.save(run_dir / "surrogate", overwrite=True)


def local_copy(tree: Any) -> Any:
    """A replicated global pytree as arrays on this process's first device (for host-side use)."""
    import jax

    return jax.tree.map(lambda a: a.addressable_data(0) if isinstance(a, jax.Array) else a, tree)


def tree_bytes(tree: Any) -> bytes:
    """The bytes of every array leaf of ``tree`` (replicated global arrays: the local copy), in tree order."""
    import jax

    parts = []
    for leaf in jax.tree.leaves(local_copy(tree)):
        if isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            leaf = jax.random.key_data(leaf)
        parts.append(np.ascontiguousarray(np.asarray(leaf)).tobytes())
    return b"".join(parts)


def params_checksum(tree: Any) -> str:
    """sha256 of the parameters' bytes: equal on every process when the replicas agree."""
    return hashlib.sha256(tree_bytes(tree)).hexdigest()


def write_process_report(run_dir: Path, process_id: int, report: dict) -> Path:
    """``run_dir/processes/process-K.json``: what process K streamed and where its parameters ended."""
    path = Path(run_dir) / "processes" / f"process-{process_id}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=2, default=float) + "\n")
    os.replace(tmp, path)
    return path


class NullMetrics:
    """The metrics sink of processes other than 0: logs nothing."""

    def log(self, step: int, scalars: dict, histograms: dict | None = None) -> None:
        pass

    def close(self) -> None:
        pass


if __name__ == "__main__":  # python -m streaming.distributed export RUN_DIR (started by SurrogateExporter)
    if len(sys.argv) != 3 or sys.argv[1] != "export":
        sys.exit("usage: python -m streaming.distributed export RUN_DIR")
    export_surrogate(Path(sys.argv[2]))
