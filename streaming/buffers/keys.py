"""Sample keys ``(sim_id, frame)`` packed into one int64 code: ``sim_id * 2**32 + frame``."""

from __future__ import annotations

from typing import Any

import numpy as np

from streaming.buffers.errors import BufferStateError

SID_LIMIT = 2**31
STEP_LIMIT = 2**32
STEP_MASK = STEP_LIMIT - 1


def encode_keys(keys: Any) -> np.ndarray:
    """``(sim_id, frame)`` pairs, int ``(n, 2)``, to int64 codes ``(n,)`` = ``sim_id * 2**32 + frame``."""
    k = np.asarray(keys)
    if k.ndim == 1 and k.shape == (2,):
        k = k[None]
    if k.size == 0:
        return np.zeros(0, dtype=np.int64)
    if k.ndim != 2 or k.shape[1] != 2 or k.dtype.kind not in "iu":
        raise BufferStateError(
            f"buffer keys: expected integer (sim_id, frame) pairs of shape (n, 2), got dtype {k.dtype} "
            f"shape {k.shape}; use Chunk.sample_keys()"
        )
    k = k.astype(np.int64, copy=False)
    sid, step = k[:, 0], k[:, 1]
    bad = (sid < 0) | (sid >= SID_LIMIT) | (step < 0) | (step >= STEP_LIMIT)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise BufferStateError(
            f"buffer key ({int(sid[i])}, {int(step[i])}): need 0 <= sim_id < 2**31 and 0 <= frame < 2**32"
        )
    return (sid << 32) | step


def decode_keys(codes: np.ndarray) -> np.ndarray:
    """Inverse of :func:`encode_keys`: int64 codes ``(n,)`` to int64 ``(n, 2)`` pairs."""
    codes = np.asarray(codes, dtype=np.int64)
    return np.stack([codes >> 32, codes & (STEP_MASK)], axis=-1)
