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


@pytest.fixture(scope="module")
def cylinder() -> tuple:
    """A small cylinder channel (44 x 21 cells): solver, 3 parameter vectors (different obstacles), 10 frames each."""
    solver = get_solver("cylinder", nx=44, ny=21, length=0.88, dt=2e-3)
    params = np.asarray(solver.sample_params(jax.random.key(3), 3, design="lhs"))
    frames = np.asarray(solver.rollout(jax.random.key(4), params, 20, every=2))  # (3, 11, 3, 44, 21)
    return solver, params, frames


@pytest.mark.parametrize("name", ["cylinder", "dam"])
def test_obstacle_cells_are_the_cfd_boundary(name) -> None:
    """Cells inside an obstacle hold u = v = p = 0 in every frame, and the mask follows the parameters."""
    solver = get_solver(name, **({"nx": 44, "ny": 21, "length": 0.88, "dt": 2e-3} if name == "cylinder" else {}))
    params = np.asarray(solver.sample_params(jax.random.key(5), 2, design="lhs"))
    frames = np.asarray(solver.rollout(jax.random.key(6), params, 12, every=4))
    masks = [solver.boundary(p)[0] for p in params]
    assert all(m.shape == (3, *solver.grid) and m.any() for m in masks)
    assert not np.array_equal(masks[0], masks[1])  # the obstacle moves or changes size with the parameters
    for p, m, sim in zip(params, masks, frames, strict=True):
        assert np.array_equal(m, np.broadcast_to(solver.mask(p) == 0, m.shape))  # every channel, the solid cells
        for frame in sim:
            assert not frame[m].any()  # exactly 0
    cavity = get_solver("cavity", nx=16, ny=16)
    mask, values = cavity.boundary(np.asarray(cavity.param_space.low))
    assert not mask.any() and not np.asarray(values).any()  # walls lie on cell faces, outside the output grid
    assert cavity.held_cells(cavity.param_space.low[None]) is None


def test_hold_mask_keeps_obstacle_cells_exact_over_100_steps(cylinder) -> None:
    solver, params, frames = cylinder
    meta = SurrogateMetadata(kind="next_step", solver=solver.name, grid=solver.grid, dt=solver.dt * 2,
                             channels=solver.channels, cond_names=solver.param_space.names, predict="increment")
    model = get_model("fno", in_channels=3, out_channels=3, ndim=2, cond_dim=6, rngs=nnx.Rngs(0), **GRID_MODELS["fno"])
    norm = Normalizer(3, 2, cond_dim=6)
    norm.update(frames.reshape(-1, 3, *solver.grid), np.repeat(params, frames.shape[1], axis=0)).freeze()
    sur = Surrogate.from_model(model, norm, meta)
    hold = solver.held_cells(params)  # (3, 3, 44, 21), a different obstacle per simulation
    start = frames[:, 5]
    roll = np.asarray(sur.rollout(start, 100, cond=params, hold=hold))
    assert roll.shape == (3, 101, 3, *solver.grid)
    for m, sim in zip(hold, roll, strict=True):
        for frame in sim:
            assert not frame[m].any()
    free = np.asarray(sur.rollout(start, 1, cond=params))[:, 1]  # the test can fail: unheld, the model moves them
    assert np.abs(free[hold]).max() > 1e-3
    one = np.asarray(sur.step(start[0], cond=params[0], hold=hold[0]))  # unbatched, one mask
    assert not one[hold[0]].any()
    np.testing.assert_array_equal(one[~hold[0]], np.asarray(sur.step(start[0], cond=params[0]))[~hold[0]])
    from surrogates.surrogate import SurrogateError

    with pytest.raises(SurrogateError, match=r"hold: got bool \(3, 3, 44, 10\); expected a bool mask \(3, 44, 21\)"):
        sur.rollout(start, 2, cond=params, hold=hold[..., :10])
    with pytest.raises(SurrogateError, match="bool mask"):
        sur.step(start, cond=params, hold=hold.astype(np.float32))
    # the evaluation library passes the masks through its batched one-step and rollout calls
    from benchmarks.evaluate import EvaluationError, evaluate_trajectories

    out = evaluate_trajectories(sur, frames, params, solver.dt * 2, batch=2, n_examples=3, hold=hold)
    pred = out["examples"]["prediction"]  # (3, 11, 3, 44, 21)
    assert pred.shape == frames.shape and all(not sim[:, m].any() for sim, m in zip(pred, hold, strict=True))
    free = evaluate_trajectories(sur, frames, params, solver.dt * 2, batch=2, n_examples=3)["examples"]["prediction"]
    assert np.abs(free[:, 1:][np.broadcast_to(hold[:, None], free[:, 1:].shape)]).max() > 1e-3
    with pytest.raises(EvaluationError, match=r"hold: got bool \(2, 3, 44, 21\); expected a bool mask"):
        evaluate_trajectories(sur, frames, params, solver.dt * 2, hold=hold[:2])


def test_train_step_holds_each_samples_obstacle_in_every_unrolled_call(cylinder) -> None:
    """A batch's ``hold`` masks (one obstacle per sample) are imposed after every model call of the unrolled step,
    so training computes what validation and the exported surrogate compute."""
    import optax

    from surrogates.training import chain, hold_each, make_train_step, mse

    solver, params, frames = cylinder
    meta = SurrogateMetadata(kind="next_step", solver=solver.name, grid=solver.grid, dt=solver.dt * 2,
                             channels=solver.channels, cond_names=solver.param_space.names, predict="increment")
    norm = Normalizer(3, 2, cond_dim=6)
    norm.update(frames.reshape(-1, 3, *solver.grid), np.repeat(params, frames.shape[1], axis=0)).freeze()

    def model() -> nnx.Module:
        return get_model("fno", in_channels=3, out_channels=3, ndim=2, cond_dim=6, rngs=nnx.Rngs(0),
                         **GRID_MODELS["fno"])

    sur = Surrogate.from_model(model(), norm, meta)
    batch = sur.encode_batch(frames[:, 4], frames[:, 5:8], params)  # 3 model calls of targets
    hold = solver.held_cells(params)
    out_map = chain(meta.output_map(), hold_each(hold))
    ref, u, calls = model(), batch["x"], []
    for _ in range(3):  # the unroll by hand: the held cells of every call's output are the last input frame's
        out = out_map(u, ref(u, batch["cond"]))
        np.testing.assert_array_equal(np.asarray(out)[hold], np.asarray(u)[hold])
        calls.append(out)
        u = out
    want = np.mean([float(mse(o, batch["y"][:, 3 * i : 3 * i + 3])) for i, o in enumerate(calls)])

    def first_loss(**extra) -> float:
        m = model()
        step = make_train_step(m, nnx.Optimizer(m, optax.adam(1e-3), wrt=nnx.Param), output_map=meta.output_map())
        return float(step({**batch, **extra}, steps=3))

    assert first_loss(hold=hold) == pytest.approx(want, rel=1e-5)
    assert abs(first_loss() - want) > 1e-3 * want  # the test can fail: unheld, the obstacle cells move
    from surrogates.surrogate import SurrogateError

    with pytest.raises(SurrogateError, match=r'batch\["hold"\] \(2, 3, 44, 21\): need one bool mask'):
        first_loss(hold=hold[:2])


def test_jobs_hold_obstacles_in_training_from_each_samples_parameters(cylinder, capsys) -> None:
    from streaming.config import load_config
    from streaming.job import held_in_training
    from streaming.trainer import HeldCells

    solver, params, _ = cylinder
    small = {"solver.config": "{ nx = 44, ny = 21, length = 0.88, dt = 2e-3 }"}
    cfg = load_config("configs/cfd_cylinder.toml", small)
    held = held_in_training(cfg, solver)
    assert held is not None
    cells = HeldCells(held, 3, solver.grid, limit=4)
    rows = params[[0, 1, 0, 2, 1]]  # repeated simulations, as a batch draws them
    np.testing.assert_array_equal(cells(rows), solver.held_cells(rows))
    assert len(cells._masks) == 3
    np.testing.assert_array_equal(cells(params[[2, 2]]), solver.held_cells(params[[2, 2]]))  # from the cache
    more = np.asarray(solver.sample_params(jax.random.key(9), 3, design="lhs"))
    np.testing.assert_array_equal(cells(np.concatenate([more, params[:1]])),  # past the limit: emptied, refilled
                                  solver.held_cells(np.concatenate([more, params[:1]])))
    assert len(cells._masks) == 4
    unconditioned = load_config("configs/cfd_cylinder.toml", {**small, "sample.condition_on_params": "false"})
    assert held_in_training(unconditioned, solver) is None
    assert "set sample.condition_on_params = true" in capsys.readouterr().err
    cavity = get_solver("cavity", nx=16, ny=16)
    assert held_in_training(load_config("configs/cfd_cavity.toml"), cavity) is None  # nothing to hold
    heat = get_solver("heat2d", n=14)
    assert held_in_training(load_config("configs/quickstart.toml"), heat) is None  # its border is in the output map


def test_a_cylinder_job_trains_with_its_obstacles_held(tmp_path) -> None:
    """The whole path: samples carry their parameters, batches their masks, the unrolled step holds them."""
    from streaming.config import load_config
    from streaming.job import run_job

    cfg = load_config("configs/cfd_cylinder.toml", {
        "solver.config": "{ nx = 44, ny = 21, length = 0.88, dt = 2e-3 }", "solver.steps": "24", "solver.every": "2",
        "solver.n_sims": "6", "model.hparams": "{ modes = 4, width = 8, depth = 2, proj_width = 16 }",
        "optim.steps": "8", "optim.batch_size": "8", "optim.unroll": "{ start = 1, end = 2, ramp_steps = 4 }",
        "buffer.capacity": "256", "buffer.watermark": "16", "workers.backend": "local", "validation.n_sims": "2",
        "validation.interval": "4", "validation.rollout_steps": "4", "checkpoint.interval": "100",
        "logging.interval": "4", "logging.progress": "false", "logging.tensorboard": "false",
        "logging.run_dir": str(tmp_path), "logging.name": "cyl"})
    summary = run_job(cfg)
    assert summary["steps"] == 8 and np.isfinite(summary["final_loss"])
    assert np.isfinite(summary["best_val_rollout_rel_l2"])
