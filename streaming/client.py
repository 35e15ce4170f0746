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
- ``close()`` flushes and tells the job the simulation is complete (it then counts as done).
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
``hello`` on the same connection (the C client does; this one connects anew). Job to client: ``welcome`` (its
``max_inflight``; ``reuse``: another ``hello`` may follow ``bye``),
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
                 batch_frames: int | None, max_inflight: int, send_timeout: float | None) -> None:
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
        self._bye = False

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

    def close(self) -> None:
        """Flush, mark the simulation complete for the job, wait until the trainer took it all, and disconnect.

        Raises :class:`JobStopped` when the job stopped before it took the whole simulation (e.g. it
        reached its training-step budget), :class:`ClientError` when it rejected this simulation's data (e.g.
        overlapping slabs). A frame with missing channels is an error (send the missing channels, then
        close again, or ``abort()``).
        """
        if self._sock is None:
            return
        if self._frame is not None and self.dropped is None:
            missing = [f for f, h in zip(self.fields, self._have, strict=True) if not h]
            raise ClientError(f"close(): frame {self._frame} is missing field(s) {missing}; send them before close(), "
                              "or call abort() to discard the simulation")
        try:
            if self.dropped is None:
                self._ship()
            try:
                send_frame(self._sock, {"type": "end"})
            except OSError as e:
                raise self._lost(e) from None
            while not self._bye:
                self._read(self.send_timeout, "close")
        finally:
            self._disconnect()

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
            send_timeout: float | None = None, token: str | None = None) -> Client:
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
      needed when the job listens beyond the loopback interface or was given ``workers.token``.
    """
    address = address or os.environ.get(ADDRESS_ENV) or DEFAULT_ADDRESS
    if not isinstance(address, str):
        raise ClientError(f"address={address!r}: expected a string HOST:PORT, e.g. {DEFAULT_ADDRESS}")
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

    sock = _open(host, port, address, timeout)
    hello = {"type": "hello", "protocol": PROTOCOL, "sim_id": sim_id, "params": p.tolist(), "fields": list(names),
             "grid": list(grid_t), "offset": None if off is None else list(off), "ranks": ranks, "solver": solver}
    if token:
        hello["token"] = str(token)
    try:
        send_frame(sock, hello)
        answered = select.select([sock], [], [], timeout)[0]
        reply = recv_frame(sock)[0] if answered else None
    except (OSError, EOFError) as e:
        sock.close()
        raise JobStopped(f"the training job at {address} closed the connection during the handshake ({e})") from None
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
    return Client(sock, address, sim_id=sim_id, params=p, fields=names, grid=grid_t, offset=off, solver=solver,
                  batch_frames=batch_frames, max_inflight=window, send_timeout=send_timeout)
