"""Evaluation (trajectories and PDEBench suites), figures, `predict`, and the `eval`/`predict` command lines.

Tiny untrained FNOs stand in for trained surrogates; what is checked does not depend on their quality:

- hand-computed numbers: the identity baseline and a constant-output surrogate on frames u_j = j + 10;
- "oracle" files whose frames *are* the surrogate's own rollout, so its one-step and rollout errors must vanish;
- agreement with direct ``Surrogate.step`` / ``rollout`` calls and ``benchmarks.metrics`` on a `pdestream solve` file.

Tolerances: hand values are float64 sums of float32 data that are exact small integers (rtol 1e-12), except where
the constant prediction is the float32 normaliser mean (rtol 1e-6, a few float32 ulps). Surrogate outputs compared
between differently batched calls differ by float32 round-off of XLA's batched kernels (rtol 1e-5 on metrics,
NMSE < 1e-10 = relative error 1e-5 for "zero" error).
"""

from __future__ import annotations

import argparse
import json
import math

import h5py
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from benchmarks.evaluate import (
    EvaluationError,
    evaluate_pdebench,
    evaluate_trajectories,
    evaluate_trajectory_file,
    load_surrogate,
    pdebench_test_sims,
    to_json,
)
from benchmarks.metrics import field_metrics, pdebench_metrics
from benchmarks.pdebench import open_pdebench, trajectories_to_pdebench, write_pdebench_grouped, write_pdebench_single
from benchmarks.predict import predict_file
from benchmarks.trajectories import TrajectoryWriter, read_trajectories
from solvers import get_solver
from streaming import cli_eval
from streaming.cli import is_user_error
from streaming.solve import solve_to_file
from surrogates.models import get_model
from surrogates.normalizer import Normalizer
from surrogates.surrogate import Surrogate, SurrogateMetadata

FNO_TINY = dict(width=8, modes=4, depth=2, proj_width=8)
HEAT = get_solver("heat2d", n=14)  # 16 x 16 grid with the walls
NMSE_ZERO = 1e-10  # (relative error 1e-5)^2: float32 round-off between differently batched calls


def _surrogate(meta: SurrogateMetadata, seed: int = 0, scale: float = 1.0, offset: float = 0.0) -> Surrogate:
    c, nd = len(meta.channels), len(meta.grid)
    cin = 0 if meta.kind == "field" else meta.window * c
    model = get_model(
        "fno",
        in_channels=cin,
        out_channels=meta.horizon * c,
        ndim=nd,
        cond_dim=meta.cond_dim,
        rngs=nnx.Rngs(seed),
        **FNO_TINY,
    )
    rng = np.random.default_rng(seed)
    norm = Normalizer(c, nd, cond_dim=meta.cond_dim)
    cond = offset + scale * rng.standard_normal((8, meta.cond_dim)) if meta.cond_dim else None
    norm.update(offset + scale * rng.standard_normal((8, c, *meta.grid)), cond).freeze()
    return Surrogate.from_model(model, norm, meta)


def _heat_meta(**kw) -> SurrogateMetadata:
    base = dict(
        kind="next_step",
        solver="heat2d",
        grid=HEAT.grid,
        dt=HEAT.dt,
        channels=HEAT.channels,
        cond_names=HEAT.param_space.names,
    )
    return SurrogateMetadata(**{**base, **kw})


@pytest.fixture(scope="module")
def heat_sur() -> Surrogate:
    return _surrogate(_heat_meta(), scale=100.0, offset=300.0)


@pytest.fixture(scope="module")
def heat_file(tmp_path_factory) -> str:
    """3 heat2d simulations x 9 frames (8 steps) written by `pdestream solve`'s code path."""
    path = tmp_path_factory.mktemp("heat") / "heat.h5"
    return str(solve_to_file(HEAT, 3, 8, path, seed=1, show_progress=False))


@pytest.fixture(scope="module")
def saved(heat_sur, tmp_path_factory) -> str:
    return str(heat_sur.save(tmp_path_factory.mktemp("sur") / "surrogate"))


# ---------------------------------------------------------------------------------------------------- CLI helpers
def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pdestream")
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name, fn, help, example):
        p = sub.add_parser(name, help=help, description=f"{help}\n\nexample:\n  {example}")
        p.set_defaults(fn=fn)
        return p

    cli_eval.add_parsers(sub, add)
    return parser


def _cli(argv: list[str]) -> tuple[int, str]:
    """Run a subcommand as `pdestream` does: (0, "") or (2, the one-line message of a user error)."""
    args = _parser().parse_args(argv)
    try:
        args.fn(args)
    except Exception as e:
        assert is_user_error(e), f"{type(e).__module__}.{type(e).__name__} would print a traceback: {e}"
        msg = str(e)
        assert "\n" not in msg and msg
        return 2, msg
    return 0, ""


# ---------------------------------------------------------------------------------------------------- hand values
def test_identity_and_constant_surrogate_by_hand(heat_sur):
    """Frames u_j = j + 10 (spatially constant), j = 0..8: every number follows in closed form.

    (3 simulations x 9 frames and batch 3 everywhere in this file: the compiled surrogate calls are shared.)"""
    n, t_len = 3, 9
    j = np.arange(t_len, dtype=np.float64)
    frames = np.broadcast_to((j + 10)[None, :, None, None, None], (n, t_len, 1, *HEAT.grid)).astype(np.float32)
    params = np.full((n, 5), 300.0)
    # A surrogate whose model outputs 0 (zeroed last projection) predicts the normaliser's mean mu everywhere.
    zero = nnx.clone(heat_sur.model)  # own arrays: the module-scoped fixture stays untouched
    zero.proj2.kernel[...] = jnp.zeros_like(zero.proj2.kernel[...])
    zero.proj2.bias[...] = jnp.zeros_like(zero.proj2.bias[...])
    const = Surrogate.from_model(zero, heat_sur.normalizer, heat_sur.metadata)
    mu = float(np.asarray(heat_sur.normalizer.stats.mean).ravel()[0])

    r = evaluate_trajectories(const, frames, params, HEAT.dt, rollout_steps=[3, 50], t0=0.0, batch=3)
    res = r["results"]
    targets = j[1:] + 10  # frames 1..8 are the predicted ones (W = 1)
    ms_target = np.mean(targets**2)  # mean of 11^2 .. 18^2
    # identity, one-step: u_s - u_{s+1} = -1 everywhere.
    ident = res["one_step"]["identity"]["overall"]
    assert ident["MSE"] == pytest.approx(1.0, rel=1e-12) and ident["MAE"] == pytest.approx(1.0, rel=1e-12)
    assert ident["NMSE"] == pytest.approx(1.0 / ms_target, rel=1e-12)
    assert res["one_step"]["identity"]["fields"]["T"] == ident
    # identity, rollout from u_0: error -k at step k.
    k = np.arange(1, 9.0)
    full = res["rollout_full"]["identity"]["overall"]
    assert res["rollout_full"]["steps"] == 8
    assert full["MSE"] == pytest.approx(np.mean(k**2), rel=1e-12)
    assert full["NMSE"] == pytest.approx(np.mean(k**2) / ms_target, rel=1e-12)
    assert full["RMSE"] == pytest.approx(math.sqrt(204 / 8), rel=1e-12)  # sum of k^2, k = 1..8, is 204
    r3 = res["rollout_3"]["identity"]["overall"]
    assert r3["MSE"] == pytest.approx(14 / 3, rel=1e-12)
    assert r3["NMSE"] == pytest.approx((14 / 3) / np.mean(targets[:3] ** 2), rel=1e-12)
    assert "rollout_50" not in res and any("rollout_50 skipped" in w for w in r["warnings"])
    per = r["per_step"]
    assert per["step"] == list(range(1, 9))
    np.testing.assert_allclose(per["identity"]["MSE"], k**2, rtol=1e-12)
    np.testing.assert_allclose(per["identity"]["NMSE"], k**2 / targets**2, rtol=1e-12)
    # constant surrogate: the same targets in one-step and rollout, error mu - u_j.
    want = np.mean((mu - targets) ** 2)
    for key in ("one_step", "rollout_full"):
        m = res[key]["surrogate"]["overall"]
        assert m["MSE"] == pytest.approx(want, rel=1e-6), key
        assert m["NMSE"] == pytest.approx(want / ms_target, rel=1e-6), key
        assert m["MAE"] == pytest.approx(np.mean(np.abs(mu - targets)), rel=1e-6), key
    np.testing.assert_allclose(per["surrogate"]["MSE"], (mu - targets) ** 2, rtol=1e-6)
    assert r["nonfinite_sims"] == []


# ---------------------------------------------------------------------------------------------------- trajectories
def test_trajectory_file_matches_direct_surrogate_calls(heat_sur, heat_file):
    r = evaluate_trajectory_file(heat_sur, heat_file, rollout_steps=[4], batch=3, n_examples=2)
    traj = read_trajectories(heat_file)
    frames, cond = traj.fields(), traj.params.astype(np.float32)
    n, t_len = frames.shape[:2]
    assert (r["data"]["n_sims"], r["data"]["n_frames"], r["data"]["dt"]) == (3, 9, pytest.approx(HEAT.dt))
    # one-step: every frame but the last, one call per frame index.
    one = np.stack([np.asarray(heat_sur.step(frames[:, s], cond)) for s in range(t_len - 1)], axis=1)
    ref = field_metrics(one, frames[:, 1:], spatial_dims=2, channels=["T"])
    got = r["results"]["one_step"]["surrogate"]["overall"]
    for key in ("MSE", "MAE", "NMSE", "rel_L2"):
        assert got[key] == pytest.approx(ref[key], rel=1e-5), key
    # rollout from frame 0 over all 8 steps, and its first 4.
    roll = np.asarray(heat_sur.rollout(frames[:, 0], t_len - 1, cond))
    for key, h in (("rollout_full", 8), ("rollout_4", 4)):
        ref = field_metrics(roll[:, 1 : h + 1], frames[:, 1 : h + 1], spatial_dims=2)
        assert r["results"][key]["steps"] == h
        assert r["results"][key]["surrogate"]["overall"]["NMSE"] == pytest.approx(ref["NMSE"], rel=1e-5), key
        ident = field_metrics(
            np.broadcast_to(frames[:, :1], frames[:, 1 : h + 1].shape), frames[:, 1 : h + 1], spatial_dims=2
        )
        assert r["results"][key]["identity"]["overall"]["MSE"] == pytest.approx(ident["MSE"], rel=1e-12), key
    # examples: 2 of the 3 simulations, truth and prediction from frame 0.
    ex = r["examples"]
    assert ex["sims"] == [0, 2] and ex["truth"].shape == ex["prediction"].shape == (2, 9, 1, *HEAT.grid)
    np.testing.assert_allclose(ex["prediction"], roll[[0, 2]], rtol=1e-5, atol=1e-3)  # K-scale fields ~1e2
    js = json.dumps(to_json(r), allow_nan=False)  # strict JSON, no arrays of examples
    assert "examples" not in json.loads(js)


def _oracle_file(sur: Surrogate, path, n: int, t_len: int, seed: int = 0) -> np.ndarray:
    """A trajectory file whose frames 1.. are the surrogate's own rollout from a random frame 0."""
    rng = np.random.default_rng(seed)
    u0 = (300 + 50 * rng.standard_normal((n, 1, *HEAT.grid))).astype(np.float32)
    params = rng.uniform(100, 500, (n, 5))
    frames = np.asarray(sur.rollout(u0, t_len - 1, params.astype(np.float32)))
    w = TrajectoryWriter(
        path=path,
        n_sims=n,
        frame_shape=frames.shape[1:],
        n_params=5,
        solver="heat2d",
        channels=["T"],
        param_names=HEAT.param_space.names,
        coords=HEAT.coords(),
        times=np.arange(t_len) * HEAT.dt,
        config={},
        dt=HEAT.dt,
        every=1,
    )
    with w:
        w.write(0, frames, params, np.arange(n))
    return frames


def test_surrogate_on_its_own_rollout_has_zero_error(heat_sur, tmp_path):
    _oracle_file(heat_sur, tmp_path / "oracle.h5", n=3, t_len=9)
    r = evaluate_trajectory_file(heat_sur, tmp_path / "oracle.h5", rollout_steps=[2], batch=2)  # other batching
    for key in ("one_step", "rollout_2", "rollout_full"):
        assert r["results"][key]["surrogate"]["overall"]["NMSE"] < NMSE_ZERO, key
        assert r["results"][key]["identity"]["overall"]["NMSE"] > 1e-6, key  # the baseline is not exact
    assert max(r["per_step"]["surrogate"]["NMSE"]) < NMSE_ZERO


# ---------------------------------------------------------------------------------------------------- PDEBench
def test_pdestream_file_in_pdebench_layout_with_per_simulation_parameters(tmp_path):
    """`pdestream solve --layout pdebench`: same fields, one (N,) dataset per parameter; the evaluator conditions
    each simulation on its own parameters (zero error on the surrogate's own rollout proves it: one swapped or
    shared parameter vector would not give ~0)."""
    heat_sur = _surrogate(_heat_meta(), seed=7, scale=100.0, offset=300.0)  # its own: other tests alter theirs
    frames = _oracle_file(heat_sur, tmp_path / "oracle.h5", n=4, t_len=6, seed=5)
    out = trajectories_to_pdebench(tmp_path / "oracle.h5", tmp_path / "oracle_pdebench.h5")
    pf = open_pdebench(out)
    assert pf.layout == "tensor" and pf.shape == (4, 6, 1, *HEAT.grid)
    assert set(HEAT.param_space.names) <= set(pf.extras)
    np.testing.assert_array_equal(pf.read().fields, frames)
    r = evaluate_pdebench(heat_sur, out, initial_step=1, split="all")
    assert r["results"]["rollout_full"]["surrogate"]["overall"]["NMSE"] < NMSE_ZERO
    assert r["results"]["rollout_full"]["identity"]["overall"]["NMSE"] > 1e-6
    r = evaluate_pdebench(heat_sur, out, initial_step=1, split="all", cond={"T_left": 100.0})  # overrides one column
    assert r["results"]["rollout_full"]["surrogate"]["overall"]["NMSE"] > 1e-8


@pytest.fixture(scope="module")
def bundle1d() -> Surrogate:
    meta = SurrogateMetadata(
        kind="bundle", solver="burgers1d", grid=(32,), dt=0.01, channels=("u",), window=2, horizon=2
    )
    return _surrogate(meta, seed=1)


@pytest.fixture(scope="module")
def cfd2d() -> Surrogate:
    meta = SurrogateMetadata(
        kind="next_step",
        solver="cfd",
        grid=(8, 8),
        dt=0.05,
        channels=("density", "pressure", "Vx", "Vy"),
        cond_names=("eta",),
    )
    return _surrogate(meta, seed=2)


def _oracle_pdebench(sur: Surrogate, n: int, nt: int, initial_step: int, cond=None, seed: int = 0) -> np.ndarray:
    """(n, nt, C, *grid): random first initial_step frames, then the surrogate's rollout from their last W."""
    rng = np.random.default_rng(seed)
    m = sur.metadata
    data = rng.standard_normal((n, nt, len(m.channels), *m.grid)).astype(np.float32)
    win = data[:, initial_step - m.window : initial_step]
    roll = np.asarray(sur.rollout(win[:, 0] if m.window == 1 else win, nt - initial_step, cond))
    data[:, initial_step:] = roll[:, 1:]
    return data


def test_pdebench_tensor_1d_bundle(bundle1d, tmp_path):
    n, nt, k = 3, 8, 3
    data = _oracle_pdebench(bundle1d, n, nt, k)
    x = (np.arange(32) + 0.5) / 32  # 17 rfft modes: every fRMSE band has some
    path = write_pdebench_single(
        tmp_path / "1D_Burgers.hdf5", data[:, :, 0], x, np.arange(nt + 1) * 0.01, attrs={"Nu": 0.01}
    )
    r = evaluate_pdebench(bundle1d, path, initial_step=k, split="all", n_examples=1)
    sur, ident = (r["results"]["rollout_full"][m]["overall"] for m in ("surrogate", "identity"))
    assert r["results"]["rollout_full"]["steps"] == nt - k and r["warnings"] == []
    assert sur["NMSE"] < NMSE_ZERO and sur["nRMSE"] < 1e-5
    # the identity baseline: PDEBench's metrics of frame k-1 copied over frames k..nt-1.
    ref = pdebench_metrics(
        np.broadcast_to(data[:, k - 1 : k], data[:, k:].shape), data[:, k:], spatial_dims=1, channels=["u"]
    )
    for key in ("RMSE", "nRMSE", "cRMSE", "bRMSE", "max_error", "fRMSE_low", "fRMSE_mid", "fRMSE_high"):
        assert ident[key] == pytest.approx(ref[key], rel=1e-9), key
    assert len(r["per_step"]["surrogate"]["nRMSE"]) == nt - k
    assert r["examples"]["truth"].shape == (1, nt - k + 1, 1, 32)
    # PDEBench's evaluator averages over all nt frames, the k given ones at zero error.
    ev = r["results"]["pdebench_evaluator"]["surrogate"]
    assert ev["nRMSE"] == pytest.approx(sur["nRMSE"] * (nt - k) / nt, rel=1e-9)


def test_pdebench_cfd_and_grouped_layouts_with_cond(cfd2d, tmp_path):
    n, nt, k = 2, 5, 2
    eta = np.float32(0.01)
    data = _oracle_pdebench(cfd2d, n, nt, k, cond=np.full((1,), eta), seed=3)
    xy = (np.arange(8) + 0.5) / 8
    fields = {c: data[:, :, i] for i, c in enumerate(("density", "pressure", "Vx", "Vy"))}
    cfd = write_pdebench_single(
        tmp_path / "2D_CFD.hdf5", fields, xy, np.arange(nt) * 0.05, y=xy, attrs={"ETA": 0.01, "zeta": 0.01, "M": 0.1}
    )  # attribute names are case-insensitive
    r = evaluate_pdebench(cfd2d, cfd, initial_step=k, split="all")
    assert r["data"]["layout"] == "cfd" and r["data"]["channels"] == ["density", "pressure", "Vx", "Vy"]
    assert r["results"]["rollout_full"]["surrogate"]["overall"]["NMSE"] < NMSE_ZERO
    assert set(r["results"]["rollout_full"]["surrogate"]["fields"]) == {"density", "pressure", "Vx", "Vy"}

    grouped = write_pdebench_grouped(
        tmp_path / "2D_diff-react.h5", np.moveaxis(data, 2, -1), xy, np.arange(nt) * 0.05, y=xy
    )
    with pytest.raises(EvaluationError, match=r"give \['eta'\].*--cond eta=VALUE"):
        evaluate_pdebench(cfd2d, grouped, initial_step=k, split="all")
    r = evaluate_pdebench(cfd2d, grouped, initial_step=k, split="all", cond={"eta": 0.01})
    assert r["data"]["layout"] == "grouped" and r["data"]["channels"] == ["c0", "c1", "c2", "c3"]
    assert r["results"]["rollout_full"]["surrogate"]["overall"]["NMSE"] < NMSE_ZERO
    # a different eta changes the prediction: the conditioning reaches the model.
    r2 = evaluate_pdebench(cfd2d, grouped, initial_step=k, split="all", cond={"eta": 3.0})
    assert r2["results"]["rollout_full"]["surrogate"]["overall"]["NMSE"] > 1e-6


def test_window_of_two_frames_and_bundle_outputs(bundle1d):
    """W = 2, K = 2: one-step feeds u[s-1], u[s] and scores the first output against u[s+1]."""
    rng = np.random.default_rng(7)
    frames = rng.standard_normal((3, 7, 1, 32)).astype(np.float32)
    r = evaluate_trajectories(bundle1d, frames, None, 0.01, rollout_steps=[3])
    assert r["results"]["one_step"]["steps"] == 1 and r["results"]["rollout_full"]["steps"] == 5
    one = np.stack([np.asarray(bundle1d.step(frames[:, s - 1 : s + 1]))[:, 0] for s in range(1, 6)], axis=1)
    ref = field_metrics(one, frames[:, 2:], spatial_dims=1)
    assert r["results"]["one_step"]["surrogate"]["overall"]["MSE"] == pytest.approx(ref["MSE"], rel=1e-5)
    ident = field_metrics(frames[:, 1:-1], frames[:, 2:], spatial_dims=1)  # u[s] copied to s+1
    assert r["results"]["one_step"]["identity"]["overall"]["MSE"] == pytest.approx(ident["MSE"], rel=1e-12)
    roll = np.asarray(bundle1d.rollout(frames[:, :2], 5))  # from frames 0, 1: frame 1, then 5 predictions
    ref = field_metrics(roll[:, 1:], frames[:, 2:], spatial_dims=1)
    assert r["results"]["rollout_full"]["surrogate"]["overall"]["MSE"] == pytest.approx(ref["MSE"], rel=1e-5)
    ident = field_metrics(np.broadcast_to(frames[:, 1:2], (3, 5, 1, 32)), frames[:, 2:], spatial_dims=1)
    assert r["results"]["rollout_full"]["identity"]["overall"]["MSE"] == pytest.approx(ident["MSE"], rel=1e-12)
    assert r["per_step"]["t"] == pytest.approx([0.02, 0.03, 0.04, 0.05, 0.06])


def test_pdebench_test_split_is_pdebench_s(tmp_path):
    x = (np.arange(4) + 0.5) / 4
    single = write_pdebench_single(tmp_path / "s.hdf5", np.zeros((20, 3, 4)), x, None)
    grouped = write_pdebench_grouped(tmp_path / "g.h5", np.zeros((20, 3, 4, 1)), x, None)
    # FNODatasetSingle keeps data[:int(N * 0.1)], FNODatasetMult data_list[int(N * 0.9):].
    assert pdebench_test_sims(open_pdebench(single)).tolist() == [0, 1]
    assert pdebench_test_sims(open_pdebench(grouped)).tolist() == [18, 19]
    small = write_pdebench_single(tmp_path / "small.hdf5", np.zeros((3, 3, 4)), x, None)
    with pytest.raises(EvaluationError, match="test split .* is empty"):
        pdebench_test_sims(open_pdebench(small))


# ---------------------------------------------------------------------------------------------------- predict
def test_predict_writes_layout_and_matches_rollout(heat_sur, heat_file, saved, tmp_path):
    out = tmp_path / "pred.h5"
    assert _cli(["predict", saved, "--input", heat_file, "--steps", "8", "--out", str(out), "--batch", "3"]) == (0, "")
    src, pred = read_trajectories(heat_file), read_trajectories(out)
    assert pred.shape == (3, 9, 1, *HEAT.grid) and pred.solver == "surrogate:heat2d" and pred.channels == ["T"]
    np.testing.assert_array_equal(pred.params, src.params)
    np.testing.assert_array_equal(pred.sim_id, src.sim_id)
    np.testing.assert_allclose(pred.t, np.arange(9) * HEAT.dt, rtol=1e-12)
    np.testing.assert_array_equal(pred.coords["x"], src.coords["x"])
    assert pred.config["surrogate"]["solver"] == "heat2d" and pred.config["input_solver"] == "heat2d"
    with h5py.File(out) as f:
        assert f.attrs["dt"] * f.attrs["every"] == pytest.approx(heat_sur.dt)
    want = np.asarray(heat_sur.rollout(src.fields(slice(None), slice(0, 1))[:, 0], 8, src.params.astype(np.float32)))
    np.testing.assert_allclose(pred.fields(), want, rtol=1e-5, atol=1e-3)  # fields ~1e2 K: atol ~ 1e-5 relative
    # the predicted file is itself a valid input: evaluate the surrogate on it (its own rollout: zero error).
    r = evaluate_trajectory_file(heat_sur, out, rollout_steps=[2], batch=3)
    assert r["results"]["rollout_full"]["surrogate"]["overall"]["NMSE"] < NMSE_ZERO
    assert any("'surrogate:heat2d'" in w for w in r["warnings"])


def test_predict_leaves_no_file_on_error(heat_sur, heat_file, tmp_path, monkeypatch):
    import benchmarks.predict as predict_mod

    out = tmp_path / "p.h5"
    seen = []

    def fail(*args, **kwargs):
        seen.append((tmp_path / "p.h5.partial").exists())  # the output is being written
        raise RuntimeError("boom in the rollout")

    monkeypatch.setattr(predict_mod, "rollout_windows", fail)
    with pytest.raises(RuntimeError, match="boom"):
        predict_file(heat_sur, heat_file, 3, out, batch=3)
    assert seen == [True]
    assert not out.exists() and not (tmp_path / "p.h5.partial").exists()


# ---------------------------------------------------------------------------------------------------- eval CLI
def test_eval_cli_table_json_figures(saved, heat_file, tmp_path, capsys):
    js, figs = tmp_path / "e.json", tmp_path / "figs"
    argv = [
        "eval",
        saved,
        "--suite",
        "trajectories",
        heat_file,
        "--json",
        str(js),
        "--figures",
        str(figs),
        "--batch",
        "3",
        "--examples",
        "2",
    ]
    assert _cli(argv) == (0, "")
    out = capsys.readouterr()
    assert "| one-step (teacher forced) | 1 | all | surrogate |" in out.out
    assert "| rollout (full) | 8 | all | identity |" in out.out
    assert "rollout_20 skipped: the data allow only 8 rollout steps" in out.err  # the default horizon
    doc = json.loads(js.read_text())
    assert doc["suite"] == "trajectories" and doc["surrogate"]["path"] == saved
    assert set(doc["results"]) == {"one_step", "rollout_full"}
    assert len(doc["per_step"]["surrogate"]["NMSE"]) == 8
    pngs = sorted(p.name for p in figs.iterdir())
    assert pngs == ["case_0.png", "case_2.png", "error_vs_step.png"]
    assert all((figs / p).stat().st_size > 5000 for p in pngs)


def test_eval_cli_pdebench_and_run_directory(bundle1d, tmp_path, capsys):
    run = tmp_path / "run"
    bundle1d.save(run / "surrogate")
    (run / "config.resolved.toml").write_text("# run\n")
    data = _oracle_pdebench(bundle1d, 3, 8, 3, seed=5)
    path = write_pdebench_single(tmp_path / "b.hdf5", data[:, :, 0], (np.arange(32) + 0.5) / 32, np.arange(8) * 0.02)
    js, figs = tmp_path / "p.json", tmp_path / "pf"
    argv = [
        "eval",
        str(run),
        "--suite",
        "pdebench",
        str(path),
        "--initial-step",
        "3",
        "--split",
        "all",
        "--json",
        str(js),
        "--figures",
        str(figs),
        "--examples",
        "1",
    ]
    assert _cli(argv) == (0, "")
    out = capsys.readouterr()
    assert "| rollout (full) | 5 | all | surrogate |" in out.out and "nRMSE" in out.out
    assert "frames are 0.02 apart but the surrogate steps 0.01" in out.err  # a warning, not an error
    doc = json.loads(js.read_text())
    assert doc["results"]["rollout_full"]["surrogate"]["overall"]["NMSE"] < NMSE_ZERO
    assert (figs / "error_vs_step.png").exists() and (figs / "case_0.png").exists()


@pytest.fixture(scope="module")
def error_inputs(bundle1d, tmp_path_factory) -> dict[str, str]:
    """A 8x8 heat surrogate, the 1D bundle surrogate, a corrupt file, a 1D PDEBench file and a run without surrogate."""
    d = tmp_path_factory.mktemp("errors")
    corrupt = d / "corrupt.h5"
    corrupt.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 64)  # an HDF5 signature and nothing after it
    (d / "run").mkdir()
    (d / "run" / "config.resolved.toml").write_text("")
    x = (np.arange(32) + 0.5) / 32
    return {
        "small": str(_surrogate(_heat_meta(grid=(8, 8))).save(d / "small")),
        "w1d": str(bundle1d.save(d / "w1d")),
        "corrupt": str(corrupt),
        "pdb1d": str(write_pdebench_single(d / "u1d.hdf5", np.zeros((2, 4, 32)), x, None)),
        "run": str(d / "run"),
        "dir": str(d),
    }


@pytest.mark.parametrize(
    "case,needle",
    [
        ("cfd", "not on a CFD problem"),
        ("grid", "frames have shape (C, *grid) = (1, 16, 16) but the surrogate predicts (1, 8, 8)"),
        ("corrupt_traj", "unreadable or incomplete trajectory file"),
        ("corrupt_pdebench", "not a readable HDF5 file"),
        ("pdebench_shape", "(C, *grid) = (1, 32) (channels ['u']) but the surrogate predicts (1, 16, 16)"),
        ("initial_step", "--initial-step >= 2"),
        ("not_a_run", "neither a run directory"),
        ("empty_run", "no surrogate/ yet"),
        ("two_files", "--suite trajectories takes one FILE, got 2"),
        ("traj_with_pdebench_flag", "--initial-step apply to --suite pdebench only"),
        ("predict_grid", "frames have shape (C, *grid) = (1, 16, 16) but the surrogate predicts (1, 8, 8)"),
        ("predict_same_file", "is the input file"),
    ],
)
def test_cli_user_errors_are_one_line(case, needle, saved, heat_file, error_inputs, tmp_path):
    e = error_inputs
    small, w1d, corrupt, pdb1d = e["small"], e["w1d"], e["corrupt"], e["pdb1d"]
    argv = {
        "cfd": ["eval", saved, "--suite", "cfd"],
        "grid": ["eval", small, "--suite", "trajectories", heat_file],
        "corrupt_traj": ["eval", saved, "--suite", "trajectories", corrupt],
        "corrupt_pdebench": ["eval", saved, "--suite", "pdebench", corrupt],
        "pdebench_shape": ["eval", saved, "--suite", "pdebench", pdb1d],
        "initial_step": ["eval", w1d, "--suite", "pdebench", pdb1d, "--initial-step", "1", "--split", "all"],
        "not_a_run": ["eval", e["dir"], "--suite", "trajectories", heat_file],
        "empty_run": ["eval", e["run"], "--suite", "trajectories", heat_file],
        "two_files": ["eval", saved, "--suite", "trajectories", heat_file, heat_file],
        "traj_with_pdebench_flag": ["eval", saved, "--suite", "trajectories", heat_file, "--initial-step", "3"],
        "predict_grid": ["predict", small, "--input", heat_file, "--steps", "2", "--out", str(tmp_path / "o.h5")],
        "predict_same_file": ["predict", saved, "--input", heat_file, "--steps", "2", "--out", heat_file],
    }[case]
    rc, msg = _cli(argv)
    assert rc == 2 and needle in msg, msg
    assert not (tmp_path / "o.h5").exists()


def test_load_surrogate_accepts_run_and_surrogate_directories(heat_sur, tmp_path):
    heat_sur.save(tmp_path / "run" / "surrogate")
    for p in (tmp_path / "run", tmp_path / "run" / "surrogate"):
        assert load_surrogate(p).metadata == heat_sur.metadata
    with pytest.raises(EvaluationError, match="no such directory"):
        load_surrogate(tmp_path / "missing")
