"""External-solver client API: real sockets on 127.0.0.1, real threads, and real ``mpiexec -n 2`` ranks."""

import functools
import importlib.util
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from streaming.chunk import Chunk
from streaming.client import ClientError, JobStopped, ServerUnavailable
from streaming.client import connect as _connect
from streaming.samples import SampleSpec, cut
from streaming.transport.listener import ClientSource, ClientSourceError
from streaming.worker import SimReport

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
WAIT = 10.0  # s: generous bound for anything that should take milliseconds on 127.0.0.1
connect = functools.partial(_connect, send_timeout=WAIT)  # a bug fails the test instead of hanging it


class Consumer:
    """Iterates a source in a thread, as the trainer's receiver does; ``start=False`` defers iteration."""

    def __init__(self, source: ClientSource, start: bool = True) -> None:
        self.source, self.got = source, []
        self.thread = threading.Thread(target=lambda: self.got.extend(source), daemon=True)
        if start:
            self.thread.start()

    def join(self) -> list:
        self.thread.join(WAIT)
        assert not self.thread.is_alive(), "the stream did not end"
        return self.got

    def chunks(self, sim_id: int | None = None) -> list[Chunk]:
        return [m for m in self.got if isinstance(m, Chunk) and (sim_id is None or m.sim_id == sim_id)]

    def reports(self) -> list[SimReport]:
        return [m for m in self.got if isinstance(m, SimReport)]


def frames_by_index(chunks: list[Chunk]) -> dict[int, np.ndarray]:
    out: dict[int, np.ndarray] = {}
    for c in chunks:
        for s, f in zip(c.frame_index.tolist(), c.fields, strict=True):
            if s in out:  # a frame repeated by the overlap must be the same frame
                np.testing.assert_array_equal(out[s], f)
            out[s] = f
    return out


def verdict(fn) -> str | None:
    """The message of the ClientError ``fn()`` raises, or None."""
    try:
        fn()
    except ClientError as e:
        return str(e)
    return None


def send_all(client, frames: np.ndarray, fields=("u", "v"), first_frame: int = 0) -> None:
    for i, frame in enumerate(frames):
        for c, name in enumerate(fields):
            client.send(name, frame[c], first_frame + i)


def test_round_trip_whole_grid_with_overlap():
    rng = np.random.default_rng(0)
    frames = rng.standard_normal((10, 2, 5, 6)).astype(np.float32)
    with ClientSource("127.0.0.1:0", expected_sims=1, max_inflight=2, overlap=1, channels=("u", "v"), grid=(5, 6),
                      n_params=2) as src:
        consumer = Consumer(src)
        with connect(src.address, sim_id=3, params=[1.5, -2.0], fields=["u", "v"], grid=(5, 6), batch_frames=4,
                     solver="mine") as client:
            send_all(client, frames.astype(np.float64))  # float64 in, float32 on the wire
        got = consumer.join()
    chunks = consumer.chunks()
    # 10 frames in messages of 4: steps 0-3, 4-7, 8-9; each later chunk starts with the previous chunk's last frame
    assert [c.frame_index.tolist() for c in chunks] == [[0, 1, 2, 3], [3, 4, 5, 6, 7], [7, 8, 9]]
    assert all(c.sim_id == 3 and c.solver == "mine" and c.params.tolist() == [1.5, -2.0] for c in chunks)
    fr = frames_by_index(chunks)
    np.testing.assert_array_equal(np.stack([fr[s] for s in range(10)]), frames)  # exact: float32 round trip
    assert isinstance(got[-1], SimReport) and (got[-1].sim_id, got[-1].status) == (3, "done")
    # every next-step target 1..9 is cut from exactly one chunk: the overlap neither loses nor repeats samples
    spec = SampleSpec("next_step", 1, 1, False, 0.1)
    targets = np.concatenate([cut(c, spec)[0][:, 1] for c in chunks]).tolist()
    assert sorted(targets) == list(range(1, 10))


def test_slabs_of_two_ranks_assemble_into_the_full_grid():
    rng = np.random.default_rng(1)
    frames = rng.standard_normal((9, 2, 7, 5)).astype(np.float32)
    rows = [(0, 3), (3, 7)]
    with ClientSource("127.0.0.1:0", expected_sims=1, max_inflight=2, overlap=1) as src:
        consumer = Consumer(src)

        def rank(r: int) -> None:  # the ranks batch differently: assembly is per frame, not per message
            lo, hi = rows[r]
            with connect(src.address, sim_id=0, params=[0.5], fields=["u", "v"], grid=(7, 5), offset=(lo, 0),
                         ranks=2, batch_frames=2 + r) as client:
                send_all(client, frames[:, :, lo:hi])

        threads = [threading.Thread(target=rank, args=(r,)) for r in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(WAIT)
        consumer.join()
    chunks = consumer.chunks()
    assert all(c.grid == (7, 5) and not c.is_slab for c in chunks)
    fr = frames_by_index(chunks)
    assert sorted(fr) == list(range(9))
    np.testing.assert_array_equal(np.stack([fr[s] for s in range(9)]), frames)
    assert [(r.sim_id, r.status) for r in consumer.reports()] == [(0, "done")]
    spec = SampleSpec("next_step", 1, 1, False, 0.1)
    assert sorted(np.concatenate([cut(c, spec)[0][:, 1] for c in chunks]).tolist()) == list(range(1, 9))


@pytest.mark.parametrize("rows, word", [([(0, 4), (3, 7)], "overlaps"), ([(0, 3), (4, 7)], "missing cell")])
def test_overlapping_or_missing_slabs_drop_the_simulation_with_a_clear_error(rows, word):
    frames = np.ones((3, 1, 7, 4), np.float32)
    with ClientSource("127.0.0.1:0", expected_sims=1, max_inflight=4) as src:
        consumer = Consumer(src)
        clients = [connect(src.address, sim_id=5, params=[1.0], fields=["u"], grid=(7, 4), offset=(lo, 0), ranks=2,
                           batch_frames=3) for lo, _ in rows]
        verdicts = [verdict(lambda c=c, lo=lo, hi=hi: send_all(c, frames[:, :, lo:hi], fields=("u",)))
                    for c, (lo, hi) in zip(clients, rows, strict=True)]
        # the job's verdict reaches each rank at its next call after the job saw the slabs, at the latest close()
        verdicts = [v or verdict(c.close) for c, v in zip(clients, verdicts, strict=True)]
        assert all(v is not None and word in v for v in verdicts), verdicts
        consumer.join()
    (report,) = consumer.reports()
    assert report.sim_id == 5 and report.status == "error" and word in report.message
    assert consumer.chunks() == []  # nothing of a broken simulation reaches the buffer


def test_backpressure_blocks_send_until_the_consumer_takes_messages():
    frames = np.zeros((3, 1, 4, 4), np.float32)
    with ClientSource("127.0.0.1:0", expected_sims=1, max_inflight=1) as src:
        consumer = Consumer(src, start=False)  # a trainer that takes nothing yet
        client = connect(src.address, sim_id=0, params=[1.0], fields=["u"], grid=(4, 4), batch_frames=1)
        sender = threading.Thread(target=lambda: (send_all(client, frames, fields=("u",)), client.close()))
        sender.start()
        sender.join(1.0)
        assert sender.is_alive()  # the 2nd message waits for the 1st one's acknowledgement
        assert client.messages_sent == 1
        consumer.thread.start()
        sender.join(WAIT)
        assert not sender.is_alive()
        consumer.join()
    assert sorted(frames_by_index(consumer.chunks())) == [0, 1, 2]


def test_send_timeout_and_close_of_the_job_release_a_blocked_client():
    with ClientSource("127.0.0.1:0", max_inflight=1) as src:  # nobody iterates
        client = connect(src.address, sim_id=0, params=[1.0], fields=["u"], grid=(3,), batch_frames=1,
                         send_timeout=0.3)
        client.send("u", np.zeros(3), 0)
        t0 = time.monotonic()
        with pytest.raises(TimeoutError, match="send_timeout"):
            client.send("u", np.zeros(3), 1)
        assert 0.25 < time.monotonic() - t0 < WAIT
        client.abort()
        blocked = connect(src.address, sim_id=1, params=[1.0], fields=["u"], grid=(3,), batch_frames=1)
        errors: list[BaseException] = []

        def run() -> None:
            try:
                for s in range(3):
                    blocked.send("u", np.zeros(3), s)
            except BaseException as e:  # noqa: BLE001  (handed to the test thread)
                errors.append(e)

        closing = connect(src.address, sim_id=2, params=[1.0], fields=["u"], grid=(3,))
        closing.send("u", np.zeros(3), 0)

        def close() -> None:
            try:
                closing.close()  # waits until the trainer took the simulation
            except BaseException as e:  # noqa: BLE001
                errors.append(e)

        threads = [threading.Thread(target=run), threading.Thread(target=close)]
        for t in threads:
            t.start()
        time.sleep(0.5)
        assert all(t.is_alive() for t in threads)
        src.close()  # pdestream train finished: the blocked solvers are told so
        for t in threads:
            t.join(WAIT)
        assert len(errors) == 2 and all(isinstance(e, JobStopped) for e in errors), errors


def test_nan_simulation_is_reported_dropped_and_its_later_data_ignored():
    frames = np.ones((8, 1, 4, 4), np.float32)
    frames[5, 0, 2, 2] = np.nan
    with ClientSource("127.0.0.1:0", expected_sims=1, max_inflight=2) as src:
        consumer = Consumer(src)
        with connect(src.address, sim_id=9, params=[1.0], fields=["u"], grid=(4, 4), batch_frames=2) as client:
            send_all(client, frames, fields=("u",))
        consumer.join()
    (report,) = consumer.reports()
    assert (report.sim_id, report.status) == (9, "nan") and "NaN" in report.message
    assert client.dropped is not None and "NaN" in client.dropped
    steps = sorted(frames_by_index(consumer.chunks()))
    assert steps == [0, 1, 2, 3]  # the message with steps 4-5 held the NaN: nothing from it on
    assert all(c.is_finite() for c in consumer.chunks())


def test_user_mistakes_raise_clear_errors():
    with ClientSource("127.0.0.1:0", channels=("T",), grid=(4, 4), n_params=2) as src:
        Consumer(src)
        with pytest.raises(ClientError, match=r"fields \['u'\] but the job trains on \['T'\]"):
            connect(src.address, sim_id=0, params=[1, 2], fields=["u"], grid=(4, 4))
        with pytest.raises(ClientError, match=r"grid \(5, 4\) but the job trains on grid \(4, 4\)"):
            connect(src.address, sim_id=0, params=[1, 2], fields=["T"], grid=(5, 4))
        with pytest.raises(ClientError, match="3 parameters but the job's model takes 2"):
            connect(src.address, sim_id=0, params=[1, 2, 3], fields=["T"], grid=(4, 4))
        with pytest.raises(ClientError, match="pass a sequence of channel names"):
            connect(src.address, sim_id=0, params=[1, 2], fields="T", grid=(4, 4))
        with pytest.raises(ClientError, match="without offset"):
            connect(src.address, sim_id=0, params=[1, 2], fields=["T"], grid=(4, 4), ranks=2)
        client = connect(src.address, sim_id=0, params=[1, 2], fields=["T"], grid=(4, 4))
        with pytest.raises(ClientError, match=r"send\(field='u'\): not one of the connected fields \['T'\]"):
            client.send("u", np.zeros((4, 4)), 0)
        with pytest.raises(ClientError, match=r"array shape \(4, 3\) != grid \(4, 4\)"):
            client.send("T", np.zeros((4, 3)), 0)
        with pytest.raises(ClientError, match="complex|real numeric"):
            client.send("T", np.zeros((4, 4), complex), 0)
        client.send("T", np.zeros((4, 4)), 3)
        with pytest.raises(ClientError, match="frames go backwards.*send frame 4 or later"):
            client.send("T", np.zeros((4, 4)), 2)
        client.close()
        assert issubclass(ClientError, ValueError)
    with ClientSource("127.0.0.1:0") as src:
        client = connect(src.address, sim_id=0, params=[1], fields=["u", "v"], grid=(2, 2), offset=(1, 0), ranks=2)
        with pytest.raises(ClientError, match=r"leaves the grid \(2, 2\) on axis 0"):
            client.send("u", np.zeros((2, 2)), 0)
        client.send("u", np.zeros((1, 2)), 0)
        with pytest.raises(ClientError, match=r"field 'u' of frame 0 was already sent"):
            client.send("u", np.zeros((1, 2)), 0)
        with pytest.raises(ClientError, match=r"frame 0 is missing field\(s\) \['v'\]"):
            client.send("u", np.zeros((1, 2)), 1)
        with pytest.raises(ClientError, match=r"close\(\): frame 0 is missing field\(s\) \['v'\]"):
            client.close()
        client.abort()
    with pytest.raises(ClientSourceError, match="workers.listen='nonsense'"):
        ClientSource("nonsense")
    with pytest.raises(ServerUnavailable, match="no pdestream train job listening"):
        connect(f"127.0.0.1:{_free_port()}", sim_id=0, params=[1], fields=["u"], grid=(2,), timeout=0.3)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_stream_ends_after_expected_sims_and_refuses_latecomers():
    with ClientSource("127.0.0.1:0", expected_sims=2, max_inflight=2) as src:
        consumer = Consumer(src)
        for sim in (4, 7):
            with connect(src.address, sim_id=sim, params=[float(sim)], fields=["u"], grid=(3,)) as client:
                for s in range(5):
                    client.send("u", np.full(3, s), s)
        got = consumer.join()  # ends by itself: no close() needed
        # default batching: 5 frames of 3 floats are far below 4 MiB, so each simulation is one message
        assert [c.frame_index.tolist() for c in consumer.chunks()] == [[0, 1, 2, 3, 4]] * 2
        assert [(m.sim_id, m.status) for m in got if isinstance(m, SimReport)] == [(4, "done"), (7, "done")]
        assert src.sims_finished == 2
        with pytest.raises(JobStopped, match="no longer taking simulations"):
            connect(src.address, sim_id=8, params=[1.0], fields=["u"], grid=(3,))


def test_a_client_that_disconnects_without_close_drops_its_simulation_and_ids_are_not_reused():
    with ClientSource("127.0.0.1:0", expected_sims=1) as src:
        consumer = Consumer(src)
        client = connect(src.address, sim_id=2, params=[1.0], fields=["u"], grid=(3,), batch_frames=1)
        client.send("u", np.zeros(3), 0)
        client.abort()  # e.g. the solver crashed
        consumer.join()
        (report,) = consumer.reports()
        assert report.status == "error" and "disconnected before close()" in report.message
    with ClientSource("127.0.0.1:0") as src:
        consumer = Consumer(src)
        with connect(src.address, sim_id=1, params=[1.0], fields=["u"], grid=(3,)) as client:
            client.send("u", np.zeros(3), 0)
        deadline = time.monotonic() + WAIT
        while not consumer.reports() and time.monotonic() < deadline:
            time.sleep(0.02)
        with pytest.raises(ClientError, match="simulation 1 already finished"):
            connect(src.address, sim_id=1, params=[1.0], fields=["u"], grid=(3,))


def test_client_module_imports_without_jax():
    code = ("import sys, streaming.client; "
            "sys.exit(any(m.split('.')[0] in ('jax', 'ray', 'mpi4py') for m in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT, timeout=60).returncode == 0


def test_mpi_example_slabs_from_two_ranks_equal_the_serial_solver():
    spec = importlib.util.spec_from_file_location("external_heat_solver", ROOT / "examples/external_heat_solver.py")
    serial = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(serial)
    n, frames = 6, 7
    with ClientSource("127.0.0.1:0", expected_sims=2, max_inflight=2, channels=("T",), grid=(n + 2, n + 2),
                      n_params=5) as src:
        consumer = Consumer(src)
        cmd = [str(BIN / "mpiexec"), "-n", "2", sys.executable, str(ROOT / "examples/external_mpi_slabs.py"),
               "--address", src.address, "--sims", "2", "--n", str(n), "--frames", str(frames), "--dt", "0.002"]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env={**os.environ})
        assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-3000:])
        consumer.join()
    assert sorted((r.sim_id, r.status) for r in consumer.reports()) == [(0, "done"), (1, "done")]
    for sim in (0, 1):
        chunks = consumer.chunks(sim)
        fr = frames_by_index(chunks)
        assert sorted(fr) == list(range(frames))
        ref = np.stack(list(serial.simulate(chunks[0].params.astype(np.float64), n, 0.002, 1.0, frames)))
        # exact: each cell gets the same float64 operations in the same order on a slab as on the whole grid
        np.testing.assert_array_equal(np.stack([fr[s][0] for s in range(frames)]), ref.astype(np.float32))


def test_token_from_the_address_or_the_environment(monkeypatch):
    monkeypatch.delenv("PDESTREAM_TOKEN", raising=False)
    with ClientSource("127.0.0.1:0", expected_sims=2, token="tok-1") as src:  # loopback, but a token is set
        consumer = Consumer(src)
        with pytest.raises(ClientError, match="missing or wrong token"):
            connect(src.address, sim_id=0, params=[1.0], fields=["u"], grid=(2,))
        with connect(f"tok-1@{src.address}", sim_id=0, params=[1.0], fields=["u"], grid=(2,)) as c:
            c.send("u", np.zeros(2), 0)
        monkeypatch.setenv("PDESTREAM_TOKEN", "tok-1")
        with connect(src.address, sim_id=1, params=[1.0], fields=["u"], grid=(2,)) as c:
            c.send("u", np.ones(2), 0)
        consumer.join()
    assert [(r.sim_id, r.status) for r in consumer.reports()] == [(0, "done"), (1, "done")]
    assert src.external_report()["rejected_connections"] == {"token": 1}


def test_large_messages_reach_the_trainer_as_chunk_frames_views_with_their_overlap():
    frames = np.random.default_rng(4).standard_normal((23, 1, 4, 5)).astype(np.float32)
    with ClientSource("127.0.0.1:0", expected_sims=1, max_inflight=2, overlap=2, chunk_frames=5) as src:
        consumer = Consumer(src)
        with connect(src.address, sim_id=0, params=[1.0], fields=["u"], grid=(4, 5), batch_frames=12) as client:
            send_all(client, frames, fields=("u",))
        consumer.join()
    chunks = consumer.chunks()
    # messages of frames 0-11 and 12-22; each cut into chunks of 5 new frames with the 2 frames before them (the
    # second message is read behind frames 10-11 of the first)
    assert [c.frame_index.tolist() for c in chunks] == [list(range(0, 5)), list(range(3, 10)), [8, 9, 10, 11],
                                                  list(range(10, 17)), list(range(15, 22)), [20, 21, 22]]
    # views of one array per message: the repeated frames are the same memory, not copies
    assert all(np.shares_memory(chunks[i].fields, chunks[i + 1].fields) for i in (0, 1, 3, 4))
    fr = frames_by_index(chunks)  # repeated frames are checked equal there
    np.testing.assert_array_equal(np.stack([fr[s] for s in range(23)]), frames)


def test_acknowledgements_come_in_batches_and_a_smaller_client_window_never_stalls():
    from streaming.transport.wire import PROTOCOL, recv_frame, send_frame

    # a client whose own window (1) is below the job's (4): each message is acknowledged once the job holds no
    # other message of it, so it never waits for an acknowledgement the job would keep for a batch
    frames = np.arange(8 * 16, dtype=np.float32).reshape(8, 1, 4, 4)
    with ClientSource("127.0.0.1:0", expected_sims=1, max_inflight=4) as src:
        consumer = Consumer(src)
        with connect(src.address, sim_id=0, params=[1.0], fields=["u"], grid=(4, 4), batch_frames=1,
                     max_inflight=1) as client:
            send_all(client, frames, fields=("u",))
        consumer.join()
    assert sorted(frames_by_index(consumer.chunks())) == list(range(8))
    # a raw client that sends its whole window before the trainer takes any: two acknowledgements of 2, then "bye"
    with ClientSource("127.0.0.1:0", expected_sims=1, max_inflight=4) as src:
        consumer = Consumer(src, start=False)
        host, port = src.address.rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=WAIT) as s:
            send_frame(s, {"type": "hello", "protocol": PROTOCOL, "sim_id": 0, "params": [1.0], "fields": ["u"],
                           "grid": [4, 4], "offset": None, "ranks": 1, "solver": "raw"})
            assert recv_frame(s)[0]["type"] == "welcome"
            for k in range(4):
                header, data = Chunk(0, [k], frames[k:k + 1], np.ones(1, np.float32), "raw").to_wire()
                send_frame(s, {"type": "chunk", "wire": header}, data)
            deadline = time.monotonic() + WAIT
            while sum(c.read_msgs for c in list(src._conns)) < 4 and time.monotonic() < deadline:
                time.sleep(0.01)
            consumer.thread.start()
            acks = [recv_frame(s)[0] for _ in range(2)]
            send_frame(s, {"type": "end"})
            assert recv_frame(s)[0]["type"] == "bye"
        consumer.join()
    assert acks == [{"type": "ack", "n": 2}, {"type": "ack", "n": 2}]


def test_reader_threads_serve_one_connection_after_the_other():
    n = 12
    with ClientSource("127.0.0.1:0", expected_sims=n, max_inflight=2) as src:
        consumer = Consumer(src)
        for sim in range(n):
            with connect(src.address, sim_id=sim, params=[1.0], fields=["u"], grid=(3,),
                         keep_connection=False) as client:
                client.send("u", np.zeros(3), 0)
        consumer.join()
        readers = [t for t in threading.enumerate() if t.name == "client-source-reader"]
        assert 1 <= len(readers) < n  # idle threads wait for the next connection instead of one thread each
    assert [r.status for r in consumer.reports()] == ["done"] * n
