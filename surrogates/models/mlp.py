"""Fully-connected surrogate: conditioning vector -> whole field (Melissa's heat-equation model).

Melissa's SC23 heat-PDE surrogate maps the 5 temperatures + time (6 numbers) through
Linear 6->256->256->N_grid with ReLU (LTMeyer/sc2023-exp, arXiv:2309.16743). Here the output
layer has out_channels * prod(grid) units and is reshaped to (B, out_channels, *grid).
"""

from __future__ import annotations

import dataclasses
import math

import jax
from flax import nnx

from surrogates.errors import SurrogateError
from surrogates.models.common import (
    ACTIVATIONS,
    activation,
    check_choice,
    check_cond,
    check_ints,
    lecun_normal,
)

__all__ = ["MLP"]


@dataclasses.dataclass(frozen=True)
class MLPHparams:
    """Hyper-parameters of the MLP.

    grid: the output grid (N,) or (Nx, Ny); required, since the last layer's size depends on it.
    hidden: widths of the hidden layers; default (256, 256) as in Melissa's heat surrogate.
    activation: one of "relu" (default, Melissa), "gelu", "tanh", "silu".
    """

    grid: tuple[int, ...]
    hidden: tuple[int, ...] = (256, 256)
    activation: str = "relu"

    def __post_init__(self) -> None:
        check_ints("mlp", "grid", self.grid, lo=1)
        check_ints("mlp", "hidden", self.hidden, lo=1)
        check_choice("mlp", "activation", self.activation, tuple(ACTIVATIONS))


class MLP(nnx.Module):
    """cond (B, cond_dim) -> field (B, out_channels, *grid). `x` is ignored (may be None)."""

    Hparams = MLPHparams
    supported_ndims = (1, 2)

    def __init__(
        self,
        *,
        in_channels: int,
        out_channels: int,
        ndim: int,
        cond_dim: int,
        hparams: MLPHparams,
        rngs: nnx.Rngs,
    ) -> None:
        if cond_dim < 1:
            raise SurrogateError(
                "mlp: the MLP maps the conditioning vector to a field, so it needs cond_dim >= 1 "
                "(e.g. PDE parameters + time); pass cond_dim to get_model"
            )
        if len(hparams.grid) != ndim:
            raise SurrogateError(
                f"mlp: grid={hparams.grid} has {len(hparams.grid)} axes but ndim={ndim}; "
                f"give a grid with {ndim} entries"
            )
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.ndim = ndim
        self.cond_dim = cond_dim
        self.hparams = hparams
        sizes = (cond_dim, *hparams.hidden, out_channels * math.prod(hparams.grid))
        self.layers = nnx.List(
            [nnx.Linear(a, b, kernel_init=lecun_normal, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:], strict=True)]
        )

    def __call__(self, x: jax.Array | None, cond: jax.Array | None = None) -> jax.Array:
        """x: None or (B, C_in, *grid) (only B and grid are checked); cond: (B, cond_dim)."""
        grid = self.hparams.grid
        batch = None
        if x is not None:
            shape = tuple(getattr(x, "shape", ()))
            if len(shape) != self.ndim + 2 or shape[2:] != grid:
                raise SurrogateError(
                    f"mlp: x has shape {shape} but the model predicts on grid {grid}; pass x=None or "
                    f"x of shape (B, C, {', '.join(map(str, grid))})"
                )
            batch = shape[0]
        check_cond("mlp", cond, batch=batch, cond_dim=self.cond_dim)
        act = activation(self.hparams.activation)
        h = cond
        for layer in self.layers[:-1]:
            h = act(layer(h))
        out = self.layers[-1](h)
        return out.reshape((cond.shape[0], self.out_channels, *grid))
