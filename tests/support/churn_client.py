"""Clients for the churn tests on plain blocking sockets, meant to run in a thread: they
allocate no Twisted objects and no reference cycles in the process the tests measure.
"""

from __future__ import annotations

import base64
import os
import socket
import struct

TIMEOUT = 20.0
HEAD_END = b"\r\n\r\n"


def connect(port: int, n: int, request: bytes) -> list[socket.socket]:
    """``n`` connections to 127.0.0.1:``port``, each having sent ``request``."""
    socks = []
    for _ in range(n):
        sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        socks.append(sock)
        sock.sendall(request)
    return socks


def read(sock: socket.socket, until: bytes | None = None, limit: int = 65536) -> bytes:
    """What ``sock`` receives until ``until`` has come (None: until the server closes)."""
    data = b""
    while len(data) < limit and (until is None or until not in data):
        try:
            chunk = sock.recv(limit)
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
    return data


def read_all(socks: list[socket.socket], until: bytes | None = None) -> list[bytes]:
    return [read(sock, until) for sock in socks]


def close_all(socks: list[socket.socket], reset: bool = False) -> None:
    """Close every socket; ``reset``: with an RST, as a client that vanishes."""
    for sock in socks:
        if reset:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()


def requests(port: int, n: int, request: bytes) -> list[bytes]:
    """``n`` requests one after another, each on its own connection, read until the server
    closes it (``request`` should say ``Connection: close``)."""
    answers = []
    for _ in range(n):
        [sock] = connect(port, 1, request)
        try:
            answers.append(read(sock))
        finally:
            sock.close()
    return answers


def ws_frame(opcode: int, payload: bytes) -> bytes:
    """One masked client frame (payload under 126 bytes)."""
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + masked


def ws_open(port: int, n: int, path: str, message: bytes, until: bytes,
            ) -> tuple[list[socket.socket], list[bytes]]:
    """``n`` WebSocket clients on ``path``, each sending ``message`` once upgraded and read
    until ``until``: (the sockets, what each received)."""
    socks, seen = [], []
    for _ in range(n):
        key = base64.b64encode(os.urandom(16)).decode()
        [sock] = connect(port, 1, (
            f"GET {path} HTTP/1.1\r\nHost: churn\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n").encode())
        socks.append(sock)
        head = read(sock, HEAD_END)
        sock.sendall(ws_frame(0x1, message))
        seen.append(head + read(sock, until))
    return socks, seen


def ws_close_all(socks: list[socket.socket]) -> list[bytes]:
    """A close handshake on every socket: the client's close frame, then what the server
    sends until it closes (its close frame)."""
    for sock in socks:
        sock.sendall(ws_frame(0x8, struct.pack("!H", 1000)))
    answers = read_all(socks)
    close_all(socks)
    return answers
