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


def wait_for_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.02)
    raise AssertionError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


class RedisServer:
    """A private redis-server on a free loopback port (and a unix socket), no persistence
    unless ``appendonly`` is asked for. ``stop()`` kills it by the PID started here."""

    def __init__(self, appendonly: bool = False, port: int | None = None,
                 directory: str | None = None) -> None:
        binary = require_binary("redis-server", "redis-server")
        self.directory = directory or tempfile.mkdtemp(prefix="fanout-redis-")
        self.port = port or free_port()
        self.unix_socket = os.path.join(self.directory, "redis.sock")
        args = [
            binary, "--port", str(self.port), "--bind", "127.0.0.1",
            "--unixsocket", self.unix_socket, "--dir", self.directory,
            "--save", "", "--appendonly", "yes" if appendonly else "no",
            "--appendfsync", "always", "--daemonize", "no", "--loglevel", "warning",
        ]
        self.appendonly = appendonly
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(self.port)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(timeout=10)

    def restart(self) -> None:
        """Start again on the same port and folder (an append-only file is replayed)."""
        self.stop()
        self.__init__(appendonly=self.appendonly, port=self.port, directory=self.directory)
