"""The external listener cannot be knocked over: over a thousand malformed, truncated, oversized and out-of-order
frames and protocol violations against a live training job while a well-behaved client streams; each bad
connection is closed and counted by reason, its simulation dropped, and the job trains on and writes its summary."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections import Counter

import numpy as np
import pytest

from streaming.chunk import WIRE_VERSION
from streaming.client import ClientError, connect
from streaming.config import load_config
from streaming.job import run_job
from streaming.transport.listener import ClientSource
from streaming.transport.wire import MAGIC, PREFIX

GRID = (32, 32)  # the quickstart's heat2d grid (n = 30 plus the walls)
PARAMS = [300.0, 100.0, 500.0, 200.0, 400.0]
GOOD_SIMS, FRAMES = 6, 40
WAIT = 60.0


def frame(header: dict | bytes, payload: bytes = b"", *, n_head: int | None = None, n_payload: int | None = None,
          magic: bytes = MAGIC) -> bytes:
    head = header if isinstance(header, bytes) else json.dumps(header).encode()
    return PREFIX.pack(magic, len(head) if n_head is None else n_head,
                       len(payload) if n_payload is None else n_payload) + head + payload


def hello(sim_id: int, **change) -> dict:
    return {"type": "hello", "protocol": 1, "sim_id": sim_id, "params": PARAMS, "fields": ["T"], "grid": list(GRID),
            "offset": None, "ranks": 1, "solver": "fuzz", **change}


def chunk(sim_id: int, frames: list[int], **change) -> tuple[dict, bytes]:
    wire = {"version": WIRE_VERSION, "sim_id": sim_id, "solver": "fuzz", "frame_index": frames, "params": PARAMS,
            "shape": [len(frames), 1, *GRID], "dtype": "<f4", "offset": [0, 0], "global_grid": list(GRID), **change}
    data = np.ones((len(frames), 1, *GRID), np.float32).tobytes()
    return {"type": "chunk", "wire": wire}, data


def cases(rng: np.random.Generator, first_sim: int, n: int) -> list[tuple[bytes, str, str | None, bool]]:
    """``n`` bad connections: (bytes to send, rejected-connection reason, dropped-simulation reason or None,
    whether the bytes open a simulation first)."""
    out = []
    sim = first_sim
    for _ in range(n):
        kind = int(rng.integers(18))
        if kind == 0:  # random bytes
            junk = rng.integers(0, 256, int(rng.integers(16, 300)), dtype=np.uint8).tobytes()
            out.append((b"X" + junk, "magic", None, False))
        elif kind == 1:  # a header length over the limit
            out.append((PREFIX.pack(MAGIC, int(rng.integers(2**20 + 1, 2**32)), 0) + b"{}", "oversize", None, False))
        elif kind == 2:  # an 8-exabyte payload: must be refused before anything is allocated
            out.append((frame(hello(0), n_payload=int(rng.integers(2**62, 2**64, dtype=np.uint64))), "oversize",
                        None, False))
        elif kind == 3:  # bad JSON / not an object / bad UTF-8
            bad = [b"{not json", b"[1, 2, 3]", b"\xff\xfe{}", b'"hello"', b"{" * 50][int(rng.integers(5))]
            out.append((frame(bad), "json", None, False))
        elif kind == 4:  # a first message that is no hello, a malformed or foreign-protocol hello, a hello payload
            h = [{"type": "chunk"}, hello(1, grid="big"), hello(1, protocol=99), {"type": "hello"},
                 hello(-4), hello(2**70), hello(1, grid=[0, 32])][int(rng.integers(7))]
            out.append((frame(h), "hello", None, False))
        elif kind == 5:
            out.append((frame(hello(1), b"xyz"), "hello", None, False))
        elif kind == 6:  # what the job does not train on: unknown field, other grid, other parameter count
            h = [hello(1, fields=["u"]), hello(1, grid=[16, 16]), hello(1, params=[1.0])][int(rng.integers(3))]
            out.append((frame(h), "mismatch", None, False))
        elif kind == 7:  # a truncated prefix, then the client hangs up
            out.append((frame(hello(1))[: int(rng.integers(0, PREFIX.size))], "no_hello", None, False))
        else:  # a simulation opens, then breaks the protocol
            sim += 1
            start = frame(hello(sim))
            if kind == 8:
                h, d = chunk(sim, [0], dtype=["<i4", ">f4", "<c8", "float32"][int(rng.integers(4))])
                out.append((start + frame(h, d), "dtype", "dtype", True))
            elif kind == 9:  # shape against the payload, the channels or the grid
                h, d = chunk(sim, [0], shape=[[1, 1, 32, 31], [1, 2, 32, 32], [2, 1, 32, 32], [1, 1, 64, 32],
                                              [1, 1, 32]][int(rng.integers(5))])
                out.append((start + frame(h, d), "shape", "shape", True))
            elif kind == 10:  # frames out of order
                h1, d1 = chunk(sim, [5])
                h2, d2 = chunk(sim, [int(rng.integers(0, 6))])
                out.append((start + frame(h1, d1) + frame(h2, d2), "order", "order", True))
            elif kind == 11:  # unknown message type, chunk without its wire header, wire header of another version
                h, d = chunk(sim, [0])
                bad = [({"type": "data"}, b""), ({"type": "chunk"}, d), ({**h, "wire": {**h["wire"], "version": 7}}, d),
                       ({"type": "chunk", "wire": {"shape": [1, 1, 32, 32]}}, d)][int(rng.integers(4))]
                out.append((start + frame(*bad), "protocol", "protocol", True))
            elif kind == 12:  # garbage after a good hello
                junk = rng.integers(0, 256, int(rng.integers(16, 200)), dtype=np.uint8).tobytes()
                out.append((start + b"Q" + junk, "magic", "magic", True))
            elif kind == 13:
                out.append((start + PREFIX.pack(MAGIC, 10, 2**63) + b"x" * 10, "oversize", "oversize", True))
            elif kind == 14:
                out.append((start + frame(b"{]"), "json", "json", True))
            elif kind == 15:  # a chunk cut off mid-payload, then the client hangs up
                h, d = chunk(sim, [0, 1])
                cut = frame(h, d)[: -int(rng.integers(1, len(d)))]
                out.append((start + cut, None, "disconnected", True))
            elif kind == 16:  # an end that carries a payload
                out.append((start + frame({"type": "end"}, b"1234"), "protocol", "protocol", True))
            else:  # NaN: a well-formed stream whose simulation the job drops
                h, d = chunk(sim, [0, 1])
                d = np.frombuffer(d, np.float32).copy()
                d[int(rng.integers(d.size))] = np.nan
                out.append((start + frame(h, d.tobytes()) + frame({"type": "end"}), None, "nan", True))
    return out


def play(address: tuple[str, int], data: bytes) -> None:
    """Send ``data``, half-close, and read until the job closes the connection (so the job has dealt with it)."""
    with socket.create_connection(address, timeout=WAIT) as s:
        try:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
            while s.recv(65536):
                pass
        except (ConnectionResetError, BrokenPipeError, OSError) as e:  # ENOTCONN too, not a timeout
            if isinstance(e, TimeoutError):
                raise
            # the job cut the connection while bytes of ours were still unread: it dealt with it


def silent(address: tuple[str, int], sim: int, stuck_mid_frame: bool) -> None:
    """A client that does not read its acknowledgements and goes quiet (or stops mid-frame); once the job has had
    time to give up on it, it reads until the job hangs up."""
    with socket.create_connection(address, timeout=WAIT) as s:
        h, d = chunk(sim, [0, 1])
        s.sendall(frame(hello(sim)) + frame(h, d) + (frame(h, d)[:30] if stuck_mid_frame else b""))
        time.sleep(1.5)  # the welcome and the acknowledgement arrive and stay unread
        try:
            while s.recv(65536):
                pass
        except OSError as e:
            if isinstance(e, TimeoutError):
                raise


def good_client(address: str, sims: range, errors: list, connected: threading.Event | None = None) -> None:
    rng = np.random.default_rng(1)
    x = np.linspace(0, np.pi, GRID[0])
    base = np.sin(x)[:, None] * np.sin(x)[None, :]
    try:
        for sim in sims:
            with connect(address, sim_id=sim, params=PARAMS, fields=["T"], grid=GRID, timeout=WAIT,
                         send_timeout=WAIT, keep_connection=False) as c:  # one connection each: counted below
                if connected is not None:
                    connected.set()
                amp = 100 + 50 * rng.random()
                for k in range(FRAMES):
                    c.send("T", 300 + amp * np.exp(-0.05 * k) * base, k)
    except BaseException as e:  # noqa: BLE001  (handed to the test thread)
        errors.append(e)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_live_job_survives_a_thousand_bad_frames_and_counts_them(tmp_path):
    rng = np.random.default_rng(0)
    bad = cases(rng, first_sim=1000, n=1100)
    n_silent = 4
    opened = sum(c[3] for c in bad) + n_silent
    port = _free_port()
    cfg = load_config("configs/quickstart.toml", {
        "workers.backend": "external", "workers.listen": f"127.0.0.1:{port}", "workers.client_timeout": "3.0",
        "solver.n_sims": str(GOOD_SIMS + opened), "optim.steps": "100000", "optim.batch_size": "8",
        "model.hparams": "{ modes = 4, width = 8, depth = 1 }", "buffer.capacity": "1024", "buffer.watermark": "64",
        "buffer.kind": "fifo", "buffer.ingest_ratio": "none", "optim.unroll": "{ start = 1, end = 1 }",
        "validation.n_sims": "2", "validation.interval": "50",
        "validation.rollout_steps": "5", "checkpoint.interval": "100000", "logging.run_dir": str(tmp_path),
        "logging.name": "fuzz", "logging.tensorboard": "false", "logging.progress": "false"})
    result: dict = {}
    job = threading.Thread(target=lambda: result.update(run_job(cfg)), daemon=True)
    job.start()
    address = ("127.0.0.1", port)
    errors: list = []
    up = threading.Event()
    first = threading.Thread(target=good_client, args=(f"127.0.0.1:{port}", range(GOOD_SIMS - 1), errors, up))
    first.start()  # streams (and the job trains) while the bad clients come and go
    assert up.wait(WAIT), errors
    quiet = [threading.Thread(target=silent, args=(address, 900 + i, i % 2 == 1)) for i in range(n_silent)]
    for t in quiet:
        t.start()
    for data, *_ in bad:
        play(address, data)
    for t in [*quiet, first]:
        t.join(WAIT)
        assert not t.is_alive()
    good_client(f"127.0.0.1:{port}", range(GOOD_SIMS - 1, GOOD_SIMS), errors)  # the last one ends the stream
    job.join(120)
    assert not job.is_alive() and not errors, errors

    rejected = Counter(c[1] for c in bad if c[1] is not None) + Counter(timeout=n_silent)
    dropped = Counter(c[2] for c in bad if c[2] is not None) + Counter(timeout=n_silent)
    assert len(bad) >= 1000 and len(rejected) >= 10 and len(dropped) >= 10
    ext = result["external"]
    assert ext["rejected_connections"] == dict(rejected)
    assert ext["dropped_sims"] == dict(dropped)
    assert ext["connections"] == len(bad) + n_silent + GOOD_SIMS
    assert result["sims_done"] == GOOD_SIMS and result["sims_dropped"] == sum(dropped.values())
    # the good simulations' samples, plus the one sample of each silent client's first (finite) chunk, delivered
    # before it went quiet; nothing of a malformed message reaches the buffer
    assert result["samples_received"] == GOOD_SIMS * (FRAMES - 1) + n_silent
    assert result["steps"] > 0 and np.isfinite(result["final_loss"])
    saved = json.loads((tmp_path / "fuzz" / "summary.json").read_text())
    assert saved["external"] == ext and saved["steps"] == result["steps"]


def test_a_client_past_its_window_is_cut_and_others_go_on():
    with ClientSource("127.0.0.1:0", max_inflight=2, client_timeout=5.0) as src:  # nobody iterates: no acks
        host, port = src.address.rsplit(":", 1)
        h, d = chunk(3, [0])
        msgs = b"".join(frame({**h, "wire": {**h["wire"], "frame_index": [k]}}, d) for k in range(3))
        play((host, int(port)), frame(hello(3)) + msgs)
        deadline = time.monotonic() + WAIT
        while not src.rejected and time.monotonic() < deadline:
            time.sleep(0.02)
        assert src.external_report()["rejected_connections"] == {"window": 1}
        # no job grid to compare with: a hello announcing a frame of 4 TiB is refused, nothing is allocated
        play((host, int(port)), frame(hello(4, grid=[2**20, 2**20])))
        assert src.external_report()["rejected_connections"] == {"window": 1, "hello": 1}


def _non_loopback_ip() -> str | None:
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the outgoing interface
            ip = s.getsockname()[0]
    except OSError:
        return None
    return None if ip.startswith("127.") else ip


@pytest.mark.parametrize("given", [None, "fixed-token"])
def test_a_listener_beyond_loopback_needs_the_token(given, monkeypatch):
    monkeypatch.delenv("PDESTREAM_TOKEN", raising=False)
    with ClientSource("0.0.0.0:0", expected_sims=1, token=given) as src:
        assert src.token and (src.token == given or (given is None and src.token_generated))
        port = int(src.address.rsplit(":", 1)[1])
        host = _non_loopback_ip() or "127.0.0.1"  # bound on every interface; the token is required on each
        got: list = []
        consumer = threading.Thread(target=lambda: got.extend(src), daemon=True)
        consumer.start()
        kw = dict(sim_id=0, params=[1.0], fields=["u"], grid=(3,), timeout=WAIT, send_timeout=WAIT)
        with pytest.raises(ClientError, match="missing or wrong token"):
            connect(f"{host}:{port}", **kw)
        with pytest.raises(ClientError, match="missing or wrong token"):
            connect(f"{host}:{port}", token=src.token[:-1] + ("y" if src.token.endswith("x") else "x"), **kw)
        monkeypatch.setenv("PDESTREAM_TOKEN", src.token)
        with connect(f"{host}:{port}", **kw) as c:
            c.send("u", np.arange(3.0), 0)
        consumer.join(WAIT)
        assert src.external_report()["rejected_connections"] == {"token": 2}
    assert [m.status for m in got if not hasattr(m, "fields")] == ["done"]
    with ClientSource("127.0.0.1:0") as src:  # loopback: no token unless one is set
        assert src.token is None and not src.token_generated
