"""The CFDBench-style CFD suite: the case file and its splits, the trajectory cache, and `pdestream eval --suite cfd`.

A tiny case file (an 8 x 8 cavity, 23 frames, 7 cases) keeps generation to a few seconds; tiny untrained FNOs stand
in for trained surrogates (what is checked does not depend on their quality).

Tolerances: cached trajectories against a direct solver rollout of the same case, 1e-5 relative (the same float32
program; the margin covers XLA's freedom to reorder sums); the identity baseline recomputed from the cached frames in
float64, rtol 1e-6 (the evaluator sums the same float32 data in another order).
"""

from __future__ import annotations

import json
import os

import h5py
import jax
import numpy as np
import pytest
from flax import nnx

from benchmarks.cfd_suite import (
    AXES,
    PROBLEMS,
    CaseFileError,
    evaluate_cfd,
    generate_cases,
    list_cases,
    load_cases,
)
from benchmarks.trajectories import read_trajectories
from solvers import get_solver
from streaming.cli import main
from surrogates.models import get_model
from surrogates.normalizer import Normalizer
from surrogates.surrogate import Surrogate, SurrogateMetadata

TINY = """
[splits]
seed = 3
val = 0.0
test = 0.34

[cavity]
solver = { nx = 8, ny = 8, dt = 2e-3 }
steps = 44
every = 2
baseline = { lid_velocity = 1.0, density = 1.0, viscosity = 1e-2, width = 1.0, height = 1.0 }

[cavity.bc]
lid_velocity = [0.6, 0.8, 1.2]

[cavity.prop]
density = [0.5, 1.5]
viscosity = [2e-2]

[cavity.geo]
width = [0.7, 1.3]
"""
TINY_DT = 4e-3  # dt * every
FNO_TINY = dict(width=8, modes=3, depth=1, proj_width=8)


def _surrogate(solver: str, grid: tuple[int, ...], channels: tuple[str, ...], dt: float,
               cond_names: tuple[str, ...]) -> Surrogate:
    meta = SurrogateMetadata(kind="next_step", solver=solver, grid=grid, dt=dt, channels=channels,
                             cond_names=cond_names)
    c = len(channels)
    model = get_model("fno", in_channels=c, out_channels=c, ndim=len(grid), cond_dim=meta.cond_dim,
                      rngs=nnx.Rngs(0), **FNO_TINY)
    rng = np.random.default_rng(0)
    norm = Normalizer(c, len(grid), cond_dim=meta.cond_dim)
    norm.update(rng.standard_normal((8, c, *grid)), rng.standard_normal((8, meta.cond_dim)) + 1.0).freeze()
    return Surrogate.from_model(model, norm, meta)


CAVITY = get_solver("cavity", nx=8, ny=8)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("cfd")
    (d / "cases.toml").write_text(TINY)
    return d


@pytest.fixture(scope="module")
def tiny_cf(tiny):
    """The tiny case file loaded once: its solver (and so its compiled rollout) is shared by the tests that use it."""
    return load_cases(tiny / "cases.toml")


@pytest.fixture(scope="module")
def cavity_sur(tiny) -> str:
    sur = _surrogate("cavity", (8, 8), CAVITY.channels, TINY_DT, CAVITY.param_space.names)
    return str(sur.save(tiny / "cavity_sur"))


# ------------------------------------------------------------------------------------------------ the case file
def test_default_case_file_has_cfdbench_axes_and_disjoint_seeded_splits():
    cf = load_cases()  # also checks every case's CFL number
    assert set(cf.problems) == set(PROBLEMS)
    again = load_cases(check_cfl=False)
    for name, pc in cf.problems.items():
        base = np.asarray(pc.baseline)
        for axis in AXES:
            parts = pc.parts[axis]
            names = [set(parts[p]) for p in ("train", "val", "test")]
            axis_cases = {c.name for c in pc.cases if c.axis == axis}
            assert set.union(*names) == axis_cases and sum(map(len, names)) == len(axis_cases)  # disjoint cover
            assert len(parts["test"]) == round(cf.fractions["test"] * len(axis_cases))
            assert parts == again.problems[name].parts[axis]  # reproducible
        for c in pc.cases:  # each axis varies only its own parameters (CFDBench, Luo et al. 2023)
            changed = {pc.param_names[i] for i in np.flatnonzero(np.asarray(c.params) != base)}
            if c.axis == "bc":
                assert changed == {pc.param_names[0]}
            elif c.axis == "prop":
                assert changed <= {"density", "viscosity"} and changed
            else:
                assert changed.isdisjoint({pc.param_names[0], "density", "viscosity"}) and changed
        everything = pc.select("all", "test")
        assert [c.name for c in everything] == [c.name for a in AXES for c in pc.select(a, "test")]


def test_split_seed_changes_the_split(tiny):
    other = tiny / "seed.toml"
    text = load_cases().path.read_text().replace("seed = 0", "seed = 1", 1)
    other.write_text(text)
    a, b = load_cases(check_cfl=False), load_cases(other, check_cfl=False)
    assert any(a.problems[p].parts[x] != b.problems[p].parts[x] for p in PROBLEMS for x in AXES)


@pytest.mark.parametrize(
    "edits,needle",
    [
        ([("[cavity.geo]\nwidth", "[cavity.geo]\nwidht")], "[cavity.geo] 'widht' is not a parameter of cavity"),
        ([("[cavity.bc]", "[cavty]\nx = 1\n[cavity.bc]")], "[cavty] is not a CFD problem"),
        ([("steps = 44\n", "")], "[cavity] needs 'steps'"),
        ([("lid_velocity = [0.6", "lid_velocity = [9.0")], "lid_velocity=9 is outside the solver's range"),
        ([("0.8, 1.2]", "0.8, 1.0]"), ("width = [0.7", "width = [1.0")], "case geo000 repeats case bc002"),
        ([("test = 0.34", "test = 1.5")], "[splits] test=1.5 must be a fraction"),
        ([("dt = 2e-3", "dt = 0.2")], "[cavity.bc] case bc000: cavity: "),  # the CFL check
        ([("nx = 8", "nx = 2")], "[cavity] solver: cavity: nx=2 cells is not supported"),
        ([("every = 2", "every = 3")], "steps=44 must be a multiple of every=3"),
    ],
)
def test_bad_case_file_names_the_key(tiny, edits, needle):
    text = TINY
    for old, new in edits:
        assert old in text
        text = text.replace(old, new, 1)
    bad = tiny / "bad.toml"
    bad.write_text(text)
    with pytest.raises(CaseFileError) as e:
        load_cases(bad)
    assert needle in str(e.value) and str(bad) in str(e.value), str(e.value)


def test_unknown_split_and_problem_are_named(tiny):
    with pytest.raises(CaseFileError, match="split='geometry' is not one of bc, prop, geo, all"):
        list_cases("cavity", "geometry", cases=tiny / "cases.toml")
    with pytest.raises(CaseFileError, match="problem 'tube' is not in"):
        list_cases("tube", cases=tiny / "cases.toml")


# ------------------------------------------------------------------------------------------------ cache
def test_cache_is_reused_and_regenerated_when_the_cases_change(tiny, tiny_cf):
    cases, cache = tiny_cf, tiny / "cache_a"
    path = generate_cases("cavity", "bc", "test", cases=cases, cache=cache, progress=False)
    traj = read_trajectories(path)
    (case,) = list_cases("cavity", "bc", "test", cases)  # 3 bc cases, 34 % test -> 1
    assert traj.shape == (1, 23, 3, 8, 8) and traj.solver == "cavity" and traj.sim_id.tolist() == [case.sim_id]
    np.testing.assert_allclose(traj.params[0], case.params)
    solver = tiny_cf.problems["cavity"].solver  # its compiled batched rollout is the one generate_cases used
    direct = np.asarray(solver.rollout(jax.random.key(0), np.asarray([case.params]), 44, 2))[0]
    np.testing.assert_allclose(traj.fields()[0], direct, rtol=1e-5, atol=1e-5 * np.abs(direct).max())

    stamp = path.stat().st_mtime_ns
    assert generate_cases("cavity", "bc", "test", cases=cases, cache=cache, progress=False) == path
    assert path.stat().st_mtime_ns == stamp  # reused, not rewritten

    with h5py.File(path, "r+") as f:  # a file whose key does not match is never used
        f.attrs["cfd_suite_key"] = "stale"
    assert generate_cases("cavity", "bc", "test", cases=cases, cache=cache, progress=False) == path
    with h5py.File(path, "r") as f:
        assert f.attrs["cfd_suite_key"] != "stale"

    changed = tiny / "changed.toml"  # the same case names with other lid speeds
    changed.write_text(TINY.replace("lid_velocity = [0.6, 0.8, 1.2]", "lid_velocity = [0.7, 0.9, 1.1]"))
    new = generate_cases("cavity", "bc", "test", cases=changed, cache=cache, progress=False)
    assert new != path and not path.exists()  # the stale file is replaced
    assert read_trajectories(new).params[0, 0] in (0.7, 0.9, 1.1)


def test_concurrent_generation_of_one_cache_file_runs_the_cases_once(tiny, tiny_cf, monkeypatch):
    """Two callers at once (threads here; the lock is a POSIX flock, so processes alike): one generates while the
    other waits on the lock, then finds the file and reuses it."""
    import threading

    from benchmarks import cfd_suite

    runs, real = [], cfd_suite._generate
    monkeypatch.setattr(cfd_suite, "_generate", lambda *a, **k: runs.append(1) or real(*a, **k))
    cache, out, errors = tiny / "cache_threads", [], []

    def call():
        try:
            out.append(generate_cases("cavity", "bc", "test", cases=tiny_cf, cache=cache, progress=False))
        except Exception as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=call) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors and len(out) == 2 and out[0] == out[1] and len(runs) == 1
    assert read_trajectories(out[0]).shape[0] == 1


def test_cfdbench_format_and_cache_env(tiny, tiny_cf, monkeypatch):
    monkeypatch.setenv("PDESTREAM_CFD_CACHE", str(tiny / "cache_env"))
    path = generate_cases("cavity", "geo", "test", fmt="cfdbench", cases=tiny_cf, progress=False)
    assert path.parent == tiny / "cache_env"
    traj = read_trajectories(path)
    assert traj.channels == ["u", "v", "mask"] and traj.shape[2:] == (3, 64, 64)
    fields = traj.fields()
    assert np.all(fields[:, :, 2] == 1.0)  # the cavity has no obstacle
    case = list_cases("cavity", "geo", "test", tiny / "cases.toml")[0]
    solver = tiny_cf.problems["cavity"].solver
    direct = solver.rollout(jax.random.key(0), np.asarray([case.params]), 44, 2)[0]
    want = np.asarray(solver.to_cfdbench(direct, np.asarray(case.params)))
    np.testing.assert_allclose(fields[0], want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


# ------------------------------------------------------------------------------------------------ evaluation
def test_evaluate_cfd_beside_identity(tiny, tiny_cf, cavity_sur):
    sur = Surrogate.load(cavity_sur)
    res = evaluate_cfd(sur, split="all", cases=tiny_cf, cache=tiny / "cache_eval", progress=False)
    assert res["suite"] == "cfd" and res["data"]["problem"] == "cavity" and res["data"]["format"] == "native"
    assert res["data"]["cases"] == [c.name for c in list_cases("cavity", "all", "test", tiny / "cases.toml")]
    assert set(res["results"]) == {"one_step", "rollout_20", "rollout_full"}
    assert res["results"]["rollout_full"]["steps"] == 22
    for block in res["results"].values():
        for model in ("surrogate", "identity"):
            assert {"MSE", "RMSE", "MAE", "NMSE"} <= set(block[model]["overall"])
            assert set(block[model]["fields"]) == {"u", "v", "p"}
    assert set(res["by_split"]) == set(AXES)
    # The identity baseline from the cached frames: predict u[s+1] = u[s].
    frames = np.concatenate([read_trajectories(p).fields() for p in res["data"]["files"].values()]).astype(np.float64)
    mse = np.mean((frames[:, :-1] - frames[:, 1:]) ** 2)
    ident = res["results"]["one_step"]["identity"]["overall"]
    np.testing.assert_allclose(ident["MSE"], mse, rtol=1e-6)
    np.testing.assert_allclose(ident["NMSE"], mse / np.mean(frames[:, 1:] ** 2), rtol=1e-6)


def test_cli_eval_cfd_table_json_figures(tiny, cavity_sur, capsys):
    js, figs = tiny / "eval.json", tiny / "figs"  # reuses the cache of test_evaluate_cfd_beside_identity if it ran
    argv = ["eval", cavity_sur, "--suite", "cfd", "--split", "all", "--cases", str(tiny / "cases.toml"),
            "--cache", str(tiny / "cache_eval"), "--json", str(js), "--figures", str(figs), "--examples", "1"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "CFD suite cavity / split all / test cases" in out
    assert "| rollout | 20 | all | identity |" in out and "| rollout (full) | 22 | u | surrogate |" in out
    assert "| geo | 1 | one_step | 1 | identity |" in out
    doc = json.loads(js.read_text())
    assert doc["results"]["one_step"]["identity"]["fields"]["v"]["NMSE"] > 0
    assert len(doc["per_step"]["surrogate"]["NMSE"]) == 22
    assert (figs / "error_vs_step.png").exists() and len(list(figs.glob("case_*.png"))) == 1


@pytest.mark.parametrize(
    "which,extra,needle",
    [
        ("heat", [], "trained on 'heat2d', not on a CFD problem"),
        ("heat", ["--problem", "cavity"], "but the surrogate predicts (1, 16, 16)"),
        ("dt", [], "the suite's frames are 0.004 apart"),
        ("cavity", ["--problem", "pipe"], "problem='pipe' is not a CFD problem"),
        ("cavity", ["--split", "test"], "--split test is for --suite pdebench"),
        ("cavity", ["extra.h5"], "--suite cfd takes no FILE"),
    ],
)
def test_cli_eval_cfd_misfit_is_a_clean_error(tiny, cavity_sur, capsys, which, extra, needle):
    if which == "heat":
        heat = get_solver("heat2d", n=14)
        path = str(_surrogate("heat2d", heat.grid, heat.channels, heat.dt, ()).save(tiny / f"heat{len(extra)}"))
    elif which == "dt":
        path = str(_surrogate("cavity", (8, 8), CAVITY.channels, 0.01, CAVITY.param_space.names).save(tiny / "dt"))
    else:
        path = cavity_sur
    suite = ["--suite", "cfd", *extra[:1]] if extra[:1] == ["extra.h5"] else ["--suite", "cfd", *extra]
    argv = ["eval", path, *suite, "--cases", str(tiny / "cases.toml"), "--cache", str(tiny / "cache_d")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err and err.count("\n") == 1, err


def test_shipped_cfd_configs_match_the_suite():
    """configs/cfd_<problem>.toml train on the suite's grid and frame spacing, so `eval --suite cfd` fits them."""
    from streaming.config import load_config

    cf = load_cases(check_cfl=False)
    for name, pc in cf.problems.items():
        cfg = load_config(os.path.join("configs", f"cfd_{name}.toml"))
        assert cfg.solver.name == name
        solver = get_solver(name, **cfg.solver.config)
        assert solver.grid == pc.solver.grid
        assert np.isclose(solver.dt * cfg.solver.every, pc.solver.dt * pc.every)
        assert solver.describe()["config"] == pc.solver.describe()["config"]
