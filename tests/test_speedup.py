"""benchmarks/studies/speedup.py: the surrogate-vs-solver timing on tiny grids with untrained surrogates."""

import functools
import math

import jax
import numpy as np
import pytest
from flax import nnx

from benchmarks.studies.speedup import SpeedupError, advance_fn, format_table, measure_speedup, solver_steps_per_frame
from solvers import get_solver
from surrogates import get_model
from surrogates.normalizer import Normalizer
from surrogates.surrogate import Surrogate, SurrogateMetadata

TINY_FNO = {"modes": 4, "width": 8, "depth": 2}


@functools.cache
def tiny_fno(in_channels: int, out_channels: int, cond_dim: int) -> nnx.Module:
    """An untrained FNO, built once per shape (eager initialisation costs seconds on a loaded machine)."""
    return get_model("fno", in_channels=in_channels, out_channels=out_channels, ndim=2, cond_dim=cond_dim,
                     rngs=nnx.Rngs(0), **TINY_FNO)


def tiny_surrogate(solver, dt: float, window: int = 1, channels=None, grid=None, cond: bool = False) -> Surrogate:
    channels = tuple(channels or solver.channels)
    names = solver.param_space.names if cond else ()
    c = len(channels)
    model = tiny_fno(window * c, c, len(names))
    meta = SurrogateMetadata(kind="next_step", solver=solver.name, grid=tuple(grid or solver.grid), dt=dt,
                             channels=channels, cond_names=names, window=window)
    return Surrogate.from_model(model, Normalizer.identity(c, 2, len(names)), meta)


@pytest.fixture(scope="module")
def heat_small():
    """heat2d on 8 x 8 points: the timing code is solver-agnostic, and this one compiles in a second."""
    solver = get_solver("heat2d", n=6, dt=1e-3)
    params = np.asarray(solver.sample_params(jax.random.key(0), 2))
    keys = jax.random.split(jax.random.key(1), 2)
    return solver, params, keys


def test_keys_times_and_ratio(heat_small):
    solver, params, keys = heat_small
    sur = tiny_surrogate(solver, dt=5e-3, window=2, cond=True)  # one surrogate frame = 5 solver steps
    r = measure_speedup(sur, solver, params, keys, n_frames=3, repeats=2, name="ns2d")
    for k in ("surrogate_speedup", "solver_s", "surrogate_s", "rel_l2", "identity_rel_l2", "frames", "solver_steps",
              "every", "simulated_time", "batch"):
        assert f"ns2d_{k}" in r
    assert r["ns2d_solver_s"] > 0 and r["ns2d_surrogate_s"] > 0
    assert math.isfinite(r["ns2d_solver_s"]) and math.isfinite(r["ns2d_surrogate_s"])
    # the ratio is solver time over surrogate time (exact: both come from the same floats)
    assert r["ns2d_surrogate_speedup"] == r["ns2d_solver_s"] / r["ns2d_surrogate_s"]
    # both sides cover the same simulated time: 3 surrogate frames of 5e-3 = 15 solver steps of 1e-3
    assert (r["ns2d_every"], r["ns2d_solver_steps"], r["ns2d_batch"]) == (5, 15, 2)
    assert r["ns2d_simulated_time"] == pytest.approx(r["ns2d_frames"] * sur.dt, rel=1e-9)
    # an untrained surrogate is wrong, but finitely so; the identity baseline errs after 15 steps of a cooling plate
    assert math.isfinite(r["ns2d_rel_l2"]) and r["ns2d_rel_l2"] > 0
    assert 0 < r["ns2d_identity_rel_l2"] < 1
    assert "ns2d" in format_table({**r, "ns2d_surrogate": "tiny"}, ["ns2d"])


def test_solver_side_counts_steps_like_rollout(heat_small):
    """The timed solver function gives the frames of Solver.rollout with the same cadence (honest step count)."""
    solver, params, keys = heat_small
    every, n = 4, 3
    states = jax.vmap(solver.initial_state)(keys, params)
    _, frames = jax.jit(advance_fn(solver, every, n))(states, params)
    ref = solver.rollout(keys, params, n * every, every)  # (B, n + 1, C, *grid), frame 0 the initial one
    assert frames.shape == ref[:, 1:].shape
    # float32, the same operations in the same order: agreement to rounding (1e-5 relative)
    np.testing.assert_allclose(np.asarray(frames), np.asarray(ref[:, 1:]), rtol=1e-5, atol=1e-5)


def test_cavity_cfdbench_channels():
    """A (u, v, mask) cavity surrogate is compared with the solver's resampled frames; the mask is left out."""
    solver = get_solver("cavity", nx=8, ny=8, dt=2e-3)
    params = np.asarray(solver.sample_params(jax.random.key(1), 2))
    keys = jax.random.split(jax.random.key(2), 2)
    sur = tiny_surrogate(solver, dt=4e-3, channels=("u", "v", "mask"), grid=(12, 12), cond=True)
    r = measure_speedup(sur, solver, params, keys, n_frames=2, repeats=1, name="cavity")
    assert r["cavity_every"] == 2 and r["cavity_solver_steps"] == 4
    assert r["cavity_solver_s"] > 0 and r["cavity_surrogate_s"] > 0 and math.isfinite(r["cavity_rel_l2"])
    assert r["cavity_surrogate_speedup"] == r["cavity_solver_s"] / r["cavity_surrogate_s"]


def test_mismatches_are_clear_errors(heat_small):
    solver, params, keys = heat_small
    with pytest.raises(SpeedupError, match="dt"):
        solver_steps_per_frame(tiny_surrogate(solver, dt=2.5e-3, window=2, cond=True), solver)  # 2.5 steps a frame
    with pytest.raises(SpeedupError, match="grid"):
        measure_speedup(tiny_surrogate(solver, dt=1e-3, window=2, cond=True, grid=(16, 16)), solver, params, keys, 1, 1)
