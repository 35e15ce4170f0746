"""A numpy PCG64 generator's state as a uint64 array (for checkpoints) and back."""

from __future__ import annotations

import numpy as np

from streaming.buffers.errors import BufferStateError

_U64 = (1 << 64) - 1


def rng_to_array(rng: np.random.Generator) -> np.ndarray:
    st = rng.bit_generator.state
    if st["bit_generator"] != "PCG64":
        raise BufferStateError(f"buffer RNG: cannot save {st['bit_generator']} state, only PCG64")
    s, inc = st["state"]["state"], st["state"]["inc"]
    words = [s >> 64, s & _U64, inc >> 64, inc & _U64, st["has_uint32"], st["uinteger"]]
    return np.array(words, dtype=np.uint64)


def rng_from_array(words: np.ndarray) -> np.random.Generator:
    w = [int(x) for x in np.asarray(words, dtype=np.uint64)]
    rng = np.random.Generator(np.random.PCG64())
    rng.bit_generator.state = {
        "bit_generator": "PCG64",
        "state": {"state": (w[0] << 64) | w[1], "inc": (w[2] << 64) | w[3]},
        "has_uint32": w[4],
        "uinteger": w[5],
    }
    return rng
