"""Shared machinery of the walled-flow solvers: config checks, state, fields, CFL check, 64x64 samples.

A concrete problem (cavity, tube, ...) gives its :class:`~solvers.cfd.boundaries.Sides`, maps a
parameter vector to a :class:`~solvers.cfd.navier_stokes.Flow` (cell sizes, viscosity, wall
velocities; jit-able) and to a host-side velocity bound for the CFL check. The grid has a fixed
number of cells; geometry parameters (width, height, length) change the cell size, so batches of
different geometries share one grid and one set of fast-diagonalisation factors.

State: ``{"u": (nx + 1, ny), "v": (nx, ny + 1), "p": (nx, ny), "rho": ()}`` with ``p`` the kinematic
pressure (m^2/s^2). Output channels ``u``, ``v`` (m/s) and ``p`` (Pa) on the ``nx x ny`` cell centres.
"""

from __future__ import annotations

from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from solvers.base import Solver
from solvers.cfd.boundaries import Sides
from solvers.cfd.cfl import RK3_IMAGINARY_LIMIT, cfl_number, check_cfl
from solvers.cfd.navier_stokes import Flow, FlowState, make_solvers, make_step, rest
from solvers.cfd.operators import centred
from solvers.cfd.resample import CFDBENCH_SHAPE, cfdbench_sample
from solvers.errors import SolverError


class MACSolver(Solver):
    """Base class of the incompressible-flow solvers on a rectangle (see the module docstring)."""

    channels = ("u", "v", "p")
    sides: ClassVar[Sides] = Sides()

    def __init__(self, **overrides: Any) -> None:
        super().__init__(**overrides)
        c = self.config
        for key in ("nx", "ny"):
            n = getattr(c, key)
            if not 4 <= n <= 4096:
                raise SolverError(f"{self.name}: {key}={n} cells is not supported; use 4 <= {key} <= 4096")
        if not c.dt > 0:
            raise SolverError(f"{self.name}: dt must be > 0, got dt={c.dt}")
        if not 0.5 <= c.theta <= 1.0:
            raise SolverError(
                f"{self.name}: theta={c.theta} must be in [0.5, 1] (0.5 Crank-Nicolson, 1 backward Euler)"
            )
        if not 0 < c.cfl_max <= RK3_IMAGINARY_LIMIT:
            raise SolverError(
                f"{self.name}: cfl_max={c.cfl_max} must be in (0, {RK3_IMAGINARY_LIMIT:.3f}] "
                "(the RK3 stability limit for central advection)"
            )
        self._solvers = make_solvers(c.nx, c.ny, self.sides, self.dtype)
        self._step = make_step(self.sides, self._solvers, c.dt, theta=c.theta)

    # --- per problem -----------------------------------------------------------------------
    def flow(self, params: jax.Array) -> Flow:
        """The :class:`Flow` (cell sizes, viscosity, wall velocities) of one parameter vector; jit-able."""
        raise NotImplementedError

    def density(self, params: jax.Array) -> jax.Array:
        """Density (kg/m^3) of one parameter vector."""
        raise NotImplementedError

    def speed_and_cells(self, params: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Host-side bound of the flow speed (m/s) and the cell sizes ``dx``, ``dy`` (m), each ``(B,)``."""
        raise NotImplementedError

    # --- contract --------------------------------------------------------------------------
    @property
    def grid(self) -> tuple[int, ...]:
        return (self.config.nx, self.config.ny)

    def coords(self) -> dict[str, np.ndarray]:
        """Cell-centre coordinates as fractions of the domain's length and width (geometry is a parameter)."""
        nx, ny = self.grid
        return {"x": (np.arange(nx) + 0.5) / nx, "y": (np.arange(ny) + 0.5) / ny}

    def initial_state(self, key: jax.Array, params: jax.Array) -> dict[str, jax.Array]:
        """Fluid at rest with the boundary velocities switched on at ``t = 0`` (``key`` is unused)."""
        p = jnp.asarray(params, self.dtype)
        s = rest(self.config.nx, self.config.ny, self.flow(p), self.sides, self.dtype)
        return {"u": s.u, "v": s.v, "p": s.p, "rho": self.density(p)}

    def step(self, state: dict[str, jax.Array], params: jax.Array) -> dict[str, jax.Array]:
        s = self._step(FlowState(state["u"], state["v"], state["p"]), self.flow(jnp.asarray(params, self.dtype)))
        return {**state, "u": s.u, "v": s.v, "p": s.p}

    def fields(self, state: dict[str, jax.Array]) -> jax.Array:
        """``(3, nx, ny)``: ``u``, ``v`` (m/s) and ``p`` (Pa) on the cell centres."""
        uc, vc = centred(state["u"], state["v"])
        return jnp.stack([uc, vc, state["rho"] * state["p"]]).astype(self.dtype)

    def mask(self, params: Any = None) -> np.ndarray:
        """``(nx, ny)``: 1 in the fluid, 0 in obstacles (all fluid unless a problem has obstacles)."""
        return np.ones(self.grid, np.float32)

    def boundary(self, params: jax.Array) -> tuple[np.ndarray, jax.Array]:
        """Obstacle cells: ``u``, ``v`` and ``p`` are exactly 0 there in every frame (no-slip faces all round,
        no pressure unknown). The walls lie on cell faces, outside the output grid, so a problem without
        obstacles imposes nothing. ``mask`` bool ``(3, nx, ny)``, ``values`` zeros ``(3, nx, ny)``."""
        solid = np.asarray(self.mask(np.asarray(params))) == 0
        return np.broadcast_to(solid, (len(self.channels), *self.grid)).copy(), jnp.zeros(
            (len(self.channels), *self.grid), self.dtype)

    def to_cfdbench(self, frames: jax.Array, params: Any = None, shape: tuple[int, int] = CFDBENCH_SHAPE) -> jax.Array:
        """``(..., 3, nx, ny)`` frames of one simulation -> ``(..., 3, 64, 64)`` ``(u, v, mask)``.

        CFDBench's sample format. Where the geometry is a parameter, ``params`` ``(P,)`` fixes the
        obstacle mask, or ``(B, P)`` one per simulation for frames ``(B, ...)`` (default: the middle of
        the parameter space).
        """
        if frames.shape[-3:] != (3, *self.grid):
            raise SolverError(
                f"{self.name}: frames must be (..., 3, {self.grid[0]}, {self.grid[1]}), got {frames.shape}"
            )
        if params is not None and np.ndim(params) == 2:
            mask = np.stack([self.mask(row) for row in np.asarray(params)])
        else:
            mask = self.mask(params)
        return cfdbench_sample(frames, jnp.asarray(mask, frames.dtype), shape)

    # --- CFL -------------------------------------------------------------------------------
    def cfl(self, params: Any) -> np.ndarray:
        """CFL numbers ``(B,)`` (or ``(1,)``) of parameter vectors with this solver's ``dt``."""
        rows = np.atleast_2d(self.param_space.validate(params))
        speed, dx, dy = self.speed_and_cells(rows)
        return cfl_number(speed, self.config.dt, dx, dy)

    def max_stable_dt(self, params: Any) -> float:
        """The largest ``dt`` (s) that passes the CFL check for all of ``params`` ``(P,)`` or ``(B, P)``."""
        return float(self.config.dt * self.config.cfl_max / np.max(self.cfl(params)))

    def check_cfl(self, params: Any) -> None:
        """Raise :class:`SolverError` if ``dt`` is unstable for any of ``params`` (see :mod:`solvers.cfd.cfl`)."""
        rows = np.atleast_2d(self.param_space.validate(params))
        speed, dx, dy = self.speed_and_cells(rows)
        check_cfl(self.name, self.config.dt, speed, dx, dy, self.config.cfl_max, rows, self.param_space.names)

    def rollout(self, key: jax.Array, params: Any, n_steps: int, every: int = 1) -> jax.Array:
        """As :meth:`Solver.rollout`, after refusing an unstable ``dt`` with a :class:`SolverError`."""
        self.check_cfl(params)
        return super().rollout(key, params, n_steps, every)
