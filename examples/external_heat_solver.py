"""An external solver streaming into ``pdestream train``: a plain-numpy explicit heat solver.

Not one of pdestream's solvers: a few lines of numpy standing for *your* code. It solves

    du/dt = kappa * Laplacian(u) on the unit square,  u = wall temperature on each wall,  u(0) = T_init,

with the explicit five-point scheme (forward Euler in time, stable for ``r = kappa dt / h^2 <= 1/4``)
on an ``(n + 2) x (n + 2)`` grid that includes the walls, i.e. the same problem, grid and parameters
(``T_init, T_left, T_right, T_bottom, T_top`` in K) as pdestream's ``heat2d`` solver, so a job
configured with ``solver.name = "heat2d"`` trains on it. Frames are written every ``dt`` seconds
(several stable sub-steps each) and streamed with :mod:`streaming.client`.

    pdestream train configs/quickstart.toml --set workers.backend=external \
        --set workers.listen=127.0.0.1:47011 --set solver.n_sims=16 &
    python examples/external_heat_solver.py --address 127.0.0.1:47011 --sims 16

See examples/README.md.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Iterator

import numpy as np

from streaming.client import JobStopped, connect

PARAM_RANGE = (100.0, 500.0)  # K, every parameter (Melissa's heat study, Meyer et al. 2023, arXiv:2309.16743)


def draw_params(rng: np.random.Generator) -> np.ndarray:
    """Five temperatures uniform in ``PARAM_RANGE``, rounded to float32: the job stores float32 parameters, and
    simulating with exactly those keeps every frame consistent with the parameters it is labelled with."""
    return rng.uniform(*PARAM_RANGE, size=5).astype(np.float32).astype(np.float64)


def initial_field(n: int, params: np.ndarray) -> np.ndarray:
    """``(n + 2, n + 2)`` float64 temperature at t = 0: walls on the border (axis 0 is x, axis 1 is y).

    params: ``(T_init, T_left, T_right, T_bottom, T_top)`` in K; a corner takes the mean of its two walls.
    """
    t_init, left, right, bottom, top = (float(p) for p in params)
    u = np.full((n + 2, n + 2), t_init)
    u[0, 1:-1], u[-1, 1:-1], u[1:-1, 0], u[1:-1, -1] = left, right, bottom, top
    u[0, 0], u[0, -1] = (left + bottom) / 2, (left + top) / 2
    u[-1, 0], u[-1, -1] = (right + bottom) / 2, (right + top) / 2
    return u


def substeps(n: int, dt: float, kappa: float) -> tuple[int, float]:
    """Sub-steps per frame and the explicit scheme's ``r = kappa dt_sub / h^2`` (kept <= 0.2 < 1/4 for stability)."""
    h = 1.0 / (n + 1)
    k = max(1, math.ceil(kappa * dt / (0.2 * h * h)))
    return k, kappa * (dt / k) / (h * h)


def interior_update(u: np.ndarray, r: float) -> np.ndarray:
    """New values of ``u[1:-1, 1:-1]`` after one explicit step (``u`` holds the rows and columns around them)."""
    c = u[1:-1, 1:-1]
    return c + r * (u[2:, 1:-1] + u[:-2, 1:-1] + u[1:-1, 2:] + u[1:-1, :-2] - 4 * c)


def simulate(params: np.ndarray, n: int, dt: float, kappa: float, frames: int) -> Iterator[np.ndarray]:
    """Yield ``frames`` temperature fields ``(n + 2, n + 2)`` (K), ``dt`` seconds apart, the first at t = 0."""
    u = initial_field(n, params)
    k, r = substeps(n, dt, kappa)
    for f in range(frames):
        yield u.copy()
        if f + 1 < frames:
            for _ in range(k):
                u[1:-1, 1:-1] = interior_update(u, r)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--address", default=None, help="the job's address HOST:PORT (default $PDESTREAM_ADDRESS)")
    ap.add_argument("--sims", type=int, default=4, help="simulations to run")
    ap.add_argument("--first-sim", type=int, default=0, help="sim_id of the first simulation")
    ap.add_argument("--n", type=int, default=30, help="interior nodes per axis (grid n + 2); job: solver.config.n")
    ap.add_argument("--dt", type=float, default=0.002, help="seconds between frames; job: solver.dt * solver.every")
    ap.add_argument("--kappa", type=float, default=1.0, help="diffusivity (m^2/s)")
    ap.add_argument("--frames", type=int, default=41, help="frames per simulation; job: solver.steps + 1")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    rng = np.random.default_rng(args.seed)
    for sim_id in range(args.first_sim, args.first_sim + args.sims):
        params = draw_params(rng)
        try:
            with connect(args.address, sim_id=sim_id, params=params, fields=["T"], grid=(args.n + 2, args.n + 2),
                         solver="numpy-explicit-heat") as client:
                for frame, u in enumerate(simulate(params, args.n, args.dt, args.kappa, args.frames)):
                    client.send("T", u, frame)
        except JobStopped as e:  # the job reached its training-step budget: nothing more to do
            print(f"stopping: {e}", flush=True)
            return
        print(f"simulation {sim_id} sent ({args.frames} frames, params {np.round(params, 1).tolist()})", flush=True)


if __name__ == "__main__":
    main()
