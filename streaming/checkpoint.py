"""Orbax checkpoints of a training run: train state, buffer contents, normaliser and design cursor.

One checkpoint step holds three items: ``train`` (model and optimiser parameters, a pytree of
arrays), ``arrays`` (buffer contents and normaliser accumulators: numpy arrays) and ``meta`` (JSON:
step, design cursor, counters, and the ints and empty arrays of the buffer state, which Orbax does
not store as arrays).
"""

from __future__ import annotations

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


class Checkpoints:
    """``save(step, train_state, arrays_tree, meta)`` / ``restore(train_target)`` under ``run_dir/checkpoints``."""

    def __init__(self, run_dir: Path, keep: int) -> None:
        self.dir = (Path(run_dir) / "checkpoints").absolute()
        self.manager = ocp.CheckpointManager(self.dir, options=ocp.CheckpointManagerOptions(max_to_keep=keep))

    def save(self, step: int, train: Any, tree: dict, meta: dict) -> None:
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
