"""Binding a ZeroMQ socket as Pushpin's runner would: an ``ipc://`` endpoint's folder is
created first (Pushpin creates its ``rundir``), so a pushpin.conf whose ``stats_spec`` is
``ipc://{rundir}/...`` starts without the folder being made by hand."""

from __future__ import annotations

from pathlib import Path

import zmq


def bind(sock: zmq.Socket, spec: str) -> None:
    """``sock.bind(spec)``; a folder that cannot be made fails as ZMQError, as a bind does."""
    if spec.startswith("ipc://"):
        try:
            Path(spec[len("ipc://"):]).parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise zmq.ZMQError(e.errno or zmq.EINVAL) from None
    sock.bind(spec)
