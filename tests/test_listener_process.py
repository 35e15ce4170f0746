"""The external listener in a process of its own: a real child process, real sockets on 127.0.0.1, a real ring of
shared memory."""

import functools
import os
import signal
import threading
import time

import numpy as np
import pytest

from streaming.chunk import Chunk
from streaming.client import JobStopped
from streaming.client import connect as _connect
from streaming.transport.listener import ClientSourceError
from streaming.transport.listener_process import ListenerProcess
from streaming.worker import SimReport

WAIT = 10.0  # s: generous bound for anything that should take milliseconds on 127.0.0.1
connect = functools.partial(_connect, send_timeout=WAIT)  # a bug fails the test instead of hanging it


def stream(address: str, sim_id: int, frames: np.ndarray, batch: int) -> None:
    """One simulation of one field ``u``: ``frames (T, 1, *grid)`` in messages of ``batch`` frames."""
    with connect(address, sim_id=sim_id, params=[float(sim_id)], fields=["u"], grid=frames.shape[2:],
                 batch_frames=batch) as client:
        for i, frame in enumerate(frames):
            client.send("u", frame[0], i)


def start(address: str, sims: dict[int, np.ndarray], batch: int) -> list[threading.Thread]:
    threads = [threading.Thread(target=stream, args=(address, s, f, batch), daemon=True) for s, f in sims.items()]
    for t in threads:
        t.start()
    return threads


def check_frames(copies: list[tuple[int, list[int], np.ndarray]], sims: dict[int, np.ndarray]) -> None:
    """Every frame of every simulation arrived, exactly; a frame repeated by the overlap is the same frame."""
    for s, frames in sims.items():
        got: dict[int, np.ndarray] = {}
        for sim_id, index, fields in copies:
            if sim_id == s:
                for j, f in zip(index, fields, strict=True):
                    if j in got:
                        np.testing.assert_array_equal(got[j], f)
                    got[j] = f
        assert sorted(got) == list(range(len(frames)))
        np.testing.assert_array_equal(np.stack([got[j] for j in range(len(frames))]), frames)


def test_a_stream_larger_than_the_ring_arrives_intact_when_the_consumer_lets_chunks_go():
    # 6 simulations x 40 frames of 32x32 float32 in messages of 5 frames (24 KiB with the overlap frame): 1.1 MiB
    # through a ring of 0.5 MiB (room for the 12 messages the clients' windows allow at once), which wraps twice
    rng = np.random.default_rng(0)
    sims = {s: rng.standard_normal((40, 1, 32, 32)).astype(np.float32) for s in range(6)}
    copies, reports = [], []
    with ListenerProcess("127.0.0.1:0", expected_sims=6, max_inflight=2, overlap=1, channels=("u",), grid=(32, 32),
                         n_params=1, ring_mb=0.5) as src:
        threads = start(src.address, sims, 5)
        for msg in src:  # each chunk is copied and let go, as the trainer's buffer does
            if isinstance(msg, Chunk):
                assert msg.params.tolist() == [float(msg.sim_id)] and msg.grid == (32, 32)
                copies.append((msg.sim_id, msg.frame_index.tolist(), np.array(msg.fields)))
            else:
                reports.append(msg)
        for t in threads:
            t.join(WAIT)
        assert src.finished
    assert sorted((r.sim_id, r.status) for r in reports) == [(s, "done") for s in range(6)]
    check_frames(copies, sims)
    report = src.external_report()
    assert report["sims_finished"] == 6 and report["pipe_chunks"] == 0 and report["ring_chunks"] == len(copies)


def test_a_consumer_that_keeps_every_chunk_gets_the_whole_stream_and_nothing_is_overwritten():
    # a ring of 64 KiB holds two 24 KiB chunks; the consumer keeps all 8: once the ring finds no room for a while,
    # chunks go through the pipe instead, and the chunks kept in the ring keep their bytes
    rng = np.random.default_rng(1)
    sims = {0: rng.standard_normal((40, 1, 32, 32)).astype(np.float32)}
    with ListenerProcess("127.0.0.1:0", expected_sims=1, max_inflight=1, overlap=1, channels=("u",), grid=(32, 32),
                         n_params=1, ring_mb=1 / 16) as src:
        threads = start(src.address, sims, 5)
        kept = [m for m in src if isinstance(m, Chunk)]
        threads[0].join(WAIT)
    check_frames([(c.sim_id, c.frame_index.tolist(), c.fields) for c in kept], sims)
    report = src.external_report()
    assert report["ring_chunks"] >= 2 and report["pipe_chunks"] >= 1
    assert report["ring_chunks"] + report["pipe_chunks"] == len(kept) == 8


def test_a_chunk_over_half_the_ring_travels_through_the_pipe():
    rng = np.random.default_rng(2)
    sims = {7: rng.standard_normal((12, 1, 64, 64)).astype(np.float32)}  # one 192 KiB message, ring 64 KiB
    with ListenerProcess("127.0.0.1:0", expected_sims=1, overlap=0, ring_mb=1 / 16) as src:
        threads = start(src.address, sims, 12)
        copies = [(m.sim_id, m.frame_index.tolist(), np.array(m.fields)) for m in src if isinstance(m, Chunk)]
        threads[0].join(WAIT)
    check_frames(copies, sims)


def test_close_stops_the_clients_and_the_process_and_keeps_the_counters():
    src = ListenerProcess("127.0.0.1:0", max_inflight=2)
    client = connect(src.address, sim_id=1, params=[0.5], fields=["u"], grid=(4, 4), batch_frames=1)
    client.send("u", np.zeros((4, 4), np.float32), 0)
    got = []
    consumer = threading.Thread(target=lambda: got.extend(src), daemon=True)
    consumer.start()
    deadline = time.monotonic() + WAIT
    while not got and time.monotonic() < deadline:
        time.sleep(0.01)
    src.close()
    consumer.join(WAIT)
    assert not consumer.is_alive() and isinstance(got[0], Chunk)
    with pytest.raises(JobStopped):
        for j in range(1, 100):
            client.send("u", np.zeros((4, 4), np.float32), j)
    client.abort()
    assert src.returncode == 0
    assert src.external_report()["connections"] == 1


def test_a_bad_address_is_reported_by_the_parent():
    with pytest.raises(ClientSourceError, match="workers.listen='nonsense'"):
        ListenerProcess("nonsense")


def test_a_listener_process_that_dies_ends_the_stream_with_an_error():
    with ListenerProcess("127.0.0.1:0") as src:
        os.kill(src.pid, signal.SIGKILL)
        with pytest.raises(ClientSourceError, match="listener process exited"):
            list(src)


def test_a_consumer_waits_through_a_quiet_spell():
    with ListenerProcess("127.0.0.1:0", expected_sims=1) as src:
        got: list = []
        consumer = threading.Thread(target=lambda: got.extend(src), daemon=True)
        consumer.start()
        time.sleep(1.0)  # nobody connected yet
        assert consumer.is_alive() and not got
        stream(src.address, 3, np.ones((2, 1, 3, 3), np.float32), 2)
        consumer.join(WAIT)
    assert [type(m) for m in got] == [Chunk, SimReport]


def test_slabs_assembled_in_the_listener_are_copied_into_the_ring():
    rng = np.random.default_rng(3)
    frames = rng.standard_normal((9, 1, 8, 6)).astype(np.float32)
    rows = [(0, 3), (3, 8)]

    def rank(address: str, r: int) -> None:
        lo, hi = rows[r]
        with connect(address, sim_id=5, params=[0.5], fields=["u"], grid=(8, 6), offset=(lo, 0), ranks=2,
                     batch_frames=2 + r) as client:
            for i, frame in enumerate(frames[:, :, lo:hi]):
                client.send("u", frame[0], i)

    with ListenerProcess("127.0.0.1:0", expected_sims=1, overlap=1, ring_mb=1) as src:
        threads = [threading.Thread(target=rank, args=(src.address, r), daemon=True) for r in range(2)]
        for t in threads:
            t.start()
        copies = [(m.sim_id, m.frame_index.tolist(), np.array(m.fields)) for m in src if isinstance(m, Chunk)]
        for t in threads:
            t.join(WAIT)
    check_frames(copies, {5: frames})
    assert src.external_report()["ring_chunks"] == len(copies) and src.external_report()["pipe_chunks"] == 0


def test_messages_the_listener_has_ready_at_once_reach_the_trainer_in_one_batch():
    # one message of 40 frames cut into 8 chunks of 5 (chunk_frames): the listener yields them back to back, so the
    # child sends their records together; the stream is the same
    rng = np.random.default_rng(3)
    sims = {0: rng.standard_normal((40, 1, 16, 16)).astype(np.float32)}
    copies, n = [], 0
    with ListenerProcess("127.0.0.1:0", expected_sims=1, max_inflight=2, overlap=1, chunk_frames=5, channels=("u",),
                         grid=(16, 16), n_params=1) as src:
        threads = start(src.address, sims, 40)
        for msg in src:
            n += 1
            if isinstance(msg, Chunk):
                copies.append((msg.sim_id, msg.frame_index.tolist(), np.array(msg.fields)))
        for t in threads:
            t.join(WAIT)
    check_frames(copies, sims)
    report = src.external_report()
    assert len(copies) == 8 and report["ring_chunks"] == 8 and n == 9  # 8 chunks and the simulation's report
    assert 1 <= report["pipe_batches"] <= 3  # the 8 chunks of one message in one batch (the report may follow alone)
