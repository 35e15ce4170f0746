"""U-Net (Ronneberger et al. 2015, arXiv:1505.04597), 1D and 2D, for field-to-field surrogates.

CFDBench's strongest autoregressive baseline. Layout (channels-last inside, channels-first outside):
  inc      ConvBlock(C_in + cond_dim -> width)
  down k   max-pool by 2 -> ConvBlock(width*2^(k-1) -> width*2^k),        k = 1..depth
  up k     ConvTranspose(kernel 2, stride 2) width*2^k -> width*2^(k-1), concatenate the skip,
           ConvBlock(width*2^k -> width*2^(k-1)),                          k = depth..1
  out      1x1 Conv(width -> C_out)
ConvBlock = (3-wide conv -> GroupNorm -> GELU) x 2. GroupNorm (8 groups, as PDEArena's U-Nets)
instead of the paper's BatchNorm, so there are no running statistics to switch between train and
eval. The grid must be divisible by 2^depth along every axis (checked at the door).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from surrogates.errors import SurrogateError
from surrogates.models.common import (
    ACTIVATIONS,
    activation,
    broadcast_cond,
    check_choice,
    check_inputs,
    check_int,
    lecun_normal,
)

__all__ = ["UNet", "UNetHparams"]


@dataclasses.dataclass(frozen=True)
class UNetHparams:
    """Hyper-parameters of the U-Net.

    width: channels after the first block (doubled at each down-sampling); 32.
    depth: number of down-samplings by 2 (the grid must be divisible by 2**depth); 4.
    norm: "group" (GroupNorm with `groups` groups; default) or "none".
    groups: GroupNorm groups (PDEArena uses 8); width must be divisible by it; 8.
    periodic: circular instead of zero padding in the convolutions (periodic domains); False.
    activation: "gelu" (default), "relu", "tanh" or "silu".
    """

    width: int = 32
    depth: int = 4
    norm: str = "group"
    groups: int = 8
    periodic: bool = False
    activation: str = "gelu"

    def __post_init__(self) -> None:
        check_int("unet", "width", self.width, lo=1)
        check_int("unet", "depth", self.depth, lo=1, hi=6)
        check_choice("unet", "norm", self.norm, ("group", "none"))
        check_int("unet", "groups", self.groups, lo=1)
        if self.norm == "group" and self.width % self.groups:
            raise SurrogateError(
                f"unet: width={self.width} must be divisible by groups={self.groups} for GroupNorm; "
                "change one of them or use norm='none'"
            )
        if not isinstance(self.periodic, bool):
            raise SurrogateError(f"unet: hyper-parameter periodic={self.periodic!r} must be True or False")
        check_choice("unet", "activation", self.activation, tuple(ACTIVATIONS))


class ConvBlock(nnx.Module):
    """(conv k=3 -> norm -> act) x 2, channels-last (B, *grid, C)."""

    def __init__(self, cin: int, cout: int, *, ndim: int, hp: UNetHparams, rngs: nnx.Rngs) -> None:
        pad = "CIRCULAR" if hp.periodic else "SAME"
        k = (3,) * ndim
        use_norm = hp.norm == "group"
        conv = dict(padding=pad, use_bias=not use_norm, kernel_init=lecun_normal, rngs=rngs)
        self.conv1 = nnx.Conv(cin, cout, k, **conv)
        self.conv2 = nnx.Conv(cout, cout, k, **conv)
        if use_norm:
            self.norm1 = nnx.GroupNorm(cout, num_groups=hp.groups, rngs=rngs)
            self.norm2 = nnx.GroupNorm(cout, num_groups=hp.groups, rngs=rngs)
        else:
            self.norm1 = self.norm2 = None
        self.act_name = hp.activation

    def __call__(self, x: jax.Array) -> jax.Array:
        act = activation(self.act_name)
        x = self.conv1(x)
        x = act(self.norm1(x) if self.norm1 is not None else x)
        x = self.conv2(x)
        return act(self.norm2(x) if self.norm2 is not None else x)


def _max_pool2(x: jax.Array) -> jax.Array:
    """Max-pool by 2 along every grid axis of a channels-last (B, *grid, C) array."""
    b, *grid, c = x.shape
    shape = [b]
    for n in grid:
        shape += [n // 2, 2]
    axes = tuple(2 + 2 * i for i in range(len(grid)))
    return x.reshape(*shape, c).max(axis=axes)


class UNet(nnx.Module):
    """U-Net: (B, C_in, *grid), cond (B, cond_dim) -> (B, C_out, *grid); grid divisible by 2**depth."""

    Hparams = UNetHparams
    supported_ndims = (1, 2)

    def __init__(
        self,
        *,
        in_channels: int,
        out_channels: int,
        ndim: int,
        cond_dim: int,
        hparams: UNetHparams,
        rngs: nnx.Rngs,
    ) -> None:
        if in_channels + cond_dim < 1:
            raise SurrogateError("unet: needs at least one input channel or cond_dim >= 1")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.ndim = ndim
        self.cond_dim = cond_dim
        self.hparams = hparams
        w = [hparams.width * 2**k for k in range(hparams.depth + 1)]
        blk = dict(ndim=ndim, hp=hparams, rngs=rngs)
        self.inc = ConvBlock(in_channels + cond_dim, w[0], **blk)
        self.down = nnx.List([ConvBlock(w[k - 1], w[k], **blk) for k in range(1, hparams.depth + 1)])
        self.upconv = nnx.List(
            [
                nnx.ConvTranspose(
                    w[k], w[k - 1], (2,) * ndim, strides=(2,) * ndim, padding="VALID",
                    kernel_init=lecun_normal, rngs=rngs,
                )
                for k in range(hparams.depth, 0, -1)
            ]
        )
        self.up = nnx.List([ConvBlock(w[k], w[k - 1], **blk) for k in range(hparams.depth, 0, -1)])
        self.out = nnx.Conv(w[0], out_channels, (1,) * ndim, kernel_init=lecun_normal, rngs=rngs)

    def __call__(self, x: jax.Array, cond: jax.Array | None = None) -> jax.Array:
        """x: (B, C_in, *grid) -> (B, C_out, *grid)."""
        check_inputs(
            "unet", x, cond, in_channels=self.in_channels, ndim=self.ndim, cond_dim=self.cond_dim
        )
        grid = tuple(x.shape[2:])
        f = 2**self.hparams.depth
        if any(n % f for n in grid):
            raise SurrogateError(
                f"unet: grid {grid} must be divisible by 2**depth={f} along every axis; "
                f"use a smaller depth or pad/crop the grid to a multiple of {f}"
            )
        if cond is not None:
            x = jnp.concatenate([x, broadcast_cond(cond.astype(x.dtype), grid)], axis=1)
        h = jnp.moveaxis(x, 1, -1)  # channels-last for nnx.Conv
        h = self.inc(h)
        skips = [h]
        for block in self.down:
            h = block(_max_pool2(h))
            skips.append(h)
        skips.pop()  # the bottleneck is h itself
        for upconv, block in zip(self.upconv, self.up, strict=True):
            h = upconv(h)
            h = block(jnp.concatenate([h, skips.pop()], axis=-1))
        return jnp.moveaxis(self.out(h), -1, 1)
