"""Orbax checkpoints of a training run: train state, buffer contents, normaliser and design cursor.

One checkpoint step holds three items: ``train`` (model and optimiser parameters, a pytree of
arrays), ``arrays`` (buffer contents and normaliser accumulators: numpy arrays) and ``meta`` (JSON:
step, design cursor, counters, and the ints and empty arrays of the buffer state, which Orbax does
not store as arrays).

With N trainer processes (``process_id`` given) every process calls ``save`` at the same steps: the
replicated ``train`` item is written once through Orbax's multi-process protocol, and each process
writes its own buffer, normaliser, cursor and counters to ``run_dir/process_state/process-K/`` (an
``.npz`` of arrays and a ``.json``, written before the Orbax step is committed), since those
differ from process to process. The run directory must be on storage every process sees.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import orbax.checkpoint as ocp


def pack(tree: dict, prefix: str = "") -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Split a nested dict of arrays and scalars into non-empty arrays (flat ``a/b`` keys) and JSON."""
    arrays: dict[str, np.ndarray] = {}
    plain: dict[str, Any] = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            a, p = pack(v, key + "/")
            arrays.update(a)
            plain.update(p)
        elif isinstance(v, np.ndarray) and v.ndim > 0 and v.size > 0:
            arrays[key] = v
        elif isinstance(v, np.ndarray | np.generic):
            plain[key] = {"__array__": np.asarray(v).tolist(), "dtype": str(v.dtype), "shape": list(np.shape(v))}
        else:
            plain[key] = v
    return arrays, plain


def unpack(arrays: dict[str, Any], plain: dict[str, Any]) -> dict:
    """Inverse of :func:`pack`."""
    out: dict = {}
    items = {k: np.asarray(v) for k, v in arrays.items()}
    for k, v in plain.items():
        if isinstance(v, dict) and "__array__" in v:
            items[k] = np.asarray(v["__array__"], dtype=v["dtype"]).reshape(v["shape"])
        else:
            items[k] = v
    for k, v in items.items():
        node = out
        *parents, leaf = k.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = v
    return out


class LocalState:
    """One process's own ``(arrays tree, meta)`` per step: ``dir/step-S.npz`` and ``dir/step-S.json``."""

    def __init__(self, directory: Path, keep: int) -> None:
        self.dir, self.keep = Path(directory).absolute(), keep

    def save(self, step: int, tree: dict, meta: dict) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        arrays, plain = pack(tree)
        tmp = self.dir / f"step-{step}.tmp.npz"
        np.savez(tmp, **arrays)
        os.replace(tmp, self.dir / f"step-{step}.npz")
        tmp_json = self.dir / f"step-{step}.tmp.json"
        tmp_json.write_text(json.dumps({**meta, "plain": plain, "arrays": sorted(arrays)}))
        os.replace(tmp_json, self.dir / f"step-{step}.json")
        for old in self.steps()[: -self.keep]:
            for suffix in (".npz", ".json"):
                (self.dir / f"step-{old}{suffix}").unlink(missing_ok=True)

    def steps(self) -> list[int]:
        return sorted(int(p.stem.removeprefix("step-")) for p in self.dir.glob("step-*.json")
                      if p.stem.removeprefix("step-").isdigit())

    def restore(self, step: int) -> tuple[dict, dict]:
        path = self.dir / f"step-{step}.json"
        if not path.exists():
            raise FileNotFoundError(f"{path}: this process's state of checkpoint step {step} is missing; was the run "
                                    "started with the same --num-processes?")
        meta = json.loads(path.read_text())
        plain, names = meta.pop("plain"), meta.pop("arrays")
        with np.load(self.dir / f"step-{step}.npz") as f:
            arrays = {k: f[k] for k in names}
        return unpack(arrays, plain), meta


class Checkpoints:
    """``save(step, train_state, arrays_tree, meta)`` / ``restore(train_target)`` under ``run_dir/checkpoints``.

    ``process_id``: this trainer's index when it is one of several (the module docstring says what goes where).
    """

    def __init__(self, run_dir: Path, keep: int, process_id: int | None = None) -> None:
        self.dir = (Path(run_dir) / "checkpoints").absolute()
        self.manager = ocp.CheckpointManager(self.dir, options=ocp.CheckpointManagerOptions(max_to_keep=keep))
        self.local = None if process_id is None else LocalState(
            Path(run_dir) / "process_state" / f"process-{process_id}", keep + 1)

    def save(self, step: int, train: Any, tree: dict, meta: dict) -> None:
        if self.local is not None:
            self.local.save(step, tree, meta)
            self.manager.save(step, args=ocp.args.Composite(
                train=ocp.args.StandardSave(train), meta=ocp.args.JsonSave({"step": step})), force=True)
            self.manager.wait_until_finished()
            return
        arrays, plain = pack(tree)
        self.manager.save(step, args=ocp.args.Composite(
            train=ocp.args.StandardSave(train),
            arrays=ocp.args.StandardSave(arrays),
            meta=ocp.args.JsonSave({**meta, "plain": plain}),
        ), force=True)
        self.manager.wait_until_finished()

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def restore(self, train_target: Any, step: int | None = None) -> tuple[Any, dict, dict]:
        """(train state shaped like ``train_target``, arrays tree, meta) of ``step`` (default: latest)."""
        step = self.manager.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint under {self.dir}")
        if self.local is not None:
            r = self.manager.restore(step, args=ocp.args.Composite(train=ocp.args.StandardRestore(train_target)))
            tree, meta = self.local.restore(step)
            return r["train"], tree, meta
        r = self.manager.restore(step, args=ocp.args.Composite(
            train=ocp.args.StandardRestore(train_target),
            arrays=ocp.args.StandardRestore(),
            meta=ocp.args.JsonRestore(),
        ))
        meta = dict(r["meta"])
        plain = meta.pop("plain")
        return r["train"], unpack(dict(r["arrays"]), plain), meta

    def close(self) -> None:
        self.manager.close()
