"""The Python client's ``end()`` and kept connections, against the real listener on 127.0.0.1: one TCP connection
carries simulation after simulation, ``end()`` lets the next simulation start before the job's ``bye``, and a kept
connection the job let go is replaced by a new one without the caller noticing."""

import os
import socket
import threading
import time

import numpy as np
import pytest
from test_client import WAIT, Consumer, connect, frames_by_index, send_all
from test_listener_reuse import answer, chunk, hello

from streaming.chunk import Chunk
from streaming.client import _KEPT, ClientError
from streaming.transport.listener import ClientSource
from streaming.transport.wire import recv_frame, send_frame


def frames_of(sim_id: int, n: int) -> np.ndarray:
    """(n, 2, 5, 6) float32 frames that differ between simulations."""
    return np.random.default_rng(sim_id).standard_normal((n, 2, 5, 6)).astype(np.float32)


def stream(address: str, sim_id: int, n: int, **kw) -> None:
    with connect(address, sim_id=sim_id, params=[1.0, float(sim_id)], fields=["u", "v"], grid=(5, 6),
                 batch_frames=3, **kw) as client:
        send_all(client, frames_of(sim_id, n))


def assert_arrived_whole(consumer: Consumer, sims: dict[int, int]) -> None:
    """Each simulation ``sim_id -> n_frames`` is reported done and its frames arrived once each, unchanged."""
    assert sorted((r.sim_id, r.status) for r in consumer.reports()) == [(s, "done") for s in sorted(sims)]
    for sim, n in sims.items():
        chunks = consumer.chunks(sim)
        index = [j for c in chunks for j in c.frame_index.tolist()]
        assert sorted(index) == list(range(n))  # overlap 0: a frame sent twice would show up twice
        got = frames_by_index(chunks)
        np.testing.assert_array_equal(np.stack([got[j] for j in range(n)]), frames_of(sim, n))


def test_simulations_in_sequence_share_one_connection_unless_asked_not_to():
    with ClientSource("127.0.0.1:0", expected_sims=3, max_inflight=2, overlap=0, channels=("u", "v"), grid=(5, 6),
                      n_params=2) as src:
        consumer = Consumer(src)
        stream(src.address, 0, 7)
        stream(src.address, 1, 8)
        assert src.external_report()["connections"] == 1
        stream(src.address, 2, 4, keep_connection=False)  # takes no kept connection: a new one
        consumer.join()
        assert src.external_report()["connections"] == 2
    assert_arrived_whole(consumer, {0: 7, 1: 8, 2: 4})


def test_end_lets_the_next_simulation_start_before_the_first_is_taken():
    with ClientSource("127.0.0.1:0", expected_sims=3, max_inflight=2, overlap=0, channels=("u", "v"), grid=(5, 6),
                      n_params=2) as src:
        consumer = Consumer(src, start=False)  # the trainer takes nothing yet
        first = connect(src.address, sim_id=0, params=[1.0, 0.0], fields=["u", "v"], grid=(5, 6), batch_frames=3)
        send_all(first, frames_of(0, 6))  # two messages: the whole window, unacknowledged
        t0 = time.monotonic()
        first.end()  # returns although the trainer took none of it
        assert time.monotonic() - t0 < 1.0 and consumer.reports() == []
        for call in (lambda: first.send("u", np.zeros((5, 6)), 6), first.flush, first.end):
            with pytest.raises(ClientError, match=r"simulation 0 was already ended with end\(\); only close\(\)"):
                call()
        consumer.thread.start()
        second = connect(src.address, sim_id=1, params=[1.0, 1.0], fields=["u", "v"], grid=(5, 6), batch_frames=3)
        send_all(second, frames_of(1, 5))
        first.close()  # reads what the job sent the first simulation, up to its bye
        second.close()
        assert src.external_report()["connections"] == 2  # the first was still open when the second connected
        stream(src.address, 2, 3)  # ... and both were kept: no third connection
        consumer.join()
        assert src.external_report()["connections"] == 2
    assert_arrived_whole(consumer, {0: 6, 1: 5, 2: 3})


def test_a_kept_connection_of_a_stopped_job_is_replaced_by_a_new_one():
    with ClientSource("127.0.0.1:0", expected_sims=1, overlap=0) as src:
        consumer = Consumer(src)
        stream(src.address, 0, 4)  # its connection is kept ...
        consumer.join()
        address = src.address
    with ClientSource(address, expected_sims=1, overlap=0) as src:  # ... and the job behind it stopped
        consumer = Consumer(src)
        stream(address, 0, 5)
        consumer.join()
        assert src.external_report()["connections"] == 1
    assert_arrived_whole(consumer, {0: 5})


def test_a_kept_connection_closed_on_the_hello_is_replaced_by_a_new_one():
    # a kept connection still quiet when connect() looks at it, but the job closes it as the hello arrives
    with socket.create_server(("127.0.0.1", 0)) as closing_job, \
            ClientSource("127.0.0.1:0", expected_sims=1, overlap=0) as src:
        kept = socket.create_connection(closing_job.getsockname())
        peer, _ = closing_job.accept()

        def close_on_hello() -> None:
            peer.recv(1)
            peer.close()

        hangup = threading.Thread(target=close_on_hello)
        hangup.start()
        _KEPT.keep(src.address, kept)
        consumer = Consumer(src)
        stream(src.address, 0, 4)
        hangup.join(WAIT)
        consumer.join()
        assert src.external_report()["connections"] == 1
    assert kept.fileno() == -1  # the broken connection was closed, not kept
    assert_arrived_whole(consumer, {0: 4})


def test_a_rank_on_its_next_simulation_hears_nothing_of_a_drop_after_its_bye():
    # simulation 0 from two ranks: rank 0 is answered bye and moves on (same connection) to simulation 1; rank 1
    # then leaves frame 1 half covered, which drops simulation 0: only rank 1 hears of it
    with ClientSource("127.0.0.1:0", expected_sims=2, max_inflight=2, overlap=0) as src:
        consumer = Consumer(src)
        top = connect(src.address, sim_id=0, params=[1.0], fields=["u"], grid=(2, 2), offset=(0, 0), ranks=2,
                      batch_frames=1)
        bottom = connect(src.address, sim_id=0, params=[1.0], fields=["u"], grid=(2, 2), offset=(1, 0), ranks=2,
                         batch_frames=2)
        top.send("u", np.ones((1, 2)), 0)
        top.end()
        for frame in (0, 1):
            bottom.send("u", np.ones((1, 2)), frame)
        top.close()  # frame 0 was assembled and taken
        with connect(src.address, sim_id=1, params=[1.0], fields=["u"], grid=(2, 2), batch_frames=1) as again:
            with pytest.raises(ClientError, match="frame 1: the slabs of its 2 rank"):
                bottom.close()
            for frame in range(3):
                again.send("u", np.full((2, 2), frame), frame)
        consumer.join()
        assert src.external_report()["connections"] == 2
    assert sorted((r.sim_id, r.status) for r in consumer.reports()) == [(0, "error"), (1, "done")]
    assert sorted(frames_by_index(consumer.chunks(1))) == [0, 1, 2]


def test_a_dropped_simulation_is_answered_one_bye_and_the_connection_carries_the_next():
    with ClientSource("127.0.0.1:0", expected_sims=2, max_inflight=4, overlap=0) as src:
        got: list = []

        def slow_trainer() -> None:  # holds each message a while: the drop's later messages are still queued
            for m in src:
                got.append(m)
                time.sleep(0.3)

        trainer = threading.Thread(target=slow_trainer, daemon=True)
        trainer.start()
        host, port = src.address.rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=WAIT) as sock:
            send_frame(sock, hello(1))
            assert answer(sock)["type"] == "welcome"
            header, fields = chunk(1, [0])
            poisoned = fields.copy()
            poisoned.flat[0] = np.nan
            send_frame(sock, header, poisoned)
            for frame in (1, 2):
                send_frame(sock, *chunk(1, [frame]))
            assert answer(sock)["type"] == "dropped"
            send_frame(sock, {"type": "end"})
            first = [answer(sock)["type"]]
            while first[-1] != "bye":
                first.append(answer(sock)["type"])
            assert set(first) <= {"ack", "bye"}, first
            send_frame(sock, hello(2))  # the next simulation on this connection
            send_frame(sock, *chunk(2, [0, 1]))
            send_frame(sock, {"type": "end"})
            sock.settimeout(1.5)
            kinds = []
            try:
                while True:
                    kinds.append(recv_frame(sock)[0]["type"])
            except TimeoutError:
                pass
        trainer.join(WAIT)
        assert not trainer.is_alive()
    assert kinds[0] == "welcome" and kinds[-1] == "bye" and kinds.count("bye") == 1, kinds
    assert [(m.sim_id, m.status) for m in got if not isinstance(m, Chunk)] == [(1, "nan"), (2, "done")]


def test_a_forked_child_opens_its_own_connection():
    with ClientSource("127.0.0.1:0", expected_sims=3, max_inflight=2, overlap=0, channels=("u", "v"), grid=(5, 6),
                      n_params=2) as src:
        consumer = Consumer(src)
        stream(src.address, 0, 3)  # kept by this process
        pid = os.fork()
        if pid == 0:  # the child: the parent's kept connection is not its to use
            code = 1
            try:
                stream(src.address, 1, 3)
                code = 0
            finally:
                os._exit(code)
        assert os.waitpid(pid, 0)[1] == 0
        assert src.external_report()["connections"] == 2
        stream(src.address, 2, 3)  # the parent's kept connection still works
        consumer.join()
        assert src.external_report()["connections"] == 2
    assert_arrived_whole(consumer, {0: 3, 1: 3, 2: 3})
