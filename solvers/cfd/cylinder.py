"""Channel flow past a circular cylinder: CFDBench's ``cylinder`` problem and Schafer & Turek's benchmark.

Geometry and inflow default to the DFG benchmark of Schafer & Turek (1996, Notes Numer. Fluid Mech.
52, 547-566): a ``2.2 x 0.41`` m channel, no-slip walls at ``y = 0`` and ``y = 0.41``, parabolic
inflow ``u(0, y) = 6 U y (H - y) / H^2`` of mean ``U`` (``U_max = 1.5 U``), an outflow at ``x = 2.2``
(zero normal velocity derivative, zero pressure), and a cylinder of ``diameter`` at
(``center_x``, ``center_y``). The benchmark cases are ``D = 0.1`` at ``(0.2, 0.2)`` with density 1 and
viscosity 1e-3: 2D-1 has ``U = 0.2`` (Re = 20, steady), 2D-2 ``U = 1`` (Re = 100, periodic shedding).

The cylinder is a cell mask (:mod:`solvers.cfd.obstacles`). ``boundary`` picks how much of the
true circle the scheme sees (``benchmarks.validation.validate_cylinder`` reports the errors):

- ``"cut"``: velocities live on every face whose centre is outside the circle and the projection
  balances the fluxes ``aperture * velocity`` (:func:`~solvers.cfd.immersed.circle_apertures`), so
  the pressure sees the circle; the viscous operator puts no-slip on the circle. Cells with no open
  face are solid. Conjugate gradients need 9 pressure iterations per stage instead of 8 (333 x 62).
- ``"interpolated"``: cells whose centre lies inside the circle are solid, so the projection sees
  that staircase; the viscous operator puts no-slip on the true circle (:mod:`solvers.cfd.immersed`).
- ``"staircase"``: the same mask, no-slip on the cell faces, a first-order geometric error.

Where the circle sits in its cells matters most for the lift: at Re = 100 on 62 cells
across (centre 0.24 cells off a face line) the staircase projection biases ``cl_max`` to 0.822,
cut faces give 1.050 (reference 0.99-1.01); the steady lift at Re = 20, 0.2% of the drag, still
varies by about +-50% between grids with either. ``"cut"`` fails on 220 x 41 (10 cells per
diameter, the circle through cell corners: 2D-2 ``cd_max`` +23%) but beats ``"interpolated"`` from
50 cells across (``benchmarks.validation.validate_cylinder`` lists the measurements). Forces come
from a control-volume momentum balance (:func:`force`).

Parameters: ``inlet_velocity`` (mean, m/s), ``density`` (kg/m^3), ``viscosity`` (Pa s), ``diameter``
(m), ``center_x``, ``center_y`` (m). ``Re = density * inlet_velocity * diameter / viscosity`` spans
about [0.5, 700]. Outputs ``u``, ``v`` (m/s), ``p`` (Pa) on the cell centres.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from solvers.cfd.boundaries import OUTFLOW, Sides, still_walls
from solvers.cfd.forces import box_force
from solvers.cfd.immersed import circle_apertures, circle_fractions, close_dead_ends
from solvers.cfd.navier_stokes import Flow
from solvers.cfd.problem import MACSolver
from solvers.cfd.tube import inlet_profile
from solvers.errors import SolverError
from solvers.params import Param, ParamSpace

# Bound of max|u| / inlet_velocity for the CFL check: 1.5 at the inflow's peak, about 2 U_max beside
# the cylinder (blockage and the potential-flow speed-up), so 3 with a little margin.
SPEED_FACTOR = 3.0
BOUNDARIES = ("cut", "interpolated", "staircase")


@dataclass(frozen=True)
class CylinderConfig:
    """nx, ny: cells along and across; dt: time step (s); length, height: channel size (m);
    boundary: ``"cut"`` (cut faces, no-slip on the circle), ``"interpolated"`` (no-slip on the circle,
    staircase projection) or ``"staircase"`` (no-slip on the cell faces), see the module docstring;
    theta, cfl_max: as cavity."""

    nx: int = 220
    ny: int = 41
    dt: float = 1e-3
    length: float = 2.2
    height: float = 0.41
    boundary: str = "interpolated"
    theta: float = 0.5
    cfl_max: float = 1.0
    dtype: str = "float32"


class Cylinder(MACSolver):
    """2D channel flow past a circular cylinder (staircase mask) on a MAC grid."""

    name = "cylinder"
    sides = Sides(right=OUTFLOW)
    param_space = ParamSpace(
        (
            Param("inlet_velocity", 0.1, 1.5, "m/s", "mean inflow velocity (parabolic profile)"),
            Param("density", 0.5, 1.5, "kg/m^3", "fluid density"),
            Param("viscosity", 5e-4, 5e-3, "Pa s", "dynamic viscosity", log=True),
            Param("diameter", 0.05, 0.12, "m", "cylinder diameter"),
            Param("center_x", 0.15, 0.5, "m", "x of the cylinder's centre"),
            Param("center_y", 0.16, 0.25, "m", "y of the cylinder's centre"),
        )
    )
    Config = CylinderConfig

    def __init__(self, **overrides: object) -> None:
        super().__init__(**overrides)
        c = self.config
        if c.boundary not in BOUNDARIES:
            raise SolverError(f"cylinder: boundary must be one of {', '.join(BOUNDARIES)}, got {c.boundary!r}")
        lo, hi = self.param_space.low, self.param_space.high
        if not (
            lo[4] - hi[3] / 2 > 0 and hi[4] + 2 * hi[3] < c.length and lo[5] - hi[3] > 0 and hi[5] + hi[3] < c.height
        ):
            raise SolverError(
                f"cylinder: the parameter ranges put cylinders (and their force boxes) outside the "
                f"{c.length} x {c.height} m channel; enlarge length or height"
            )

    def fluid(self, params: jax.Array) -> jax.Array:
        """Cell mask ``(nx, ny)``: 0 where the cell centre is inside the cylinder, else 1 (``"cut"``: 0
        where no face of the cell is open, i.e. all four face centres are inside)."""
        if self.config.boundary == "cut":
            au, av = self._apertures(params)
            return jnp.where(au[1:] + au[:-1] + av[:, 1:] + av[:, :-1] > 0, 1.0, 0.0).astype(self.dtype)
        x, y = self._centres()
        r2 = (x[:, None] - params[4]) ** 2 + (y[None, :] - params[5]) ** 2
        return jnp.where(r2 <= (params[3] / 2) ** 2, 0.0, 1.0).astype(self.dtype)

    def _apertures(self, params: jax.Array) -> tuple[jax.Array, jax.Array]:
        nx, ny = self.grid
        dx, dy = self.config.length / nx, self.config.height / ny
        return close_dead_ends(*circle_apertures(nx, ny, dx, dy, params[4], params[5], params[3] / 2, self.dtype))

    def _centres(self) -> tuple[jax.Array, jax.Array]:
        nx, ny = self.grid
        x = (jnp.arange(nx, dtype=self.dtype) + 0.5) * (self.config.length / nx)
        y = (jnp.arange(ny, dtype=self.dtype) + 0.5) * (self.config.height / ny)
        return x, y

    def flow(self, params: jax.Array) -> Flow:
        nx, ny = self.grid
        walls = still_walls(nx, ny, self.dtype)._replace(u_left=inlet_profile("parabolic", ny, params[0], self.dtype))
        dx = jnp.asarray(self.config.length / nx, self.dtype)
        dy = jnp.asarray(self.config.height / ny, self.dtype)
        fractions = apertures = None
        if self.config.boundary != "staircase":
            fractions = circle_fractions(nx, ny, dx, dy, params[4], params[5], params[3] / 2, self.dtype)
        if self.config.boundary == "cut":
            apertures = self._apertures(params)
        return Flow(dx, dy, params[2] / params[1], walls, self.fluid(params), fractions, apertures)

    def density(self, params: jax.Array) -> jax.Array:
        return params[1]

    def speed_and_cells(self, params: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        p = np.atleast_2d(params)
        ones = np.ones(len(p))
        return (
            SPEED_FACTOR * p[:, 0],
            ones * self.config.length / self.config.nx,
            ones * self.config.height / self.config.ny,
        )

    def mask(self, params: Any = None) -> np.ndarray:
        """``(nx, ny)`` fluid mask of ``params`` (default: the middle of the parameter space)."""
        if params is None:
            params = (self.param_space.low + self.param_space.high) / 2
        return np.asarray(self.fluid(jnp.asarray(params, self.dtype)))

    def force_box(self, params: np.ndarray) -> tuple[int, int, int, int]:
        """Cell index box ``(i0, i1, j0, j1)`` for :func:`force`: the cylinder plus half a diameter each side."""
        c = self.config
        d, xc, yc = (float(params[i]) for i in (3, 4, 5))
        hx, hy = c.length / c.nx, c.height / c.ny
        return (
            int(np.floor((xc - d) / hx)),
            int(np.ceil((xc + d) / hx)),
            int(np.floor((yc - d) / hy)),
            int(np.ceil((yc + d) / hy)),
        )

    def force(self, state: dict, previous: dict | None, params: jax.Array, box: tuple[int, int, int, int]) -> jax.Array:
        """``(2,)`` drag and lift force (N/m) on the cylinder; ``previous``: the state one step earlier
        (for the unsteady term; ``None`` for a steady flow). ``box`` from :meth:`force_box`."""
        flow = self.flow(jnp.asarray(params, self.dtype))
        if previous is None:
            dudt, dvdt = jnp.zeros_like(state["u"]), jnp.zeros_like(state["v"])
        else:
            dudt = (state["u"] - previous["u"]) / self.dt
            dvdt = (state["v"] - previous["v"]) / self.dt
        return box_force(state["u"], state["v"], state["p"], dudt, dvdt, flow, self.sides, box, state["rho"])

    def reynolds(self, params: np.ndarray) -> np.ndarray:
        """``Re = density * inlet_velocity * diameter / viscosity``."""
        p = np.asarray(params, np.float64)
        return p[..., 1] * p[..., 0] * p[..., 3] / p[..., 2]
