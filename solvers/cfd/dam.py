"""Flow over a dam: CFDBench's ``dam`` problem, single-phase (Luo et al. 2023, arXiv:2310.05963).

A channel ``length x height`` (config; CFDBench's 1.5 m x 0.4 m) with no-slip walls at the bottom
and top, an inlet at ``x = 0`` (uniform or parabolic, mean ``inlet_velocity``) and an outflow at
``x = length``. A rectangular obstacle of ``obstacle_height x obstacle_width`` stands on the bottom
wall from ``x = obstacle_x`` (config; CFDBench's 0.5 m). CFDBench's dam is a two-phase (VOF)
water/air flow with gravity; this one is single-phase by design.

The obstacle is a cell mask (:mod:`solvers.cfd.obstacles`): a cell is solid when its centre lies
inside the rectangle, so its edges snap to the nearest cell faces (an error of at most half a cell
in the obstacle's size). Its surfaces then lie on cell faces, where no-slip is second-order accurate.
The pressure and viscous solves use conjugate gradients preconditioned by the fast solver.

Parameters: ``inlet_velocity`` (mean, m/s), ``density`` (kg/m^3), ``viscosity`` (Pa s),
``obstacle_height`` and ``obstacle_width`` (m). CFDBench's ranges reach Re ~ 1e4; the defaults keep
``Re = density * inlet_velocity * height / viscosity`` in about [2, 300]. Outputs ``u``, ``v``
(m/s), ``p`` (Pa) on the cell centres; velocities are zero and pressure meaningless in the obstacle
(see :meth:`mask` and the ``to_cfdbench`` mask channel).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from solvers.cfd.boundaries import OUTFLOW, Sides, still_walls
from solvers.cfd.navier_stokes import Flow
from solvers.cfd.problem import MACSolver
from solvers.cfd.tube import PROFILES, inlet_profile
from solvers.errors import SolverError
from solvers.params import Param, ParamSpace

# Bound of max|u| / inlet_velocity for the CFL check: the flow through the gap above the obstacle is
# faster by height / (height - obstacle_height); a factor 2 covers the profile's peak and overshoots.
SPEED_FACTOR = 2.0


@dataclass(frozen=True)
class DamConfig:
    """nx, ny: cells along and across; dt: time step (s); length, height: channel size (m);
    obstacle_x: upstream face of the obstacle (m); profile: inlet profile; theta, cfl_max: as cavity."""

    nx: int = 120
    ny: int = 32
    dt: float = 2e-3
    length: float = 1.5
    height: float = 0.4
    obstacle_x: float = 0.5
    profile: str = "uniform"
    theta: float = 0.5
    cfl_max: float = 1.0
    dtype: str = "float32"


class Dam(MACSolver):
    """2D channel flow over a rectangular obstacle on the bottom wall (mask), on a MAC grid."""

    name = "dam"
    sides = Sides(right=OUTFLOW)
    param_space = ParamSpace(
        (
            Param("inlet_velocity", 0.1, 0.5, "m/s", "mean inflow velocity"),
            Param("density", 0.5, 1.5, "kg/m^3", "fluid density"),
            Param("viscosity", 1e-3, 1e-2, "Pa s", "dynamic viscosity", log=True),
            Param("obstacle_height", 0.05, 0.2, "m", "height of the obstacle on the bottom wall"),
            Param("obstacle_width", 0.025, 0.1, "m", "streamwise width of the obstacle"),
        )
    )
    Config = DamConfig

    def __init__(self, **overrides: object) -> None:
        super().__init__(**overrides)
        c = self.config
        if c.profile not in PROFILES:
            raise SolverError(f"dam: profile must be one of {', '.join(PROFILES)}, got {c.profile!r}")
        if not (c.length > 0 and c.height > 0):
            raise SolverError(f"dam: length and height must be > 0, got {c.length}, {c.height}")
        hmax, wmax = (p.high for p in self.param_space.params[3:5])
        if not (0 < c.obstacle_x and c.obstacle_x + wmax < c.length and hmax < c.height):
            raise SolverError(
                f"dam: the largest obstacle ({hmax} x {wmax} m at x = {c.obstacle_x}) must fit in the "
                f"{c.length} x {c.height} m channel; change length, height or obstacle_x"
            )

    def fluid(self, params: jax.Array) -> jax.Array:
        """Cell mask ``(nx, ny)``: 0 where the cell centre is inside the obstacle, else 1."""
        nx, ny = self.grid
        c = self.config
        x = (jnp.arange(nx, dtype=self.dtype) + 0.5) * (c.length / nx)
        y = (jnp.arange(ny, dtype=self.dtype) + 0.5) * (c.height / ny)
        inside_x = (x >= c.obstacle_x) & (x <= c.obstacle_x + params[4])
        solid = inside_x[:, None] & (y <= params[3])[None, :]
        return jnp.where(solid, 0.0, 1.0).astype(self.dtype)

    def flow(self, params: jax.Array) -> Flow:
        nx, ny = self.grid
        walls = still_walls(nx, ny, self.dtype)._replace(
            u_left=inlet_profile(self.config.profile, ny, params[0], self.dtype)
        )
        return Flow(
            jnp.asarray(self.config.length / nx, self.dtype),
            jnp.asarray(self.config.height / ny, self.dtype),
            params[2] / params[1],
            walls,
            self.fluid(params),
        )

    def density(self, params: jax.Array) -> jax.Array:
        return params[1]

    def speed_and_cells(self, params: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        p = np.atleast_2d(params)
        c = self.config
        speed = SPEED_FACTOR * p[:, 0] * c.height / (c.height - p[:, 3])
        ones = np.ones(len(p))
        return speed, ones * c.length / c.nx, ones * c.height / c.ny

    def mask(self, params: Any = None) -> np.ndarray:
        """``(nx, ny)`` fluid mask of ``params`` (default: the middle of the parameter space)."""
        if params is None:
            params = (self.param_space.low + self.param_space.high) / 2
        return np.asarray(self.fluid(jnp.asarray(params, self.dtype)))

    def reynolds(self, params: np.ndarray) -> np.ndarray:
        """``Re = density * inlet_velocity * height / viscosity`` (channel height)."""
        p = np.asarray(params, np.float64)
        return p[..., 1] * p[..., 0] * self.config.height / p[..., 2]
