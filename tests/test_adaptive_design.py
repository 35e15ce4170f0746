"""The loss-steered design: draws concentrate where the reported loss is high, the floor fraction comes from the
base design, the state survives a checkpoint, and a resumed local job draws what an uninterrupted one draws."""

import json
import shutil

import numpy as np
import pytest
from scipy.stats import binomtest

from solvers import SolverError, get_solver
from streaming.adaptive import (
    AdaptiveCursor,
    base_rank,
    from_base,
    held_out_grid,
    region_errors,
    smooth_losses,
    to_unit,
    update_losses,
)
from streaming.chunk import SimReport
from streaming.config import AdaptiveSection, ConfigError, load_config
from streaming.design import DesignCursor
from streaming.job import run_job
from streaming.transport.dispatcher import Dispatcher

FALSE_ALARM = 1e-6  # the binomial tests below reject "the draws ignore the loss" at this level


def _cursor(floor=0.3, warmup=16, n_sims=0, **kw):
    solver = get_solver("heat2d", n=6)  # 5 parameters in [100, 500] K
    opts = AdaptiveSection(floor=floor, warmup=warmup, bandwidth=0.05, **kw)
    return AdaptiveCursor(solver, n_sims, seed=3, sims_per_task=4, options=opts)


def _planted(cursor, ids):
    """Loss 10 where the first parameter is in the lowest fifth of its range, else 1."""
    u = to_unit(cursor.solver.param_space, cursor.params_of(np.asarray(ids)))
    return np.where(u[:, 0] < 0.2, 10.0, 1.0)


def _run_closed_loop(cursor, n_tasks):
    """Hand out tasks, report the planted loss of every simulation handed out so far after each one."""
    d = Dispatcher(cursor)
    ids = []
    for _ in range(n_tasks):
        task = d.next_task("w")
        ids += task.sim_ids.tolist()
        d.task_done("w")
        d.report_losses(np.asarray(ids), _planted(cursor, ids))
    return np.asarray(ids)


def test_draws_concentrate_where_the_planted_loss_is_high():
    cursor = _cursor()
    ids = _run_closed_loop(cursor, 100)  # 400 simulations
    later = ids[ids >= cursor.options.warmup]
    u = to_unit(cursor.solver.param_space, cursor.params_of(later))
    hits = int((u[:, 0] < 0.2).sum())
    # H0: the design ignores the loss, so a draw lands in the region with its base probability 0.2
    test = binomtest(hits, len(later), 0.2, alternative="greater")
    assert test.pvalue < FALSE_ALARM, (hits, len(later))
    assert hits / len(later) > 0.4  # with floor 0.3 the mixture puts about 0.55 there


def test_a_fixed_design_ignores_the_losses_and_the_floor_holds():
    fixed = DesignCursor(get_solver("heat2d", n=6), 0, "lhs", 3, 4)
    ids = _run_closed_loop(fixed, 100)
    u = to_unit(fixed.solver.param_space, fixed.params_of(ids))
    assert binomtest(int((u[:, 0] < 0.2).sum()), len(ids), 0.2).pvalue > FALSE_ALARM

    cursor = _cursor(floor=0.3, warmup=16)
    ids = _run_closed_loop(cursor, 100)
    steered = [i for i in ids.tolist() if i >= 16]
    from_base_design = [i for i in steered if cursor.origin[i] == "base"]
    # the floor is a schedule, not a coin: floor * n of the n steered draws, give or take one
    assert abs(len(from_base_design) - 0.3 * len(steered)) <= 1
    assert all(cursor.origin[i] == "base" for i in range(16))  # warmup
    # "base" draws are exactly the base design's points for those ids
    np.testing.assert_array_equal(cursor.params_of(np.asarray(from_base_design)),
                                  fixed.params_of(np.asarray(from_base_design)))
    assert [from_base(k, 0.5, 0) for k in range(6)] == [False, True, False, True, False, True]


def test_state_round_trips_through_json_and_continues_identically():
    a = _cursor(n_sims=200)
    _run_closed_loop(a, 20)
    a.mark_done(np.arange(60))
    state = json.loads(json.dumps(a.state_dict()))  # the checkpoint's meta item is JSON
    b = _cursor(n_sims=200)
    b.load_state_dict(state)
    assert b.state_dict() == a.state_dict()
    for c in (a, b):
        c.observe(np.arange(80), _planted(c, np.arange(80)) * 2)
    ta, tb = a.next_task(), b.next_task()
    np.testing.assert_array_equal(ta.sim_ids, tb.sim_ids)
    np.testing.assert_array_equal(ta.params, tb.params)
    assert any(a.origin[i] == "proposal" for i in ta.sim_ids.tolist())
    with pytest.raises(Exception, match="no adaptive state"):
        b.load_state_dict(DesignCursor(a.solver, 10, "lhs", 0, 2).state_dict())


def test_loss_table_grid_and_smoothing():
    t = update_losses({}, np.asarray([1, 2]), np.asarray([4.0, np.nan]), report=1, ema=0.5, memory=2)
    assert t == {1: (4.0, 1)}  # NaN losses are not recorded
    t = update_losses(t, np.asarray([1, 3, 4]), np.asarray([2.0, 1.0, 1.0]), report=2, ema=0.5, memory=2)
    assert t == {3: (1.0, 2), 4: (1.0, 2)}  # memory 2: the most recently updated, ties by id
    space = get_solver("ks1d").param_space  # nu in [0.5, 4]
    grid = held_out_grid(space, 8)
    assert grid.shape == (8, 1) and np.all(np.diff(grid[:, 0]) > 0)
    np.testing.assert_allclose(to_unit(space, grid)[:, 0], (np.arange(8) + 0.5) / 8)
    errs = region_errors(np.arange(8.0), grid, space, bins=2)
    assert errs == {"val_rollout_rel_l2/nu_bin0": 1.5, "val_rollout_rel_l2/nu_bin1": 5.5}
    # smoothing averages out a per-simulation (initial-condition) spike but keeps a trend over the parameter
    u = np.linspace(0, 1, 41)[:, None]
    trend = 1 + 4 * (u[:, 0] < 0.25)
    spiky = trend + 20.0 * (np.arange(41) == 30)
    sm = smooth_losses(u, spiky, 0.1)
    assert sm[30] < 6 and sm[:8].min() > 3 and sm[15:].max() < 6
    np.testing.assert_array_equal(smooth_losses(u, spiky, 0.0), spiky)


@pytest.mark.parametrize(
    "overrides,needle",
    [
        ({"solver.adaptive.flor": "0.3"}, "unknown key 'solver.adaptive.flor'; allowed: base, floor"),
        ({"solver.adaptive.floor": "1.5"}, "solver.adaptive.floor=1.5"),
        ({"solver.adaptive.base": "adaptive"}, "solver.adaptive.base='adaptive'"),
        ({"solver.design": "adaptiv"}, "solver.design='adaptiv'"),
        ({"solver.adaptive.bandwidth": "0"}, "solver.adaptive.bandwidth=0"),
        ({"solver.adaptive.spread": "maybe"}, "solver.adaptive.spread='maybe'"),
    ],
)
def test_bad_adaptive_options_name_the_key(overrides, needle):
    with pytest.raises(ConfigError) as e:
        load_config("configs/quickstart.toml", overrides)
    assert needle in str(e.value)


SMALL = {
    "solver.config": "{ n = 14, dt = 0.002 }", "solver.steps": "20", "solver.n_sims": "40",
    "solver.design": "adaptive", "solver.adaptive": "{ warmup = 4, loss_every = 1, report_every = 3 }",
    "model.hparams": "{ modes = 4, width = 8, depth = 1 }", "optim.batch_size": "8", "optim.steps": "24",
    "buffer.capacity": "1024", "buffer.watermark": "40", "buffer.ingest_ratio": "0.5",
    "workers.backend": "local", "workers.sims_per_task": "2", "workers.chunk_frames": "3",
    "validation.n_sims": "2", "validation.interval": "100", "checkpoint.interval": "12", "checkpoint.keep": "3",
    "logging.interval": "1", "logging.progress": "false", "logging.tensorboard": "false",
}


def _design_state(run, step):
    return json.loads((run / "checkpoints" / str(step) / "meta" / "metadata").read_text())["cursor"]


def test_a_resumed_local_job_draws_what_an_uninterrupted_one_draws(tmp_path):
    cfg = load_config("configs/quickstart.toml", {**SMALL, "logging.run_dir": str(tmp_path),
                                                   "logging.name": "adaptive"})
    run_job(cfg)
    run = tmp_path / "adaptive"
    full = _design_state(run, 24)
    assert any(r[1] == "proposal" for r in full["adaptive"]["drawn"])  # steering started before the end
    shutil.rmtree(run / "checkpoints" / "24")
    run_job(resume=run)
    assert _design_state(run, 24) == full  # the same simulations, parameters and loss table

    with pytest.raises(ConfigError, match="clients started by hand"):
        run_job(load_config("configs/quickstart.toml", {**SMALL, "workers.backend": "external",
                                                         "logging.run_dir": str(tmp_path)}))


def test_done_reports_and_requeue_keep_recorded_parameters():
    cursor = _cursor(warmup=0, floor=0.0)
    d = Dispatcher(cursor, max_failures=1)
    first = d.next_task("a")
    d.report_losses(first.sim_ids, np.ones(len(first.sim_ids)))
    second = d.next_task("b")
    assert all(cursor.origin[i] == "proposal" for i in second.sim_ids.tolist())
    d.on_message(SimReport(int(second.sim_ids[0]), "done"))
    d.worker_lost("b", "test")
    again = d.next_task("c")  # the unfinished ones come back, alone, with the parameters they were drawn with
    np.testing.assert_array_equal(again.sim_ids, second.sim_ids[1:])
    np.testing.assert_array_equal(again.params, second.params[1:])
    hist = d.design_histograms()
    assert sorted(hist) == [f"design/{n}" for n in sorted(cursor.solver.param_space.names)]
    assert len(hist["design/T_init"]) == 4 + 4 + 3 and d.design_histograms() == {}


@pytest.mark.parametrize("kind,n", [("grid", 4), ("sobol", 5)])
def test_validation_on_a_held_out_grid_or_sobol_set(kind, n):
    from streaming.assembly import build_solver
    from streaming.job import build_validation

    cfg = load_config(None, {"solver.name": "ks1d", "solver.config": "{ nx = 32, dt = 0.1 }", "solver.steps": "4",
                             "validation.n_sims": str(n), "validation.design": kind})
    solver = build_solver(cfg)
    v = build_validation(cfg, solver)
    u = to_unit(solver.param_space, v.params)[:, 0]
    assert v.frames.shape[:2] == (n, 5) and len(np.unique(u)) == n
    if kind == "grid":
        np.testing.assert_allclose(u, (np.arange(4) + 0.5) / 4)
    with pytest.raises(ConfigError, match="validation.design='lhs'"):
        load_config(None, {"validation.design": "lhs"})


@pytest.mark.parametrize("calls", [1, 3])
def test_train_step_keeps_each_samples_loss_over_the_calls_it_unrolls(calls):
    import optax
    from flax import nnx

    from surrogates.models.fno import FNO, FNOHparams
    from surrogates.training import make_train_step

    def incr(x, out):
        return x[:, -1:] + out  # predict the increment over the last of the W = 2 input frames

    rng = np.random.default_rng(0)
    batch = {"x": rng.standard_normal((6, 2, 16)).astype(np.float32),
             "y": rng.standard_normal((6, calls, 16)).astype(np.float32),
             "cond": rng.standard_normal((6, 1)).astype(np.float32)}
    batch["y"][3] *= 10  # one sample far off: its loss stands out
    got = {}
    for kind in ("absolute", "relative"):
        model = FNO(in_channels=2, out_channels=1, ndim=1, cond_dim=1, hparams=FNOHparams(modes=4, width=8, depth=1),
                    rngs=nnx.Rngs(0))
        # by hand, before the update: the mean over the calls of each call's MSE (relative: over the MSE of
        # predicting zero), the window advancing by the predicted frame
        u, want = batch["x"], np.zeros(6)
        for i in range(calls):
            out = np.asarray(incr(u, model(u, batch["cond"])))
            t = batch["y"][:, i : i + 1]
            err = np.mean((out - t) ** 2, axis=(1, 2))
            want += (err / np.mean(t**2, axis=(1, 2)) if kind == "relative" else err) / calls
            u = np.concatenate([u, out], axis=1)[:, -2:]
        step = make_train_step(model, nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param), output_map=incr,
                               sample_losses=kind)
        loss = float(step(batch, calls))
        got[kind] = np.asarray(step.sample_losses)
        assert got[kind].shape == (6,)
        np.testing.assert_allclose(got[kind], want, rtol=1e-4)
        if kind == "absolute":  # the batch mean of the per-sample losses is the step's loss
            np.testing.assert_allclose(loss, got[kind].mean(), rtol=1e-4)
        step(batch, calls)  # the next step's losses follow the updated model
        assert not np.allclose(np.asarray(step.sample_losses), got[kind])
    assert got["absolute"].argmax() == 3
    assert got["relative"][3] < got["absolute"][3] / 10  # scaled by its own size (targets 10x larger)
    with pytest.raises(Exception, match="sample_losses='squared'"):
        make_train_step(model, nnx.Optimizer(model, optax.sgd(0.0), wrt=nnx.Param), sample_losses="squared")


def test_sim_losses_mean_per_simulation_read_at_take():
    import jax.numpy as jnp

    from streaming.adaptive import SimLosses

    acc = SimLosses()
    acc.add(np.asarray([3, 1, 3]), jnp.asarray([1.0, 2.0, 5.0]))  # device arrays, as the train step gives them
    acc.add(np.asarray([1]), jnp.asarray([4.0]))
    ids, means = acc.take()
    assert ids.tolist() == [1, 3] and ids.dtype == np.int64
    np.testing.assert_allclose(means, [3.0, 3.0])
    ids, means = acc.take()  # emptied by the take
    assert ids.size == 0 and means.size == 0


def _ks_cursor(spread, offset=0, stride=1):
    opts = AdaptiveSection(floor=0.25, warmup=8, bandwidth=0.05, spread=spread)
    return AdaptiveCursor(get_solver("ks1d"), 0, seed=5, sims_per_task=4, options=opts, offset=offset, stride=stride)


def _ks_closed_loop(cursor, n_tasks):
    """Report a loss that is high only at the low end of nu (u < 0.1): the proposal piles up there."""
    d, ids = Dispatcher(cursor), []
    for _ in range(n_tasks):
        ids += d.next_task("w").sim_ids.tolist()
        d.task_done("w")
        u = to_unit(cursor.solver.param_space, cursor.params_of(np.asarray(ids)))[:, 0]
        d.report_losses(np.asarray(ids), np.where(u < 0.1, 100.0, 1.0))
    return ids


def test_spread_base_draws_fill_the_space_evenly():
    # the rank among base draws counts the warmup, then floor * (k - warmup) of the later ones
    assert [base_rank(k, 0.25, 8) for k in (0, 7, 8, 9, 12, 16)] == [0, 7, 8, 8, 9, 10]
    for spread in (False, True):
        cursor = _ks_cursor(spread)
        ids = _ks_closed_loop(cursor, 30)  # 120 simulations: 8 warmup + 28 floor draws
        base = [i for i in ids if cursor.origin[i] == "base"]
        assert len(base) == 8 + 28
        u = to_unit(cursor.solver.param_space, cursor.params_of(np.asarray(base)))[:, 0]
        counts = np.bincount(np.minimum((u[:32] * 32).astype(int), 31), minlength=32)
        if spread:  # the first 32 points of a scrambled Sobol sequence: one in each 1/32 of the range
            assert counts.max() == 1
        else:  # the base design's points of those ids: iid-like over 32 bins, some bins twice or empty
            assert counts.max() >= 2
        steered = [i for i in ids if cursor.origin[i] == "proposal"]
        us = to_unit(cursor.solver.param_space, cursor.params_of(np.asarray(steered)))[:, 0]
        assert np.mean(us < 0.15) > 0.5  # the proposal still piles up where the loss is high
    # two trainers (stride 2) share one sequence: together they take its first points, none twice
    a, b = _ks_cursor(True, 0, 2), _ks_cursor(True, 1, 2)
    pa, pb = a.params_of(np.arange(0, 16, 2)), b.params_of(np.arange(1, 16, 2))
    u = to_unit(a.solver.param_space, np.concatenate([pa, pb]))[:, 0]
    assert np.bincount((u * 16).astype(int), minlength=16).max() == 1
    # spread draws are a function of the seed and the index alone, so a new cursor reproduces them
    np.testing.assert_array_equal(_ks_cursor(True).params_of(np.arange(8)), _ks_cursor(True).params_of(np.arange(8)))


class _ShiftedRollout:
    """A surrogate whose rollout returns the truth plus 0.01 everywhere (the start frame kept as given)."""

    def __init__(self, truth: np.ndarray) -> None:
        self.truth = truth

    def rollout(self, start, n, cond=None, t0=0.0):
        return np.concatenate([start[:, None], self.truth[:, 1 : n + 1] + 0.01], axis=1)


def test_trajectory_error_stays_finite_where_a_field_decays_to_zero():
    from types import SimpleNamespace

    from streaming.adaptive import per_sim_errors

    amp = np.asarray([1.0, 0.1, 1e-6])  # a field that decays to a millionth of its start
    frames = amp[None, :, None, None] * np.ones((1, 3, 1, 4))
    spec = SimpleNamespace(kind="step", window=1, condition_on_params=False, frame_dt=0.1)
    sur, params = _ShiftedRollout(frames), np.zeros((1, 1))
    # per frame: 0.01 / 0.1 and 0.01 / 1e-6, averaged
    np.testing.assert_allclose(per_sim_errors(sur, spec, frames, params, 2, over="frame"),
                               [(0.1 + 1e4) / 2], rtol=1e-6)
    # trajectory: the error's norm over both frames over the truth's
    np.testing.assert_allclose(per_sim_errors(sur, spec, frames, params, 2, over="trajectory"),
                               [np.sqrt(2 * 0.01**2 / (0.1**2 + 1e-12))], rtol=1e-6)
    with pytest.raises(SolverError, match="use 'frame' or 'trajectory'"):
        per_sim_errors(sur, spec, frames, params, 2, over="space")
