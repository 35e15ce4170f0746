"""py-pde (an unmodified solver from PyPI, ``pip install py-pde``) as a pdestream external solver.

The launcher runs ``python examples/pypde_adapter.py {params_file}`` once per simulation
(``configs/external_pypde.toml``); the JSON file holds the simulation id, the job's address, the frame
count and spacing, a seed and the sampled parameters (here ``gamma``). The adapter solves the Allen-Cahn equation
``dc/dt = gamma Laplacian(c) - c^3 + c`` on the periodic unit square from a random initial field, and a
py-pde tracker streams every frame through :mod:`streaming.client`.
"""

import json
import sys

import numpy as np
import pde

from streaming.client import connect

job = json.loads(open(sys.argv[1]).read())  # sim_id, address, frames, dt, seed, grid, params
grid = pde.CartesianGrid([[0, 1]] * len(job["grid"]), job["grid"], periodic=True)
state = pde.ScalarField.random_normal(grid, std=0.5, rng=np.random.default_rng(job["seed"]))
equation = pde.AllenCahnPDE(interface_width=job["params"]["gamma"])  # gamma: width squared
with connect(job["address"], sim_id=job["sim_id"], params=list(job["params"].values()), fields=["c"],
             grid=job["grid"], solver="py-pde") as client:
    frame = iter(range(job["frames"]))
    tracker = pde.trackers.CallbackTracker(lambda field, t: client.send("c", field.data, next(frame)), job["dt"])
    equation.solve(state, t_range=job["dt"] * (job["frames"] - 1), dt=job["dt"] / 20, tracker=tracker,
                   backend="numpy")  # plain numpy: no numba compilation in each short-lived process
