"""The advective CFL check: refuse a time step that the explicit advection cannot take.

For central differences the advection operator's eigenvalues lie on the imaginary axis with
modulus at most ``|u|/dx + |v|/dy``; three-stage third-order Runge-Kutta is stable there up to
``sqrt(3)`` (e.g. Hairer & Wanner, Solving ODEs II, sec. IV.2). The check bounds the velocity by a
per-problem estimate from the parameters (lid or inlet speed times a factor), so it runs on the host
before a rollout and never inside jitted code.
"""

from __future__ import annotations

import numpy as np

from solvers.errors import SolverError

RK3_IMAGINARY_LIMIT = float(np.sqrt(3.0))


def cfl_number(speed: np.ndarray, dt: float, dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """``dt * speed * (1/dx + 1/dy)`` for a velocity bound ``speed`` (m/s) and cell sizes (m); any shape."""
    return dt * np.asarray(speed) * (1.0 / np.asarray(dx) + 1.0 / np.asarray(dy))


def check_cfl(
    solver: str,
    dt: float,
    speed: np.ndarray,
    dx: np.ndarray,
    dy: np.ndarray,
    limit: float,
    params: np.ndarray,
    names: tuple[str, ...],
) -> None:
    """Raise :class:`SolverError` naming the worst parameter vector if its CFL number exceeds ``limit``.

    ``speed``, ``dx``, ``dy`` are ``(B,)`` (one per parameter vector in ``params`` ``(B, P)``).
    """
    cfl = np.atleast_1d(cfl_number(speed, dt, dx, dy))
    i = int(np.argmax(cfl))
    if cfl[i] > limit:
        rows = np.atleast_2d(params)
        vals = ", ".join(f"{n}={v:g}" for n, v in zip(names, rows[i], strict=True))
        dt_max = dt * limit / cfl[i]
        raise SolverError(
            f"{solver}: dt={dt:g} s is unstable: CFL number {cfl[i]:.3g} > cfl_max={limit:g} for {vals} "
            f"(cells {float(np.atleast_1d(dx)[i]):.3g} x {float(np.atleast_1d(dy)[i]):.3g} m); "
            f"use dt <= {dt_max:.3g} s, a coarser grid, or slower flows"
        )
