"""The online-vs-offline study and the FNO protocol at tiny scale: they run end to end through the
real engine and write what they promise (JSON keys, finite numbers, PNGs). No accuracy is asserted:
tiny runs are a few gradient steps."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from benchmarks.studies import online_vs_offline as ovo


def _check_pair(rec: dict) -> None:
    for mode in ("offline", "online"):
        r = rec[mode]
        assert r["steps"] == rec["offline"]["steps"]  # same number of gradient steps for both runs
        for key in ("test_rel_l2", "test_rollout_rel_l2", "best_val_rel_l2"):
            assert math.isfinite(r[key]) and r[key] > 0, (mode, key, r[key])
    off, on = rec["offline"], rec["online"]
    assert off["sims_trained_on"] == off["n_sims"]  # offline: the file's simulations and nothing else
    assert on["sims_trained_on"] > off["n_sims"]  # online: a fresh stream, more simulations than the file
    assert off["epochs"] > 1  # the offline run sees its samples several times
    assert rec["improvement"] == pytest.approx((off["test_rel_l2"] - on["test_rel_l2"]) / off["test_rel_l2"])


def test_study_cli_tiny_heat(tmp_path):
    out, js = tmp_path / "study", tmp_path / "r.json"
    assert ovo.main(["--scale", "tiny", "--pairs", "mlp_heat2d", "--out", str(out), "--json", str(js)]) == 0
    r = json.loads(js.read_text())
    assert r["scale"] == "tiny" and math.isfinite(r["improvement_mlp_heat2d"])
    _check_pair(r["pairs"]["mlp_heat2d"])
    png = out / "figures" / "online_vs_offline_tiny_mlp_heat2d.png"
    assert png.stat().st_size > 1000 and png.read_bytes()[:4] == b"\x89PNG"
    steps, val = r["pairs"]["mlp_heat2d"]["curves"]["online"]
    assert steps[-1] == 20 and len(val) == len(steps) >= 2  # validation every 10 of 20 steps


def test_improvement_sign():
    assert ovo.improvement(0.2, 0.1) == pytest.approx(0.5)  # online better: positive
    assert ovo.improvement(0.1, 0.2) == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="--scale"):
        ovo.run_study("huge", "unused")


@pytest.mark.slow
def test_study_tiny_all_pairs(tmp_path):
    r = ovo.run_study("tiny", tmp_path, json_path=tmp_path / "r.json")
    assert json.loads((tmp_path / "r.json").read_text())["scale"] == "tiny"
    for pair in ovo.PAIRS:
        assert math.isfinite(r[f"improvement_{pair}"])
        _check_pair(r["pairs"][pair])
        assert (tmp_path / "figures" / f"online_vs_offline_tiny_{pair}.png").exists()


def test_protocol_metric_is_trajectory_relative_l2():
    from benchmarks.studies.fno_ns2d_protocol import trajectory_rel_l2

    class Persist:  # predicts "the last input frame forever"
        def rollout(self, x, n, t0=0.0):
            return np.repeat(x[:, -1:], n + 1, axis=1)

    frames = np.random.default_rng(0).normal(size=(3, 8, 1, 4, 4)).astype(np.float32)
    err = trajectory_rel_l2(Persist(), frames, n_in=3, n_out=4)
    y, last = frames[:, 4:8], frames[:, 3:4]
    want = np.linalg.norm((y - last).reshape(3, -1), axis=1) / np.linalg.norm(y.reshape(3, -1), axis=1)
    np.testing.assert_allclose(err, want, rtol=1e-6)
    with pytest.raises(ValueError, match="raise solver.steps"):
        trajectory_rel_l2(Persist(), frames, n_in=4, n_out=4)


@pytest.mark.slow
def test_protocol_tiny(tmp_path):
    from benchmarks.studies import fno_ns2d_protocol as proto

    assert proto.main(["--scale", "tiny", "--out", str(tmp_path), "--json", str(tmp_path / "p.json")]) == 0
    r = json.loads((tmp_path / "p.json").read_text())
    assert math.isfinite(r["rel_l2"]) and r["paper_rel_l2"] == 0.0128 and r["budget"]["steps"] == 6
