"""Every shipped job config loads, and names a solver whose sample fits the model."""

from pathlib import Path

import pytest

from streaming.assembly import build_solver, sample_spec
from streaming.config import load_config

CONFIGS = sorted(Path("configs").glob("*.toml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_config_loads_and_builds_its_solver(path):
    cfg = load_config(path)
    solver = build_solver(cfg)
    spec = sample_spec(cfg, solver)
    frames = cfg.solver.steps // cfg.solver.every + 1
    assert spec.span <= frames  # the input window and the targets of every unrolled model call
    assert cfg.optim.batch_size <= cfg.buffer.capacity


def test_all_configs_present():
    names = {p.stem for p in CONFIGS}
    assert {"quickstart", "heat_mlp", "ns2d_fno", "ns2d_lsm", "burgers_mppde"} <= names
