"""End-to-end online training on the local backend: learning, resume, NaN handling, bad configs, CLI."""

import contextlib
import json
import logging
import shutil

import jax
import numpy as np
import pytest

from solvers import register
from streaming.cli import main
from streaming.config import ConfigError, load_config
from streaming.job import run_job
from streaming.metrics import read_metrics
from surrogates.surrogate import Surrogate

SMALL = {
    "solver.config": "{ n = 14, dt = 0.002 }",
    "solver.steps": "20",
    "solver.n_sims": "0",
    "model.hparams": "{ modes = 6, width = 12, depth = 2 }",
    "optim.batch_size": "16",
    "optim.lr": "3e-3",
    "optim.unroll": "{ start = 1, end = 1 }",  # one model call throughout: losses compare across steps
    "buffer.capacity": "1024",
    "buffer.watermark": "64",
    "workers.backend": "local",
    "workers.chunk_frames": "5",
    "validation.n_sims": "2",
    "logging.progress": "false",
    "logging.tensorboard": "false",
}


@contextlib.contextmanager
def step_compiles(caplog):
    """Count the XLA compilations of the train step (``jit(_step)``) inside the block: yields a counter."""
    caplog.clear()
    with caplog.at_level(logging.WARNING), jax.log_compiles(True):
        yield lambda: sum("compilation of jit(_step)" in r.getMessage() for r in caplog.records)


def small_config(tmp_path, **extra):
    overrides = {**SMALL, "logging.run_dir": str(tmp_path), **{k.replace("__", "."): str(v) for k, v in extra.items()}}
    return load_config("configs/quickstart.toml", overrides)


def test_local_job_learns_and_exports_surrogate(tmp_path):
    cfg = small_config(tmp_path, optim__steps=150, validation__interval=10, logging__interval=10,
                       checkpoint__interval=100, logging__name="learn")
    summary = run_job(cfg)
    run = tmp_path / "learn"
    records = read_metrics(run / "metrics.jsonl")
    vals = [r["val_one_step_rel_l2"] for r in records if "val_one_step_rel_l2" in r]
    losses = [r["loss"] for r in records if "loss" in r]
    # the validation error at the end is at least 3x below the first validation (10 steps in)
    assert len(vals) == 15 and vals[-1] < vals[0] / 3, vals
    assert losses[-1] < losses[0] / 10, losses
    assert summary["steps"] == 150 and summary["duplicates"] == 0
    for name in ("config.resolved.toml", "summary.json", "metrics.jsonl", "checkpoints", "surrogate"):
        assert (run / name).exists(), name
    sur = Surrogate.load(run / "surrogate")
    assert sur.grid == (16, 16) and sur.metadata.solver == "heat2d"
    # the resolved config reloads to the same job
    assert load_config(run / "config.resolved.toml") == cfg


def test_resume_gives_the_same_next_losses(tmp_path, caplog):
    cfg = small_config(tmp_path, optim__steps=20, checkpoint__interval=10, checkpoint__keep=3, logging__interval=1,
                       validation__interval=100, logging__name="resume")
    with step_compiles(caplog) as compiles:
        run_job(cfg)
    # the train step compiles once per run: the state it returns sits on the device mesh, and a first state that
    # did not (on one device) made the second step compile it all again; a resumed run restores into that state
    assert compiles() == 1
    run = tmp_path / "resume"
    full = {r["step"]: r["loss"] for r in read_metrics(run / "metrics.jsonl") if "loss" in r}
    shutil.rmtree(run / "checkpoints" / "20")
    (run / "metrics.jsonl").unlink()
    with step_compiles(caplog) as compiles:
        summary = run_job(resume=run)
    assert compiles() == 1
    resumed = {r["step"]: r["loss"] for r in read_metrics(run / "metrics.jsonl") if "loss" in r}
    assert summary["steps"] == 20 and sorted(resumed) == list(range(11, 21))
    np.testing.assert_allclose([resumed[s] for s in range(11, 21)], [full[s] for s in range(11, 21)], rtol=1e-6)


def test_nan_simulations_are_dropped_and_counted(tmp_path):
    register("growth", "blowup_solver:Growth")
    # a log-uniform in [1e-2, 1e6]: simulations with a > 1e3 (5/8 of them) turn NaN at their first step
    cfg = small_config(tmp_path, solver__name="growth", solver__config="{ n = 8 }", solver__n_sims=16,
                       solver__design="lhs", model__hparams="{ modes = 4, width = 8, depth = 1 }",
                       sample__condition_on_params="false", optim__steps=5, buffer__watermark=16,
                       validation__n_sims=4, solver__steps=40, logging__name="nanjob", workers__sims_per_task=4,
                       workers__chunk_frames=8)
    summary = run_job(cfg)
    assert summary["sims_dropped"] > 0 and summary["sims_done"] > 0
    assert any("NaN" in m for m in summary["dropped"])
    saved = json.loads((tmp_path / "nanjob" / "summary.json").read_text())
    assert saved["sims_dropped"] == summary["sims_dropped"]


@pytest.mark.parametrize(
    "overrides,needle",
    [
        ({"optim.lrr": "1"}, "unknown key 'optim.lrr'; allowed: optimizer, lr"),
        ({"buffer.kind": "lifo"}, "buffer.kind='lifo'"),
        ({"buffer.watermark": "9000"}, "exceeds buffer.capacity"),
        ({"solver.steps": "7", "solver.every": "2"}, "multiple of every"),
        ({"optim.lr": "-1"}, "optim.lr=-1"),
        ({"buffer.ingest_ratio": "0"}, "buffer.ingest_ratio=0"),
        ({"buffer.ingest_ratio": "0.5", "buffer.kind": "fifo"}, "buffer.ingest_ratio=0.5 is below 1 with a fifo"),
        ({"buffer.ingest_ratio": "0.5", "buffer.max_reuse": "3"}, "use ingest_ratio >= 1, or a reservoir without"),
    ],
)
def test_bad_configs_name_the_key(overrides, needle):
    with pytest.raises(ConfigError, match=None) as e:
        load_config("configs/quickstart.toml", overrides)
    assert needle in str(e.value)


def test_set_none_restores_the_default():
    assert load_config("configs/quickstart.toml").buffer.ingest_ratio == 4
    cfg = load_config("configs/quickstart.toml", {"buffer.ingest_ratio": "none", "buffer.max_reuse": "None"})
    assert cfg.buffer.ingest_ratio is None and cfg.buffer.max_reuse is None


def test_cli_train_errors_are_one_line(tmp_path, capsys):
    assert main(["train", "configs/quickstart.toml", "--set", "model.name=transformer",
                 "--set", f"logging.run_dir={tmp_path}", "--backend", "local"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown model 'transformer'" in err[0]
    assert main(["train", "nosuch.toml"]) == 2
    assert "no such config file" in capsys.readouterr().err
    # a stream that ends below the watermark: one line naming the fix, no traceback
    assert main(["train", "configs/quickstart.toml", "--backend", "local", "--set", f"logging.run_dir={tmp_path}",
                 "--set", "solver.config={ n = 6 }", "--set", "solver.n_sims=1", "--set", "solver.steps=4",
                 "--set", "buffer.watermark=100", "--set", "validation.n_sims=1", "--set", "logging.progress=false",
                 "--set", "logging.tensorboard=false"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "below buffer.watermark=100" in err[0] and "lower buffer.watermark" in err[0]


def test_generate_then_train_offline(tmp_path, capsys):
    common = ["--set", "solver.config={ n = 14 }", "--set", "solver.steps=10", "--set", "solver.n_sims=6",
              "--set", "workers.sims_per_task=4", "--set", "logging.progress=false",
              "--set", "logging.tensorboard=false", "--set", f"logging.run_dir={tmp_path}"]
    data = tmp_path / "data.h5"
    assert main(["generate", "configs/quickstart.toml", *common, "--out", str(data), "--quiet"]) == 0
    from benchmarks.trajectories import read_trajectories

    traj = read_trajectories(data)
    assert traj.shape == (6, 11, 1, 16, 16) and list(traj.sim_id) == list(range(6))
    assert main(["train", "configs/quickstart.toml", *common, "--offline", str(data),
                 "--set", "optim.steps=20", "--set", "optim.batch_size=8", "--set", "buffer.watermark=32",
                 "--set", "model.hparams={ modes = 4, width = 8, depth = 1 }", "--set", "validation.n_sims=2",
                 "--set", "logging.name=offline", "--set", "logging.interval=1",
                 "--set", "checkpoint.interval=10"]) == 0
    summary = json.loads((tmp_path / "offline" / "summary.json").read_text())
    # all samples of the file are in the buffer and nothing else arrived: the quickstart trains through 4 model
    # calls, so a sample spans 1 input + 4 target frames, 7 samples per 11-frame simulation, 6 x 7
    assert summary["samples_received"] == 42 and summary["steps"] == 20 and summary["buffer"]["size"] == 42
    # an offline run resumes from its checkpoint (epoch order included) and repeats the uninterrupted losses
    run = tmp_path / "offline"
    full = {r["step"]: r["loss"] for r in read_metrics(run / "metrics.jsonl") if "loss" in r}
    shutil.rmtree(run / "checkpoints" / "20")
    (run / "metrics.jsonl").unlink()
    assert main(["train", "--resume", str(run), "--offline", str(data)]) == 0
    resumed = {r["step"]: r["loss"] for r in read_metrics(run / "metrics.jsonl") if "loss" in r}
    assert sorted(resumed) == list(range(11, 21))
    np.testing.assert_allclose([resumed[s] for s in range(11, 21)], [full[s] for s in range(11, 21)], rtol=1e-6)


def test_ctrl_c_writes_a_final_checkpoint_and_the_run_resumes(tmp_path):
    """SIGINT to a running `pdestream train`: exit status 130, a checkpoint at the step reached (its state intact,
    not half-donated to an interrupted train step), and `--resume` finishes the job."""
    import os
    import signal
    import subprocess
    import sys
    import time

    sets = {**SMALL, "logging.run_dir": str(tmp_path), "logging.name": "ctrlc", "optim.steps": "60",
            "logging.interval": "1", "validation.interval": "1000", "checkpoint.interval": "1000"}
    cmd = [sys.executable, "-m", "streaming.cli", "train", "configs/quickstart.toml"]
    for k, v in sets.items():
        cmd += ["--set", f"{k}={v}"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "JAX_PLATFORMS": "cpu"})
    run = tmp_path / "ctrlc"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        log = run / "metrics.jsonl"
        if log.exists() and len(log.read_text().splitlines()) >= 3:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["interrupted"] and 3 <= summary["steps"] < 60
    assert (run / "checkpoints" / str(summary["steps"])).is_dir()
    assert "deleted" not in err
    resumed = run_job(resume=run)
    assert resumed["steps"] == 60 and not resumed["interrupted"]
