"""Incompressible 2D Navier-Stokes on staggered (MAC) grids, and the walled-flow problems of CFDBench.

Building blocks (each a small pure function, composed by :func:`make_step`):

- :mod:`~solvers.cfd.boundaries`: grid layout, wall/inflow/outflow conditions and ghost values;
- :mod:`~solvers.cfd.operators`: divergence, gradient, Laplacian, advection;
- :mod:`~solvers.cfd.fast_diag`: direct Poisson/Helmholtz solves by fast diagonalisation;
- :mod:`~solvers.cfd.navier_stokes`: projection and the RK3 / Crank-Nicolson step;
- :mod:`~solvers.cfd.obstacles`: solid cell masks, masked operators, preconditioned CG;
- :mod:`~solvers.cfd.immersed`: no-slip on a curved surface (wall distances for the viscous operator);
- :mod:`~solvers.cfd.forces`: control-volume force on an obstacle;
- :mod:`~solvers.cfd.cfl`: the CFL check that refuses an unstable ``dt``;
- :mod:`~solvers.cfd.resample`: CFDBench's 64 x 64 ``(u, v, mask)`` samples.

Problems (solver contract of :mod:`solvers.base`, shared parts in :mod:`~solvers.cfd.problem`):
:class:`~solvers.cfd.cavity.Cavity`, :class:`~solvers.cfd.tube.Tube`, :class:`~solvers.cfd.dam.Dam`,
:class:`~solvers.cfd.cylinder.Cylinder`.
"""

from solvers.cfd.boundaries import OUTFLOW, WALL, Sides, WallVelocity, still_walls
from solvers.cfd.navier_stokes import Flow, FlowState, make_solvers, make_step, project, rest

__all__ = [
    "OUTFLOW",
    "WALL",
    "Flow",
    "FlowState",
    "Sides",
    "WallVelocity",
    "make_solvers",
    "make_step",
    "project",
    "rest",
    "still_walls",
]
