"""Resampling cell-centred fields onto CFDBench's fixed 64 x 64 sample grid, with a mask channel.

CFDBench (Luo et al. 2023, arXiv:2310.05963) stores ``u`` and ``v`` on 64 x 64 points and its loaders
stack ``(u, v, mask)``; here the target points are the cell centres of a uniform 64 x 64 partition of
the domain and the interpolation is bilinear between cell centres (``jax.image.resize``), with
area averaging when the source grid is finer.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

CFDBENCH_SHAPE = (64, 64)


def resize(fields: jax.Array, shape: tuple[int, int] = CFDBENCH_SHAPE) -> jax.Array:
    """Resample ``(..., nx, ny)`` cell-centred fields to ``(..., *shape)``."""
    return jax.image.resize(fields, fields.shape[:-2] + tuple(shape), method="linear")


def cfdbench_sample(
    frames: jax.Array, mask: jax.Array | None = None, shape: tuple[int, int] = CFDBENCH_SHAPE
) -> jax.Array:
    """``(..., C, nx, ny)`` frames whose first two channels are ``u``, ``v`` -> ``(..., 3, *shape)`` ``(u, v, mask)``.

    ``mask`` ``(nx, ny)`` (or ``(B, nx, ny)``, one per simulation when ``frames`` is ``(B, ...)``) is 1
    in the fluid and 0 in obstacles (default all fluid); it is resampled the same way and rounded, and
    ``u``, ``v`` are zeroed where it is 0.
    """
    if frames.ndim < 3 or frames.shape[-3] < 2:
        raise ValueError(f"frames must be (..., C, nx, ny) with C >= 2 (u, v first), got shape {frames.shape}")
    uv = resize(frames[..., :2, :, :], shape)
    if mask is None:
        m = jnp.ones(tuple(shape), frames.dtype)
    else:
        m = jnp.round(resize(jnp.asarray(mask, frames.dtype), shape))
        lead = m.shape[:-2]
        if lead != frames.shape[: len(lead)]:
            raise ValueError(f"mask of shape {mask.shape} does not match frames of shape {frames.shape}")
        m = m.reshape(lead + (1,) * (frames.ndim - 2 - len(lead)) + tuple(shape))
    uv = uv * m
    m = jnp.broadcast_to(m, uv.shape[:-3] + (1,) + tuple(shape))
    return jnp.concatenate([uv, m], axis=-3)
