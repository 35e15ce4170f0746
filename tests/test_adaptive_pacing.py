"""Pacing of the loss-steered design (``solver.adaptive.ahead``): after the warmup a new task goes out only while
fewer than ``max(warmup, m + 1) + ahead`` simulations have been handed out (``m`` the index of the newest one with a
reported loss); otherwise the dispatcher answers HOLD, and a loss report lets the held workers go."""

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from solvers import get_solver
from streaming import job
from streaming.adaptive import AdaptiveCursor
from streaming.config import AdaptiveSection, ConfigError, load_config
from streaming.job import run_job
from streaming.transport.dispatcher import HOLD, Dispatcher


def _cursor(ahead, warmup=4, n_sims=20, sims_per_task=2):
    options = AdaptiveSection(warmup=warmup, ahead=ahead, floor=0.0)
    return AdaptiveCursor(get_solver("heat2d", n=6), n_sims, seed=3, sims_per_task=sims_per_task, options=options)


def _hand_out(d):
    """Hand out (and finish) tasks until the dispatcher holds one back or has none left; their simulation ids."""
    ids = []
    while (task := d.next_task("w")) is not None and task is not HOLD:
        d.task_done("w")
        ids += task.sim_ids.tolist()
    return ids, task


def test_hands_out_at_most_ahead_beyond_the_newest_reported_simulation():
    cursor = _cursor(ahead=3)  # warmup 4, tasks of 2
    d = Dispatcher(cursor, paced=True)
    ids, answer = _hand_out(d)
    assert ids == list(range(8)) and answer is HOLD  # n = 6 < 4 + 3 lets a last task of 2 go: 8 out, then held
    assert not d.finished() and d.holding() and d.released(0.0) == []
    d.report_losses(np.arange(4), np.ones(4))  # the warmup's losses: m + 1 = 4 = warmup, still 4 + 3
    assert _hand_out(d) == ([], HOLD) and d.released(0.0) == []

    woke = []
    waiter = threading.Thread(target=lambda: woke.append((d.released(10.0), time.monotonic())))
    waiter.start()
    time.sleep(0.2)
    reported = time.monotonic()
    d.report_losses(np.asarray([5]), np.asarray([2.0]))  # m = 5: 6 + 3 = 9 > 8, one more task
    waiter.join()
    assert woke[0][0] == ["w"] and woke[0][1] - reported < 1.0  # woken by the report, not by the timeout
    assert not d.holding()  # handed back: the worker asks again
    ids, answer = _hand_out(d)
    assert ids == [8, 9] and answer is HOLD
    assert any(cursor.origin[i] == "proposal" for i in ids)  # drawn after the report, near the reported losses


def test_a_requeued_task_goes_out_while_new_ones_are_held():
    cursor = _cursor(ahead=1, warmup=2)
    d = Dispatcher(cursor, max_failures=2, paced=True)
    first = d.next_task("a")  # 0, 1
    assert d.next_task("b").sim_ids.tolist() == [2, 3] and d.next_task("c") is HOLD and d.next_task("d") is HOLD
    d.worker_lost("a", "test")
    assert d.released(0.0) == ["c", "d"] and not d.holding()  # in the order they were held
    np.testing.assert_array_equal(d.next_task("c").sim_ids, first.sim_ids)
    assert d.next_task("d") is HOLD and d.holding()
    # a held worker the transport asks again before it is released leaves the held list when it gets a task
    d.worker_lost("b", "test")
    assert d.next_task("d").sim_ids.tolist() == [2, 3] and not d.holding() and d.released(0.0) == []


def test_ahead_zero_and_an_unpaced_dispatcher_hand_out_as_before():
    runs = []
    for ahead, paced in ((0, True), (3, False), (0, False)):
        d = Dispatcher(_cursor(ahead=ahead), paced=paced)
        ids, answer = _hand_out(d)
        assert answer is None and d.finished() and ids == list(range(20))
        runs.append(np.stack(list(d.cursor.drawn.values())))
    np.testing.assert_array_equal(runs[0], runs[1])
    np.testing.assert_array_equal(runs[0], runs[2])


def test_the_pacing_state_round_trips_through_a_checkpoint():
    a = _cursor(ahead=2)  # warmup 4, tasks of 2
    da = Dispatcher(a, paced=True)
    assert _hand_out(da) == ([0, 1, 2, 3, 4, 5], HOLD)
    da.report_losses(np.asarray([1, 4]), np.asarray([1.0, 3.0]))
    state = json.loads(json.dumps(da.state_dict()))
    assert state["adaptive"]["newest_reported"] == 4
    b = _cursor(ahead=2)
    b.load_state_dict(state)
    db = Dispatcher(b, paced=True)
    for d in (da, db):  # the same hand-out and the same holds from here on; 9 was never handed out: ignored
        d.report_losses(np.asarray([5, 9]), np.asarray([2.0, 5.0]))
    (ia, ha), (ib, hb) = _hand_out(da), _hand_out(db)
    assert ia == ib == [6, 7] and ha is hb is HOLD
    np.testing.assert_array_equal(a.params_of(np.asarray(ia)), b.params_of(np.asarray(ib)))
    del state["adaptive"]["newest_reported"]  # a checkpoint written before pacing existed
    c = _cursor(ahead=0)
    c.load_state_dict(state)
    assert c.newest_reported == -1


SMALL = {"solver.design": "adaptive", "solver.config": "{ n = 14 }", "solver.steps": "10",
         "optim.unroll": "{ start = 1, end = 1 }", "buffer.watermark": "40"}  # 10 samples per simulation


@pytest.mark.parametrize("overrides,needle", [
    ({"solver.adaptive": "{ warmup = 2, ahead = 1 }"}, "give 30 samples, below buffer.watermark=40"),
    ({"solver.adaptive": "{ ahead = 1 }", "buffer.kind": "fifo"}, "samples leave after max_reuse draws"),
])
def test_a_pacing_that_could_never_train_is_refused(overrides, needle):
    with pytest.raises(ConfigError, match=needle):
        load_config("configs/quickstart.toml", {**SMALL, **overrides})
    load_config("configs/quickstart.toml", {**SMALL, **overrides, "workers.backend": "local"})  # not paced there
    load_config("configs/quickstart.toml", {**SMALL, "solver.adaptive": "{ warmup = 2, ahead = 2 }"})


def test_a_paced_ray_job_steers_and_finishes_every_simulation(tmp_path, monkeypatch, capsys):
    """Simulations far faster than training: unpaced, all 16 go out before the first report and every one is a base
    draw. Paced, the job still finishes all of them, at every hand-out no more than ``max(warmup, m + 1) + ahead``
    (tasks of 1, so no task overshoots) were out, and the later ones were drawn near the reported losses."""
    log = []  # (simulations handed out, index of the newest reported one) at each hand-out, under the lock

    class Recording(AdaptiveCursor):
        def next_task(self):
            task = super().next_task()
            if task is not None:
                log.append((self._index(self.next_id), self.newest_reported))
            return task

    cursors = []

    def make(solver, section, sims_per_task, offset=0, stride=1):
        cursors.append(Recording(solver, section.n_sims, section.seed, sims_per_task, section.adaptive))
        return cursors[-1]

    monkeypatch.setattr(job, "make_cursor", make)
    warmup, ahead = 4, 2
    cfg = load_config("configs/quickstart.toml", {
        **SMALL, "solver.n_sims": "16", "solver.adaptive": f"{{ warmup = {warmup}, ahead = {ahead}, loss_every = 1, "
        "report_every = 1 }", "model.hparams": "{ modes = 4, width = 8, depth = 1 }", "optim.steps": "150",
        "optim.batch_size": "8", "workers.count": "2", "workers.sims_per_task": "1", "workers.chunk_frames": "10",
        "validation.n_sims": "2", "validation.interval": "150", "checkpoint.interval": "150",
        "logging.progress": "false", "logging.tensorboard": "false", "logging.run_dir": str(tmp_path)})
    summary = run_job(cfg)
    cursor = cursors[0]
    assert summary["sims_done"] == 16 and sorted(cursor.done) == list(range(16))
    assert all(n <= max(warmup, m + 1) + ahead for n, m in log), log
    assert "proposal" in cursor.origin.values()
    assert "set solver.adaptive.ahead" not in capsys.readouterr().err  # paced: no hint
    saved = json.loads((Path(summary["run_dir"]) / "checkpoints/150/meta/metadata").read_text())["cursor"]
    assert saved["adaptive"]["newest_reported"] == cursor.newest_reported >= 16 - ahead - 1


def test_a_simulation_without_a_loss_to_come_counts_as_reported():
    cursor = _cursor(ahead=2)  # warmup 4, tasks of 2
    d = Dispatcher(cursor, paced=True)
    assert _hand_out(d) == (list(range(6)), HOLD)
    d.no_loss(np.asarray([5]))  # its samples were all turned away: m = 5, 6 + 2 = 8 > 6
    assert cursor.newest_reported == 5 and d.released(0.0)
    assert _hand_out(d) == ([6, 7], HOLD)
    assert 5 not in cursor.table  # no loss recorded for it: the proposal does not use it


def test_the_trainer_says_which_finished_simulations_got_nothing_into_the_buffer(tmp_path, monkeypatch):
    """A reservoir of 4 simulations' samples turns most of the later ones away: the simulations that finished with
    none admitted are reported as having no loss to come, and never one whose loss the trainer did report."""
    no_loss, observed = [], []

    class Recording(AdaptiveCursor):
        def no_loss(self, sim_ids):
            no_loss.extend(np.asarray(sim_ids).tolist())
            super().no_loss(sim_ids)

        def observe(self, sim_ids, losses):
            observed.extend(np.asarray(sim_ids).tolist())
            super().observe(sim_ids, losses)

    monkeypatch.setattr(job, "make_cursor", lambda solver, section, sims_per_task, offset=0, stride=1: Recording(
        solver, section.n_sims, section.seed, sims_per_task, section.adaptive))
    cfg = load_config("configs/quickstart.toml", {
        **SMALL, "solver.n_sims": "40", "solver.adaptive": "{ warmup = 4, loss_every = 1, report_every = 1 }",
        "model.hparams": "{ modes = 4, width = 8, depth = 1 }", "optim.steps": "80", "optim.batch_size": "8",
        "buffer.capacity": "40", "workers.backend": "local", "workers.sims_per_task": "1",
        "workers.chunk_frames": "10", "validation.n_sims": "2", "validation.interval": "80",
        "checkpoint.interval": "80", "logging.progress": "false", "logging.tensorboard": "false",
        "logging.run_dir": str(tmp_path)})
    summary = run_job(cfg)
    assert summary["sims_done"] == 40
    assert no_loss and not set(no_loss) & set(observed)
    assert not set(range(4)) & set(no_loss)  # the first simulations filled the buffer
