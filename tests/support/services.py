"""Real external services for integration tests: find the binary, start it, stop it by PID.

On a developer's laptop a missing binary skips the test with the Debian package to install;
under CI (``CI=true``) it fails instead, so a skipped test never stands in for a feature.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from twisted.trial.unittest import SkipTest


def require_binary(name: str, debian_package: str, extra_dirs: tuple[str, ...] = ()) -> str:
    """The path of ``name``, or SkipTest naming the package (a failure when CI=true)."""
    path = shutil.which(name) or next(
        (str(Path(d) / name) for d in extra_dirs if (Path(d) / name).exists()), None
    )
    if path:
        return path
    message = f"{name} not found: apt-get install {debian_package}"
    if os.environ.get("CI") == "true":
        raise AssertionError(message + " (CI=true: required)")
    raise SkipTest(message)


def free_port() -> int:
    """A currently free loopback TCP port, for servers that cannot be told to use port 0."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """A private redis-server on a unix socket in a folder of its own: no TCP port, so no
    race for a free one; ``url`` is its ``unix://`` URL. No persistence unless
    ``appendonly`` is asked for. ``tcp_port`` also listens on TCP (for the bench's
    comparison). ``stop()`` kills it by the PID started here."""

    def __init__(self, appendonly: bool = False, directory: str | None = None,
                 tcp_port: int = 0, timeout: float = 10.0) -> None:
        binary = require_binary("redis-server", "redis-server")
        self.directory = directory or tempfile.mkdtemp(prefix="fanout-redis-")
        self.unix_socket = os.path.join(self.directory, "redis.sock")
        self.tcp_port = tcp_port
        args = [
            binary, "--port", str(tcp_port), "--bind", "127.0.0.1",
            "--unixsocket", self.unix_socket, "--dir", self.directory,
            "--save", "", "--appendonly", "yes" if appendonly else "no",
            "--appendfsync", "always", "--daemonize", "no", "--loglevel", "warning",
        ]
        self.appendonly = appendonly
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._wait_ready(timeout)

    def _wait_ready(self, timeout: float) -> None:
        """Until the socket accepts; fails when redis-server exits or ``timeout`` passes."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.process.poll() is None:
            with socket.socket(socket.AF_UNIX) as s:
                if s.connect_ex(self.unix_socket) == 0:
                    return
            time.sleep(0.02)
        self.stop()
        raise AssertionError(f"redis-server not accepting on {self.unix_socket} after "
                             f"{timeout}s (exit code {self.process.poll()})")

    @property
    def url(self) -> str:
        return f"unix://{self.unix_socket}?db=0"

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(timeout=10)

    def restart(self) -> None:
        """Start again on the same socket and folder (an append-only file is replayed)."""
        self.stop()
        self.__init__(appendonly=self.appendonly, directory=self.directory,
                      tcp_port=self.tcp_port)
