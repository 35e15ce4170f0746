"""Client API for external solvers: stream your own solver's fields into a running ``pdestream train`` job.

A solver that is not one of ours (any Python program, possibly MPI-parallel) connects to the job's
listening address (``workers.backend = "external"``) and sends its fields frame by frame::

    from streaming.client import connect

    with connect("127.0.0.1:47011", sim_id=7, params=[300.0, 100, 500, 200, 400], fields=["T"],
                 grid=(32, 32)) as client:
        for frame in range(41):
            client.send("T", temperature, frame)          # (32, 32) array, any float dtype
            temperature = my_solver.advance(temperature)

- ``frame`` is the frame index (0, 1, 2, ...): the job reads frame ``k`` as time ``k * solver.dt *
  solver.every`` of its config, and cuts training samples from consecutive frames.
- The client buffers the channels of a frame and ships ``batch_frames`` complete frames per message
  (a :class:`~streaming.chunk.Chunk`); never one message per field. By default a message holds
  about 4 MiB (at most 256 frames, at least one).
- Flow control: the job acknowledges messages once the trainer has taken them (in batches, and always
  when it holds no other message of this client); with ``max_inflight`` messages unacknowledged,
  ``send`` blocks (backpressure), so a slow trainer slows the solver down instead of filling memory.
- ``close()`` flushes and tells the job the simulation is complete (it then counts as done), and waits
  until the trainer took all of it. ``end()`` does the first part without waiting: connect and stream the
  next simulation, then ``close()`` the ended one (it waits for the job's answer then)::

      a = connect(addr, sim_id=0, ...); ...; a.end()
      b = connect(addr, sim_id=1, ...); ...; a.close(); ...; b.close()

- Kept connections: a connection whose simulation was closed (the job answered ``bye``, did not drop it,
  and its ``welcome`` said ``reuse``) is kept, a few per address in each process, and the next ``connect`` to
  the same address sends its hello there instead of opening a connection; one the job closed meanwhile
  is replaced by a new connection. ``connect(..., keep_connection=False)``: a connection per simulation.
- Token: a job listening beyond the loopback interface (or one given ``workers.token``) accepts only
  clients that present its token: ``token=``, the address form ``TOKEN@host:port``, or the
  environment variable ``PDESTREAM_TOKEN`` (in that order). ``pdestream train`` prints it once.

MPI-parallel solvers: each rank owning a slab of the grid connects with the *global* ``grid``, its
slab's start ``offset`` and ``ranks`` = the number of processes sending slabs of this simulation,
and sends its local array; the job assembles the slabs into full-grid frames::

    client = connect(addr, sim_id=s, params=p, fields=["T"], grid=(nx, ny), offset=(row0, 0),
                     ranks=comm.Get_size())

Wire protocol (:mod:`streaming.transport.wire`, shared with :mod:`streaming.transport.listener`): every
frame is a 16-byte prefix
``!4sIQ`` (magic ``b"PDS1"``, header bytes, payload bytes), a UTF-8 JSON header and a raw payload.
Client to job: ``hello`` (simulation metadata and the token), ``chunk`` (header ``wire`` = ``Chunk.to_wire()``'s
header, payload = the float32 fields), ``end``, and, once the job answered ``bye``, possibly the next simulation's
``hello`` on the same connection (what kept connections do, here and in the C client). Job to client: ``welcome``
(its ``max_inflight``; ``reuse``: another ``hello`` may follow ``bye``),
``ack`` (``n`` more messages taken), ``dropped`` (the simulation produced NaN/Inf), ``error`` (the job
rejected this simulation's data), ``bye`` (answer to ``end`` once everything was taken; it acknowledges the
rest), ``stop`` (the job is shutting down).
A frame of a simulation is complete when every channel of its frame arrived; only complete frames
travel (several consecutive frames per ``chunk``). The C and Fortran clients (``streaming/clib``)
speak the same protocol.

This module needs only numpy and the standard library (no JAX, Ray or MPI).
"""

from __future__ import annotations

import math
import operator
import os
import select
import socket
import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from streaming.chunk import Chunk
from streaming.transport.wire import PROTOCOL, recv_frame, send_frame

AUTO_BATCH_BYTES = 4 << 20  # default message size: per-message costs (~0.3 ms) vanish next to the data ...
MAX_AUTO_BATCH = 256  # ... and its frame list stays a few KiB (in flight: max_inflight x 4 MiB per client)
DEFAULT_PORT = 47011
DEFAULT_ADDRESS = f"127.0.0.1:{DEFAULT_PORT}"
ADDRESS_ENV = "PDESTREAM_ADDRESS"
TOKEN_ENV = "PDESTREAM_TOKEN"
KEPT_PER_ADDRESS = 4  # idle connections kept per address for the next connect(); the surplus is closed


class ClientError(ValueError):
    """A wrong call (shape, field name, frame order) or data the job rejected; the message names the fix."""


class JobStopped(ConnectionError):
    """The training job stopped (finished, interrupted or unreachable); further data would be lost."""


class ServerUnavailable(ConnectionError):
    """No training job answered at the address within the timeout."""


# --------------------------------------------------------------------------- addresses
def parse_address(address: str, what: str = "address") -> tuple[str, int]:
    """``"host:port"`` (``"[::1]:port"`` for IPv6) -> ``(host, port)``; an empty host is returned as ``""``."""
    if not isinstance(address, str):
        raise ClientError(f"{what}={address!r}: expected a string HOST:PORT, e.g. {DEFAULT_ADDRESS}")
    host, sep, port = address.strip().rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ClientError(f"{what}={address!r}: expected HOST:PORT with a port in 0..65535, e.g. {DEFAULT_ADDRESS}")
    return host.strip("[]"), int(port)


def split_token(address: str) -> tuple[str | None, str]:
    """``"TOKEN@host:port"`` -> ``(TOKEN, "host:port")``; an address without ``@`` -> ``(None, address)``."""
    token, sep, rest = address.rpartition("@")
    return (token, rest) if sep else (None, address)


# --------------------------------------------------------------------------- argument checks
def _int(name: str, value: Any, low: int = 0) -> int:
    if isinstance(value, bool):
        raise ClientError(f"{name}={value!r}: expected an integer, got a bool")
    try:
        v = operator.index(value)
    except TypeError:
        raise ClientError(f"{name}={value!r}: expected an integer") from None
    if v < low:
        raise ClientError(f"{name}={v}: must be >= {low}")
    return v


def _shape(name: str, value: Any, low: int) -> tuple[int, ...]:
    if isinstance(value, int | np.integer):
        value = (value,)
    try:
        items = tuple(value)
    except TypeError:
        raise ClientError(f"{name}={value!r}: expected a tuple of integers, e.g. {name}=(64, 64)") from None
    return tuple(_int(f"{name}[{i}]", v, low) for i, v in enumerate(items))


def _fields(fields: Any) -> tuple[str, ...]:
    if isinstance(fields, str):
        raise ClientError(f"fields={fields!r}: pass a sequence of channel names, e.g. fields=[{fields!r}]")
    names = tuple(fields)
    if not names or not all(isinstance(f, str) and f for f in names):
        raise ClientError(f"fields={list(names)!r}: expected one or more non-empty channel names, e.g. ['u', 'v']")
    if len(set(names)) != len(names):
        raise ClientError(f"fields={list(names)!r}: channel names must be unique")
    return names


def _params(params: Any) -> np.ndarray:
    p = np.asarray(params)
    if p.ndim == 0:
        p = p.reshape(1)
    if p.ndim != 1 or p.dtype.kind not in "fiu":
        raise ClientError(f"params: expected a 1-D numeric vector (P,), got dtype {p.dtype} shape {p.shape}")
    p = p.astype(np.float32)
    if not np.isfinite(p).all():
        raise ClientError(f"params={p.tolist()}: must be finite")
    return p


# --------------------------------------------------------------------------- the client
class Client:
    """One connection streaming one simulation (or one rank's slab of it); build it with :func:`connect`."""

    def __init__(self, sock: socket.socket, address: str, *, sim_id: int, params: np.ndarray,
                 fields: tuple[str, ...], grid: tuple[int, ...], offset: tuple[int, ...] | None, solver: str,
                 batch_frames: int | None, max_inflight: int, send_timeout: float | None,
                 keep_key: str | None) -> None:
        self.address, self.sim_id, self.params, self.fields = address, sim_id, params, fields
        self.grid, self.offset, self.solver = grid, offset, solver
        self.batch_frames, self.max_inflight, self.send_timeout = batch_frames, max_inflight, send_timeout
        self.dropped: str | None = None  # set when the job dropped this simulation (NaN/Inf); sends are then ignored
        self.messages_sent = 0
        self._sock: socket.socket | None = sock
        self._index = {f: i for i, f in enumerate(fields)}
        self._local: tuple[int, ...] | None = None  # slab shape, fixed by the first send
        self._batch: np.ndarray | None = None  # (batch_frames, C, *local) float32
        self._frame_index = np.zeros(0, np.int64)
        self._n = 0  # complete frames in the batch
        self._frame: int | None = None  # frame being assembled (some channels received)
        self._have = np.zeros(len(fields), bool)
        self._last: int | None = None  # last complete frame
        self._unacked = 0
        self._ended = False  # "end" sent: only close() (waits for "bye") or abort() is left
        self._bye = False
        self._keep_key = keep_key  # address the connection is kept for once closed (None: closed with it)

    # ------------------------------------------------------------------ public
    def send(self, field: str, array: Any, frame: int) -> None:
        """Add channel ``field`` of frame ``frame``: ``array`` has the local grid shape (the slab for an MPI rank).

        The frame is shipped once every channel of ``frame`` arrived, ``batch_frames`` frames per message.
        Blocks while ``max_inflight`` messages wait for the trainer (backpressure). Steps must increase;
        a skipped frame is allowed (the frames on each side go in separate messages).
        """
        self._check_open("send")
        c = self._channel(field)
        frame = self._check_frame(field, frame)
        a = self._check_array(field, array, frame)
        if self.dropped is not None:
            return
        if self._frame is None:  # first channel of a new frame
            if self._n == self.batch_frames or (self._n and frame != self._last + 1):
                self._ship()  # a message holds consecutive frames
            self._frame = frame
            self._have[:] = False
        assert self._batch is not None
        self._batch[self._n, c] = a
        self._have[c] = True
        if self._have.all():
            self._frame_index[self._n] = frame
            self._n += 1
            self._last, self._frame = frame, None
            if self._n == self.batch_frames:
                self._ship()

    def flush(self) -> None:
        """Ship the complete frames buffered so far (a partial frame stays buffered)."""
        self._check_open("flush")
        if self.dropped is None:
            self._ship()

    def end(self) -> None:
        """Flush and mark the simulation complete for the job, without waiting for the trainer: connect the next
        simulation, then ``close()`` this one (it waits for the job's ``bye``). After ``end()`` only ``close()``
        or ``abort()`` is left. A frame with missing channels is an error, as for ``close()``.
        """
        self._check_open("end")
        self._check_complete("end")
        self._send_end()

    def close(self) -> None:
        """Flush, mark the simulation complete for the job (unless ``end()`` did), wait until the trainer took it
        all, and let the connection go (kept for the next :func:`connect` to this address when the job allows).

        Raises :class:`JobStopped` when the job stopped before it took the whole simulation (e.g. it
        reached its training-step budget), :class:`ClientError` when it rejected this simulation's data (e.g.
        overlapping slabs). A frame with missing channels is an error (send the missing channels, then
        close again, or ``abort()``).
        """
        if self._sock is None:
            return
        if not self._ended:
            self._check_complete("close")
        try:
            if not self._ended:
                self._send_end()
            while not self._bye:
                self._read(self.send_timeout, "close")
        except BaseException:
            self._disconnect()
            raise
        sock, self._sock = self._sock, None
        if self._keep_key is not None and self.dropped is None:  # late notices of a dropped one may still come
            _KEPT.keep(self._keep_key, sock)
        else:
            sock.close()

    def abort(self) -> None:
        """Disconnect without completing the simulation: the job drops it."""
        self._disconnect()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def __repr__(self) -> str:
        slab = f", offset={self.offset}" if self.offset is not None else ""
        return f"Client(sim_id={self.sim_id}, fields={list(self.fields)}, grid={self.grid}{slab}, to={self.address})"

    # ------------------------------------------------------------------ checks
    def _check_open(self, what: str) -> None:
        if self._sock is None:
            raise ClientError(f"{what}(): the client of simulation {self.sim_id} is closed; connect() again")
        if self._ended:
            raise ClientError(f"{what}(): simulation {self.sim_id} was already ended with end(); only close() (waits "
                              "for the job to take it) or abort() is left; connect() again for the next simulation")

    def _check_complete(self, what: str) -> None:
        if self._frame is not None and self.dropped is None:
            missing = [f for f, h in zip(self.fields, self._have, strict=True) if not h]
            raise ClientError(f"{what}(): frame {self._frame} is missing field(s) {missing}; send them before "
                              f"{what}(), or call abort() to discard the simulation")

    def _channel(self, field: str) -> int:
        try:
            return self._index[field]
        except (KeyError, TypeError):
            raise ClientError(f"send(field={field!r}): not one of the connected fields {list(self.fields)}; "
                              "fix the name or pass it in connect(fields=...)") from None

    def _check_frame(self, field: str, frame: Any) -> int:
        frame = _int("frame", frame)
        if self._frame is not None and frame != self._frame:
            if frame < self._frame:
                raise ClientError(f"send({field!r}, frame={frame}): frames go backwards (frame {self._frame} is "
                                  "being sent); send frames in increasing order")
            missing = [f for f, h in zip(self.fields, self._have, strict=True) if not h]
            raise ClientError(f"send({field!r}, frame={frame}): frame {self._frame} is missing field(s) {missing}; "
                              "send every field of a frame before the next frame")
        if self._frame is None and self._last is not None and frame <= self._last:
            raise ClientError(f"send({field!r}, frame={frame}): frames go backwards (frame {self._last} was already "
                              f"sent); send frame {self._last + 1} or later")
        if self._frame is not None and self._have[self._index[field]]:
            raise ClientError(f"send({field!r}, frame={frame}): field {field!r} of frame {frame} was already sent; "
                              "send each field once per frame")
        return frame

    def _check_array(self, field: str, array: Any, frame: int) -> np.ndarray:
        a = np.asarray(array)
        if a.dtype.kind not in "fiu":
            raise ClientError(f"send({field!r}, frame={frame}): expected a real numeric array, got dtype {a.dtype}")
        if self._local is None:
            if a.ndim != len(self.grid):
                raise ClientError(f"send({field!r}, frame={frame}): array has shape {a.shape} but the grid "
                                  f"{self.grid} has {len(self.grid)} axes; send the field without batch or channel "
                                  "axes")
            if self.offset is None and a.shape != self.grid:
                raise ClientError(f"send({field!r}, frame={frame}): array shape {a.shape} != grid {self.grid}; send "
                                  "the whole grid, or pass offset= to connect() to send a slab")
            if self.offset is not None:
                for ax, (o, n, g) in enumerate(zip(self.offset, a.shape, self.grid, strict=True)):
                    if n < 1 or o + n > g:
                        raise ClientError(f"send({field!r}, frame={frame}): slab of shape {a.shape} at offset "
                                          f"{self.offset} leaves the grid {self.grid} on axis {ax} ({o} + {n} > {g}); "
                                          "fix the offset or the slab")
            self._local = a.shape
            frame_bytes = 4 * len(self.fields) * math.prod(a.shape)
            if self.batch_frames is None:
                self.batch_frames = max(1, min(MAX_AUTO_BATCH, AUTO_BATCH_BYTES // frame_bytes))
            self._batch = np.empty((self.batch_frames, len(self.fields), *a.shape), np.float32)
            self._frame_index = np.zeros(self.batch_frames, np.int64)
        elif a.shape != self._local:
            raise ClientError(f"send({field!r}, frame={frame}): array shape {a.shape} != {self._local}, the shape of "
                              "the first array sent; every send of a client has the same shape")
        return a

    # ------------------------------------------------------------------ network
    def _send_end(self) -> None:
        """Ship the buffered complete frames, then "end"."""
        if self.dropped is None:
            self._ship()
        assert self._sock is not None
        try:
            send_frame(self._sock, {"type": "end"})
        except OSError as e:
            raise self._lost(e) from None
        self._ended = True

    def _ship(self) -> None:
        if not self._n:
            return
        assert self._sock is not None and self._batch is not None
        chunk = Chunk(sim_id=self.sim_id, frame_index=self._frame_index[: self._n], fields=self._batch[: self._n],
                      params=self.params, solver=self.solver, offset=self.offset,
                      global_grid=self.grid if self.offset is not None else None)
        header, data = chunk.to_wire()
        while self._unacked >= self.max_inflight and self.dropped is None:
            self._read(self.send_timeout, "send")
        if self.dropped is not None:  # the job dropped the simulation meanwhile: nothing more to send
            self._n = 0
            return
        try:
            send_frame(self._sock, {"type": "chunk", "wire": header}, data)
        except OSError as e:
            raise self._lost(e) from None
        self._unacked += 1
        self.messages_sent += 1
        self._n = 0
        while self._readable(0.0):  # take acknowledgements and notices that already arrived
            self._read(0.0, "send")

    def _readable(self, timeout: float | None) -> bool:
        assert self._sock is not None
        r, _, _ = select.select([self._sock], [], [], timeout)
        return bool(r)

    def _read(self, timeout: float | None, what: str) -> None:
        """Wait (up to ``timeout`` s, None = forever) for one frame from the job and act on it."""
        assert self._sock is not None
        if not self._readable(timeout):
            raise TimeoutError(f"{what}(): no answer from the training job at {self.address} within {timeout} s "
                               "(the trainer is slower than the solver, or stalled); raise send_timeout, or pass "
                               "send_timeout=None to wait as long as it takes")
        try:
            header, _ = recv_frame(self._sock)
        except (OSError, EOFError) as e:
            raise self._lost(e) from None
        kind = header.get("type")
        if kind == "ack":
            self._unacked -= int(header.get("n", 1))
        elif kind == "bye":
            self._bye = True
        elif kind == "dropped":
            self.dropped = str(header.get("message", "dropped"))
            self._n, self._frame = 0, None
        elif kind == "error":
            msg = header.get("message", "rejected")
            self._disconnect()
            raise ClientError(f"the training job at {self.address} rejected simulation {self.sim_id}: {msg}")
        elif kind == "stop":
            self._disconnect()
            raise JobStopped(f"the training job at {self.address} stopped: {header.get('message', '')}".rstrip(": "))

    def _lost(self, e: BaseException) -> JobStopped:
        self._disconnect()
        return JobStopped(f"lost the connection to the training job at {self.address} ({e}); "
                          "it finished, was interrupted or crashed")

    def _disconnect(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()


def _quiet(sock: socket.socket) -> bool:
    """True when nothing waits to be read on ``sock``: an idle kept connection the job has not closed (its end of
    file, a reset or a "stop" would be readable)."""
    try:
        return not select.select([sock], [], [], 0.0)[0]
    except (OSError, ValueError):  # closed meanwhile, or a descriptor select() cannot watch
        return False


class _KeptConnections:
    """Connections whose simulation was closed, by address as given (token included), at most
    :data:`KEPT_PER_ADDRESS` each; the next :func:`connect` to that address sends its hello on one of them.
    Thread-safe; a forked child starts with none (the parent's sockets are not its to use)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle: dict[str, list[socket.socket]] = {}

    def take(self, address: str) -> socket.socket | None:
        """The most recently kept connection to ``address`` that is still quiet (None: none left)."""
        with self._lock:
            idle = self._idle.get(address, [])
            while idle:
                sock = idle.pop()
                if _quiet(sock):
                    return sock
                sock.close()
        return None

    def keep(self, address: str, sock: socket.socket) -> None:
        """Keep ``sock`` for ``address``; connections the jobs closed meanwhile (any address) are let go."""
        with self._lock:
            for key, idle in list(self._idle.items()):
                live = []
                for kept in idle:
                    if _quiet(kept):
                        live.append(kept)
                    else:
                        kept.close()
                if live:
                    self._idle[key] = live
                else:
                    del self._idle[key]
            idle = self._idle.setdefault(address, [])
            if len(idle) < KEPT_PER_ADDRESS:
                idle.append(sock)
                return
        sock.close()

    def forget(self) -> None:
        """In a forked child: close this process's copies (the parent's connections stay open) and start empty."""
        self._lock = threading.Lock()
        for idle in self._idle.values():
            for sock in idle:
                sock.close()
        self._idle = {}


_KEPT = _KeptConnections()
if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_KEPT.forget)


def _open(host: str, port: int, address: str, timeout: float | None) -> socket.socket:
    """Connect, retrying while nothing listens yet (the job may still be starting) until ``timeout``."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        left = None if deadline is None else deadline - time.monotonic()
        try:
            sock = socket.create_connection((host or "127.0.0.1", port), None if left is None else max(left, 0.01))
        except (ConnectionRefusedError, TimeoutError) as e:
            if deadline is not None and time.monotonic() >= deadline:
                raise ServerUnavailable(f"no pdestream train job listening at {address} after {timeout} s ({e}); "
                                        "start `pdestream train` with workers.backend='external' first, or fix the "
                                        "address") from None
            time.sleep(0.1 if left is None else min(0.1, max(left, 0.0)))
            continue
        except OSError as e:
            raise ServerUnavailable(f"cannot connect to {address} ({e}); fix the address") from None
        sock.settimeout(None)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock


def connect(address: str | None = None, *, sim_id: int, params: Any, fields: Sequence[str], grid: Sequence[int],
            offset: Sequence[int] | None = None, ranks: int = 1, solver: str = "external",
            batch_frames: int | None = None, max_inflight: int | None = None, timeout: float | None = 30.0,
            send_timeout: float | None = None, token: str | None = None, keep_connection: bool = True) -> Client:
    """Open a stream of simulation ``sim_id`` to the training job listening at ``address``.

    - address: ``"host:port"`` printed by ``pdestream train`` (default: ``$PDESTREAM_ADDRESS``, else
      ``127.0.0.1:47011``);
    - sim_id: the simulation's id, unique within the job (all ranks of one simulation share it);
    - params: ``(P,)`` its parameter vector (float32 on the wire);
    - fields: the channel names, in the job's channel order; grid: the global grid shape;
    - offset: the first index of this process's slab along each grid axis (None: it sends the whole
      grid); ranks: how many processes send slabs of this simulation (the MPI communicator's size);
    - solver: a name for the logs; batch_frames: frames per message (None: about 4 MiB, at most 256);
    - max_inflight: unacknowledged messages before ``send`` blocks (default and upper bound: the
      job's ``workers.max_inflight``);
    - timeout: seconds to wait for the job to accept the connection, retried while nothing listens
      yet (None: forever); send_timeout: seconds ``send``/``close`` wait for the trainer before
      raising TimeoutError (None: as long as it takes, which is what backpressure means);
    - token: the job's token (default: the ``TOKEN@`` part of ``address``, else ``$PDESTREAM_TOKEN``);
      needed when the job listens beyond the loopback interface or was given ``workers.token``;
    - keep_connection: send the hello on a connection kept from an earlier simulation closed at this same
      ``address`` (a new connection when there is none, or when the job closed it), and keep this one in
      turn after ``close()`` (when the job's welcome allows it); False: a connection of its own, closed with
      the simulation.
    """
    address = address or os.environ.get(ADDRESS_ENV) or DEFAULT_ADDRESS
    if not isinstance(address, str):
        raise ClientError(f"address={address!r}: expected a string HOST:PORT, e.g. {DEFAULT_ADDRESS}")
    given = address  # kept connections are found by the address as given
    in_address, address = split_token(address)
    token = token or in_address or os.environ.get(TOKEN_ENV) or None
    host, port = parse_address(address)
    sim_id = _int("sim_id", sim_id)
    p = _params(params)
    names = _fields(fields)
    grid_t = _shape("grid", grid, 1)
    off = None if offset is None else _shape("offset", offset, 0)
    if off is not None and len(off) != len(grid_t):
        raise ClientError(f"offset={off}: need one entry per grid axis of grid={grid_t}")
    if off is not None and any(o >= g for o, g in zip(off, grid_t, strict=True)):
        raise ClientError(f"offset={off}: lies outside grid={grid_t}; the offset is the slab's first index per axis")
    ranks = _int("ranks", ranks, 1)
    if off is None and ranks > 1:
        raise ClientError(f"ranks={ranks} without offset: each of several ranks sends a slab; pass offset= (the "
                          "slab's first index on each grid axis)")
    if not isinstance(solver, str) or not solver:
        raise ClientError(f"solver={solver!r}: expected a non-empty name")
    if batch_frames is not None:
        batch_frames = _int("batch_frames", batch_frames, 1)
    if max_inflight is not None:
        max_inflight = _int("max_inflight", max_inflight, 1)

    hello = {"type": "hello", "protocol": PROTOCOL, "sim_id": sim_id, "params": p.tolist(), "fields": list(names),
             "grid": list(grid_t), "offset": None if off is None else list(off), "ranks": ranks, "solver": solver}
    if token:
        hello["token"] = str(token)
    kept = _greet_kept(given, hello, timeout) if keep_connection else None
    if kept is not None:
        sock, reply = kept
    else:
        sock = _open(host, port, address, timeout)
        try:
            reply = _greet(sock, hello, timeout)
        except (OSError, EOFError) as e:
            sock.close()
            raise JobStopped(f"the training job at {address} closed the connection during the handshake "
                             f"({e})") from None
    if reply is None:
        sock.close()
        raise ServerUnavailable(f"{address} accepted the connection but did not answer within {timeout} s; "
                                "is it a pdestream train job?")
    kind = reply.get("type")
    if kind != "welcome":
        sock.close()
        msg = reply.get("message", f"unexpected answer {kind!r}")
        if kind == "stop":
            raise JobStopped(f"the training job at {address} is stopping: {msg}")
        raise ClientError(f"the training job at {address} refused simulation {sim_id}: {msg}")
    server_window = int(reply["max_inflight"])
    window = server_window if max_inflight is None else min(max_inflight, server_window)
    keep_key = given if keep_connection and reply.get("reuse") is True else None
    return Client(sock, address, sim_id=sim_id, params=p, fields=names, grid=grid_t, offset=off, solver=solver,
                  batch_frames=batch_frames, max_inflight=window, send_timeout=send_timeout, keep_key=keep_key)


def _greet(sock: socket.socket, hello: dict[str, Any], timeout: float | None) -> dict[str, Any] | None:
    """Send ``hello`` and read the job's answer (None: none within ``timeout`` s); OSError or EOFError when the
    connection broke first."""
    send_frame(sock, hello)
    if not select.select([sock], [], [], timeout)[0]:
        return None
    return recv_frame(sock)[0]


def _greet_kept(address: str, hello: dict[str, Any], timeout: float | None,
                ) -> tuple[socket.socket, dict[str, Any] | None] | None:
    """Send ``hello`` on a connection kept for ``address``: ``(socket, answer)`` as :func:`_greet`, or None when
    none is kept or the job let each one go (it closed it before reading the hello)."""
    while (sock := _KEPT.take(address)) is not None:
        try:
            return sock, _greet(sock, hello, timeout)
        except (OSError, EOFError):
            sock.close()
    return None
