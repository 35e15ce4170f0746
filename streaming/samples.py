"""What a training sample is, and how chunks are cut into samples (numpy, no JAX): the one place that defines
the layout the buffer stores and the trainer hands to :meth:`surrogates.Surrogate.encode_batch` unchanged.

Kinds (``[sample]`` in the job config), for first target frame ``j`` (frame index: position in the simulation's
saved frames) of a simulation with frames ``u``, ``W = window`` input frames, ``K = horizon`` output frames per
model call and ``S = calls`` model calls whose targets one sample holds (``optim.unroll.end`` +
``optim.pushforward``):

- ``next_step``: ``x = u[j-W:j]`` ``(W, C, *grid)``, ``y = u[j:j+S]`` ``(S, C, *grid)`` (K = 1);
- ``bundle``:    ``x = u[j-W:j]`` ``(W, C, *grid)``, ``y = u[j:j+S*K]`` ``(S*K, C, *grid)`` (MP-PDE's bundling);
- ``field``:     ``y = u[j:j+1]`` ``(1, C, *grid)`` from ``cond = (params, t_j)`` alone (Melissa's MLP; W = 0,
  K = S = 1).

``cond`` holds the PDE parameters (``condition_on_params``) and ``t`` the time of the last input
frame (``next_step``, ``bundle``: ``(j - 1) * frame_dt``) or of the target (``field``: ``j * frame_dt``). Keys
are ``(sim_id, j)``; chunks overlap so that every target is cut from some chunk, and the buffer drops the repeats.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from streaming.chunk import Chunk


@dataclass(frozen=True)
class SampleSpec:
    """A sample of ``kind``: ``window`` input frames W (0 for "field", which reads none), ``horizon`` output frames
    K per model call (1 for "next_step" and "field"), the targets of ``calls`` consecutive model calls S (1 for
    "field"); ``frame_dt`` is the time between frames (solver dt * every)."""

    kind: str
    window: int
    horizon: int
    condition_on_params: bool
    frame_dt: float
    calls: int = 1

    def __post_init__(self) -> None:
        fixed = {"field": {"window": 0, "horizon": 1, "calls": 1}, "next_step": {"horizon": 1}}.get(self.kind, {})
        for name, value in fixed.items():
            if getattr(self, name) != value:
                raise ValueError(f"SampleSpec({self.kind!r}): {name}={getattr(self, name)}, must be {value} for kind "
                                 f"{self.kind!r}")
        if (self.kind != "field" and self.window < 1) or self.horizon < 1 or self.calls < 1:
            raise ValueError(f"SampleSpec: window={self.window}, horizon={self.horizon}, calls={self.calls}; "
                             "need window >= 1 (except for 'field'), horizon >= 1 and calls >= 1")

    @property
    def targets(self) -> int:
        """Target frames one sample holds, ``S*K``."""
        return self.calls * self.horizon

    @property
    def span(self) -> int:
        """Consecutive frames one sample is cut from, ``W + S*K``."""
        return self.window + self.targets

    def channels(self, n_fields: int) -> tuple[int, int]:
        """(model input channels, model output channels) for ``n_fields`` solver channels: ``(W*C, K*C)``."""
        return self.window * n_fields, self.horizon * n_fields

    def frame_shapes(self, n_fields: int, grid: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
        """Per-sample shapes of the frame arrays :func:`cut` returns: ``"x"`` ``(W, C, *grid)`` (not for "field")
        and ``"y"`` ``(S*K, C, *grid)``."""
        shapes = {} if self.kind == "field" else {"x": (self.window, n_fields, *grid)}
        return {**shapes, "y": (self.targets, n_fields, *grid)}

    @property
    def time_in_cond(self) -> bool:
        """The model sees the time (only ``field`` needs it: the other kinds are autonomous steps)."""
        return self.kind == "field"


def cut(chunk: Chunk, spec: SampleSpec) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """All samples of ``chunk``: keys int64 ``(n, 2)`` and a dict of ``(n, ...)`` float32 arrays, ``"x"``
    ``(n, W, C, *grid)``, ``"y"`` ``(n, S*K, C, *grid)`` (:meth:`SampleSpec.frame_shapes`), ``"cond"`` ``(n, P)``,
    ``"t"`` ``(n,)``. The frame arrays are read-only views into the chunk: copy before writing to them."""
    u = chunk.fields  # (T, C, *grid)
    w, span = spec.window, spec.span
    n = u.shape[0] - span + 1
    if n <= 0:
        return np.zeros((0, 2), np.int64), {}
    targets = chunk.frame_index[w : w + n]  # frame index of each sample's first target
    keys = np.stack([np.full(n, chunk.sim_id, np.int64), targets], axis=1)
    # Views into the chunk (frame t+1 follows frame t): the buffer copies only the samples it keeps, so a full
    # reservoir that rejects most of a chunk costs little.
    win = np.moveaxis(sliding_window_view(u, span, axis=0), -1, 1)  # (n, W + S*K, C, *grid)
    samples: dict[str, np.ndarray] = {}
    if w:
        samples["x"] = win[:, :w]
    samples["y"] = win[:, w:]
    if spec.condition_on_params:
        samples["cond"] = np.ascontiguousarray(np.broadcast_to(chunk.params, (n, chunk.params.size)))
    last_input = targets if spec.kind == "field" else targets - 1
    samples["t"] = (last_input * spec.frame_dt).astype(np.float32)
    return keys, samples
