"""What crosses a wire, in one place: the socket framing of the external-solver protocol and the codec of
a simulation report. A chunk travels as ``Chunk.to_wire()`` (a small JSON-able header plus its float32
fields as raw bytes) on every transport.

Framing (TCP, :mod:`streaming.client` and the C client ``streaming/clib`` <->
:mod:`streaming.transport.listener`): a 16-byte prefix ``!4sIQ`` (magic ``b"PDS1"``, header bytes,
payload bytes, big-endian), a UTF-8 JSON header (a JSON object), the raw payload. Both lengths are
checked against limits before anything is allocated (:class:`FrameError` otherwise).
numpy and the standard library only: external solver programs import it through ``streaming.client``.
"""

from __future__ import annotations

import json
import socket
import struct
from typing import Any

import numpy as np

from streaming.chunk import SimReport

PROTOCOL = 1
MAGIC = b"PDS1"
PREFIX = struct.Struct("!4sIQ")  # magic, header length, payload length
MAX_HEADER = 1 << 20  # bytes of a JSON header (a chunk's header holds its step list: a few KiB)
MAX_PAYLOAD = 256 << 20  # default bound on one message's payload (bytes); the listener's is configurable


class FrameError(ConnectionError):
    """A frame that breaks the framing (bad magic, a length over its limit, a header that is not a JSON
    object); ``reason`` is a short key for counters (``magic``, ``oversize``, ``json``)."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


def report_header(report: SimReport) -> dict[str, Any]:
    """A simulation report as a JSON-able header (``type = "report"``)."""
    return {"type": "report", "sim_id": int(report.sim_id), "status": report.status, "message": report.message}


def report_from_header(header: dict[str, Any]) -> SimReport:
    return SimReport(int(header["sim_id"]), header["status"], header.get("message", ""))


def send_frame(sock: socket.socket, header: dict[str, Any], payload: Any = None) -> None:
    """Send one frame: prefix, JSON header and the raw bytes of ``payload`` (an array or buffer, or None)."""
    head = json.dumps(header, separators=(",", ":")).encode()
    data = memoryview(b"") if payload is None else memoryview(np.ascontiguousarray(payload)).cast("B")
    sock.sendall(PREFIX.pack(MAGIC, len(head), data.nbytes) + head)
    if data.nbytes:
        sock.sendall(data)


def recv_into(sock: socket.socket, buf: memoryview) -> None:
    """Fill ``buf`` from ``sock``; EOFError when the peer closes first."""
    got = 0
    while got < buf.nbytes:
        n = sock.recv_into(buf[got:])
        if n == 0:
            raise EOFError("connection closed by the peer")
        got += n


def check_prefix(prefix: bytes | bytearray, max_header: int = MAX_HEADER,
                 max_payload: int = MAX_PAYLOAD) -> tuple[int, int]:
    """Validate a 16-byte frame prefix; returns ``(header_length, payload_length)`` or raises :class:`FrameError`."""
    magic, n_head, n_payload = PREFIX.unpack(prefix)
    if magic != MAGIC:
        raise FrameError(f"not a pdestream stream (magic {bytes(magic)!r}); connect with streaming.client or the "
                         "C/Fortran client", "magic")
    if n_head > max_header:
        raise FrameError(f"frame header of {n_head} bytes exceeds the limit of {max_header} (a chunk's header lists "
                         "its steps: send fewer frames per message); or a corrupt stream", "oversize")
    if n_payload > max_payload:
        raise FrameError(f"frame payload of {n_payload} bytes exceeds the limit of {max_payload} (the job's "
                         "workers.max_message_mb); send fewer frames per message", "oversize")
    return n_head, n_payload


def parse_header(head: bytes | bytearray) -> dict[str, Any]:
    """Decode a frame's JSON header (must be a JSON object) or raise :class:`FrameError`."""
    try:
        header = json.loads(head)
    except ValueError as e:  # UnicodeDecodeError and JSONDecodeError
        raise FrameError(f"frame header is not JSON ({e}); corrupt stream", "json") from None
    if not isinstance(header, dict):
        raise FrameError("frame header is not a JSON object; corrupt stream", "json")
    return header


def recv_header(sock: socket.socket, max_header: int = MAX_HEADER,
                max_payload: int = MAX_PAYLOAD) -> tuple[dict[str, Any], int]:
    """Read a frame's prefix and JSON header; returns ``(header, payload_length)`` (payload still unread)."""
    prefix = bytearray(PREFIX.size)
    recv_into(sock, memoryview(prefix))
    n_head, n_payload = check_prefix(prefix, max_header, max_payload)
    head = bytearray(n_head)
    recv_into(sock, memoryview(head))
    return parse_header(head), n_payload


def recv_payload(sock: socket.socket, n: int) -> np.ndarray:
    """Read ``n`` payload bytes into a fresh uint8 array."""
    out = np.empty(n, np.uint8)
    if n:
        recv_into(sock, memoryview(out))
    return out


def recv_frame(sock: socket.socket) -> tuple[dict[str, Any], np.ndarray]:
    header, n = recv_header(sock)
    return header, recv_payload(sock, n)
