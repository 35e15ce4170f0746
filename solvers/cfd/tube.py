"""Channel ("tube") flow: CFDBench's ``tube`` problem, single-phase (Luo et al. 2023, arXiv:2310.05963).

A straight 2D channel ``length x width`` (x along the channel, y across), no-slip walls at
``y = 0`` and ``y = width``, an inlet at ``x = 0`` and an outflow at ``x = length`` (zero normal
derivative of the velocity, zero pressure). The fluid starts at rest; at ``t = 0`` the inflow
switches on with mean velocity ``inlet_velocity`` and the flow develops towards Poiseuille's
parabola ``u = 6 U y (W - y) / W^2`` with pressure gradient ``dp/dx = -12 mu U / W^2``.

Inlet profile (config ``profile``): ``"uniform"`` (CFDBench's velocity inlet) or ``"parabolic"``
(the developed profile; then the steady state is Poiseuille flow everywhere).

Parameters: ``inlet_velocity`` (mean, m/s), ``density`` (kg/m^3), ``viscosity`` (Pa s), ``width``
(channel width, m), ``length`` (m). CFDBench's ranges reach Re ~ 1e5; the defaults here keep
``Re = density * inlet_velocity * width / viscosity`` in about [5, 450] at unit scale.
Outputs ``u``, ``v`` (m/s), ``p`` (Pa) on the ``nx x ny`` cell centres.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from solvers.cfd.boundaries import OUTFLOW, Sides, still_walls
from solvers.cfd.navier_stokes import Flow
from solvers.cfd.problem import MACSolver
from solvers.errors import SolverError
from solvers.params import Param, ParamSpace

PROFILES = ("uniform", "parabolic")

# Bound of max|u| / inlet_velocity used by the CFL check: the developed centreline speed is 1.5,
# and the entrance overshoots of a uniform inflow stay below 2 at these Reynolds numbers.
SPEED_FACTOR = 2.0


def inlet_profile(kind: str, ny: int, mean: jax.Array, dtype: jnp.dtype = jnp.float32) -> jax.Array:
    """Inflow ``u`` ``(ny,)`` (m/s) at the cell-centre heights for a mean velocity ``mean``."""
    eta = (jnp.arange(ny, dtype=dtype) + 0.5) / ny
    shape = jnp.ones_like(eta) if kind == "uniform" else 6.0 * eta * (1.0 - eta)
    return mean * shape


@dataclass(frozen=True)
class TubeConfig:
    """nx, ny: cells along and across the channel; dt: time step (s); profile: inlet profile
    (``uniform``/``parabolic``); theta: implicit weight of diffusion; cfl_max: CFL limit."""

    nx: int = 128
    ny: int = 32
    dt: float = 2.5e-3
    profile: str = "uniform"
    theta: float = 0.5
    cfl_max: float = 1.0
    dtype: str = "float32"


class Tube(MACSolver):
    """2D channel flow with an inlet profile and an outflow boundary on a MAC grid."""

    name = "tube"
    sides = Sides(right=OUTFLOW)
    param_space = ParamSpace(
        (
            Param("inlet_velocity", 0.5, 1.5, "m/s", "mean inflow velocity"),
            Param("density", 0.5, 1.5, "kg/m^3", "fluid density"),
            Param("viscosity", 5e-3, 5e-2, "Pa s", "dynamic viscosity", log=True),
            Param("width", 0.5, 1.5, "m", "channel width (y)"),
            Param("length", 2.0, 6.0, "m", "channel length (x)"),
        )
    )
    Config = TubeConfig

    def __init__(self, **overrides: object) -> None:
        super().__init__(**overrides)
        if self.config.profile not in PROFILES:
            raise SolverError(f"tube: profile must be one of {', '.join(PROFILES)}, got {self.config.profile!r}")

    def flow(self, params: jax.Array) -> Flow:
        mean, rho, mu, width, length = (params[i] for i in range(5))
        nx, ny = self.grid
        walls = still_walls(nx, ny, self.dtype)._replace(
            u_left=inlet_profile(self.config.profile, ny, mean, self.dtype)
        )
        return Flow(length / nx, width / ny, mu / rho, walls)

    def density(self, params: jax.Array) -> jax.Array:
        return params[1]

    def speed_and_cells(self, params: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        p = np.atleast_2d(params)
        return SPEED_FACTOR * p[:, 0], p[:, 4] / self.config.nx, p[:, 3] / self.config.ny

    def reynolds(self, params: np.ndarray) -> np.ndarray:
        """``Re = density * inlet_velocity * width / viscosity`` of ``(P,)`` or ``(B, P)`` parameters."""
        p = np.asarray(params, np.float64)
        return p[..., 1] * p[..., 0] * p[..., 3] / p[..., 2]
