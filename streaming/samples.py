"""What a training sample is, and how chunks are cut into samples (numpy, no JAX).

Kinds (``[sample]`` in the job config), for target frame ``j`` of a simulation with frames ``u``:

- ``next_step``: ``x = u[j-w:j]`` stacked on channels ``(w C, *grid)``, ``y = u[j]`` ``(C, *grid)``;
- ``bundle``:    ``x = u[j-w:j]`` ``(w C, *grid)``, ``y = u[j:j+K]`` ``(K C, *grid)`` (MP-PDE's temporal bundling);
- ``field``:     ``y = u[j]`` ``(C, *grid)`` from ``cond = (params, t_j)`` alone (Melissa's MLP).

``cond`` holds the PDE parameters (``condition_on_params``) and ``t`` the time of the last input
frame (``next_step``, ``bundle``) or of the target (``field``), as :class:`surrogates.Surrogate`'s
``encode_batch`` expects. Keys are ``(sim_id, j)``; chunks overlap so that every target is cut from some chunk, and the
buffer drops the repeats.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from streaming.chunk import Chunk


@dataclass(frozen=True)
class SampleSpec:
    """``kind`` with ``window`` input frames and ``horizon`` output frames; ``frame_dt`` is time per frame."""

    kind: str
    window: int
    horizon: int
    condition_on_params: bool
    frame_dt: float

    @property
    def lookback(self) -> int:
        return 0 if self.kind == "field" else self.window

    @property
    def lookahead(self) -> int:
        return self.horizon if self.kind == "bundle" else 1

    def channels(self, n_fields: int) -> tuple[int, int]:
        """(model input channels, model output channels) for ``n_fields`` solver channels."""
        if self.kind == "field":
            return 0, n_fields
        return self.window * n_fields, self.lookahead * n_fields

    @property
    def time_in_cond(self) -> bool:
        """The model sees the time (only ``field`` needs it: the other kinds are autonomous steps)."""
        return self.kind == "field"


def cut(chunk: Chunk, spec: SampleSpec) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """All samples of ``chunk``: keys int64 ``(n, 2)`` and a dict of ``(n, ...)`` float32 arrays
    (read-only views into the chunk where possible: copy before writing to them)."""
    u = chunk.fields  # (T, C, *grid)
    t_len = u.shape[0]
    lb, la = spec.lookback, spec.lookahead
    n = t_len - lb - la + 1
    if n <= 0:
        return np.zeros((0, 2), np.int64), {}
    targets = chunk.steps[lb : lb + n]
    keys = np.stack([np.full(n, chunk.sim_id, np.int64), targets], axis=1)
    grid = u.shape[2:]
    samples: dict[str, np.ndarray] = {}
    if spec.kind == "field":
        samples["y"] = u[:n]
    else:
        win = sliding_window_view(u, lb + la, axis=0)  # (n, C, *grid, lb+la)
        win = np.moveaxis(win, -1, 1)  # (n, lb+la, C, *grid)
        # Views into the chunk when u is contiguous (frame t+1 follows frame t): the buffer copies
        # only the samples it keeps, so a full reservoir that rejects most of a chunk costs little.
        samples["x"] = win[:, :lb].reshape(n, -1, *grid)
        samples["y"] = win[:, lb:].reshape(n, -1, *grid)
    if spec.condition_on_params:
        samples["cond"] = np.ascontiguousarray(np.broadcast_to(chunk.params, (n, chunk.params.size)))
    last_input = targets if spec.kind == "field" else targets - 1
    samples["t"] = (last_input * spec.frame_dt).astype(np.float32)
    return keys, samples
