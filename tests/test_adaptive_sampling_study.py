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
