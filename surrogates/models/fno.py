"""Fourier Neural Operator (Li et al. 2020, arXiv:2010.08895), 1D and 2D, channels-first.

Architecture (as the reference scripts `fourier_1d.py` / `fourier_2d.py`):
  lift      P: pointwise Linear(C_in + cond_dim + ndim -> width) on [x, cond, coordinates in [0,1]]
  depth x   v <- act(K(v) + W v), no activation after the last block, where
            K = spectral convolution: FFT, multiply the lowest `modes` frequencies per axis by
                complex weights (width x width per kept mode; both positive and negative
                frequencies on the non-last axis, rfft half-spectrum on the last axis), inverse FFT;
            W = pointwise Linear(width -> width) (the 1x1 convolution)
  project   Q: Linear(width -> proj_width) -> act -> Linear(proj_width -> C_out)

Parameter count (2D, no padding): lift (C_in+cond_dim+2+1)*width;
per block 2 corners * modes^2 * width^2 complex weights (= 4*modes^2*width^2 real numbers, no bias)
plus width^2 + width; projection (width+1)*proj_width + (proj_width+1)*C_out. In 1D the spectral
weights are modes*width^2 complex per block. Complex weights are stored as float32 (..., 2) pairs
(real, imaginary), so every parameter is float32 and counts are in real numbers.

Resolution: the FFT uses the "backward" normalisation (unscaled forward, 1/N inverse, as
torch.fft), so the operator is the same on any grid; at a grid too coarse for `modes`, the kept
modes are clipped to what the grid resolves (n//2 on non-last axes, n//2+1 on the last axis),
keeping the frequency <-> weight correspondence.
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
    append_coordinates,
    check_choice,
    check_inputs,
    check_int,
    check_ints,
    lecun_normal,
    uniform,
)

__all__ = ["FNO", "FNOHparams", "SpectralConv"]


@dataclasses.dataclass(frozen=True)
class FNOHparams:
    """Hyper-parameters of the FNO (defaults: Li et al.'s 2D Darcy script, also CFDBench's FNO).

    modes: Fourier modes kept per axis, an int (same on every axis) or one int per axis; 12.
    width: channels of the Fourier layers; 32.
    depth: number of Fourier blocks; 4.
    proj_width: hidden width of the projection head; 128.
    padding: zero cells appended at the end of every grid axis before the Fourier blocks and
      cropped after (Li et al. use 9 for non-periodic Darcy); 0 for periodic problems.
    activation: "gelu" (default, as the paper), "relu", "tanh" or "silu".
    """

    modes: int | tuple[int, ...] = 12
    width: int = 32
    depth: int = 4
    proj_width: int = 128
    padding: int = 0
    activation: str = "gelu"

    def __post_init__(self) -> None:
        if isinstance(self.modes, tuple):
            check_ints("fno", "modes", self.modes, lo=1)
        else:
            check_int("fno", "modes", self.modes, lo=1)
        check_int("fno", "width", self.width, lo=1)
        check_int("fno", "depth", self.depth, lo=1)
        check_int("fno", "proj_width", self.proj_width, lo=1)
        check_int("fno", "padding", self.padding, lo=0)
        check_choice("fno", "activation", self.activation, tuple(ACTIVATIONS))


class Pointwise(nnx.Module):
    """Channels-first pointwise linear map (a 1x1 convolution): (B, C_in, *grid) -> (B, C_out, *grid)."""

    def __init__(self, in_features: int, out_features: int, *, rngs: nnx.Rngs) -> None:
        self.kernel = nnx.Param(lecun_normal(rngs.params(), (in_features, out_features)))
        self.bias = nnx.Param(jnp.zeros((out_features,), jnp.float32))

    def __call__(self, x: jax.Array) -> jax.Array:
        y = jnp.einsum("bi...,io->bo...", x, self.kernel[...])
        return y + self.bias[...].reshape((1, -1) + (1,) * (x.ndim - 2))


class SpectralConv(nnx.Module):
    """Spectral convolution on the lowest Fourier modes, 1D or 2D, channels-first.

    Weights: (corners, C_in, C_out, *modes, 2) float32 = complex (real, imag); corners = 1 in 1D,
    2 in 2D (frequencies [0, m) and [-m, 0) on the first axis). Initialised uniform in
    [0, 1/(C_in*C_out)) for both real and imaginary parts (Li et al.'s `scale * torch.rand`).
    """

    def __init__(self, in_features: int, out_features: int, modes: tuple[int, ...], *, rngs: nnx.Rngs) -> None:
        if len(modes) not in (1, 2):
            raise SurrogateError(f"fno: spectral convolution supports 1D and 2D, got modes={modes}")
        self.modes = tuple(modes)
        corners = 2 ** (len(modes) - 1)
        scale = 1.0 / (in_features * out_features)
        shape = (corners, in_features, out_features, *modes, 2)
        self.weight = nnx.Param(uniform(rngs.params(), shape, scale))

    def __call__(self, x: jax.Array) -> jax.Array:
        w = self.weight[...]
        w = jax.lax.complex(w[..., 0], w[..., 1])  # (corners, Ci, Co, *modes)
        if len(self.modes) == 1:
            return self._conv1d(x, w)
        return self._conv2d(x, w)

    def _conv1d(self, x: jax.Array, w: jax.Array) -> jax.Array:
        n = x.shape[-1]
        m = min(self.modes[0], n // 2 + 1)
        xf = jnp.fft.rfft(x, axis=-1)[..., :m]
        yf = jnp.einsum("bix,iox->box", xf, w[0, :, :, :m])
        yf = jnp.pad(yf, ((0, 0), (0, 0), (0, n // 2 + 1 - m)))
        return jnp.fft.irfft(yf, n=n, axis=-1).astype(x.dtype)

    def _conv2d(self, x: jax.Array, w: jax.Array) -> jax.Array:
        n1, n2 = x.shape[-2:]
        big1, _ = self.modes
        m1 = min(self.modes[0], n1 // 2)
        m2 = min(self.modes[1], n2 // 2 + 1)
        xf = jnp.fft.rfft2(x, axes=(-2, -1))
        # Weight row j of the negative corner belongs to frequency j - modes[0]; keep the last m1.
        top = jnp.einsum("bixy,ioxy->boxy", xf[..., :m1, :m2], w[0, :, :, :m1, :m2])
        bot = jnp.einsum("bixy,ioxy->boxy", xf[..., n1 - m1 :, :m2], w[1, :, :, big1 - m1 :, :m2])
        b, c = top.shape[:2]
        mid = jnp.zeros((b, c, n1 - 2 * m1, m2), top.dtype)
        yf = jnp.concatenate([top, mid, bot], axis=-2)
        yf = jnp.pad(yf, ((0, 0), (0, 0), (0, 0), (0, n2 // 2 + 1 - m2)))
        return jnp.fft.irfft2(yf, s=(n1, n2), axes=(-2, -1)).astype(x.dtype)


class FNO(nnx.Module):
    """FNO: (B, C_in, *grid), cond (B, cond_dim) -> (B, C_out, *grid); any grid size."""

    Hparams = FNOHparams
    supported_ndims = (1, 2)

    def __init__(
        self,
        *,
        in_channels: int,
        out_channels: int,
        ndim: int,
        cond_dim: int,
        hparams: FNOHparams,
        rngs: nnx.Rngs,
    ) -> None:
        modes = hparams.modes if isinstance(hparams.modes, tuple) else (hparams.modes,) * ndim
        if len(modes) != ndim:
            raise SurrogateError(f"fno: modes={hparams.modes} has {len(modes)} entries but ndim={ndim}")
        if in_channels + cond_dim < 1:
            raise SurrogateError("fno: needs at least one input channel or cond_dim >= 1")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.ndim = ndim
        self.cond_dim = cond_dim
        self.hparams = hparams
        width = hparams.width
        self.lift = Pointwise(in_channels + cond_dim + ndim, width, rngs=rngs)
        self.spectral = nnx.List(
            [SpectralConv(width, width, modes, rngs=rngs) for _ in range(hparams.depth)]
        )
        self.pointwise = nnx.List([Pointwise(width, width, rngs=rngs) for _ in range(hparams.depth)])
        self.proj1 = Pointwise(width, hparams.proj_width, rngs=rngs)
        self.proj2 = Pointwise(hparams.proj_width, out_channels, rngs=rngs)

    def __call__(self, x: jax.Array, cond: jax.Array | None = None) -> jax.Array:
        """x: (B, C_in, *grid) -> (B, C_out, *grid)."""
        check_inputs(
            "fno", x, cond, in_channels=self.in_channels, ndim=self.ndim, cond_dim=self.cond_dim
        )
        act = activation(self.hparams.activation)
        grid = x.shape[2:]
        v = self.lift(append_coordinates(x, cond))
        pad = self.hparams.padding
        if pad:
            v = jnp.pad(v, ((0, 0), (0, 0)) + ((0, pad),) * self.ndim)
        depth = self.hparams.depth
        for i, (k, w) in enumerate(zip(self.spectral, self.pointwise, strict=True)):
            v = k(v) + w(v)
            if i < depth - 1:
                v = act(v)
        if pad:
            v = v[(slice(None), slice(None)) + tuple(slice(0, n) for n in grid)]
        return self.proj2(act(self.proj1(v)))
