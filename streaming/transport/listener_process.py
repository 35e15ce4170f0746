"""The external listener in a process of its own, handing chunks to the trainer through shared memory.

A :class:`~streaming.transport.listener.ClientSource` runs its reader threads in the process that iterates it,
and every payload a reader receives is a wait for the interpreter lock, which the trainer's loop mostly
holds: the loop loses the lock each time numpy copies a sample, and waits for a reader to give it back.
``ListenerProcess`` runs the same ``ClientSource`` (same protocol, checks, flow control and counters) in a
child process (``python -m streaming.transport.listener_process``, talking over a socket pair; no
``multiprocessing`` start method, so the caller's main module is not imported again) and forwards what it
yields:

- a chunk's fields go into a ring of shared memory (``ring_mb``) and a small record (simulation id, frame
  indices, parameters, where in the ring) through a pipe, in one batch with the records of the other messages
  the listener has ready at once (:meth:`ClientSource.ready`: fewer pipe messages for the trainer's loop to
  read); the trainer's chunk is a view of the ring, and its bytes are handed back to the child once the last
  reference to that view is gone (so a consumer may keep a chunk as long as it likes; while it does, the ring
  holds it and the child waits for room, which holds the clients through their acknowledgement windows);
- a chunk larger than half the ring, one that finds no room there for ``_RING_WAIT_S`` (the trainer keeps the
  chunks before it, or pauses), and every simulation report travel through the pipe itself (which blocks once
  full, so a trainer that stops taking still holds the clients; one that keeps chunks never stalls the stream).

The child acknowledges a message to its client once the message is in the ring (it is then the trainer's, as
in the thread listener once taken). The counters of :meth:`external_report` come from the child, refreshed
with its messages (at most every ``_REPORT_S`` s) and on :meth:`close`. Ctrl-C reaches the trainer only; the
child ends with the job (it watches its pipe), and so do the ring's pages.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import logging
import mmap
import os
import pickle
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

import streaming
from streaming.chunk import Chunk
from streaming.transport.listener import ClientSource, ClientSourceError
from streaming.transport.source import Message

_HEADER = 64  # bytes before the ring: the released-bytes counter (uint64) the trainer writes
_ALIGN = 64  # every chunk starts at a multiple of this in the ring
_POLL_S = 0.1  # how often a waiting side checks for close()
_REPORT_S = 0.5  # the child's counters go to the trainer this often
_RING_WAIT_S = 0.2  # a chunk that finds no room in the ring for this long goes through the pipe
_BATCH = 64  # the most messages the child gathers into one batch for the trainer
_START_TIMEOUT_S = 120.0
log = logging.getLogger(__name__)


class _Ring:
    """The trainer's side of the ring: records what the child placed and hands bytes back in the order they were
    placed once their chunks are gone (a released counter in the shared header)."""

    def __init__(self, mm: mmap.mmap) -> None:
        self.released = np.ndarray((1,), np.uint64, buffer=mm, offset=0)
        self.order: collections.deque = collections.deque()  # (start, end) in ring order, not yet handed back
        self.gone: set[int] = set()  # starts whose chunk is gone, waiting for those before them
        self.lock = threading.Lock()

    def placed(self, start: int, end: int) -> None:
        with self.lock:
            self.order.append((start, end))

    def gone_at(self, start: int) -> None:
        with self.lock:
            self.gone.add(start)
            while self.order and self.order[0][0] in self.gone:
                s, e = self.order.popleft()
                self.gone.discard(s)
                self.released[0] = e


class ListenerProcess:
    """A :class:`ClientSource` run in a child process; the same arguments (see its docstring) plus ``ring_mb``, the
    shared memory (MiB) chunks pass through, and ``nice``, the child's priority drop (as the workers'). Yields the
    same messages; ``address``, ``token``, ``token_generated`` and :meth:`external_report` as ``ClientSource``
    has them."""

    def __init__(self, listen: str, expected_sims: int | None = None, max_inflight: int = 4, *,
                 ring_mb: float = 64.0, nice: int = 0, **kwargs: Any) -> None:
        if not ring_mb > 0:
            raise ClientSourceError(f"ring_mb={ring_mb}: must be > 0")
        self.expected_sims, self.max_inflight = expected_sims, max_inflight
        self.cursor = self.dispatcher = None  # no design cursor: the clients choose their simulations
        self._size = int(ring_mb * 2**20) // _ALIGN * _ALIGN
        self._closed = self._ended = False
        self._report: dict[str, Any] = {}
        self._error: BaseException | None = None
        self._rlock = threading.Lock()  # one thread reads the pipe at a time (the iterator, or close())
        fd, path = _ring_file(_HEADER + self._size)
        try:
            self._mm = mmap.mmap(fd, _HEADER + self._size)
        finally:
            os.close(fd)
        self._ring = _Ring(self._mm)
        ours, theirs = socket.socketpair()
        self._conn = Connection(ours.detach())
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            [str(Path(streaming.__file__).resolve().parents[1]), *filter(None, [os.environ.get("PYTHONPATH")])])}
        try:
            self._proc = subprocess.Popen([sys.executable, "-m", "streaming.transport.listener_process",
                                           str(theirs.fileno())], pass_fds=[theirs.fileno()], env=env)
        except BaseException:
            self._conn.close()
            raise
        finally:
            theirs.close()
        try:
            self._conn.send((path, self._size, nice, (listen, expected_sims, max_inflight), kwargs))
            if not self._conn.poll(_START_TIMEOUT_S):
                raise ClientSourceError(f"the listener process did not start within {_START_TIMEOUT_S:.0f} s")
            kind, payload = pickle.loads(self._conn.recv_bytes())
        except BaseException:
            self._stop_child()
            raise
        finally:
            with contextlib.suppress(OSError):
                os.unlink(path)  # both sides have it mapped: the pages live until the last mapping goes
        if kind == "error":
            self._stop_child()
            raise payload
        self.address: str = payload["address"]
        self.token: str | None = payload["token"]
        self.token_generated: bool = payload["token_generated"]
        self._report = payload["report"]

    # ------------------------------------------------------------------ the stream
    def __iter__(self) -> Iterator[Message]:
        while not self._closed:
            with self._rlock:
                if self._ended:
                    break
                items = self._pull(_POLL_S)
            for kind, payload in items:
                if self._closed:
                    break
                yield self._chunk(*payload) if kind == "chunk" else payload
        if self._error is not None:
            raise self._error

    def _pull(self, timeout: float) -> list[tuple[str, Any]]:
        """The child's next batch of items, ``("chunk", record)`` or ``("message", report)`` (none within
        ``timeout``: empty); its counters, the end and errors are taken in here."""
        try:
            if not self._conn.poll(timeout):
                return []
            kind, payload = pickle.loads(self._conn.recv_bytes())
        except (EOFError, OSError):
            self._ended = True
            if not self._closed:
                self._error = ClientSourceError(f"the listener process exited (exit code {self._proc.poll()}); "
                                                "the external clients lost their job")
            return []
        if kind in ("report", "end"):
            self._report = payload
            self._ended = kind == "end"
            return []
        if kind == "error":
            self._error, self._ended = payload, True
            return []
        return payload

    def _chunk(self, sim_id: int, frames: tuple | list, params: list, solver: str, offset: tuple,
               global_grid: tuple, shape: tuple, start: int | None, data: np.ndarray | None) -> Chunk:
        if data is None:  # in the ring at `start`: a view, handed back once the last reference to it goes
            nbytes = int(np.prod(shape)) * 4
            pos = _HEADER + start % self._size
            holder = (ctypes.c_char * nbytes).from_buffer(self._mm, pos)
            self._ring.placed(start, start + _aligned(nbytes))
            weakref.finalize(holder, self._ring.gone_at, start)
            data = np.frombuffer(holder, np.float32).reshape(shape)
        index = (np.arange(frames[0], frames[0] + frames[1], dtype=np.int64) if isinstance(frames, tuple)
                 else np.asarray(frames, np.int64))
        # checked by the child's listener, which sent its parts
        return Chunk.checked(sim_id, index, data, np.asarray(params, np.float32), solver, offset, global_grid)

    def external_report(self) -> dict[str, Any]:
        """The child listener's counters (:meth:`ClientSource.external_report`) and the chunks it passed through
        the ring and through the pipe (``ring_chunks``, ``pipe_chunks``) and the batches their records went in
        (``pipe_batches``), as of its last report."""
        return dict(self._report)

    @property
    def pid(self) -> int:
        """The listener process's id."""
        return self._proc.pid

    @property
    def returncode(self) -> int | None:
        """The listener process's exit status (None while it runs)."""
        return self._proc.poll()

    def in_flight(self) -> list:
        """Nothing to re-run after a resume: external clients own their simulations."""
        return []

    @property
    def finished(self) -> bool:
        return self.expected_sims is not None and self._report.get("sims_finished", 0) >= self.expected_sims

    # ------------------------------------------------------------------ shutdown
    def close(self) -> None:
        """Stop the child's listener (it tells every client the job stopped), take its last counters, end it."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(OSError):
            self._conn.send(("close", None))
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline:
            with self._rlock:
                if self._ended:
                    break
                self._pull(_POLL_S)  # chunks still on their way are let go
        self._stop_child()

    def _stop_child(self) -> None:
        self._conn.close()  # the child's watch thread sees the pipe go and stops the listener
        try:
            self._proc.wait(5.0)
        except subprocess.TimeoutExpired:
            log.warning("the listener process did not end within 5 s of close(); killing it")
            self._proc.kill()
            self._proc.wait(5.0)
        with contextlib.suppress(BufferError):  # chunks still referenced keep their view (and the pages) alive
            self._mm.close()

    def __enter__(self) -> ListenerProcess:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _ring_file(nbytes: int) -> tuple[int, str]:
    """A file of ``nbytes`` for the ring, its space reserved up front: in ``/dev/shm`` when it has the room (a
    container's is often 64 MiB, and a page past the end of a full tmpfs is a SIGBUS, not an error), else in the
    temporary folder. Returns (descriptor, path)."""
    if Path("/dev/shm").is_dir():
        with contextlib.suppress(OSError):  # no room there
            return _reserved_file("/dev/shm", nbytes)
    return _reserved_file(None, nbytes)


def _reserved_file(folder: str | None, nbytes: int) -> tuple[int, str]:
    fd, path = tempfile.mkstemp(prefix="pdestream-ring-", dir=folder)
    try:
        if hasattr(os, "posix_fallocate"):
            os.posix_fallocate(fd, 0, nbytes)
        else:
            os.ftruncate(fd, nbytes)
    except BaseException:
        os.close(fd)
        os.unlink(path)
        raise
    return fd, path


def _child_main(conn: Connection) -> None:
    """The child: runs the listener and forwards its messages (chunk fields through the ring) until the
    trainer closes it, the stream ends, or the trainer's end of the pipe goes away."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the trainer's to handle; it closes us
    path, size, nice, args, kwargs = conn.recv()
    if nice and hasattr(os, "nice"):
        os.nice(nice)
    with open(path, "r+b") as f:
        mm = mmap.mmap(f.fileno(), _HEADER + size)
    released = np.ndarray((1,), np.uint64, buffer=mm, offset=0)
    ring = memoryview(mm)[_HEADER:_HEADER + size]
    try:
        source = ClientSource(*args, **kwargs)
    except BaseException as e:  # noqa: BLE001  (raised in the trainer)
        conn.send_bytes(pickle.dumps(("error", e)))
        return
    send_lock, stop = threading.Lock(), threading.Event()

    def send(item: tuple) -> None:
        data = pickle.dumps(item, protocol=pickle.HIGHEST_PROTOCOL)  # plain pickle: cheaper than conn.send's
        with send_lock:
            conn.send_bytes(data)

    def watch() -> None:  # the trainer's commands; its end of the pipe gone = the job is over
        with contextlib.suppress(EOFError, OSError):
            conn.recv()
        stop.set()
        source.close()

    send(("ready", {"address": source.address, "token": source.token, "token_generated": source.token_generated,
                    "report": source.external_report()}))
    threading.Thread(target=watch, daemon=True, name="listener-watch").start()
    head, reported, through = 0, time.monotonic(), {"ring_chunks": 0, "pipe_chunks": 0, "pipe_batches": 0}

    def report() -> dict[str, Any]:
        return {**source.external_report(), **through}

    # gathered while the listener has more ready, sent as one batch; a chunk that carries its fields goes at once,
    # so that the pipe, not this list, holds the clients back while the trainer does not take
    items: list[tuple] = []

    def flush() -> None:
        if items:
            send(("items", items[:]))
            items.clear()
            through["pipe_batches"] += 1

    try:
        for msg in source:
            carries_fields = False
            if isinstance(msg, Chunk):
                placed = _place(msg, ring, released, head, stop, flush)
                if placed is None:
                    break
                record, in_ring, head = placed
                through["ring_chunks" if in_ring else "pipe_chunks"] += 1
                items.append(("chunk", record))
                carries_fields = not in_ring
            else:
                items.append(("message", msg))
            if carries_fields or not source.ready() or len(items) >= _BATCH:
                flush()
            if time.monotonic() - reported > _REPORT_S:
                flush()
                send(("report", report()))
                reported = time.monotonic()
    except BaseException as e:  # noqa: BLE001  (raised in the trainer)
        with contextlib.suppress(OSError):
            flush()
            send(("error", e))
    finally:
        source.close()
        with contextlib.suppress(OSError):
            flush()
            send(("end", report()))


def _place(msg: Chunk, ring: memoryview, released: np.ndarray, head: int, stop: threading.Event,
           flush: Callable[[], None]) -> tuple[tuple, bool, int] | None:
    """(The record of ``msg`` for the trainer, whether its fields went into the ring, the ring's next head): the
    fields copied into the ring at or after ``head`` (waiting for room, after ``flush()`` sent the records the
    trainer needs to hand room back), or carried in the record (over half the ring, or no room within
    ``_RING_WAIT_S``). None: stopped while waiting."""
    fields = np.ascontiguousarray(msg.fields, np.float32)
    index = msg.frame_index
    first = int(index[0])
    frames = (first, len(index)) if int(index[-1]) - first + 1 == len(index) else index.tolist()
    meta = (msg.sim_id, frames, msg.params.tolist(), msg.solver, msg.offset, msg.global_grid, fields.shape)
    size, need = ring.nbytes, _aligned(fields.nbytes)
    if need > size // 2:
        return (*meta, None, fields), False, head
    pos = head % size
    if pos + need > size:  # no room before the end: start over at the ring's beginning
        head += size - pos
        pos = 0
    if head + need - int(released[0]) > size:
        flush()
    deadline = time.monotonic() + _RING_WAIT_S
    while head + need - int(released[0]) > size:  # the trainer still holds the bytes there
        if stop.is_set():
            return None
        if time.monotonic() > deadline:  # held for long (kept chunks, or a pause): through the pipe, which blocks
            return (*meta, None, fields), False, head  # once full: a trainer that stops taking still holds clients
        time.sleep(1e-4)
    # a memoryview copy keeps the interpreter lock (a numpy copy would let a reader thread take it, and this
    # thread would wait to get it back)
    ring[pos:pos + fields.nbytes] = memoryview(fields).cast("B")
    return (*meta, head, None), True, head + need


def _aligned(nbytes: int) -> int:
    """``nbytes`` rounded up to a multiple of :data:`_ALIGN` (a chunk's room in the ring)."""
    return -(-nbytes // _ALIGN) * _ALIGN


if __name__ == "__main__":
    _child_main(Connection(int(sys.argv[1])))
