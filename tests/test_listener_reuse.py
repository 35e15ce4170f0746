"""One connection, several simulations: after the job's ``bye`` a client may send the next simulation's hello on
the same socket; a hello before that ``bye`` is refused and drops the open simulation."""

from __future__ import annotations

import contextlib
import socket
import threading

import numpy as np

from streaming.chunk import Chunk
from streaming.transport.listener import ClientSource
from streaming.transport.wire import PROTOCOL, recv_frame, send_frame
from streaming.worker import SimReport


def hello(sim_id: int) -> dict:
    return {"type": "hello", "protocol": PROTOCOL, "sim_id": sim_id, "params": [1.0], "fields": ["u"],
            "grid": [3, 2], "offset": None, "ranks": 1, "solver": "raw"}


def chunk(sim_id: int, frames: list[int]) -> tuple[dict, np.ndarray]:
    data = np.arange(len(frames) * 6, dtype=np.float32).reshape(len(frames), 1, 3, 2) + 100 * sim_id
    c = Chunk(sim_id=sim_id, frame_index=np.asarray(frames), fields=data, params=np.ones(1, np.float32), solver="raw")
    header, payload = c.to_wire()
    return {"type": "chunk", "wire": header}, payload


def answer(sock: socket.socket) -> dict:
    return recv_frame(sock)[0]


def test_a_connection_carries_the_next_simulation_after_its_bye_and_refuses_one_before():
    with ClientSource("127.0.0.1:0", expected_sims=3, max_inflight=2, overlap=1, channels=("u",), grid=(3, 2),
                      n_params=1) as src:
        got: list = []
        consumer = threading.Thread(target=lambda: got.extend(src), daemon=True)
        consumer.start()
        host, port = src.address.rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            for sim in (1, 2):
                send_frame(sock, hello(sim))
                welcome = answer(sock)
                assert welcome["type"] == "welcome" and welcome["reuse"] is True
                send_frame(sock, *chunk(sim, [0, 1, 2]))
                send_frame(sock, {"type": "end"})
                kinds = []
                while not kinds or kinds[-1] != "bye":
                    kinds.append(answer(sock)["type"])
                assert set(kinds) <= {"ack", "bye"}
            send_frame(sock, hello(3))  # simulation 3, then a hello before its bye: a protocol error
            assert answer(sock)["type"] == "welcome"
            send_frame(sock, *chunk(3, [0, 1]))
            send_frame(sock, hello(4))
            notices = []
            with contextlib.suppress(EOFError, ConnectionError):  # the job answers (an ack may come first) and hangs up
                while True:
                    notices.append(answer(sock))
            assert any(n["type"] == "error" and "before this connection's simulation was closed" in n["message"]
                       for n in notices), notices
        consumer.join(20)
        assert not consumer.is_alive()
        report = src.external_report()
    assert report["connections"] == 1 and report["rejected_connections"] == {"hello": 1}
    assert report["dropped_sims"] == {"hello": 1}
    assert sorted((m.sim_id, m.status) for m in got if isinstance(m, SimReport)) == [(1, "done"), (2, "done"),
                                                                                      (3, "error")]
    for sim in (1, 2):
        frames = {int(j): f for m in got if isinstance(m, Chunk) and m.sim_id == sim
                  for j, f in zip(m.frame_index, m.fields, strict=True)}
        np.testing.assert_array_equal(np.stack([frames[j] for j in range(3)]), chunk(sim, [0, 1, 2])[1])
