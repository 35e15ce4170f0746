"""Latent Spectral Model (LSM) in Flax NNX.

Wu, Hu, Luo, Wang, Long, "Solving High-Dimensional PDEs with Latent Spectral Models", ICML 2023
(arXiv:2301.12664). No public JAX version existed; this is our own implementation, written from the
paper and from facts read in the authors' PyTorch code (thuml/Latent-Spectral-Models,
`models/LSM_2D.py`).

Architecture, in the paper's terms
----------------------------------
LSM solves a PDE in a *latent* space rather than on the grid, and does so at several scales:

1. **Lifting.** Each grid node's input channels, its coordinates in [0, 1] and (our addition) the
   conditioning vector are mapped pointwise to `width` channels (the reference's `fc0`).
2. **Hierarchical projection network.** A U-Net over `num_scales` scales. The encoder is a stack of
   "double conv" blocks (3x3 conv -> norm -> ReLU, twice); between scales a 2x max-pool halves the
   grid and the block doubles the channels (width * 2**s at scale s; the deepest scale keeps the
   channels of the one above, as the reference's bilinear U-Net does). The decoder upsamples by 2
   (linear interpolation), concatenates the skip from the same scale and applies a double conv.
3. **Neural Spectral Block (NSB)** on every skip connection (and on the bottleneck). The feature map
   is cut into p x p patches; inside each patch
   a. *latent encoder*: `num_token` learnable latent tokens (queries, `num_heads` heads) attend to
      the patch's pixels, whose keys and values come from a 1x1 conv; residual on the tokens.
      This projects the patch into a tiny latent space.
   b. *latent spectral transition*: each latent coordinate z is expanded in a fixed set of
      trigonometric basis operators [sin(k pi z / K), cos(k pi z / K)], k = 0..K-1 (K =
      `num_basis` = 12), and recombined with learned weights of shape (channels, 2K), plus a
      residual. This is the "neural spectral" solve: a learned function of each latent value, in
      a spectral basis, the role the paper gives to the latent operator.
   c. *latent decoder*: the pixels (queries from a 1x1 conv) attend back to the tokens; residual.
   Patches are then stitched back together.
4. **Projection head.** 1x1 conv (width -> width), then pointwise width -> 128 -> GELU -> C_out
   (the reference's `outc`, `fc1`, `fc2`).

Deviations from the reference code, and why
-------------------------------------------
* GroupNorm (`norm_groups` groups; 1 = LayerNorm over channels and space, = channels gives
  InstanceNorm) replaces BatchNorm. pdestream trains on a stream: batches arrive from solvers in
  arbitrary order and mix, and a model may be evaluated while training continues. BatchNorm's
  running statistics would depend on that order and differ between train and eval mode; GroupNorm
  is per-sample, has no running state, and behaves identically in training and inference. (The
  Neural-Solver-Library's LSM also switches to InstanceNorm for time-dependent tasks.)
* Attention uses the usual 1/sqrt(head_dim) scaling (the reference code omits it).
* Upsampling uses `jax.image.resize` (half-pixel centres) where the reference uses
  `align_corners=True` bilinear interpolation.
* Grids are not padded: every grid axis must be divisible by 2**(num_scales-1) * patch; the call
  says which axis fails and how to fix it.
* Conditioning (PDE parameters) is broadcast to every node and appended at the lifting step.

Supported: 1D, 2D and 3D grids (the reference has 2D and 3D versions). Layout at the door is
channels-first, `(B, C, *grid)`; internally we work channels-last as Flax convolutions expect.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from surrogates.errors import SurrogateError
from surrogates.models.common import append_coordinates, check_inputs, check_int, check_model_args, uniform

__all__ = ["LSM", "LSMHparams", "NeuralSpectralBlock"]

_NAME = "LSM"
_SUPPORTED_NDIM = (1, 2, 3)


@dataclasses.dataclass(frozen=True)
class LSMHparams:
    """Hyper-parameters of LSM. Defaults follow Wu et al. (2023) for Navier-Stokes 64x64
    (`scripts/ns_lsm.sh`: width 64, patch 4x4, 12 basis operators, 4 latent tokens, 8 heads).

    width: channels at the finest scale (doubled at each coarser scale).
    num_scales: U-Net scales, including the finest (reference: 5). Each grid axis must be
        divisible by 2**(num_scales-1) * patch; 5 scales with patch 4 needs multiples of 64.
    patch_size: patch edge per axis (an int is used for every axis); 1 makes every pixel a patch.
    num_basis: K, the number of sin/cos basis operators of the latent spectral transition.
    num_token: latent tokens per patch.
    num_heads: attention heads; must divide `width`.
    head_width: hidden width of the pointwise projection head (reference: 128).
    norm_groups: GroupNorm groups; must divide `width` (1 = LayerNorm-like).
    """

    width: int = 64
    num_scales: int = 5
    patch_size: int | tuple[int, ...] = 4
    num_basis: int = 12
    num_token: int = 4
    num_heads: int = 8
    head_width: int = 128
    norm_groups: int = 8

    def __post_init__(self) -> None:
        check_int(_NAME, "width", self.width, lo=1)
        check_int(_NAME, "num_scales", self.num_scales, lo=1, hi=8)
        check_int(_NAME, "num_basis", self.num_basis, lo=1)
        check_int(_NAME, "num_token", self.num_token, lo=1)
        check_int(_NAME, "num_heads", self.num_heads, lo=1)
        check_int(_NAME, "head_width", self.head_width, lo=1)
        check_int(_NAME, "norm_groups", self.norm_groups, lo=1)
        patch = self.patch_size
        if isinstance(patch, list):
            patch = tuple(patch)
            object.__setattr__(self, "patch_size", patch)
        if isinstance(patch, tuple):
            if len(patch) == 0:
                raise SurrogateError(f"{_NAME}: hyper-parameter patch_size=() is empty; use an int or a tuple")
            for p in patch:
                check_int(_NAME, "patch_size", p, lo=1)
        else:
            check_int(_NAME, "patch_size", patch, lo=1)
        if self.width % self.num_heads:
            raise SurrogateError(
                f"{_NAME}: width={self.width} is not divisible by num_heads={self.num_heads}; "
                "choose num_heads that divides width"
            )
        if self.width % self.norm_groups:
            raise SurrogateError(
                f"{_NAME}: width={self.width} is not divisible by norm_groups={self.norm_groups}; "
                "choose norm_groups that divides width"
            )

    def patch(self, ndim: int) -> tuple[int, ...]:
        """The patch shape for an `ndim`-dimensional grid."""
        if isinstance(self.patch_size, int):
            return (self.patch_size,) * ndim
        if len(self.patch_size) != ndim:
            raise SurrogateError(
                f"{_NAME}: patch_size={self.patch_size} has {len(self.patch_size)} entries but the model is "
                f"{ndim}D; give {ndim} entries or a single int"
            )
        return self.patch_size

    def channels(self) -> tuple[int, ...]:
        """Channels at each scale, finest first: width * 2**s, the deepest repeating the one above."""
        c = [self.width * 2**s for s in range(self.num_scales)]
        if self.num_scales > 1:
            c[-1] = c[-2]
        return tuple(c)


# --------------------------------------------------------------------------- patches
def patchify(x: jax.Array, patch: tuple[int, ...]) -> jax.Array:
    """(B, *grid, C) -> (B * n_patches, prod(patch), C); patches in C order of their grid index."""
    b, *grid, c = x.shape
    nd = len(grid)
    split = [b]
    for n, p in zip(grid, patch, strict=True):
        split += [n // p, p]
    x = x.reshape(*split, c)
    perm = [0] + [1 + 2 * a for a in range(nd)] + [2 + 2 * a for a in range(nd)] + [1 + 2 * nd]
    x = x.transpose(perm)
    n_patches = math.prod(n // p for n, p in zip(grid, patch, strict=True))
    return x.reshape(b * n_patches, math.prod(patch), c)


def unpatchify(x: jax.Array, shape: tuple[int, ...], patch: tuple[int, ...]) -> jax.Array:
    """Inverse of `patchify`: (B * n_patches, prod(patch), C) -> `shape` = (B, *grid, C)."""
    b, *grid, c = shape
    nd = len(grid)
    x = x.reshape(b, *(n // p for n, p in zip(grid, patch, strict=True)), *patch, c)
    perm = [0]
    for a in range(nd):
        perm += [1 + a, 1 + nd + a]
    perm.append(1 + 2 * nd)
    return x.transpose(perm).reshape(shape)


# --------------------------------------------------------------------------- blocks
class NeuralSpectralBlock(nnx.Module):
    """Neural Spectral Block (Wu et al. 2023, Sec. 3): latent encoder -> latent spectral transition
    -> latent decoder, applied to every patch independently. Maps (B, *grid, C) -> (B, *grid, C)."""

    def __init__(
        self,
        channels: int,
        *,
        patch: tuple[int, ...],
        num_basis: int,
        num_token: int,
        num_heads: int,
        rngs: nnx.Rngs,
    ) -> None:
        self.patch = patch
        self.num_basis = num_basis
        self.num_heads = num_heads
        self.latent = nnx.Param(uniform(rngs.params(), (num_token, channels), 1.0 / channels))  # rand(...) / width
        self.to_kv = nnx.Linear(channels, 2 * channels, rngs=rngs)  # 1x1 conv (reference: encoder_attn)
        self.to_q = nnx.Linear(channels, channels, rngs=rngs)  # 1x1 conv (reference: decoder_attn)
        self.basis_weights = nnx.Param(uniform(rngs.params(), (channels, 2 * num_basis), 1.0 / channels))

    def _heads(self, x: jax.Array) -> jax.Array:
        """(..., L, C) -> (..., L, num_heads, C // num_heads)."""
        return x.reshape(*x.shape[:-1], self.num_heads, x.shape[-1] // self.num_heads)

    def spectral_transition(self, z: jax.Array) -> jax.Array:
        """z + sum_m W[c, m] phi_m(z[..., c]) with phi = [sin, cos](k pi z / K), k = 0..K-1."""
        k = jnp.arange(self.num_basis, dtype=z.dtype) / self.num_basis
        arg = jnp.pi * z[..., None] * k
        phi = jnp.concatenate([jnp.sin(arg), jnp.cos(arg)], axis=-1)  # (..., C, 2K)
        return jnp.einsum("...cm,cm->...c", phi, self.basis_weights[...]) + z

    def __call__(self, x: jax.Array) -> jax.Array:
        pixels = patchify(x, self.patch)  # (P, L, C)
        n_p = pixels.shape[0]
        # (a) latent encoder: tokens attend to the patch's pixels.
        k, v = jnp.split(self.to_kv(pixels), 2, axis=-1)
        latent = jnp.broadcast_to(self.latent[...], (n_p, *self.latent.shape))  # (P, T, C)
        attend = jax.nn.dot_product_attention  # (batch, length, heads, head_dim) layout
        z = attend(self._heads(latent), self._heads(k), self._heads(v)).reshape(latent.shape) + latent
        # (b) latent spectral transition.
        z = self.spectral_transition(z)
        # (c) latent decoder: pixels attend back to the tokens.
        zh = self._heads(z)
        out = attend(self._heads(self.to_q(pixels)), zh, zh).reshape(pixels.shape) + pixels
        return unpatchify(out, x.shape, self.patch)


class _DoubleConv(nnx.Module):
    """(3^d conv, no bias -> GroupNorm -> ReLU) x 2, channels-last."""

    def __init__(self, c_in: int, c_out: int, c_mid: int, *, ndim: int, groups: int, rngs: nnx.Rngs) -> None:
        k = (3,) * ndim
        self.conv1 = nnx.Conv(c_in, c_mid, k, use_bias=False, rngs=rngs)
        self.norm1 = nnx.GroupNorm(c_mid, num_groups=groups, rngs=rngs)
        self.conv2 = nnx.Conv(c_mid, c_out, k, use_bias=False, rngs=rngs)
        self.norm2 = nnx.GroupNorm(c_out, num_groups=groups, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = jax.nn.relu(self.norm1(self.conv1(x)))
        return jax.nn.relu(self.norm2(self.conv2(x)))


def _max_pool2(x: jax.Array) -> jax.Array:
    """Halve every grid axis of (B, *grid, C) by a 2^d max-pool (axes are even by construction)."""
    b, *grid, c = x.shape
    split = [b]
    for n in grid:
        split += [n // 2, 2]
    return x.reshape(*split, c).max(axis=tuple(2 + 2 * a for a in range(len(grid))))


def _upsample2(x: jax.Array) -> jax.Array:
    """Double every grid axis of (B, *grid, C) by linear interpolation."""
    b, *grid, c = x.shape
    return jax.image.resize(x, (b, *(2 * n for n in grid), c), method="linear")


# --------------------------------------------------------------------------- model
class LSM(nnx.Module):
    """Latent Spectral Model: (B, in_channels, *grid) -> (B, out_channels, *grid).

    See the module docstring for the architecture. `cond` (B, cond_dim) is appended to every node
    at the lifting step; pass None when cond_dim == 0.
    """

    Hparams = LSMHparams
    supported_ndims: tuple[int, ...] = _SUPPORTED_NDIM

    def __init__(
        self,
        *,
        in_channels: int,
        out_channels: int,
        ndim: int,
        cond_dim: int,
        hparams: LSMHparams,
        rngs: nnx.Rngs,
    ) -> None:
        check_model_args(_NAME, in_channels, out_channels, ndim, cond_dim, hparams, LSMHparams, _SUPPORTED_NDIM)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.ndim = ndim
        self.cond_dim = cond_dim
        self.hparams = hparams
        self.patch = hparams.patch(ndim)

        hp = hparams
        c = hp.channels()
        dc = dict(ndim=ndim, groups=hp.norm_groups, rngs=rngs)
        nsb = dict(patch=self.patch, num_basis=hp.num_basis, num_token=hp.num_token, num_heads=hp.num_heads, rngs=rngs)
        self.lift = nnx.Linear(in_channels + cond_dim + ndim, hp.width, rngs=rngs)
        self.inc = _DoubleConv(hp.width, hp.width, hp.width, **dc)
        self.down = nnx.List([_DoubleConv(c[s - 1], c[s], c[s], **dc) for s in range(1, hp.num_scales)])
        self.spectral = nnx.List([NeuralSpectralBlock(c[s], **nsb) for s in range(hp.num_scales)])
        # Decoder level s (coarse to fine) takes [skip_s, upsampled] = 2 c_s channels -> c_{s-1} (c_0 at s=0).
        self.up = nnx.List(
            [_DoubleConv(2 * c[s], c[max(s - 1, 0)], c[s], **dc) for s in range(hp.num_scales - 2, -1, -1)]
        )
        self.out_conv = nnx.Linear(hp.width, hp.width, rngs=rngs)  # 1x1 conv (reference: outc)
        self.fc1 = nnx.Linear(hp.width, hp.head_width, rngs=rngs)
        self.fc2 = nnx.Linear(hp.head_width, out_channels, rngs=rngs)

    def _check_grid(self, grid: tuple[int, ...]) -> None:
        factor = 2 ** (self.hparams.num_scales - 1)
        for axis, (n, p) in enumerate(zip(grid, self.patch, strict=True)):
            if n % (factor * p):
                raise SurrogateError(
                    f"{_NAME}: grid axis {axis} has {n} points, not divisible by 2**(num_scales-1) * patch = "
                    f"{factor} * {p} = {factor * p}; use a grid that is, or lower num_scales / patch_size"
                )

    def __call__(self, x: jax.Array, cond: jax.Array | None = None) -> jax.Array:
        """x: (B, in_channels, *grid); cond: (B, cond_dim) or None. Returns (B, out_channels, *grid)."""
        check_inputs(_NAME, x, cond, in_channels=self.in_channels, ndim=self.ndim, cond_dim=self.cond_dim)
        self._check_grid(tuple(x.shape[2:]))
        h = append_coordinates(x, cond)  # (B, C_in + cond_dim + ndim, *grid)
        h = self.lift(jnp.moveaxis(h, 1, -1))  # channels-last from here on
        skips = [self.inc(h)]
        for block in self.down:
            skips.append(block(_max_pool2(skips[-1])))
        h = self.spectral[-1](skips[-1])
        for s, block in zip(range(self.hparams.num_scales - 2, -1, -1), self.up, strict=True):
            h = block(jnp.concatenate([self.spectral[s](skips[s]), _upsample2(h)], axis=-1))
        h = self.out_conv(h)
        h = self.fc2(jax.nn.gelu(self.fc1(h), approximate=False))
        return jnp.moveaxis(h, -1, 1)
