"""Validation of the CFD solvers against published reference solutions.

:func:`validate_cylinder` runs Schafer & Turek's (1996) cases 2D-1 (channel flow past a cylinder at
Re = 20, steady: drag and lift coefficients and the pressure difference) and 2D-2 (Re = 100, periodic
shedding: maximum drag and lift coefficients and the Strouhal number) against the benchmark's
intervals.

:func:`validate_cavity` runs the lid-driven cavity (unit square, lid speed 1, density 1, viscosity
``1 / Re``) to a steady state and compares the centreline profiles with Ghia, Ghia & Shin (1982).
The result is a plain, JSON-ready dict: the computed profiles (always, so Reynolds numbers without a
reference can be compared elsewhere), the errors where a reference exists, the run's cost, and
``rows`` for a table.

Note on the reference: Ghia et al.'s 129 x 129 solution is itself about 0.009 off grid-converged
solutions in the Re = 100 ``v`` profile (e.g. ``v_min`` -0.2453 vs -0.2538 on 1024 x 1024, Marchi,
Suero & Araki 2009, J. Braz. Soc. Mech. Sci. Eng. 31, 186-198), so 0.01 is close to the smallest
max-abs error any converged solver can show against it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from scipy.interpolate import CubicSpline

from benchmarks.reference import ghia1982, schaefer_turek1996
from solvers.cfd.cavity import Cavity
from solvers.cfd.cylinder import SPEED_FACTOR, Cylinder
from solvers.cfd.navier_stokes import open_faces
from solvers.cfd.operators import divergence
from solvers.errors import SolverError


def cavity_centerlines(u: np.ndarray, v: np.ndarray, ys: Any, xs: Any) -> tuple[np.ndarray, np.ndarray]:
    """``u`` on ``x = 0.5`` at heights ``ys`` and ``v`` on ``y = 0.5`` at abscissae ``xs`` (unit square, lid 1).

    ``u`` ``(nx + 1, ny)`` and ``v`` ``(nx, ny + 1)`` are MAC face velocities. Cubic splines: first
    across the centreline between faces, then along it through the cell values and the wall values
    (``u = 1`` on the lid, 0 elsewhere).
    """
    u, v = np.asarray(u, np.float64), np.asarray(v, np.float64)
    nx, ny = v.shape[0], u.shape[1]
    xf, yf = np.arange(nx + 1) / nx, np.arange(ny + 1) / ny
    xc, yc = (np.arange(nx) + 0.5) / nx, (np.arange(ny) + 0.5) / ny
    u_mid = CubicSpline(xf, u, axis=0)(0.5)  # (ny,) at the cell-centre heights
    v_mid = CubicSpline(yf, v, axis=1)(0.5)  # (nx,) at the cell-centre abscissae
    u_line = CubicSpline(np.r_[0.0, yc, 1.0], np.r_[0.0, u_mid, 1.0])(np.asarray(ys, np.float64))
    v_line = CubicSpline(np.r_[0.0, xc, 1.0], np.r_[0.0, v_mid, 0.0])(np.asarray(xs, np.float64))
    return u_line, v_line


Monitor = Callable[[float, float], None]  # (simulated time (s), residual (m/s^2) or lift coefficient)

SHEDDING_SPINUP_S, SHEDDING_WINDOW_S = 6.0, 2.0  # 2D-2: from rest into developed shedding, then recorded


def run_to_steady(
    solver: Cavity | Cylinder, params: np.ndarray, *, tol: float, max_time: float, check_every: float = 1.0,
    monitor: Monitor | None = None,
) -> tuple[dict[str, jax.Array], int, float]:
    """Step ``solver`` from rest until ``max|u(t + T) - u(t)| / T < tol`` (m/s^2) or ``max_time`` (s).

    ``T`` is ``check_every`` (s) rounded up to whole steps; ``monitor(t, residual)`` (e.g. a progress
    bar) is called after each check. Returns the final state, the number of steps and the last residual.
    """
    chunk = max(1, int(np.ceil(check_every / solver.dt)))
    p = jnp.asarray(params, solver.dtype)
    advance = jax.jit(lambda s: jax.lax.fori_loop(0, chunk, lambda i, z: solver.step(z, p), s))
    state = solver.initial_state(jax.random.key(0), p)
    steps, residual = 0, float("inf")
    max_steps = int(np.ceil(max_time / solver.dt))
    while steps < max_steps:
        new = advance(state)
        steps += chunk
        du = jnp.maximum(jnp.max(jnp.abs(new["u"] - state["u"])), jnp.max(jnp.abs(new["v"] - state["v"])))
        residual = float(du) / (chunk * solver.dt)
        state = new
        if monitor is not None:
            monitor(steps * solver.dt, residual)
        if not np.isfinite(residual):
            raise SolverError(f"{solver.name}: the run blew up after {steps} steps; lower the CFL number")
        if residual < tol:
            break
    return state, steps, residual


def validate_cavity(
    re: float,
    grid: int = 64,
    *,
    cfl: float = 0.8,
    tol: float | None = None,
    max_time: float | None = None,
    dtype: str = "float32",
    monitor: Monitor | None = None,
) -> dict[str, Any]:
    """Run the unit lid-driven cavity at Reynolds number ``re`` on ``grid x grid`` cells to steady state.

    Args:
        re: Reynolds number ``U L / nu`` (any value; Ghia's tables exist for 100, 400, 1000).
        grid: cells per side.
        cfl: CFL number ``dt (1/dx + 1/dy)`` of the run (<= sqrt(3)).
        tol: steady-state tolerance on ``max |du/dt|`` in lid units, averaged over one time unit
            (default 3e-5 in float32, just above its round-off floor on 128 x 128 at Re = 1000, and
            1e-6 in float64).
        max_time: give up after this many lid time units (default ``60 + 0.1 re``).
        dtype: ``"float32"`` or ``"float64"`` (the latter needs 64-bit JAX).
        monitor: called with (time, residual) after each steady-state check (:func:`run_to_steady`).

    Returns:
        A JSON-ready dict: ``problem``, ``re``, ``grid``, ``dtype``, ``dt``, ``steps``, ``time``,
        ``wall_time_s``, ``converged``, ``residual``, ``tolerance``, ``max_divergence`` (1/s),
        ``u_centerline`` and ``v_centerline`` (lists of ``[coordinate, value]`` at Ghia's points),
        ``reference`` (citation or None); where a reference exists also ``u_max_abs_error``,
        ``v_max_abs_error`` and ``max_abs_error``; ``rows``: one dict per point with ``profile``,
        ``coordinate``, ``computed``, ``reference`` (or None) and ``error`` (or None), and
        ``suspect: True`` on the one reference value believed misprinted (Re = 400, v at x = 0.9063;
        see :mod:`benchmarks.reference.ghia1982`), which the error summaries leave out.
    """
    if not re > 0:
        raise SolverError(f"Reynolds number must be > 0, got {re}")
    if grid < 8:
        raise SolverError(f"grid={grid} is too coarse for the cavity; use grid >= 8")
    dt = cfl / (2.0 * grid)  # lid speed 1: CFL = dt (1/dx + 1/dy) = 2 grid dt
    solver = Cavity(nx=grid, ny=grid, dt=dt, cfl_max=max(cfl, 1e-6), dtype=dtype)
    params = np.array([1.0, 1.0, 1.0 / re, 1.0, 1.0])
    max_time = 60.0 + 0.1 * re if max_time is None else max_time
    tol = (3e-5 if dtype == "float32" else 1e-6) if tol is None else tol
    t0 = time.perf_counter()
    state, steps, residual = run_to_steady(solver, params, tol=tol, max_time=max_time, monitor=monitor)
    wall = time.perf_counter() - t0

    flow = solver.flow(jnp.asarray(params, solver.dtype))
    max_div = float(jnp.abs(divergence(state["u"], state["v"], flow.dx, flow.dy)).max())
    u_line, v_line = cavity_centerlines(np.asarray(state["u"]), np.asarray(state["v"]), ghia1982.Y, ghia1982.X)
    ref = ghia1982.reference(re)
    out: dict[str, Any] = {
        "problem": "cavity",
        "re": float(re),
        "grid": [grid, grid],
        "dtype": dtype,
        "dt": dt,
        "steps": steps,
        "time": steps * dt,
        "wall_time_s": wall,
        "converged": bool(residual < tol),
        "tolerance": tol,
        "max_divergence": max_div,
        "residual": residual,
        "u_centerline": [[float(y), float(u)] for y, u in zip(ghia1982.Y, u_line, strict=True)],
        "v_centerline": [[float(x), float(v)] for x, v in zip(ghia1982.X, v_line, strict=True)],
        "reference": "Ghia, Ghia & Shin (1982), J. Comput. Phys. 48, 387-411" if ref else None,
    }
    rows = []
    errors = {}
    for name, line, coords, ref_line in (
        ("u(y) at x=0.5", u_line, ghia1982.Y, ref[0] if ref else None),
        ("v(x) at y=0.5", v_line, ghia1982.X, ref[1] if ref else None),
    ):
        errs = []
        suspect = ghia1982.SUSPECT_V.get(int(round(re)), ()) if name.startswith("v") and ref else ()
        for i, (c, val) in enumerate(zip(coords, line, strict=True)):
            r = ref_line[i][1] if ref_line else None
            e = abs(float(val) - r) if r is not None else None
            if i not in suspect:
                errs.append(e)
            row = {"profile": name, "coordinate": float(c), "computed": float(val), "reference": r, "error": e}
            rows.append(row | {"suspect": True} if i in suspect else row)
        if ref_line:
            errors[name[0]] = max(errs)
    if ref:
        out["u_max_abs_error"] = errors["u"]
        out["v_max_abs_error"] = errors["v"]
        out["max_abs_error"] = max(errors.values())
    out["rows"] = rows
    return out


def _pressure_at(p: np.ndarray, fluid: np.ndarray, xs: np.ndarray, ys: np.ndarray, x: float, y: float) -> float:
    """``p`` at ``(x, y)`` next to an obstacle: in each of the two rows bracketing ``y``, linear
    extrapolation along x from the two fluid cells nearest ``x`` on the open side; then linear in y."""
    j = int(np.searchsorted(ys, y)) - 1
    values = []
    for jj in (j, j + 1):
        cells = np.flatnonzero(fluid[:, jj] > 0)
        side = cells[xs[cells] <= x] if x < xs[np.flatnonzero(fluid[:, jj] == 0)].mean() else cells[xs[cells] >= x]
        near = side[np.argsort(np.abs(xs[side] - x))[:2]]
        slope = (p[near[1], jj] - p[near[0], jj]) / (xs[near[1]] - xs[near[0]])
        values.append(p[near[0], jj] + slope * (x - xs[near[0]]))
    w = (y - ys[j]) / (ys[j + 1] - ys[j])
    return float((1 - w) * values[0] + w * values[1])


def _row_wall_pressure(
    p_row: np.ndarray, u_row: np.ndarray, open_row: np.ndarray, dx: float, x_wall: float, side: int, nu: float
) -> float:
    """Kinematic pressure (m^2/s^2) where a row of cells meets a cylinder beside a stagnation point on it.

    ``p_row`` ``(nx,)``: the row's cell-centre kinematic pressures; ``u_row`` ``(nx + 1,)``: its face
    velocities (m/s); ``open_row`` ``(nx + 1,)``: 1 on the faces that carry velocity; ``x_wall`` (m):
    where the circle crosses the row; ``side``: -1 at the front (fluid at ``x < x_wall``), +1 at the
    rear; ``nu``: kinematic viscosity (m^2/s). With ``u_f`` on the open face ``x_f`` nearest the wall
    and ``x_m`` halfway between them,

        p_wall = p(x_m) + nu u_f / (x_wall - x_f) + u_f^2 / 8,

    the row's x-momentum ``p_x = nu u_xx - u u_x`` integrated from ``x_m`` to the wall: ``-nu u_x(x_m)``
    with the one-sided slope ``u_x(x_m) = -u_f / (x_wall - x_f)`` (second order at ``x_m``) and
    ``u_x = 0`` on the wall (no slip and continuity at a stagnation point), plus ``u(x_m)^2 / 2`` with
    ``u(x_m) = u_f / 2``; ``v u_y`` (zero on the axis) and ``nu u_yy`` (second order over half a
    cell) are left out. ``p(x_m)``: linear through the two cells nearest the wall. Extrapolating the
    cell pressures instead misses the steep viscous rise over the last half cell (at the front of
    the Re = 20 cylinder with 20 cells per diameter, about 1 % of ``dp``).
    """
    xs, xf = (np.arange(len(p_row)) + 0.5) * dx, np.arange(len(u_row)) * dx
    fluid = np.flatnonzero(side * (xs - x_wall) > 0)
    n = fluid[-1] if side < 0 else fluid[0]  # the fluid cell nearest the wall
    m = n + side
    face = n + 1 if side < 0 else n  # its face towards the wall, or else the one away from it
    if not (open_row[face] > 0 and side * (xf[face] - x_wall) > 0):
        face += side
    if not open_row[face] > 0:
        raise SolverError(f"no open face between the cell at x={xs[n]:.4g} and the wall at x={x_wall:.4g}")
    x_m = (xf[face] + x_wall) / 2
    p_m = p_row[n] + (p_row[n] - p_row[m]) / (xs[n] - xs[m]) * (x_m - xs[n])
    u_f = u_row[face]
    return float(p_m + nu * u_f / (x_wall - xf[face]) + u_f**2 / 8)


def stagnation_pressure(
    p: np.ndarray, u: np.ndarray, open_u: np.ndarray, dx: float, dy: float, center: Any, radius: float,
    side: int, nu: float,
) -> float:
    """Kinematic pressure (m^2/s^2) at a cylinder's front (``side`` -1) or rear (+1) stagnation point
    ``(xc + side * radius, yc)`` on a MAC grid of cells ``dx x dy`` (m).

    ``p`` ``(nx, ny)``: kinematic pressure; ``u`` ``(nx + 1, ny)`` (m/s) and ``open_u`` (1 on faces
    that carry velocity); ``nu`` (m^2/s). Each row whose centre is within 1.5 cells of ``yc`` gives the
    pressure where it meets the circle (:func:`_row_wall_pressure`), at the angle ``asin((y - yc) / R)``
    from the axis; a quadratic in that angle through these three or four values (least squares for
    four) is read at 0. Averaging the two rows beside the axis instead would miss the pressure's
    maximum on the axis by ``(dy / 2)^2`` times its curvature along the surface.
    """
    xc, yc = center
    ys = (np.arange(p.shape[1]) + 0.5) * dy
    rows = np.flatnonzero(np.abs(ys - yc) <= 1.5 * dy * (1 + 1e-9))
    angles = np.arcsin((ys[rows] - yc) / radius)
    walls = xc + side * np.sqrt(radius**2 - (ys[rows] - yc) ** 2)
    values = [
        _row_wall_pressure(p[:, j], u[:, j], open_u[:, j], dx, x, side, nu) for j, x in zip(rows, walls, strict=True)
    ]
    return float(np.polyval(np.polyfit(angles, values, 2), 0.0))


def lift_frequency(t: Any, signal: Any) -> float:
    """Frequency (1/time unit of ``t``) of a periodic ``signal`` ``(T,)`` sampled at times ``t`` ``(T,)``.

    From its upward crossings of its mean (linear interpolation between samples): the mean period
    between the first and the last crossing. Needs at least two whole periods (three crossings).
    """
    t, x = np.asarray(t, np.float64), np.asarray(signal, np.float64)
    if t.ndim != 1 or t.shape != x.shape:
        raise SolverError(f"t and signal must be matching 1D arrays, got {t.shape} and {x.shape}")
    x = x - x.mean()
    up = np.flatnonzero((x[:-1] < 0) & (x[1:] >= 0))
    if len(up) < 3:
        raise SolverError(
            f"the signal crosses its mean upwards {len(up)} times; record at least two whole periods "
            "(a longer window, or a later start if the flow has not begun to oscillate)"
        )
    crossings = t[up] - x[up] * (t[up + 1] - t[up]) / (x[up + 1] - x[up])
    return float((len(crossings) - 1) / (crossings[-1] - crossings[0]))


def force_history(
    solver: Cylinder, state: dict[str, jax.Array], params: np.ndarray, n_steps: int, *,
    segment: int | None = None, monitor: Callable[[int, np.ndarray], None] | None = None,
) -> tuple[dict[str, jax.Array], np.ndarray]:
    """Advance ``n_steps`` and return the final state and the force ``(n_steps, 2)`` (N/m) after each step.

    The unsteady term of the control-volume balance is the backward difference over the step. Runs
    ``segment`` steps per call (default: all at once) with one compile for every segment, the last
    one included; ``monitor(steps_done, forces)`` gets the segment's forces ``(k, 2)`` after each
    (a progress bar; raising in it stops the run).
    """
    p = jnp.asarray(params, solver.dtype)
    box = solver.force_box(params)
    seg = n_steps if segment is None else max(1, min(segment, n_steps))

    def one(carry: tuple[dict[str, jax.Array], jax.Array], i: jax.Array) -> tuple[Any, jax.Array]:
        s, n = carry

        def advance(s: dict[str, jax.Array]) -> tuple[dict[str, jax.Array], jax.Array]:
            new = solver.step(s, p)
            return new, solver.force(new, s, p, box)

        # steps past ``n`` (the last segment's tail) leave the state as it is
        new, f = jax.lax.cond(i < n, advance, lambda s: (s, jnp.zeros(2, solver.dtype)), s)
        return (new, n), f

    run = jax.jit(lambda s, n: jax.lax.scan(one, (s, n), jnp.arange(seg)))
    parts, done = [], 0
    while done < n_steps:
        k = min(seg, n_steps - done)
        (state, _), f = run(state, jnp.asarray(k))
        parts.append(np.asarray(f[:k]))
        done += k
        if monitor is not None:
            monitor(done, parts[-1])
    return state, np.concatenate(parts) if parts else np.zeros((0, 2), solver.dtype)


def _stagnation_dp(solver: Cylinder, state: dict[str, jax.Array], params: np.ndarray) -> float:
    """Kinematic ``p(front) - p(rear)`` (m^2/s^2) at the stagnation points of the cylinder ``params``
    describes (:func:`stagnation_pressure`; Schafer & Turek's ``dp`` is ``p(0.15, 0.2) - p(0.25, 0.2)``)."""
    flow = solver.flow(jnp.asarray(params, solver.dtype))
    p, u = (np.asarray(state[k], np.float64) for k in ("p", "u"))
    open_u = np.asarray(open_faces(flow)[0])
    dx, dy = solver.config.length / solver.config.nx, solver.config.height / solver.config.ny
    nu, radius, center = params[2] / params[1], params[3] / 2, (params[4], params[5])
    front, rear = (stagnation_pressure(p, u, open_u, dx, dy, center, radius, s, nu) for s in (-1, 1))
    return front - rear


def _mask_offset(center: float, h: float) -> float:
    """Distance (cells of size ``h``) from ``center`` to the nearest face or cell-centre line."""
    half_cells = 2 * center / h
    return float(abs(half_cells - round(half_cells)) / 2)


def _compare(case: str, values: dict[str, float]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Reference interval and relative error to its nearest end (0 inside) of each quantity."""
    out, rows = {}, []
    for name, value in values.items():
        lo, hi = schaefer_turek1996.INTERVALS[case][name]
        err = 0.0 if lo <= value <= hi else min(abs(value - lo), abs(value - hi)) / abs(lo if value < lo else hi)
        out[f"{name}_reference"] = [lo, hi]
        out[f"{name}_rel_error"] = err
        rows.append({"quantity": name, "computed": value, "reference_low": lo, "reference_high": hi, "rel_error": err})
    return out, rows


def validate_cylinder(
    case: str = "2D-1",
    grid: int = 41,
    *,
    cfl: float = 0.9,
    tol: float | None = None,
    max_time: float = 30.0,
    spinup: float = SHEDDING_SPINUP_S,
    window: float = SHEDDING_WINDOW_S,
    boundary: str = "interpolated",
    dtype: str = "float32",
    monitor: Monitor | None = None,
) -> dict[str, Any]:
    """Schafer & Turek's case 2D-1 (Re = 20, steady) or 2D-2 (Re = 100, periodic) on
    ``round(grid * 2.2 / 0.41) x grid`` cells (``grid / 4.1`` cells per diameter).

    2D-1 runs to a steady state (``max |du/dt| < tol`` over 0.5 s, default 1e-4 m/s^2, or ``max_time`` s) and reports
    ``cd``, ``cl``, ``dp``; ``dp`` is read at the two stagnation points with the momentum balance over
    the last half cell (:func:`stagnation_pressure`), and ``dp_cells`` is the plain linear
    extrapolation of the cell pressures (:func:`_pressure_at`, the earlier reading), for comparison.
    2D-2 runs ``spinup`` s from rest into developed shedding, then records the drag and lift
    coefficients after every step for ``window`` s (about 3 periods per second; the lift amplitude
    settles within 0.1% by 5 s at 10 cells per diameter) and reports ``cd_max``, ``cl_max`` (maxima
    over the window) and ``strouhal`` (``f D / U`` with ``f`` the lift's frequency,
    :func:`lift_frequency`), with the series ``t``, ``cd_series``, ``cl_series`` and
    ``cl_amplitude_drift`` (relative change of the lift amplitude between the window's halves: small
    once shedding is developed). Both return a JSON-ready dict with the run's cost and, per
    quantity, the reference interval and the relative error to its nearest end (0 inside); ``rows``
    for a table. ``boundary``: the cylinder's no-slip treatment
    (:class:`~solvers.cfd.cylinder.CylinderConfig`). ``monitor(t, value)``: called after each
    steady-state check of 2D-1 (:func:`run_to_steady`) with the residual (m/s^2), and every 0.25 s
    of simulated time of 2D-2 with the lift coefficient.

    ``mask_offset_cells``: distance (cells) of the cylinder's centre from the nearest grid line about
    which the staircase mask is symmetric (a face or a row of cell centres): 0 when ``grid`` is a
    multiple of 41. With ``boundary="interpolated"`` the pressure projection sees that staircase, so
    a nonzero offset biases the unsteady lift (2D-2 at ``grid=62``, offset 0.24, ``cl_max``
    0.822); ``"cut"`` projects onto the circle's face apertures and gives 1.050 there.

    Accuracy (2D-1, float32), ``grid`` 41 / 82 / 123 / 164 with ``"cut"``: ``cd`` 5.642 /
    5.589 / 5.580 / 5.581, ``cl`` 0.0074 / 0.0105 / 0.0106 / 0.01025, ``dp`` 0.1154 / 0.1166 / 0.11705
    / 0.11722 (``dp_cells`` 0.1126 / 0.1154 / 0.1163 / 0.1168): ``dp`` converges at about first
    order (the front pressure's error falls like h^1.3) and is inside from 164 on. In float32 ``cl``
    (0.2% of the drag) wanders by about +-0.00015 between steady-state checks; in float64 it settles:
    0.010459 at 82, 0.010605 at 164, where ``cd`` 5.58101 and ``dp`` 0.117221 make all three inside
    (``dtype="float64"``, benchmarks/RESULTS.md). ``cl`` also moves with where the circle
    cuts the cells (cut at 62 / 100 cells, the centre 0.24 / 0.22 cells off a face line: 0.0144 /
    0.0049; interpolated 0.0085 / 0.0116 / 0.0141 at 62 / 82 / 100). At
    ``grid=41`` (10 cells per diameter, the circle through cell corners) ``"cut"`` is worse than
    ``"interpolated"``: 2D-1 ``cd`` 5.642 (5.595), 2D-2 ``cd_max`` 3.99 and ``cl_max`` 1.44 (3.43,
    0.90); at ``grid=50`` it is better: 2D-2 ``cd_max`` 3.33, ``cl_max`` 1.14, ``strouhal`` 0.295
    (3.43, 1.17, 0.292).
    """
    if case not in schaefer_turek1996.INTERVALS:
        raise SolverError(f"cylinder case {case!r} is unknown; use one of {', '.join(schaefer_turek1996.INTERVALS)}")
    if grid < 20:
        raise SolverError(f"grid={grid} cells across the channel is too coarse; use grid >= 20")
    g = schaefer_turek1996.GEOMETRY
    mean = schaefer_turek1996.MEAN_VELOCITY[case]
    ny = grid
    nx = int(round(grid * g["length"] / g["height"]))
    dt = cfl / (SPEED_FACTOR * mean * (nx / g["length"] + ny / g["height"]))
    solver = Cylinder(nx=nx, ny=ny, dt=dt, cfl_max=cfl, boundary=boundary, dtype=dtype)
    params = np.array([mean, g["density"], g["viscosity"], g["diameter"], *g["center"]])
    scale = 0.5 * g["density"] * mean**2 * g["diameter"]
    out: dict[str, Any] = {
        "problem": "cylinder",
        "case": case,
        "re": g["density"] * mean * g["diameter"] / g["viscosity"],
        "grid": [nx, ny],
        "cells_per_diameter": g["diameter"] / (g["height"] / ny),
        "mask_offset_cells": _mask_offset(g["center"][1], g["height"] / ny),
        "boundary": boundary,
        "dtype": dtype,
        "dt": dt,
    }
    t0 = time.perf_counter()
    if schaefer_turek1996.STEADY[case]:
        tol = 1e-4 if tol is None else tol
        state, steps, residual = run_to_steady(solver, params, tol=tol, max_time=max_time, check_every=0.5,
                                              monitor=monitor)
        force = solver.force(state, None, jnp.asarray(params, solver.dtype), solver.force_box(params))
        fx, fy = (float(f) for f in force)
        wall = time.perf_counter() - t0
        fields = np.asarray(solver.fields(state), np.float64)
        xs = (np.arange(nx) + 0.5) * g["length"] / nx
        ys = (np.arange(ny) + 0.5) * g["height"] / ny
        # cells whose centre is outside the circle (the "cut" mask also keeps cells cut by it)
        fluid = np.hypot(xs[:, None] - g["center"][0], ys[None, :] - g["center"][1]) > g["diameter"] / 2
        (xf, yf), (xb, yb) = schaefer_turek1996.PRESSURE_POINTS
        dp_cells = _pressure_at(fields[2], fluid, xs, ys, xf, yf) - _pressure_at(fields[2], fluid, xs, ys, xb, yb)
        values = {"cd": fx / scale, "cl": fy / scale, "dp": g["density"] * _stagnation_dp(solver, state, params)}
        out |= {"converged": bool(residual < tol), "residual": residual, "tolerance": tol, "dp_cells": dp_cells}
    else:
        if not (spinup >= 0 and window > 0):
            raise SolverError(f"need spinup >= 0 and window > 0 (s), got spinup={spinup}, window={window}")
        n_spin, n_rec = int(round(spinup / dt)), int(np.ceil(window / dt))

        def report(done: int, forces: np.ndarray) -> None:
            if not np.all(np.isfinite(forces)):
                raise SolverError(f"cylinder: the run blew up by t = {done * dt:.3f} s; lower the CFL number")
            if monitor is not None:
                monitor(done * dt, float(forces[-1, 1]) / scale)

        state = solver.initial_state(jax.random.key(0), jnp.asarray(params, solver.dtype))
        _, forces = force_history(solver, state, params, n_spin + n_rec, segment=int(np.ceil(0.25 / dt)),
                                  monitor=report)
        forces = np.asarray(forces[n_spin:], np.float64) / scale
        wall = time.perf_counter() - t0
        steps = n_spin + n_rec
        t = (n_spin + 1 + np.arange(n_rec)) * dt
        cd, cl = forces[:, 0], forces[:, 1]
        half = n_rec // 2
        amp = [np.ptp(cl[:half]), np.ptp(cl[half:])]
        values = {"cd_max": float(cd.max()), "cl_max": float(cl.max()),
                  "strouhal": lift_frequency(t, cl) * g["diameter"] / mean}
        out |= {
            "spinup": spinup,
            "window": window,
            "cl_amplitude_drift": float(abs(amp[1] - amp[0]) / max(amp[1], 1e-12)),
            "t": t.tolist(),
            "cd_series": cd.tolist(),
            "cl_series": cl.tolist(),
        }
    compared, rows = _compare(case, values)
    out |= {
        "steps": steps,
        "time": steps * dt,
        "wall_time_s": wall,
        **values,
        "reference": "Schafer & Turek (1996), Notes Numer. Fluid Mech. 52, 547-566",
        **compared,
        "rows": rows,
    }
    return out
