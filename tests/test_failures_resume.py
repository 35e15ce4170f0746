"""Worker failures survive a resume: the count goes into the checkpoint with the design state, so
``workers.max_failures`` is a budget for the whole job, not for each ``--resume``. Real local jobs."""

import json
import shutil
from pathlib import Path

import pytest

from solvers import get_solver
from streaming.config import load_config
from streaming.design import DesignCursor
from streaming.errors import JobFailed
from streaming.job import run_job
from streaming.transport.dispatcher import Dispatcher
from streaming.worker import SolverWorker

SMALL = {
    "solver.config": "{ n = 14, dt = 0.002 }",
    "solver.steps": "20",
    "solver.n_sims": "0",
    "model.hparams": "{ modes = 4, width = 8, depth = 1 }",
    "optim.batch_size": "8",
    "optim.steps": "20",
    "optim.unroll": "{ start = 1, end = 1 }",
    "buffer.capacity": "512",
    "buffer.watermark": "32",
    "workers.backend": "local",
    "workers.sims_per_task": "2",
    "workers.chunk_frames": "5",
    "workers.max_failures": "1",
    "validation.n_sims": "1",
    "validation.interval": "100",
    "checkpoint.interval": "10",
    "checkpoint.keep": "3",
    "logging.progress": "false",
    "logging.tensorboard": "false",
}


class FailsOnce(SolverWorker):
    """Raises on its first task (once: ``marker`` remembers it)."""

    marker: str = ""

    def run(self, task):
        if not Path(self.marker).exists():
            Path(self.marker).touch()
            raise RuntimeError(f"solver diverged on simulations {task.sim_ids.tolist()}")
        yield from super().run(task)


def _fails_once(marker: Path) -> type:
    return type("FailsOnce", (FailsOnce,), {"marker": str(marker)})


def _summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


def test_worker_failures_are_counted_across_a_resume_and_share_one_budget(tmp_path):
    cfg = load_config("configs/quickstart.toml", {**SMALL, "logging.run_dir": str(tmp_path), "logging.name": "job"})
    run = tmp_path / "job"
    first = run_job(cfg, worker_cls=_fails_once(tmp_path / "first"))
    assert (tmp_path / "first").exists() and first["steps"] == 20
    assert first["workers"] == {"backend": "local", "worker_failures": 1}
    # the job stopped at step 10 (its last checkpoint then) and resumed: the failure before step 10 still counts
    shutil.rmtree(run / "checkpoints" / "20")
    resumed = run_job(resume=run)
    assert resumed["steps"] == 20 and resumed["workers"]["worker_failures"] == 1
    assert _summary(run)["workers"]["worker_failures"] == 1
    # one more failure after another resume passes workers.max_failures = 1 for the job as a whole
    shutil.rmtree(run / "checkpoints" / "20")
    with pytest.raises(JobFailed, match=r"failed 2 times, more than workers.max_failures=1"):
        run_job(resume=run, worker_cls=_fails_once(tmp_path / "second"))
    assert (tmp_path / "second").exists()


def test_a_checkpoint_without_a_failure_count_loads_as_zero():
    solver = get_solver("heat2d", n=6)
    d = Dispatcher(DesignCursor(solver, 4, "lhs", 0, 2), max_failures=3)
    d.worker_lost("a", "gone")
    d.worker_lost("b", "gone")
    state = json.loads(json.dumps(d.checkpoint_state()))  # the checkpoint's meta item is JSON
    design = {k: v for k, v in state.items() if k != "worker_failures"}
    assert state["worker_failures"] == 2 and design == d.state_dict()
    again = Dispatcher(DesignCursor(solver, 4, "lhs", 0, 2), max_failures=3)
    again.cursor.load_state_dict(state)
    again.load_failures(state)
    assert again.failures == 2 and again.state_dict() == d.state_dict()
    again.load_failures(design)  # a checkpoint written before the count was
    assert again.failures == 0
