"""Open-file limits for a server whose connections are its workload.

Every held client is a file descriptor. The soft limit is often far below what the system
allows (1024 by default on many distributions), and a process at its limit does not fail
cleanly: ``accept()`` returns EMFILE, the listening socket stays readable, and the reactor
retries it on every turn at full CPU. So at start-up the soft limit is raised to the hard
one, and ``client_maxconn`` is kept below what remains, so that the connection limit
(transports/http/conn_limit.py) stops accepting before the descriptors run out.
"""

from __future__ import annotations

import resource

# Descriptors kept back for everything that is not a client connection: origin and Redis
# connections, listeners, ZeroMQ sockets, log and routes files.
RESERVED = 256


def raise_open_files_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; return the soft limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):  # not allowed here: keep what we have
            pass
    return soft


def connection_cap(client_maxconn: int, open_files: int) -> int:
    """``client_maxconn`` (0: none) bounded by the descriptors left after the reserve."""
    if open_files == resource.RLIM_INFINITY:
        return client_maxconn
    room = max(1, open_files - RESERVED)
    return room if client_maxconn == 0 else min(client_maxconn, room)
