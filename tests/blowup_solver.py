"""A test solver that decays smoothly for ``a <= 1e3`` and produces NaN for larger ``a`` (a blow-up)."""

from dataclasses import dataclass

import jax.numpy as jnp
import numpy as np

from solvers import Param, ParamSpace, Solver


@dataclass(frozen=True)
class GrowthConfig:
    n: int = 8
    dt: float = 1.0
    dtype: str = "float32"


class Growth(Solver):
    name = "growth"
    channels = ("u",)
    param_space = ParamSpace((Param("a", 1e-2, 1e6, log=True),))
    Config = GrowthConfig

    @property
    def grid(self):
        return (self.config.n,)

    def coords(self):
        return {"x": np.arange(float(self.config.n))}

    def initial_state(self, key, params):
        x = jnp.linspace(0, 1, self.config.n, dtype=self.dtype)
        return 1.0 + jnp.sin(2 * jnp.pi * x)

    def step(self, state, params):
        return state * (1 - 1e-2 * self.config.dt) + jnp.where(params[0] > 1e3, jnp.nan, 0.0)

    def fields(self, state):
        return state[None]
