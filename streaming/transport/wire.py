"""What crosses a wire, in one place: the socket framing of the external-solver protocol and the codec of
a simulation report. A chunk travels as ``Chunk.to_wire()`` (a small JSON-able header plus its float32
fields as raw bytes) on every transport.

Framing (TCP, :mod:`streaming.client` <-> :mod:`streaming.transport.listener`): a 16-byte prefix
``!4sIQ`` (magic ``b"PDS1"``, header bytes, payload bytes), a UTF-8 JSON header, the raw payload.
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
MAX_HEADER = 1 << 24


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


def recv_header(sock: socket.socket) -> tuple[dict[str, Any], int]:
    """Read a frame's prefix and JSON header; returns ``(header, payload_length)`` (payload still unread)."""
    prefix = bytearray(PREFIX.size)
    recv_into(sock, memoryview(prefix))
    magic, n_head, n_payload = PREFIX.unpack(prefix)
    if magic != MAGIC:
        raise ConnectionError(f"not a pdestream stream (magic {bytes(magic)!r}); connect with streaming.client")
    if n_head > MAX_HEADER:
        raise ConnectionError(f"frame header of {n_head} bytes exceeds {MAX_HEADER}; corrupt stream")
    head = bytearray(n_head)
    recv_into(sock, memoryview(head))
    try:
        header = json.loads(head)
    except ValueError as e:
        raise ConnectionError(f"frame header is not JSON ({e}); corrupt stream") from None
    if not isinstance(header, dict):
        raise ConnectionError("frame header is not a JSON object; corrupt stream")
    return header, n_payload


def recv_payload(sock: socket.socket, n: int) -> np.ndarray:
    """Read ``n`` payload bytes into a fresh uint8 array."""
    out = np.empty(n, np.uint8)
    if n:
        recv_into(sock, memoryview(out))
    return out


def recv_frame(sock: socket.socket) -> tuple[dict[str, Any], np.ndarray]:
    header, n = recv_header(sock)
    return header, recv_payload(sock, n)
