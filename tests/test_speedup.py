"""Equal-accuracy speed-up: the ladder bookkeeping (benchmarks/ladder.py) on hand-made numbers, the resampling,
and the whole ladder of benchmarks/studies/speedup.py on a tiny real heat2d problem."""

import functools
import json
import math

import jax
import numpy as np
import pytest
from flax import nnx

from benchmarks.ladder import (
    LadderError,
    Rung,
    equal_accuracy,
    equal_cost,
    node_matrix,
    node_resample,
    plot_pareto,
    rollout_rel_l2,
    spectral_resample,
)
from benchmarks.studies.speedup import (
    Problem,
    SpeedupError,
    format_table,
    heat2d_job,
    label,
    main,
    measure_ladder,
    parse_surrogates,
    steps_per_frame,
    summarise,
)
from solvers import get_solver
from surrogates import get_model
from surrogates.normalizer import Normalizer
from surrogates.surrogate import Surrogate, SurrogateMetadata


def rung(name, seconds, error, stable=True):
    return Rung(name, {"name": name}, seconds, error, stable)


# A hand-made ladder: slower rungs are more accurate.
LADDER = [rung("fine", 1.0, 0.01), rung("mid", 0.1, 0.05), rung("coarse", 0.01, 0.2)]


def test_equal_accuracy_picks_the_cheapest_rung_at_or_below_the_error():
    r = equal_accuracy(LADDER, sur_error=0.06, sur_seconds=0.05)
    assert r["rung"] == "mid" and r["speedup"] == pytest.approx(0.1 / 0.05)
    # an error equal to a rung's counts as reached ("at or below")
    assert equal_accuracy(LADDER, sur_error=0.2, sur_seconds=0.05)["rung"] == "coarse"
    # below 1: the solver is faster at the same accuracy
    r = equal_accuracy(LADDER, sur_error=0.3, sur_seconds=0.04)
    assert r["rung"] == "coarse" and r["speedup"] == pytest.approx(0.25)


def test_no_rung_reaches_the_surrogate_gives_null_and_the_finest():
    r = equal_accuracy(LADDER, sur_error=0.001, sur_seconds=0.05)
    assert r["speedup"] is None and r["rung"] is None
    assert r["finest"]["label"] == "fine" and r["finest"]["error"] == 0.01 and r["finest"]["seconds"] == 1.0


def test_equal_cost_takes_the_best_rung_within_the_time():
    r = equal_cost(LADDER, sur_error=0.1, sur_seconds=0.2)  # mid and coarse are that cheap; mid is more accurate
    assert r["rung"] == "mid" and r["error_ratio"] == pytest.approx(0.05 / 0.1)
    r = equal_cost(LADDER, sur_error=0.1, sur_seconds=0.1)  # equal time counts
    assert r["rung"] == "mid"
    assert equal_cost(LADDER, sur_error=0.1, sur_seconds=0.005) == {"error_ratio": None, "rung": None}


def test_unstable_rungs_are_never_chosen():
    blown = [rung("blown", 1e-4, None, stable=False), rung("nan", 2e-4, math.nan), rung("flagged", 3e-4, 1e-9, False)]
    ladder = LADDER + blown
    assert equal_accuracy(ladder, sur_error=0.06, sur_seconds=0.05)["rung"] == "mid"
    assert equal_cost(ladder, sur_error=0.1, sur_seconds=0.005)["rung"] is None
    assert equal_accuracy(blown, sur_error=0.5, sur_seconds=0.05) == {"speedup": None, "rung": None, "finest": None}
    with pytest.raises(LadderError, match="blow up"):
        equal_accuracy(LADDER, sur_error=math.nan, sur_seconds=0.05)
    with pytest.raises(LadderError, match="wall time"):
        equal_cost(LADDER, sur_error=0.1, sur_seconds=0.0)


def test_rollout_rel_l2():
    truth = np.ones((2, 3, 1, 4, 4))
    pred = truth.copy()
    pred[0] *= 1.1  # 10 % off in simulation 0, exact in simulation 1
    assert rollout_rel_l2(pred, truth, 2) == pytest.approx(0.05)
    pred[1, 2, 0, 0, 0] = np.nan
    assert rollout_rel_l2(pred, truth, 2) is None  # a blow-up is not a number
    with pytest.raises(LadderError, match="resample"):
        rollout_rel_l2(pred[:, :, :, :2], truth, 2)


def test_resampling():
    n, m = 32, 16
    x = np.arange(n) / n
    f = np.sin(2 * np.pi * 3 * x)[:, None] * np.cos(2 * np.pi * 2 * x)[None, :]  # modes well below both Nyquists
    down = np.asarray(spectral_resample(jax.numpy.asarray(f, "float32"), (m, m)))
    np.testing.assert_allclose(down, f[::2, ::2], atol=1e-5)
    up = np.asarray(spectral_resample(jax.numpy.asarray(down), (n, n)))
    np.testing.assert_allclose(up, f, atol=1e-5)
    # node grids: the end nodes map onto each other, linear fields are reproduced exactly
    mat = node_matrix(5, 9)
    assert mat[0, 0] == 1 and mat[-1, -1] == 1 and np.allclose(mat.sum(axis=1), 1)
    xs, xd = np.linspace(0, 1, 5), np.linspace(0, 1, 9)
    g = 2 * xs[:, None] + 3 * xs[None, :]
    np.testing.assert_allclose(np.asarray(node_resample(jax.numpy.asarray(g), (9, 9))),
                               2 * xd[:, None] + 3 * xd[None, :], atol=1e-12)


# ---------------------------------------------------------------------------------------------------------------------
# The whole ladder on a tiny real problem
# ---------------------------------------------------------------------------------------------------------------------


@functools.cache
def tiny_fno(cond_dim: int) -> nnx.Module:
    return get_model("fno", in_channels=1, out_channels=1, ndim=2, cond_dim=cond_dim, rngs=nnx.Rngs(0),
                     modes=3, width=8, depth=2)


def tiny_heat_surrogate(solver) -> Surrogate:
    """An untrained FNO with the heat2d wall ring held: a real model through the real rollout, not a good one."""
    names = solver.param_space.names
    meta = SurrogateMetadata(kind="next_step", solver="heat2d", grid=solver.grid, dt=solver.dt, channels=("T",),
                             cond_names=names, window=1, frozen_border=1)
    norm = Normalizer.identity(1, 2, len(names))
    return Surrogate.from_model(tiny_fno(len(names)), norm, meta)


def test_heat2d_ladder_end_to_end(tmp_path):
    base = {"n": 6, "dt": 2e-3}  # the "training setting": 8 x 8 nodes
    solver = get_solver("heat2d", **base)
    reference = {"n": 13, "scheme": "exponential"}  # 15 x 15 nodes (every other one on 8 x 8), exact in time
    ladder = ({"n": 13, "scheme": "exponential"},  # the reference setting itself
              {"n": 13, "dt": 1e-3}, {"n": 13, "dt": 2e-3},  # implicit Euler, growing dt
              {"dt": 2e-3}, {"n": 2, "dt": 2e-3})  # coarser grids: 8 x 8 nodes (the training setting), 4 x 4
    problem = Problem("heat2d", reference, ladder, frames=3, resample="nodes", job=heat2d_job)
    params = np.asarray(solver.sample_params(jax.random.key(0), 2), np.float64)
    keys = jax.random.split(jax.random.key(1), 2)
    r = measure_ladder(tiny_heat_surrogate(solver), base, problem, params, keys, n_frames=3, repeats=1)
    errors = [g.error for g in r["rungs"]]
    assert all(g.stable and math.isfinite(g.error) and g.seconds > 0 for g in r["rungs"])
    assert errors[0] < 1e-6  # the reference setting scored against itself
    assert errors[0] < errors[1] < errors[2]  # implicit Euler's time error grows with dt
    assert errors[4] > errors[3] > errors[2]  # and coarser grids are further off
    assert [g.extra["training_setting"] for g in r["rungs"]] == [False, False, False, True, False]
    assert math.isfinite(r["surrogate_error"]) and r["surrogate_error"] > 0
    assert 0 < r["identity_error"] < 1  # a cooling plate after 3 steps
    out = summarise("heat2d", r, base, batch=2, n_frames=3)
    assert out["heat2d_fixed_dt_speedup"] == pytest.approx(r["rungs"][3].seconds / r["surrogate_s"])
    acc = out["heat2d_equal_accuracy_speedup"]
    if acc is None:
        assert out["heat2d_finest_rung"]["error"] > out["heat2d_surrogate_rollout_rel_l2"]
    else:
        chosen = next(g for g in r["rungs"] if g.label == out["heat2d_equal_accuracy_rung"])
        assert chosen.error <= out["heat2d_surrogate_rollout_rel_l2"]
        assert acc == pytest.approx(chosen.seconds / r["surrogate_s"])
    json.dumps(out)  # the record is plain JSON
    assert "surrogate" in format_table(out, "heat2d")
    png = plot_pareto([{"name": "heat2d", "rungs": out["heat2d_ladder"], "reference": label(reference),
                        "surrogate": {"seconds": r["surrogate_s"], "error": r["surrogate_error"]},
                        "identity": r["identity_error"]}], tmp_path / "pareto.png")
    assert png.stat().st_size > 1000


def test_bad_input_is_a_clear_error(capsys):
    solver = get_solver("heat2d", n=6, dt=2e-3)
    with pytest.raises(SpeedupError, match="divides"):
        steps_per_frame(2e-3, get_solver("heat2d", n=6, dt=3e-3))
    with pytest.raises(SpeedupError, match="PROBLEM="):
        parse_surrogates(["heat2d"], ["heat2d"])
    with pytest.raises(SpeedupError, match="PROBLEM="):
        parse_surrogates(["wave=runs/x"], ["heat2d"])
    problem = Problem("heat2d", {"n": 13}, ({"dt": 2e-3},), 2, "nodes", heat2d_job)
    sur = tiny_heat_surrogate(solver)
    with pytest.raises(SpeedupError, match="run directory"):  # surrogate on 8 x 8, training setting on 64 x 64
        measure_ladder(sur, {}, problem, np.asarray(solver.sample_params(jax.random.key(0), 1)),
                       jax.random.split(jax.random.key(1), 1), 2)
    with pytest.raises(SystemExit) as e:
        main(["--only", "heat2d", "--surrogate", "heat2d"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "PROBLEM=" in err[0]
