"""Parameter spaces and designs."""

import jax
import numpy as np
import pytest

from solvers import Param, ParamSpace, SolverError

SPACE = ParamSpace((Param("a", 0.0, 2.0), Param("nu", 1e-5, 1e-3, log=True)))


@pytest.mark.parametrize("design", ["uniform", "lhs", "sobol"])
def test_designs_stay_in_bounds_and_are_reproducible(design):
    p = SPACE.sample(jax.random.key(0), 64, design)
    assert p.shape == (64, 2)
    assert (p[:, 0] >= 0).all() and (p[:, 0] <= 2).all()
    assert (p[:, 1] >= 1e-5).all() and (p[:, 1] <= 1e-3).all()
    np.testing.assert_array_equal(p, SPACE.sample(jax.random.key(0), 64, design))


def test_lhs_fills_each_stratum_once():
    p = SPACE.sample(jax.random.key(1), 10, "lhs")
    strata = np.floor(p[:, 0] / 0.2).astype(int)
    assert sorted(strata) == list(range(10))


def test_log_parameter_is_uniform_in_log10():
    p = SPACE.sample(jax.random.key(2), 4000, "sobol")
    logs = np.log10(p[:, 1])
    # median of U(-5, -3) in log10 is -4; Sobol points put it within 0.02
    assert abs(np.median(logs) + 4) < 0.02


def test_validation_errors():
    with pytest.raises(SolverError, match="shape"):
        SPACE.validate(np.zeros(3))
    with pytest.raises(SolverError, match="a=3"):
        SPACE.validate(np.array([3.0, 1e-4]))
    with pytest.raises(SolverError, match="unknown design"):
        SPACE.sample(jax.random.key(0), 2, "grid")
