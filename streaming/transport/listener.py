"""External solvers as a source: a TCP listener that external clients (:mod:`streaming.client`) stream into.

Backend ``external`` of a training job. ``ClientSource(listen, expected_sims, max_inflight)`` binds
``listen`` (``"host:port"``; port 0 picks a free port, ``source.address`` tells which; an empty host
listens on every interface) as soon as it is built, accepts any number of client connections and
yields what they send, as every source does: :class:`~streaming.chunk.Chunk` s and one
:class:`~streaming.worker.SimReport` per simulation.

- Slabs: a simulation sent by ``ranks`` processes, each with the ``offset`` of its slab, is
  assembled frame by frame into full-grid chunks; a frame is emitted once the whole grid is
  covered. Overlapping slabs, or a frame still uncovered once every rank has moved past it, drop
  the simulation with status ``"error"`` and a message naming the offsets (the clients' next call
  raises :class:`~streaming.client.ClientError` with the same message).
- Overlap between messages: the last ``overlap`` frames of a simulation's previous chunk are
  prepended to the next chunk when the frames follow on, so that every sample needing ``overlap + 1``
  consecutive frames is cut from some chunk (pass ``window + targets - 1`` of the sample spec).
- NaN/Inf in a message drops the simulation: ``SimReport(sim_id, "nan")``; its later data are
  ignored (chunks delivered before stay in the buffer: they were finite). A client that disconnects
  without ``close()`` drops its simulation with status ``"error"``.
- ``SimReport(sim_id, "done")`` once every rank of the simulation closed. A connection whose simulation
  was answered ``bye`` may carry the next simulation's hello (the welcome says ``reuse``); a hello
  before that ``bye`` breaks the protocol.
- Flow control: a message is acknowledged only after the chunk(s) it went into were taken by the
  consumer (the trainer's loop asked for the next message), and a client keeps at most
  ``max_inflight`` messages unacknowledged, so a slow trainer blocks the clients.
- The stream ends once ``expected_sims`` simulations finished (done or dropped); with None it runs
  until :meth:`close`.
- Hardening: frame lengths are checked against ``max_header`` / ``max_message_bytes`` before anything
  is allocated; a malformed frame, bad JSON, a wrong dtype or shape, frames out of order, more than
  ``max_inflight`` unacknowledged messages or a connection silent for ``client_timeout`` s (while the
  job holds none of its messages), or stuck mid-frame as long, closes THAT connection with one log
  line and drops its simulation (pending slabs included; chunks already delivered stay). Counted by
  reason in :meth:`external_report` (``rejected_connections``, ``dropped_sims``).
- Token: with ``token`` set, or when listening beyond the loopback interface (a token is then
  generated with :mod:`secrets`), a hello without the right ``token`` is refused (constant-time
  compare).

Threads: one accepts connections; a reader thread per open connection reads frames (decoding, stitching
and the NaN check run there; threads are reused from one connection to the next; headers and small frames
come through a read-ahead buffer, payloads straight into their array: each system call is a wait for the
GIL, which the iterating thread mostly holds); the iterating thread
assembles slabs, yields and acknowledges (in batches: half the window, or whenever the job holds nothing
else of the connection; the "bye" that answers "end" acknowledges the rest). Acknowledgements, byes and
drop notices go out through one writer thread, in the order they were posted: a send that wakes a waiting
client may cost its sender the CPU for a while, and that should not be the trainer's loop.
"""

from __future__ import annotations

import contextlib
import hmac
import ipaddress
import logging
import math
import queue
import secrets
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from streaming.chunk import WIRE_VERSION, Chunk, ChunkError, SimReport
from streaming.client import ClientError, parse_address
from streaming.transport.source import Message
from streaming.transport.wire import (
    MAX_HEADER,
    MAX_PAYLOAD,
    PREFIX,
    PROTOCOL,
    FrameError,
    check_prefix,
    parse_header,
    send_frame,
)

_POLL_S = 0.1  # how often a waiting thread checks for close()
_READER_IDLE_S = 5.0  # a reader thread without a connection for this long ends
MAX_CONNECTIONS = 1024  # open client connections (one reader thread each); more are refused
_MAX_ID = 2**62  # simulation ids and frame indices stay well inside int64 (de-duplication keys)
_MAX_FRAMES_IN_MESSAGES = 16  # a full frame assembled from slabs may be this many messages large
_WAITALL = getattr(socket, "MSG_WAITALL", 0)
_READ_AHEAD = 1 << 16  # bytes: reads shorter than this go through a read-ahead buffer
DTYPES = ("<f4", "<f8")  # payload dtypes a chunk may carry (float64 is cast to float32)
log = logging.getLogger(__name__)


class ClientSourceError(ValueError):
    """A bad setting of the external source (e.g. ``workers.listen``); the message names the fix."""


class _Refused(Exception):
    """A hello the source will not accept; the message goes back to the client. ``reason``: counter key."""

    def __init__(self, message: str, reason: str = "hello") -> None:
        super().__init__(message)
        self.reason = reason


class _ProtocolError(Exception):
    """A malformed or inconsistent message; the client's simulation is dropped. ``reason``: counter key."""

    def __init__(self, message: str, reason: str = "protocol") -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(eq=False)
class _Sim:
    sim_id: int
    params: np.ndarray
    fields: tuple[str, ...]
    grid: tuple[int, ...]
    solver: str
    ranks: int
    conns: list[_Conn] = field(default_factory=list)
    status: str = "open"  # open | done | dropped
    ended: int = 0  # ranks that sent "end"
    pending: dict[int, _Frame] = field(default_factory=dict)  # frame index -> frame being assembled from slabs
    tail_index: np.ndarray | None = None  # last `overlap` frames of the last chunk, for the next one
    tail_fields: np.ndarray | None = None


@dataclass(eq=False)
class _Conn:
    sock: socket.socket
    peer: str
    lock: threading.Lock = field(default_factory=threading.Lock)  # one writer at a time
    sim: _Sim | None = None
    offset: tuple[int, ...] = ()
    read_frame: int = -1  # last frame index read (reader thread)
    seen_frame: int = -1  # last frame index processed (iterating thread)
    unacked: int = 0  # messages received and not yet taken by the trainer (iterating thread)
    ended: bool = False
    read_msgs: int = 0  # chunk messages read (reader thread) ...
    acked: int = 0  # ... and acknowledged (iterating thread): the difference is bounded by max_inflight
    taken: int = 0  # messages taken (or let go) by the iterating thread; acknowledged in batches
    owed: int = 0  # taken but not acknowledged yet
    end_read: bool = False  # the reader read "end": the "bye" acknowledges whatever is owed
    bye: bool = False  # "bye" posted: nothing more of this simulation goes out (the socket may carry the next one)
    last_take: float = 0.0  # monotonic time the trainer last took one of its messages (idle clock)
    ahead: memoryview | None = None  # bytes read ahead of the current frame (reader thread) ...
    ahead_pos: int = 0  # ... the next unread one ...
    ahead_end: int = 0  # ... and the end of what was read
    tail_index: np.ndarray | None = None  # one-rank simulation: last `overlap` frames read (reader thread)
    tail_fields: np.ndarray | None = None

    def send(self, header: dict[str, Any]) -> None:
        """Best effort: a connection that went away, or that does not read (its socket buffer stays full past
        the socket timeout), is cut; its reader thread notices."""
        with self.lock:
            try:
                send_frame(self.sock, header)
            except OSError:
                with contextlib.suppress(OSError):
                    self.sock.shutdown(socket.SHUT_RDWR)

    @property
    def label(self) -> str:
        return f"the rank at offset {self.offset}" if self.sim is not None and self.sim.ranks > 1 else "the client"


@dataclass(eq=False)
class _Msg:
    """A received message: acknowledged once ``remaining`` (frames or chunks it went into) were consumed."""

    conn: _Conn
    remaining: int = 0


@dataclass(eq=False)
class _Frame:
    data: np.ndarray  # (C, *grid)
    mask: np.ndarray  # (*grid) bool: cells received
    covered: int = 0
    msgs: list[_Msg] = field(default_factory=list)


def _set_timeouts(sock: socket.socket, seconds: float) -> None:
    """Kernel-side receive/send timeouts: reads wake up to check close() and client_timeout, a send to a client
    that does not read fails instead of blocking; unlike ``settimeout`` no extra poll() per call."""
    sock.settimeout(None)
    tv = struct.pack("ll", int(seconds), int((seconds % 1) * 1e6))
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, tv)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, tv)
    except OSError:  # a platform without them: Python's own timeout
        sock.settimeout(seconds)


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _bind(listen: str) -> socket.socket:
    try:
        host, port = parse_address(listen, "workers.listen")
    except ClientError as e:
        raise ClientSourceError(str(e)) from None
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host or "0.0.0.0", port, type=socket.SOCK_STREAM,
                                                          flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(128)
    except OSError as e:
        raise ClientSourceError(f"workers.listen={listen!r}: cannot listen there ({e}); pick another port, or port 0 "
                                "for a free one") from None
    sock.settimeout(_POLL_S)
    return sock


class ClientSource:
    """Yields the chunks and simulation reports that external clients send; see the module docstring.

    listen: ``"host:port"`` to bind. expected_sims: simulations after which the stream ends (None:
    never). max_inflight: unacknowledged messages per client. overlap: frames repeated between
    consecutive chunks of a simulation. channels / grid / n_params: what the job trains on; a client
    whose ``fields``, global ``grid`` or number of parameters differ is refused at ``connect``.
    token: the shared secret clients present (None: none on loopback, a generated one elsewhere; see
    :attr:`token`). client_timeout: seconds a connection may stay silent while the job holds none of
    its messages, or stay stuck mid-frame. max_message_bytes / max_header: bounds on a frame's payload
    and JSON header. chunk_frames: new frames per chunk handed on (a one-rank simulation's larger messages
    are cut into views; None: one chunk per message), as ``workers.chunk_frames`` sizes every transport's.
    """

    def __init__(self, listen: str, expected_sims: int | None = None, max_inflight: int = 4, *, overlap: int = 1,
                 channels: Sequence[str] | None = None, grid: Sequence[int] | None = None,
                 n_params: int | None = None, token: str | None = None, client_timeout: float = 3600.0,
                 max_message_bytes: int = MAX_PAYLOAD, max_header: int = MAX_HEADER,
                 max_connections: int = MAX_CONNECTIONS, chunk_frames: int | None = None) -> None:
        if expected_sims is not None and expected_sims < 0:
            raise ClientSourceError(f"expected_sims={expected_sims}: must be >= 0 (None: stream until closed)")
        if max_inflight < 1:
            raise ClientSourceError(f"max_inflight={max_inflight}: must be >= 1")
        if overlap < 0:
            raise ClientSourceError(f"overlap={overlap}: must be >= 0")
        if not client_timeout > 0:
            raise ClientSourceError(f"client_timeout={client_timeout}: must be > 0 seconds")
        if chunk_frames is not None and chunk_frames < 1:
            raise ClientSourceError(f"chunk_frames={chunk_frames}: must be >= 1 (None: one chunk per message)")
        if max_message_bytes < 1 or max_header < 64 or max_connections < 1:
            raise ClientSourceError(f"max_message_bytes={max_message_bytes}, max_header={max_header}, "
                                    f"max_connections={max_connections}: must be >= 1, >= 64 and >= 1")
        if token is not None and (not isinstance(token, str) or not token or "@" in token or not token.isprintable()):
            raise ClientSourceError("workers.token: expected a non-empty printable string without '@' (or none: "
                                    "generated when listening beyond loopback)")
        self.client_timeout, self.max_message_bytes, self.max_header = client_timeout, max_message_bytes, max_header
        self.max_connections = max_connections
        self._sock_timeout = min(1.0, max(client_timeout / 4, 0.05))
        self.connections = 0
        self.rejected: Counter[str] = Counter()  # connections closed or refused, by reason
        self.dropped: Counter[str] = Counter()  # simulations dropped, by reason
        self.expected_sims, self.max_inflight, self.overlap = expected_sims, max_inflight, overlap
        self.chunk_frames = chunk_frames
        self.channels = None if channels is None else tuple(channels)
        self.grid = None if grid is None else tuple(int(g) for g in grid)
        self.n_params = n_params
        self.cursor = self.dispatcher = None  # no design cursor: the clients choose their simulations
        self.bytes_received = 0
        self.sims_finished = 0
        self._ack_batch = max(1, (max_inflight + 1) // 2)  # acknowledgements go out in batches of this many
        self._lock = threading.Lock()
        self._sims: dict[int, _Sim] = {}
        self._conns: dict[_Conn, threading.Thread | None] = {}  # open connections and their reader threads
        self._handoff: queue.SimpleQueue = queue.SimpleQueue()  # accepted connections for idle reader threads
        self._idle_readers = 0  # reader threads waiting on _handoff and not yet handed a connection
        self._events: queue.SimpleQueue = queue.SimpleQueue()
        self._yields_left = 0  # messages of the event being yielded that come after the current one
        self._closed = False
        self._listener = _bind(listen)
        host, port = self._listener.getsockname()[:2]
        self.token_generated = token is None and not _is_loopback(host)
        self.token: str | None = secrets.token_urlsafe(24) if self.token_generated else token
        self._token_bytes = None if self.token is None else self.token.encode()
        if host in ("0.0.0.0", "::"):
            host = socket.gethostname()
        self._address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self._acceptor = threading.Thread(target=self._accept_loop, daemon=True, name="client-source-accept")
        self._acceptor.start()
        # The consumer's acknowledgements go out from a thread of their own: a send that wakes a waiting client
        # costs the sender its CPU slice on a busy machine, and the trainer's loop should not be the one to wait.
        self._outbox: queue.SimpleQueue = queue.SimpleQueue()
        self._writer = threading.Thread(target=self._write_loop, daemon=True, name="client-source-writer")
        self._writer.start()

    def _post(self, conn: _Conn, header: dict[str, Any]) -> None:
        """Send ``header`` to ``conn`` from the writer thread (in the order posted, after whatever was posted
        before)."""
        self._outbox.put((conn, header))

    def _write_loop(self) -> None:
        while True:
            item = self._outbox.get()
            if item is None:
                return
            item[0].send(item[1])

    @property
    def address(self) -> str:
        """``"host:port"`` clients connect to (the chosen port when ``listen`` asked for port 0)."""
        return self._address

    def external_report(self) -> dict[str, Any]:
        """Counters for the job summary: connections accepted, refused or closed by reason, dropped simulations
        by reason (``nan``, ``disconnected``, ``timeout``, ``slabs``, a protocol violation's key)."""
        with self._lock:
            return {"address": self.address, "token_required": self.token is not None,
                    "connections": self.connections, "rejected_connections": dict(sorted(self.rejected.items())),
                    "dropped_sims": dict(sorted(self.dropped.items())), "sims_finished": self.sims_finished}

    def in_flight(self) -> list:
        """Nothing to re-run after a resume: external clients own their simulations."""
        return []

    @property
    def finished(self) -> bool:
        return self.expected_sims is not None and self.sims_finished >= self.expected_sims

    # ------------------------------------------------------------------ iteration (the consumer's thread)
    def ready(self) -> bool:
        """Whether the iterator holds more to yield or has events queued (asking it for the next message would
        probably not wait): a consumer that forwards messages may gather them until it would."""
        return self._yields_left > 0 or not self._events.empty()

    def __iter__(self) -> Iterator[Message]:
        while not self._closed and not self.finished:
            try:
                kind, conn, payload = self._events.get(timeout=_POLL_S)
            except queue.Empty:
                continue
            if kind == "chunk":
                out = self._on_chunk(conn, *payload)
            elif kind == "end":
                out = self._on_end(conn)
            else:
                out = self._on_lost(conn, payload)
            for i, (msg, taken) in enumerate(out):
                self._yields_left = len(out) - 1 - i
                yield msg
                if self._closed:
                    return
                for m in taken:  # the consumer asked for more: msg was taken
                    m.remaining -= 1
                    if m.remaining == 0:
                        self._ack(m.conn)
        if not self._closed:
            self._drain()

    def _on_chunk(self, conn: _Conn, pieces: list[Chunk], finite: bool,
                  nbytes: int) -> list[tuple[Message, list[_Msg]]]:
        sim = conn.sim
        assert sim is not None
        chunk = pieces[0]
        msg = _Msg(conn)
        conn.unacked += 1
        self.bytes_received += nbytes
        if sim.status != "open":
            self._ack(conn)
            return []
        if not finite:
            index = [int(chunk.frame_index[0]), int(pieces[-1].frame_index[-1])]
            return self._drop(sim, "nan", f"simulation {sim.sim_id} sent NaN/Inf (frames {index[0]}..{index[-1]}"
                              f"{' from ' + conn.label if sim.ranks > 1 else ''}); dropped", [msg], reason="nan")
        conn.seen_frame = int(pieces[-1].frame_index[-1])
        if sim.ranks == 1 and not chunk.is_slab:  # the whole grid from one process: stitched by its reader already
            msg.remaining = len(pieces)
            return [(p, [msg]) for p in pieces]
        return self._assemble(sim, conn, chunk, msg)

    def _assemble(self, sim: _Sim, conn: _Conn, chunk: Chunk, msg: _Msg) -> list[tuple[Message, list[_Msg]]]:
        total = math.prod(sim.grid)
        box = tuple(slice(o, o + n) for o, n in zip(chunk.offset, chunk.grid, strict=True))
        cells = math.prod(chunk.grid)
        for i, j in enumerate(chunk.frame_index.tolist()):
            frame = sim.pending.get(j)
            if frame is None:
                frame = sim.pending[j] = _Frame(np.empty((len(sim.fields), *sim.grid), np.float32),
                                                   np.zeros(sim.grid, bool))
            seen = frame.mask[box]
            if seen.any():
                first = tuple(int(o + j) for o, j in zip(chunk.offset, np.argwhere(seen)[0], strict=True))
                return self._drop(sim, "error", f"simulation {sim.sim_id} frame {j}: the slab of shape {chunk.grid} "
                                  f"at offset {chunk.offset} overlaps cells another rank sent (first: {first}); "
                                  "give every rank a disjoint slab", [msg], reason="slabs")
            frame.mask[box] = True
            frame.data[(slice(None), *box)] = chunk.fields[i]
            frame.covered += cells
            frame.msgs.append(msg)
            msg.remaining += 1
        with self._lock:
            all_connected = len(sim.conns) == sim.ranks
            behind = min(c.seen_frame for c in sim.conns)
        if all_connected:  # every rank moved past `behind`: an incomplete frame there has a hole
            for j in sorted(sim.pending):
                frame = sim.pending[j]
                if j <= behind and frame.covered < total:
                    return self._drop(sim, "error", self._gap_message(sim, j, frame), reason="slabs")
        done = sorted(s for s, f in sim.pending.items() if f.covered == total)
        out = []
        while done:  # runs of consecutive complete frames
            run = [done.pop(0)]
            while done and done[0] == run[-1] + 1:
                run.append(done.pop(0))
            frames = [sim.pending.pop(s) for s in run]
            fields = np.stack([f.data for f in frames])
            out.append((self._stitch(sim, np.asarray(run, np.int64), fields), [m for f in frames for m in f.msgs]))
        return out

    def _gap_message(self, sim: _Sim, j: int, frame: _Frame) -> str:
        hole = tuple(int(i) for i in np.argwhere(~frame.mask)[0])
        return (f"simulation {sim.sim_id} frame {j}: the slabs of its {sim.ranks} rank(s) cover {frame.covered} of "
                f"{frame.mask.size} cells of grid {sim.grid} (first missing cell {hole}); check each rank's offset "
                "and that ranks= is the number of processes sending slabs")

    def _stitch(self, sim: _Sim, index: np.ndarray, fields: np.ndarray) -> Chunk:
        k = self.overlap
        if k and sim.tail_index is not None and index[0] == sim.tail_index[-1] + 1:
            index = np.concatenate([sim.tail_index, index])
            fields = np.concatenate([sim.tail_fields, fields])
        if k:
            sim.tail_index, sim.tail_fields = index[-k:].copy(), fields[-k:].copy()
        return Chunk(sim_id=sim.sim_id, frame_index=index, fields=fields, params=sim.params, solver=sim.solver)

    def _on_end(self, conn: _Conn) -> list[tuple[Message, list[_Msg]]]:
        conn.ended = True
        self._ack(conn, 0)
        sim = conn.sim
        assert sim is not None
        if sim.status != "open":
            return []
        sim.ended += 1
        if sim.ended < sim.ranks:
            return []
        if sim.pending:
            j = min(sim.pending)
            return self._drop(sim, "error", self._gap_message(sim, j, sim.pending[j]), reason="slabs")
        with self._lock:
            sim.status = "done"
            self.sims_finished += 1
            sim.conns = []  # a finished simulation keeps only its id and metadata
        sim.tail_index = sim.tail_fields = None
        return [(SimReport(sim.sim_id, "done"), [])]

    def _on_lost(self, conn: _Conn, why: tuple[str, str]) -> list[tuple[Message, list[_Msg]]]:
        sim = conn.sim
        if conn.ended or sim is None or sim.status != "open":
            return []
        reason, text = why
        return self._drop(sim, "error", f"simulation {sim.sim_id}: {conn.label} ({conn.peer}) {text}; dropped",
                          reason=reason)

    def _drop(self, sim: _Sim, status: str, message: str, extra: Sequence[_Msg] = (), *,
              reason: str) -> list[tuple[Message, list]]:
        """Drop ``sim``: acknowledge what it has waiting, tell its clients, report it (counted under ``reason``)."""
        with self._lock:  # the notice goes out before any "bye" (see _end) and any acknowledgement
            sim.status = "dropped"
            self.sims_finished += 1
            self.dropped[reason] += 1
            for c in sim.conns:
                if not c.bye:
                    self._post(c, {"type": "dropped" if status == "nan" else "error", "message": message})
            sim.conns = []
        waiting = {id(m): m for f in sim.pending.values() for m in f.msgs}
        waiting.update({id(m): m for m in extra})
        for m in waiting.values():
            m.remaining = 0
            self._ack(m.conn)
        sim.pending.clear()
        sim.tail_index = sim.tail_fields = None
        return [(SimReport(sim.sim_id, status, message), [])]

    def _ack(self, conn: _Conn, n: int = 1) -> None:
        """``n`` messages of ``conn`` were taken (or let go). Acknowledgements go out in batches: once half the
        window is owed, or when the job holds no other message of the connection (the client may be waiting for
        this one); none after the client's "end", whose "bye" acknowledges everything."""
        conn.unacked -= n
        if n:
            conn.taken += n
            conn.owed += n
            conn.last_take = time.monotonic()
        if conn.ended:
            if conn.unacked == 0:
                conn.owed = 0
                self._bye(conn)
        elif conn.owed and not conn.end_read and (conn.owed >= self._ack_batch or conn.taken >= conn.read_msgs):
            conn.acked += conn.owed
            self._post(conn, {"type": "ack", "n": conn.owed})
            conn.owed = 0

    # ------------------------------------------------------------------ connections (their own threads)
    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                sock, addr = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            _set_timeouts(sock, self._sock_timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = _Conn(sock, f"{addr[0]}:{addr[1]}", last_take=time.monotonic())
            reader = None
            with self._lock:
                if self._closed:
                    sock.close()
                    return
                full = len(self._conns) >= self.max_connections
                if not full:
                    self._conns[conn] = None  # the reader thread that serves it, once one does
                    self.connections += 1
                    if self._idle_readers:  # a reader thread waits for work: hand it over
                        self._idle_readers -= 1
                        self._handoff.put(conn)
                    else:
                        reader = threading.Thread(target=self._reader, args=(conn,), daemon=True,
                                                  name="client-source-reader")
            if full:
                self._reject(conn, "too_many", f"{self.max_connections} connections are open already")
                with contextlib.suppress(OSError):
                    sock.close()
                continue
            if reader is not None:
                reader.start()

    def _reader(self, conn: _Conn | None) -> None:
        """A reader thread: serves one connection after the other (threads are reused: a simulation per
        connection would otherwise start a thread each); ends after :data:`_READER_IDLE_S` s without one."""
        while conn is not None:
            with self._lock:
                if conn in self._conns:
                    self._conns[conn] = threading.current_thread()
            self._serve(conn)
            conn = self._next_conn()

    def _next_conn(self) -> _Conn | None:
        with self._lock:
            self._idle_readers += 1
        deadline = time.monotonic() + _READER_IDLE_S
        while not self._closed:
            try:  # None: close() wakes the idle threads
                return self._handoff.get(timeout=max(deadline - time.monotonic(), 0.001))
            except queue.Empty:
                if time.monotonic() < deadline:
                    continue
            with self._lock:  # under the lock: no connection is handed to this thread while it leaves
                try:
                    return self._handoff.get_nowait()
                except queue.Empty:
                    self._idle_readers -= 1
                    return None
        return None

    def _reject(self, conn: _Conn, reason: str, message: str) -> None:
        """Count a refused or closed connection under ``reason`` and log one line."""
        with self._lock:
            self.rejected[reason] += 1
        log.warning("external client %s: connection closed (%s): %s", conn.peer, reason, message)

    def _fill(self, conn: _Conn, buf: memoryview, frame_start: bool = False) -> None:
        """Fill ``buf`` from the connection; EOFError when the peer (or close()) ends it, _ProtocolError
        ("timeout") when it stays silent past ``client_timeout`` (at a frame's start: only while the job
        holds none of its messages)."""
        got, last = 0, time.monotonic()
        if conn.ahead_end > conn.ahead_pos:  # bytes read ahead with an earlier frame
            got = min(conn.ahead_end - conn.ahead_pos, buf.nbytes)
            buf[:got] = conn.ahead[conn.ahead_pos:conn.ahead_pos + got]
            conn.ahead_pos += got
        while got < buf.nbytes:
            small = buf.nbytes - got < _READ_AHEAD
            if small and conn.ahead is None:
                conn.ahead = memoryview(bytearray(_READ_AHEAD))
            try:  # a small read takes whatever arrived (the next frames too: fewer calls, each one a wait for the
                # GIL); a large one waits for all of it (MSG_WAITALL) unless the timeout or a signal cuts it short
                n = conn.sock.recv_into(conn.ahead) if small else conn.sock.recv_into(buf[got:], 0, _WAITALL)
            except (TimeoutError, BlockingIOError):  # settimeout / SO_RCVTIMEO expired
                if self._closed:
                    raise EOFError("the job stopped") from None
                now = time.monotonic()
                if frame_start and got == 0:
                    if conn.ended and now - last > self.client_timeout:  # a kept connection left idle: let it go
                        raise EOFError("connection idle after its simulation's bye") from None
                    if conn.read_msgs > conn.taken:  # the trainer holds its messages: not the client's delay
                        last = now
                        continue
                    last = max(last, conn.last_take)
                if now - last > self.client_timeout:
                    where = "before its next message" if frame_start and got == 0 else "in the middle of a message"
                    raise _ProtocolError(f"sent nothing for {self.client_timeout:g} s {where} (workers.client_timeout)",
                                         "timeout") from None
                continue
            if n == 0:
                raise EOFError("connection closed by the peer")
            if small:
                k = min(n, buf.nbytes - got)
                buf[got:got + k] = conn.ahead[:k]
                conn.ahead_pos, conn.ahead_end = k, n
                n = k
            got += n
            last = time.monotonic()

    def _recv_header(self, conn: _Conn) -> tuple[dict[str, Any], int]:
        prefix = bytearray(PREFIX.size)
        self._fill(conn, memoryview(prefix), frame_start=True)
        n_head, n_payload = check_prefix(prefix, self.max_header, self.max_message_bytes)
        head = bytearray(n_head)
        self._fill(conn, memoryview(head))
        return parse_header(head), n_payload

    def _discard(self, conn: _Conn, n: int) -> None:
        scratch = memoryview(bytearray(min(n, 1 << 16)))
        while n > 0:
            k = min(n, scratch.nbytes)
            self._fill(conn, scratch[:k])
            n -= k

    def _serve(self, conn: _Conn) -> None:
        """Reader thread of one connection: hello, then chunks and end, until the peer closes."""
        try:
            header, n = self._recv_header(conn)
            if not self._greet(conn, header, n):
                return
            while True:
                header, n = self._recv_header(conn)
                kind = header.get("type")
                if self._closed:  # drain until the client hangs up
                    self._discard(conn, n)
                elif kind == "hello":  # the next simulation on this connection, once the last one's "bye" went out
                    if not conn.ended:
                        raise _ProtocolError("a hello before this connection's simulation was closed (its 'bye'); "
                                             "close() it first or open another connection", "hello")
                    conn = self._renew(conn)
                    if not self._greet(conn, header, n):
                        return
                elif kind == "chunk":
                    if conn.read_msgs - conn.acked >= self.max_inflight:
                        raise _ProtocolError(f"more than max_inflight={self.max_inflight} unacknowledged messages; "
                                             "wait for the job's acknowledgements", "window")
                    pieces, finite = self._read_chunk(conn, header, n)
                    conn.read_msgs += 1
                    self._events.put(("chunk", conn, (pieces, finite, n)))
                elif kind == "end":
                    if n:
                        raise _ProtocolError(f"an end message carries no payload ({n} bytes)")
                    conn.end_read = True
                    self._end(conn)
                else:
                    raise _ProtocolError(f"unexpected message type {kind!r} after the hello")
        except (_ProtocolError, FrameError) as e:
            if not self._closed:
                reason = e.reason
                conn.send({"type": "error", "message": str(e)})
                self._reject(conn, reason, str(e))
                self._events.put(("lost", conn, (reason, f"sent a bad message ({e})")))
        except (OSError, EOFError) as e:
            if not self._closed and conn.sim is None:  # hung up (or reset) before its hello was through
                self._reject(conn, "no_hello", f"disconnected before a complete hello ({e})")
            elif not self._closed:
                self._events.put(("lost", conn, ("disconnected", f"disconnected before close() ({e}; solver crashed "
                                                 "or aborted?)")))
        finally:
            with contextlib.suppress(OSError):
                conn.sock.close()
            with self._lock:
                self._conns.pop(conn, None)

    def _greet(self, conn: _Conn, header: dict[str, Any], n: int) -> bool:
        """Answer a hello: "welcome" (True), or the refusal, counted (False: the connection closes)."""
        try:
            if n:
                raise _Refused(f"a hello carries no payload ({n} bytes); connect with streaming.client", "hello")
            self._hello(conn, header)
        except _Refused as e:
            stopping = self._closed or self.finished
            conn.send({"type": "stop" if stopping else "error", "message": str(e)})
            self._reject(conn, "stopped" if stopping else e.reason, str(e))
            return False
        conn.send({"type": "welcome", "max_inflight": self.max_inflight, "reuse": True})
        return True

    def _renew(self, conn: _Conn) -> _Conn:
        """A fresh connection state for the next simulation on ``conn``'s socket (the old one is done: its
        messages were all taken and its "bye" posted); bytes read ahead carry over."""
        new = _Conn(conn.sock, conn.peer, conn.lock, last_take=time.monotonic(), ahead=conn.ahead,
                    ahead_pos=conn.ahead_pos, ahead_end=conn.ahead_end)
        with self._lock:
            if conn in self._conns:
                self._conns[new] = self._conns.pop(conn)
        return new

    def _end(self, conn: _Conn) -> None:
        """A client finished: the iterating thread completes its simulation, or, dropped already, it may go."""
        with self._lock:  # ordered with _drop: an "end" queued before a drop is answered by _drain
            sim_open = conn.sim is not None and conn.sim.status == "open"
            if sim_open:
                self._events.put(("end", conn, None))
        if not sim_open:
            self._bye(conn)

    def _drain(self) -> None:
        """The stream ended: let go the clients of dropped simulations whose "end" is still queued."""
        while True:
            try:
                kind, conn, _ = self._events.get_nowait()
            except queue.Empty:
                return
            if kind == "end" and conn.sim is not None and conn.sim.status != "open":
                self._bye(conn)

    def _bye(self, conn: _Conn) -> None:
        """Answer ``conn``'s "end" with its one "bye"; after it nothing of this simulation goes out (neither a later
        drop's notice nor a second "bye" when its queued messages are let go): the socket may carry the next one."""
        conn.ended = True
        with self._lock:
            first, conn.bye = not conn.bye, True
        if first:
            self._post(conn, {"type": "bye"})

    def _hello(self, conn: _Conn, h: dict[str, Any]) -> None:
        if h.get("type") != "hello":
            raise _Refused("expected a hello first; connect with streaming.client.connect")
        if self._token_bytes is not None:
            given = h.get("token")
            given = given.encode("utf-8", "replace") if isinstance(given, str) else b""
            if not hmac.compare_digest(given, self._token_bytes):
                raise _Refused("missing or wrong token; pass the job's token (printed by pdestream train) in "
                               "PDESTREAM_TOKEN, or connect to TOKEN@HOST:PORT", "token")
        if h.get("protocol") != PROTOCOL:
            raise _Refused(f"client protocol {h.get('protocol')!r}, this job speaks {PROTOCOL}; use the same "
                           "pdestream version on both ends")
        try:
            sim_id, ranks, solver = int(h["sim_id"]), int(h["ranks"]), str(h["solver"])
            params = np.asarray(h["params"], np.float32).reshape(-1)
            fields = tuple(str(f) for f in h["fields"])
            grid = tuple(int(g) for g in h["grid"])
            offset = (0,) * len(grid) if h.get("offset") is None else tuple(int(o) for o in h["offset"])
        except (KeyError, TypeError, ValueError) as e:
            raise _Refused(f"malformed hello ({e}); connect with streaming.client.connect") from None
        if not 0 <= sim_id < _MAX_ID or ranks < 1 or len(offset) != len(grid) or min(grid, default=1) < 1:
            raise _Refused(f"malformed hello (sim_id={sim_id}, ranks={ranks}, offset={offset}, grid={grid}); connect "
                           "with streaming.client.connect")
        frame_bytes = 4 * len(fields) * math.prod(grid)
        if self.grid is None and frame_bytes > _MAX_FRAMES_IN_MESSAGES * self.max_message_bytes:
            raise _Refused(f"one frame of fields {list(fields)} on grid {grid} takes {frame_bytes} bytes, over "
                           f"{_MAX_FRAMES_IN_MESSAGES} x workers.max_message_mb; check the grid", "hello")
        if self.channels is not None and fields != self.channels:
            raise _Refused(f"fields {list(fields)} but the job trains on {list(self.channels)}; pass "
                           f"fields={list(self.channels)} (same names, same order) and send those channels",
                           "mismatch")
        if self.grid is not None and grid != self.grid:
            raise _Refused(f"grid {grid} but the job trains on grid {self.grid}; send that global grid (or change "
                           "the job's solver config)", "mismatch")
        if self.n_params is not None and params.size != self.n_params:
            raise _Refused(f"{params.size} parameters but the job's model takes {self.n_params}; send a (P,) "
                           f"vector with P={self.n_params}", "mismatch")
        with self._lock:
            if self._closed or self.finished:
                raise _Refused("the job is no longer taking simulations")
            sim = self._sims.get(sim_id)
            if sim is None:
                sim = self._sims[sim_id] = _Sim(sim_id, params, fields, grid, solver, ranks)
            elif sim.status != "open":
                raise _Refused(f"simulation {sim_id} already finished in this job ({sim.status}); give each "
                               "simulation its own sim_id", "mismatch")
            elif (fields, grid, ranks) != (sim.fields, sim.grid, sim.ranks) or not np.array_equal(params, sim.params):
                raise _Refused(f"simulation {sim_id}: this rank's params/fields/grid/ranks ({params.tolist()}, "
                               f"{list(fields)}, {grid}, {ranks}) differ from those of its first rank ("
                               f"{sim.params.tolist()}, {list(sim.fields)}, {sim.grid}, {sim.ranks}); every rank of a "
                               "simulation passes the same", "mismatch")
            elif len(sim.conns) >= sim.ranks:
                raise _Refused(f"simulation {sim_id} already has its ranks={sim.ranks} connections; pass ranks= the "
                               "number of processes sending slabs of it", "mismatch")
            sim.conns.append(conn)
            conn.sim, conn.offset = sim, offset

    def _read_chunk(self, conn: _Conn, header: dict[str, Any], n: int) -> tuple[list[Chunk], bool]:
        """Check a chunk message's header, read its payload and decode it; returns the chunk(s) for the trainer and
        whether the new frames are finite. A one-rank simulation's whole-grid chunk comes back stitched to the
        ``overlap`` frames before it (the payload is read straight behind them: no further copy) and cut into
        chunks of ``chunk_frames`` new frames (views of one array, each with the ``overlap`` frames before it)."""
        sim = conn.sim
        assert sim is not None
        wire = header.get("wire")
        if not isinstance(wire, dict):
            raise _ProtocolError("chunk message without its 'wire' header (a JSON object)")
        if wire.get("version") != WIRE_VERSION:
            raise _ProtocolError(f"chunk wire version {wire.get('version')!r}: this job reads version {WIRE_VERSION}; "
                                 "rebuild the program against this pdestream's client library (make clean; make)")
        dtype = wire.get("dtype", "<f4")
        if dtype not in DTYPES:
            raise _ProtocolError(f"chunk dtype {dtype!r}: send float32 '<f4' (or float64 '<f8')", "dtype")
        try:
            shape = tuple(int(s) for s in wire["shape"])
            index = wire["frame_index"]
            n_frames = len(index) if isinstance(index, list) else -1
        except (KeyError, TypeError, ValueError) as e:
            raise _ProtocolError(f"malformed chunk header ({e!r})") from None
        if (len(shape) != 2 + len(sim.grid) or min(shape) < 1 or shape[0] != n_frames
                or shape[1] != len(sim.fields) or any(s > g for s, g in zip(shape[2:], sim.grid, strict=True))):
            raise _ProtocolError(f"chunk shape {shape} with {n_frames} frame index(es): expected (n_frames, "
                                 f"{len(sim.fields)}, *slab) with a slab inside the grid {sim.grid}", "shape")
        expect = math.prod(shape) * np.dtype(dtype).itemsize
        if n != expect:
            raise _ProtocolError(f"chunk payload of {n} bytes but its header shape {shape} needs {expect}", "shape")
        whole = sim.ranks == 1 and shape[2:] == sim.grid  # stitched here, in order, by this connection's reader
        k = 0
        if whole and conn.tail_index is not None and type(index[0]) is int and index[0] == conn.tail_index[-1] + 1:
            k = len(conn.tail_index)
        if dtype == "<f4" and whole:
            data = np.empty((k + shape[0], *shape[1:]), np.float32)
            self._fill(conn, memoryview(data[k:]).cast("B"))
            if k:
                data[:k] = conn.tail_fields
                wire = {**wire, "frame_index": [*conn.tail_index.tolist(), *index], "shape": [k + shape[0], *shape[1:]]}
        else:
            data = np.empty(n, np.uint8)
            self._fill(conn, memoryview(data))
        try:
            chunk = Chunk.from_wire(wire, data)
            if k and dtype != "<f4":  # float64 on the wire: cast by from_wire, then joined to the tail
                chunk = Chunk(chunk.sim_id, np.concatenate([conn.tail_index, chunk.frame_index]),
                              np.concatenate([conn.tail_fields, chunk.fields]), chunk.params, chunk.solver,
                              chunk.offset, chunk.global_grid)
        except (ChunkError, TypeError, ValueError, OverflowError) as e:
            raise _ProtocolError(str(e)) from None
        if chunk.sim_id != sim.sim_id or chunk.global_grid != sim.grid or chunk.offset != conn.offset:
            raise _ProtocolError(f"chunk of simulation {chunk.sim_id} grid {chunk.global_grid} offset {chunk.offset} "
                                 f"on the connection of simulation {sim.sim_id} grid {sim.grid} offset {conn.offset}")
        if chunk.n_channels != len(sim.fields):
            raise _ProtocolError(f"chunk with {chunk.n_channels} channels for fields {list(sim.fields)}")
        if int(chunk.frame_index[-1]) >= _MAX_ID:
            raise _ProtocolError(f"frame index {int(chunk.frame_index[-1])} is too large (limit {_MAX_ID})")
        if int(chunk.frame_index[k]) <= conn.read_frame:
            raise _ProtocolError(f"frame indices go backwards ({int(chunk.frame_index[k])} after {conn.read_frame})",
                                 "order")
        conn.read_frame = int(chunk.frame_index[-1])
        finite = bool(np.isfinite(chunk.fields[k:]).all() and np.isfinite(chunk.params).all())
        if not whole:
            return [chunk], finite
        if self.overlap:
            conn.tail_index = chunk.frame_index[-self.overlap:].copy()
            conn.tail_fields = chunk.fields[-self.overlap:].copy()
        cf = self.chunk_frames
        if cf is None or chunk.n_frames - k <= cf:
            return [chunk], finite
        return [chunk.frames(max(s - self.overlap, 0), s + cf) for s in range(k, chunk.n_frames, cf)], finite

    # ------------------------------------------------------------------ shutdown
    def close(self) -> None:
        """Stop listening, tell every client the job stopped and close the connections."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            conns, readers = list(self._conns), list(self._conns.values())
        with contextlib.suppress(OSError):
            self._listener.close()
        for _ in range(self._idle_readers):
            self._handoff.put(None)
        self._outbox.put(None)  # what was posted (acknowledgements, byes) goes out before "stop"
        self._writer.join(1.0)
        for c in conns:
            c.send({"type": "stop", "message": "the job stopped taking data (training finished or interrupted)"})
            with contextlib.suppress(OSError):
                c.sock.shutdown(socket.SHUT_WR)
        deadline = time.monotonic() + 0.5  # let clients read "stop" and hang up; then cut the rest
        for r in readers:
            if r is not None and r is not threading.current_thread():
                r.join(max(deadline - time.monotonic(), 0.0))
        for c in conns:
            with contextlib.suppress(OSError):
                c.sock.close()
        self._acceptor.join(1.0)

    def __enter__(self) -> ClientSource:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

