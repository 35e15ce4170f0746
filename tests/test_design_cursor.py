"""The fixed design cursor: a Latin hypercube of a finite design is stratified over the design's own size."""

import numpy as np
import pytest

from solvers import get_solver
from streaming.adaptive import to_unit
from streaming.design import BLOCK, DesignCursor, block_size


@pytest.mark.parametrize("n_sims", [48, 300])
def test_lhs_design_puts_one_simulation_in_each_stratum_of_every_parameter(n_sims):
    solver = get_solver("heat2d", n=8)
    cursor = DesignCursor(solver, n_sims, "lhs", seed=3, sims_per_task=4)
    u = to_unit(solver.param_space, cursor.params_of(np.arange(n_sims)))
    strata = np.floor(u * n_sims).astype(int)
    for j in range(u.shape[1]):  # exactly one point per 1/n_sims interval, for each parameter
        assert np.array_equal(np.sort(strata[:, j]), np.arange(n_sims)), solver.param_space.names[j]


def test_blocks_are_equal_and_at_most_BLOCK():
    assert block_size(0) == BLOCK
    assert block_size(48) == 48
    assert block_size(BLOCK) == BLOCK
    assert block_size(3000) == 1000
    assert block_size(BLOCK + 1) == (BLOCK + 2) // 2
