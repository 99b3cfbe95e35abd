"""Which worker process holds a client connection, read from /proc (Linux): the connection's
socket inode, looked up among each worker's descriptors."""

from __future__ import annotations

import os
from pathlib import Path


def children(pid: int) -> list[int]:
    """The processes ``pid`` started (its workers)."""
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(part) for part in text.split()]


def _socket_inode(client_port: int, server_port: int) -> str | None:
    """The inode of the server side of 127.0.0.1:client_port -> 127.0.0.1:server_port."""
    local, remote = f"0100007F:{server_port:04X}", f"0100007F:{client_port:04X}"
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == local and fields[2] == remote:
            return fields[9]
    return None


def owner(pids: list[int], client_port: int, server_port: int) -> int | None:
    """The pid among ``pids`` that holds the accepted end of the client's connection."""
    inode = _socket_inode(client_port, server_port)
    if inode is None:
        return None
    target = f"socket:[{inode}]"
    for pid in pids:
        folder = f"/proc/{pid}/fd"
        try:
            names = os.listdir(folder)
        except FileNotFoundError:
            continue
        for name in names:
            try:
                if os.readlink(f"{folder}/{name}") == target:
                    return pid
            except OSError:
                continue
    return None
