"""Lid-driven cavity: CFDBench's ``cavity`` problem (Luo et al. 2023, arXiv:2310.05963).

A ``width x height`` box of fluid at rest; at ``t = 0`` the top wall starts sliding to the right at
``lid_velocity`` and drives a recirculating flow, steady for Reynolds numbers
``Re = density * lid_velocity * width / viscosity`` below about 8000. The other walls are no-slip.

Parameters: ``lid_velocity`` (m/s), ``density`` (kg/m^3), ``viscosity`` (dynamic, Pa s), ``width``
(x, m), ``height`` (y, m). CFDBench's own ranges (lid speeds to 50 m/s, viscosities to 1e-5 Pa s on
a 1 cm box) reach Re ~ 1e6, beyond what a 64 x 64 laminar solver resolves; the default ranges here
keep ``Re`` in about [2.5, 1125] (resolved on 64 x 64, steady or nearly so) at unit scale.

Numerics: :mod:`solvers.cfd.navier_stokes` (MAC grid, RK3 / Crank-Nicolson, projection by fast
diagonalisation). The grid has ``nx x ny`` cells whatever the geometry; a batch may mix widths and
heights. Outputs ``u``, ``v`` (m/s) and ``p`` (Pa, zero mean) on the cell centres. Validated against
Ghia, Ghia & Shin (1982) by :func:`benchmarks.validation.validate_cavity`.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from solvers.cfd.boundaries import still_walls
from solvers.cfd.navier_stokes import Flow
from solvers.cfd.problem import MACSolver
from solvers.params import Param, ParamSpace


@dataclass(frozen=True)
class CavityConfig:
    """nx, ny: cells along x and y; dt: time step (s); theta: implicit weight of diffusion (0.5 CN);
    cfl_max: largest accepted ``dt * lid_velocity * (1/dx + 1/dy)`` (stability needs <= sqrt(3))."""

    nx: int = 64
    ny: int = 64
    dt: float = 2e-3
    theta: float = 0.5
    cfl_max: float = 1.0
    dtype: str = "float32"


class Cavity(MACSolver):
    """2D lid-driven cavity flow on a MAC grid; parameters lid speed, density, viscosity, width, height."""

    name = "cavity"
    param_space = ParamSpace(
        (
            Param("lid_velocity", 0.5, 1.5, "m/s", "speed of the top wall (moving in +x)"),
            Param("density", 0.5, 1.5, "kg/m^3", "fluid density"),
            Param("viscosity", 3e-3, 5e-2, "Pa s", "dynamic viscosity", log=True),
            Param("width", 0.5, 1.5, "m", "cavity extent along x"),
            Param("height", 0.5, 1.5, "m", "cavity extent along y"),
        )
    )
    Config = CavityConfig

    def flow(self, params: jax.Array) -> Flow:
        lid, rho, mu, width, height = (params[i] for i in range(5))
        nx, ny = self.grid
        walls = still_walls(nx, ny, self.dtype)._replace(u_top=jnp.full((nx + 1,), lid, self.dtype))
        return Flow(width / nx, height / ny, mu / rho, walls)

    def density(self, params: jax.Array) -> jax.Array:
        return params[1]

    def speed_and_cells(self, params: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        # The lid speed bounds |u| and |v| in the cavity (Ghia et al. 1982 report |v| <= 0.6 U up to Re 10^4).
        p = np.atleast_2d(params)
        return p[:, 0], p[:, 3] / self.config.nx, p[:, 4] / self.config.ny

    def reynolds(self, params: np.ndarray) -> np.ndarray:
        """``Re = density * lid_velocity * width / viscosity`` of ``(P,)`` or ``(B, P)`` parameters."""
        p = np.asarray(params, np.float64)
        return p[..., 1] * p[..., 0] * p[..., 3] / p[..., 2]
