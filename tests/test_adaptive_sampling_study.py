"""The adaptive-sampling study script: its held-out set (grid points times initial conditions) and its
argument errors (one line, exit status 2)."""

import numpy as np
import pytest

from benchmarks.studies import adaptive_sampling as study
from streaming.adaptive import to_unit
from streaming.assembly import build_solver


def test_held_out_set_has_several_initial_conditions_per_grid_point(tmp_path):
    cfg = study.job_config("ks1d", "lhs", 0, study.SCALES["tiny"], str(tmp_path), "probe",
                           {"solver.steps": "20", "solver.every": "10"})
    frames, params = study.test_set(cfg, 3, ics=2, test_seed=1000)
    assert frames.shape[:2] == (6, 3) and params.shape == (6, 1)
    u = to_unit(build_solver(cfg).param_space, params)[:, 0]
    np.testing.assert_allclose(u, np.repeat((np.arange(3) + 0.5) / 3, 2))
    assert not np.allclose(frames[0, 0], frames[1, 0])  # same parameter, different initial conditions
    other, _ = study.test_set(cfg, 3, ics=2, test_seed=2000)  # a tuning set: other initial conditions
    assert not np.allclose(frames[:, 0], other[:, 0])
    again, _ = study.test_set(cfg, 3, ics=2, test_seed=1000)
    np.testing.assert_array_equal(frames, again)


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--ics", "0"], "--ics 0"),
        (["--seeds", "0"], "--seeds 0"),
        (["--set", "solver.adaptive.floor"], "write KEY=VALUE"),
        (["--problems", "heat9d"], "unknown problem(s) heat9d"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(tmp_path, capsys, args, needle):
    assert study.main(["--json", str(tmp_path / "out.json"), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and "\n" not in err
    assert not (tmp_path / "out.json").exists()


def _run(seeds, p99s, test_seed=888_000, floor="0.5"):
    """A study result of one problem with the given seeds and per-seed (lhs, adaptive) p99 errors."""
    per_seed = [{"seed": s, "lhs": {"p99": a, "mean": 1.0, "wall_s": 10.0, "p99_frame": 3 * a, "mean_frame": 1.0},
                 "adaptive": {"p99": b, "mean": 2.0, "wall_s": 11.0, "p99_frame": 3 * b, "mean_frame": 4.0}}
                for s, (a, b) in zip(seeds, p99s, strict=True)]
    prob = {"seeds": seeds, "test_seed": test_seed, "test_ics_per_point": 16, "test_params": [0.1, 0.2],
            **study.aggregate(per_seed)}
    return {"scale": "medium", "adaptive": floor, "overrides": {}, "error": "trajectory relative L2",
            "command": f"run {seeds}", "total_s": 5.0,
            "problems": {"ks1d": prob}}


def test_combine_pools_the_seeds_and_recomputes_the_ratios(tmp_path, capsys):
    import json

    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(_run([10, 11], [(1.0, 0.5), (1.0, 0.5)])))
    b.write_text(json.dumps(_run([12, 13], [(2.0, 2.0), (2.0, 2.0)])))
    out = tmp_path / "all.json"
    assert study.main(["--combine", str(a), str(b), "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["problems"]["ks1d"]["seeds"] == [10, 11, 12, 13]
    assert r["ks1d_p99_error_ratio"] == pytest.approx(1.25 / 1.5)  # means over 4 seeds: (0.5+0.5+2+2)/4, 6/4
    assert r["ks1d_mean_error_ratio"] == pytest.approx(2.0) and r["ks1d_wall_time_ratio"] == pytest.approx(1.1)
    assert r["ks1d_p99_error_ratio_frame"] == pytest.approx(1.25 / 1.5)
    assert r["ks1d_mean_error_ratio_frame"] == pytest.approx(4.0)
    assert r["total_s"] == 10.0 and r["combined"] == ["run [10, 11]", "run [12, 13]"]
    assert "(4 seeds)" in capsys.readouterr().out
    # runs that cannot be pooled: one line, exit status 2, nothing written
    for bad, needle in [(_run([11, 12], [(1, 1), (1, 1)]), "more than one run"),
                        (_run([20], [(1, 1)], test_seed=555_000), "different held-out sets"),
                        (_run([20], [(1, 1)], floor="0.3"), "differ in adaptive"),
                        ({**_run([20], [(1, 1)]), "error": None}, "differ in error")]:  # a per-frame-error run
        b.write_text(json.dumps(bad))
        out.unlink(missing_ok=True)
        assert study.main(["--combine", str(a), str(b), "--json", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert needle in err and "\n" not in err and not out.exists()
    for text, needle in [("not json", "is not JSON"),
                         (json.dumps({"scale": "medium", "adaptive": "0.5", "overrides": {},
                                      "error": "trajectory relative L2", "problems": {"ks1d": {}}}),
                          "not this study's --json output")]:
        b.write_text(text)
        assert study.main(["--combine", str(a), str(b), "--json", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert needle in err and "\n" not in err and not out.exists()


def test_the_ceiling_jobs_put_every_simulation_at_the_hardest_value(tmp_path):
    """``adaptive_ceiling``: the concentrated job's design hands out only the hardest value (the centre of the
    lowest fifth of log beta), the problem's own held values kept; the LHS job is the study's."""
    from benchmarks.studies import adaptive_ceiling as ceiling
    from streaming.adaptive import make_cursor

    scale = study.SCALES["tiny"]
    extra, value = ceiling.concentrated("burgers1d", scale, str(tmp_path), {})
    assert value == pytest.approx(10 ** -1.8)
    cfg = study.job_config("burgers1d", "lhs", 3, scale, str(tmp_path), "c", extra)
    p = make_cursor(build_solver(cfg), cfg.solver, 1).params_of(np.arange(cfg.solver.n_sims))
    np.testing.assert_allclose(p[:, 1], value)  # beta
    assert np.all(p[:, 0] == 1.0) and np.all(p[:, 2] == 0.0)  # alpha, gamma of the family
    held, _ = ceiling.concentrated("burgers1d_alpha", scale, str(tmp_path), {})
    assert held["solver.fixed"] == "{ beta = 0.2, gamma = 0.0, alpha = 2.7 }"
    assert ceiling.main(["--json", str(tmp_path / "o.json"), "--problems", "heat9d"]) == 2
