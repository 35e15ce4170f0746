"""The dispatcher every transport shares: hand-out, requeue on a lost worker, the failure budget, and a
checkpoint state that never loses a simulation while other threads hand out and finish tasks."""

import threading

import numpy as np
import pytest

from solvers import get_solver
from streaming.chunk import SimReport
from streaming.design import DesignCursor
from streaming.errors import JobFailed
from streaming.transport.dispatcher import Dispatcher


def _dispatcher(n_sims=10, per_task=2, max_failures=1):
    cursor = DesignCursor(get_solver("heat2d", n=6), n_sims=n_sims, design="lhs", seed=0, sims_per_task=per_task)
    return Dispatcher(cursor, max_failures)


def test_hand_out_and_finish():
    d = _dispatcher(n_sims=4)
    a, b = d.next_task("a"), d.next_task("b")
    assert a.sim_ids.tolist() == [0, 1] and b.sim_ids.tolist() == [2, 3]
    assert d.next_task("c") is None  # design exhausted
    with pytest.raises(RuntimeError, match="still runs one"):
        d.next_task("a")
    for i in (0, 1):
        d.on_message(SimReport(i, "done"))
    d.task_done("a")
    assert [t.sim_ids.tolist() for t in d.in_flight()] == [[2, 3]]
    assert d.state_dict() == {"next_id": 4, "pending": [2, 3], "done": [0, 1]}  # in flight: re-run on resume


def test_a_lost_worker_requeues_its_unfinished_simulations_first():
    d = _dispatcher(n_sims=10, max_failures=1)
    d.next_task("a")
    d.on_message(SimReport(0, "done"))
    lost = d.worker_lost("a", "SIGKILL")
    assert lost.sim_ids.tolist() == [0, 1] and d.failures == 1
    assert d.next_task("b").sim_ids.tolist() == [1, 2]  # the unfinished one first, then the design goes on
    expected = r"failed 2 times, more than workers.max_failures=1 \(last: worker b: gone\).*raise workers.max_failures"
    with pytest.raises(JobFailed, match=expected):
        d.worker_lost("b", "gone")


def test_finished_waits_for_every_task_and_for_requeued_simulations():
    """finished(): not while a task is out, not while a lost worker's simulations wait to be re-run; an
    unbounded design never finishes."""
    d = _dispatcher(n_sims=4)
    a, b = d.next_task("a"), d.next_task("b")
    assert d.next_task("c") is None and not d.finished()  # design handed out, two tasks out
    for i in a.sim_ids.tolist():
        d.on_message(SimReport(i, "done"))
    d.task_done("a")
    assert not d.finished()  # b still runs
    d.worker_lost("b", "SIGKILL")
    assert not d.finished()  # b's simulations are back in the design
    again = d.next_task("a")
    assert again.sim_ids.tolist() == b.sim_ids.tolist() and not d.finished()
    for i in again.sim_ids.tolist():
        d.on_message(SimReport(i, "done"))
    d.task_done("a")
    assert d.finished() and d.next_task("a") is None
    endless = _dispatcher(n_sims=0)
    endless.next_task("a")
    endless.task_done("a")
    assert not endless.finished()


def test_failures_are_checkpointed_and_stay_a_budget_across_a_resume():
    d = _dispatcher(n_sims=10, max_failures=2)
    d.next_task("a")
    d.worker_lost("a", "SIGKILL")
    d.next_task("b")
    d.worker_lost("b", "raised")
    state = d.checkpoint_state()
    assert state == {**d.state_dict(), "worker_failures": 2}
    resumed = _dispatcher(n_sims=10, max_failures=2)
    resumed.load_failures({k: v for k, v in state.items() if k != "worker_failures"})  # an older checkpoint
    assert resumed.failures == 0
    resumed.load_failures(state)
    resumed.next_task("a")
    with pytest.raises(JobFailed, match="failed 3 times, more than workers.max_failures=2"):
        resumed.worker_lost("a", "SIGKILL")


def test_a_nan_report_finishes_a_simulation_and_other_reports_do_not():
    d = _dispatcher()
    d.next_task("a")
    d.on_message(SimReport(0, "nan", "blew up"))
    d.on_message(SimReport(1, "error", "raised"))
    d.worker_lost("a", "raised")
    assert d.next_task("a").sim_ids.tolist() == [1, 2]


def test_checkpoint_state_is_consistent_under_concurrent_workers():
    """Four threads take tasks, finish some simulations, lose others; a fifth reads checkpoints. Every
    checkpoint must account for every simulation below next_id (done or pending), none twice."""
    d = _dispatcher(n_sims=4000, per_task=3, max_failures=10**6)
    bad, stop = [], threading.Event()

    def worker(name):
        rng = np.random.default_rng(abs(hash(name)) % 2**32)
        while (task := d.next_task(name)) is not None:
            ids = task.sim_ids.tolist()
            finished = ids if rng.random() < 0.8 else ids[: rng.integers(len(ids))]
            for i in finished:
                d.on_message(SimReport(i, "done"))
            if len(finished) == len(ids):
                d.task_done(name)
            else:
                d.worker_lost(name, "test")

    def reader():
        while not stop.is_set():
            s = d.state_dict()
            seen = s["done"] + s["pending"]
            if sorted(seen) != list(range(s["next_id"])):
                bad.append((s["next_id"], len(s["done"]), len(s["pending"])))

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(4)]
    r = threading.Thread(target=reader)
    r.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    r.join()
    assert bad == []
    assert d.state_dict() == {"next_id": 4000, "pending": [], "done": list(range(4000))}
