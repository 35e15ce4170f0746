"""Metrics sinks of a run: ``metrics.jsonl`` (one JSON object per line) and TensorBoard scalars."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np


class MetricsLog:
    """Writes ``{"step": s, "time": t, **scalars}`` lines and the same scalars to TensorBoard."""

    def __init__(self, run_dir: Path, tensorboard: bool = True) -> None:
        self._file = open(Path(run_dir) / "metrics.jsonl", "a", buffering=1)  # noqa: SIM115
        self._tb = None
        if tensorboard:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(str(Path(run_dir) / "tensorboard"))
        self._t0 = time.time()

    def log(self, step: int, scalars: dict[str, Any], histograms: dict[str, np.ndarray] | None = None) -> None:
        clean = {k: (float(v) if isinstance(v, int | float | np.number) else v) for k, v in scalars.items()}
        self._file.write(json.dumps({"step": step, "time": round(time.time() - self._t0, 3), **clean}) + "\n")
        if self._tb is not None:
            for k, v in clean.items():
                if isinstance(v, float):
                    self._tb.add_scalar(k, v, step)
            for k, h in (histograms or {}).items():
                if len(h):
                    self._tb.add_histogram(k, np.asarray(h), step)

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()


def read_metrics(path: str | Path) -> list[dict]:
    """All records of a ``metrics.jsonl``."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
