"""Helpers shared by the surrogate models: door checks, hyper-parameter checks, grid features.

Everything here is shape-static (runs at trace time), so it is free inside `jax.jit`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from surrogates.errors import SurrogateError

__all__ = [
    "ACTIVATIONS",
    "activation",
    "append_coordinates",
    "broadcast_cond",
    "check_choice",
    "check_cond",
    "check_inputs",
    "check_int",
    "check_ints",
    "grid_coordinates",
    "lecun_normal",
    "uniform",
]

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": jax.nn.relu,
    # Exact (erf) GELU, as torch.nn.GELU / F.gelu used by the FNO reference scripts.
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "tanh": jnp.tanh,
    "silu": jax.nn.silu,  # a.k.a. Swish (MP-PDE, Brandstetter et al. 2022)
}


# --------------------------------------------------------------------------- initialisers
# Random draws are made on a flat vector and reshaped. With jax 0.10 on CPU (threefry
# "partitionable" counters, the default), XLA compiles the random bits of some multi-dimensional
# shapes pathologically slowly (tens of seconds), never those of a flat vector. The distributions
# are unchanged.
def lecun_normal(key: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> jax.Array:
    """Flax's default kernel initialiser, variance_scaling(1, "fan_in", "truncated_normal"), for a
    kernel of shape (*receptive_field, in, out): fan_in = prod(shape[:-1])."""
    shape = tuple(shape)
    fan_in = max(1, math.prod(shape[:-1]))
    std = math.sqrt(1.0 / fan_in) / 0.87962566103423978  # std of N(0,1) truncated to [-2, 2]
    flat = jax.random.truncated_normal(key, -2.0, 2.0, (math.prod(shape),), dtype)
    return (flat * std).reshape(shape)


def uniform(key: jax.Array, shape: Sequence[int], scale: float, dtype: Any = jnp.float32) -> jax.Array:
    """Uniform on [0, scale), drawn flat and reshaped."""
    shape = tuple(shape)
    return (scale * jax.random.uniform(key, (math.prod(shape),), dtype)).reshape(shape)


# --------------------------------------------------------------------------- hyper-parameters
def check_int(model: str, name: str, value: Any, *, lo: int, hi: int | None = None) -> None:
    """Raise SurrogateError unless `value` is an int in [lo, hi]."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise SurrogateError(f"{model}: hyper-parameter {name}={value!r} must be an integer")
    if value < lo or (hi is not None and value > hi):
        rng = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise SurrogateError(f"{model}: hyper-parameter {name}={value} is out of range; use a value {rng}")


def check_model_args(
    model: str, in_channels: Any, out_channels: Any, ndim: Any, cond_dim: Any, hparams: Any,
    hparams_cls: type, supported_ndims: Sequence[int],
) -> None:
    """Constructor checks for models built directly rather than through `get_model`: channel counts,
    `ndim` among `supported_ndims`, and `hparams` an instance of the model's `Hparams`."""
    check_int(model, "in_channels", in_channels, lo=1)
    check_int(model, "out_channels", out_channels, lo=1)
    check_int(model, "cond_dim", cond_dim, lo=0)
    if ndim not in supported_ndims:
        raise SurrogateError(f"{model}: ndim={ndim} is not supported; use one of {list(supported_ndims)}")
    if not isinstance(hparams, hparams_cls):
        raise SurrogateError(f"{model}: hparams must be {model}.Hparams, got {type(hparams).__name__}")


def check_ints(
    model: str, name: str, value: Any, *, lo: int, length: int | None = None
) -> None:
    """Raise SurrogateError unless `value` is a non-empty tuple of ints >= lo (of `length`, if given)."""
    if not isinstance(value, tuple) or len(value) == 0:
        raise SurrogateError(
            f"{model}: hyper-parameter {name}={value!r} must be a non-empty tuple of integers"
        )
    if length is not None and len(value) != length:
        raise SurrogateError(
            f"{model}: hyper-parameter {name}={value!r} must have {length} entries"
        )
    for v in value:
        check_int(model, name, v, lo=lo)


def check_choice(model: str, name: str, value: Any, choices: Sequence[str]) -> None:
    """Raise SurrogateError unless `value` is one of `choices`."""
    if value not in choices:
        raise SurrogateError(
            f"{model}: hyper-parameter {name}={value!r} is not supported; choose one of {list(choices)}"
        )


def activation(name: str) -> Callable[[jax.Array], jax.Array]:
    """The activation function called `name` (one of ACTIVATIONS)."""
    return ACTIVATIONS[name]


# --------------------------------------------------------------------------- call contract
def check_inputs(
    model: str,
    x: Any,
    cond: Any,
    *,
    in_channels: int,
    ndim: int,
    cond_dim: int,
) -> int:
    """Check `model(x, cond)` against the contract; return the batch size.

    x: (B, in_channels, *grid) with len(grid) == ndim; cond: (B, cond_dim) or None when cond_dim == 0.
    """
    shape = getattr(x, "shape", None)
    if shape is None:
        raise SurrogateError(f"{model}: x must be an array of shape (B, {in_channels}, *grid), got {type(x).__name__}")
    want = "(B, C, " + ", ".join(["N"] * ndim) + ")"
    if len(shape) != ndim + 2:
        raise SurrogateError(
            f"{model}: x has shape {tuple(shape)} but this {ndim}D model expects {want} "
            f"= batch, {in_channels} channels, {ndim} grid axes; add the missing batch/channel axis"
        )
    if shape[1] != in_channels:
        raise SurrogateError(
            f"{model}: x has {shape[1]} channels (shape {tuple(shape)}) but the model was built with "
            f"in_channels={in_channels}; put channels on axis 1 or rebuild with in_channels={shape[1]}"
        )
    check_cond(model, cond, batch=shape[0], cond_dim=cond_dim)
    return int(shape[0])


def check_cond(model: str, cond: Any, *, batch: int | None, cond_dim: int) -> None:
    """Check the conditioning vector: (B, cond_dim), or None when the model has cond_dim == 0."""
    if cond_dim == 0:
        if cond is not None:
            raise SurrogateError(
                f"{model}: got cond of shape {tuple(getattr(cond, 'shape', ()))} but the model was built "
                "with cond_dim=0; pass cond=None or rebuild with cond_dim=<length of cond>"
            )
        return
    if cond is None:
        raise SurrogateError(
            f"{model}: the model was built with cond_dim={cond_dim}; pass cond of shape (B, {cond_dim})"
        )
    shape = tuple(getattr(cond, "shape", ()))
    if len(shape) != 2 or shape[1] != cond_dim or (batch is not None and shape[0] != batch):
        b = "B" if batch is None else str(batch)
        raise SurrogateError(
            f"{model}: cond has shape {shape} but must be ({b}, {cond_dim}) (batch, cond_dim)"
        )


# --------------------------------------------------------------------------- grid features
def grid_coordinates(grid: Sequence[int], dtype: Any = jnp.float32) -> jax.Array:
    """Node coordinates in [0, 1] (both ends included, as `np.linspace(0, 1, n)` in Li et al.'s
    FNO scripts), shape (len(grid), *grid)."""
    axes = [jnp.linspace(0.0, 1.0, n, dtype=dtype) for n in grid]
    return jnp.stack(jnp.meshgrid(*axes, indexing="ij"), axis=0)


def broadcast_cond(cond: jax.Array, grid: Sequence[int]) -> jax.Array:
    """(B, cond_dim) -> (B, cond_dim, *grid): the vector repeated at every grid node."""
    b, k = cond.shape
    return jnp.broadcast_to(cond.reshape((b, k) + (1,) * len(grid)), (b, k, *grid))


def append_coordinates(x: jax.Array, cond: jax.Array | None = None, *, coordinates: bool = True) -> jax.Array:
    """Channels-first features [x, cond broadcast, grid coordinates]: (B, C + cond_dim + ndim, *grid)."""
    grid = x.shape[2:]
    parts = [x]
    if cond is not None:
        parts.append(broadcast_cond(cond.astype(x.dtype), grid))
    if coordinates:
        coords = grid_coordinates(grid, x.dtype)
        parts.append(jnp.broadcast_to(coords[None], (x.shape[0], *coords.shape)))
    return jnp.concatenate(parts, axis=1) if len(parts) > 1 else x
