"""Boundary hard constraint: the solver contract's ``boundary`` and surrogates that hold it exactly over rollouts."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest
from flax import nnx

from solvers import get_solver
from surrogates.models import get_model
from surrogates.normalizer import Normalizer
from surrogates.surrogate import Surrogate, SurrogateMetadata

# Untrained grid models, small enough to compile quickly on 2 cores (16 x 16 grid).
GRID_MODELS = {
    "fno": dict(width=8, modes=4, depth=2, proj_width=16),
    "unet": dict(width=8, depth=2),
    "lsm": dict(width=8, num_scales=2, patch_size=2, num_basis=4, num_token=2, num_heads=2, head_width=16),
}


@pytest.fixture(scope="module")
def heat() -> tuple:
    """heat2d on 16 x 16 (walls included): solver, parameters (3, 5) and rollouts (3, 11, 1, 16, 16)."""
    solver = get_solver("heat2d", n=14, dt=0.002)
    params = np.asarray(solver.sample_params(jax.random.key(1), 3, design="lhs"))
    frames = np.asarray(solver.rollout(jax.random.key(2), params, 10))
    return solver, params, frames


def test_solver_boundary_is_what_every_frame_holds(heat) -> None:
    solver, params, frames = heat
    for p, sim in zip(params, frames, strict=True):
        mask, values = solver.boundary(p)
        assert mask.shape == values.shape == (1, 16, 16) and mask.dtype == bool
        assert mask.sum() == 16 * 16 - 14 * 14 and not mask[0, 1:-1, 1:-1].any()  # the wall ring only
        for frame in sim:
            np.testing.assert_array_equal(frame[mask], np.asarray(values)[mask])  # bitwise
        assert not np.any(np.asarray(values)[~mask])
    mask, values = get_solver("burgers1d").boundary(np.asarray([0.01]))  # periodic: nothing imposed
    assert not mask.any() and not np.any(np.asarray(values))


def _surrogate(solver, frames, params, name: str, predict: str = "state") -> Surrogate:
    meta = SurrogateMetadata(kind="next_step", solver=solver.name, grid=solver.grid, dt=solver.dt,
                             channels=solver.channels, cond_names=solver.param_space.names,
                             frozen_border=solver.frozen_border, predict=predict)
    model = get_model(name, in_channels=1, out_channels=1, ndim=2, cond_dim=5, rngs=nnx.Rngs(0), **GRID_MODELS[name])
    norm = Normalizer(1, 2, cond_dim=5)
    norm.update(frames.reshape(-1, 1, 16, 16), np.repeat(params, frames.shape[1], axis=0)).freeze()
    return Surrogate.from_model(model, norm, meta)


@pytest.mark.parametrize("name", list(GRID_MODELS))
def test_walls_exact_after_100_steps_of_an_untrained_surrogate(heat, name, tmp_path) -> None:
    solver, params, frames = heat
    sur = _surrogate(solver, frames, params, name, predict="increment" if name == "fno" else "state")
    free = Surrogate(sur._graphdef, sur._state, sur.normalizer, dataclasses.replace(sur.metadata, frozen_border=0),
                     sur.model_config)
    loaded = Surrogate.load(sur.save(tmp_path / name))
    assert loaded.metadata == sur.metadata
    for s in (sur, loaded):  # the saved metadata carries what imposing the walls needs
        roll = np.asarray(s.rollout(frames[:, 0], 100, cond=params))
        assert roll.shape == (3, 101, 1, 16, 16)
        for p, sim in zip(params, roll, strict=True):
            mask, values = solver.boundary(p)
            for frame in sim:
                np.testing.assert_array_equal(frame[mask], np.asarray(values)[mask])
    # The test can fail: without the constraint the untrained model moves the walls at once.
    drift = np.asarray(free.rollout(frames[:, 0], 1, cond=params))[:, 1]
    mask = np.broadcast_to(solver.boundary(params[0])[0], drift.shape[1:])
    assert np.abs(drift[:, mask] - frames[:, 0][:, mask]).max() > 1.0
    # step() imposes it too; the interior is the model's
    one = np.asarray(sur.step(frames[:, 3], cond=params))
    np.testing.assert_array_equal(one[:, mask], frames[:, 3][:, mask])
    np.testing.assert_array_equal(one[:, ~mask], np.asarray(free.step(frames[:, 3], cond=params))[:, ~mask])


def test_increment_adds_the_model_output_to_the_last_frame(heat) -> None:
    solver, params, frames = heat
    state = _surrogate(solver, frames, params, "fno")
    inc = Surrogate(state._graphdef, state._state, state.normalizer,
                    dataclasses.replace(state.metadata, predict="increment", frozen_border=0), state.model_config)
    stats = state.normalizer.stats
    x = np.asarray(stats.normalize(frames[:, 2]))
    model_out = np.asarray(stats.normalize(np.asarray(inc.step(frames[:, 2], cond=params)))) - x
    free = dataclasses.replace(state.metadata, frozen_border=0)
    raw = np.asarray(Surrogate(state._graphdef, state._state, state.normalizer, free, state.model_config)
                     .step(frames[:, 2], cond=params))
    np.testing.assert_allclose(model_out, np.asarray(stats.normalize(raw)), atol=1e-4)
    with pytest.raises(Exception, match="predict"):
        dataclasses.replace(state.metadata, predict="delta")
