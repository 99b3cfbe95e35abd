"""Config files for the whole server, and the output of a twistd started in a child process."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from pathlib import Path
from typing import Any

import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectError
from twisted.internet.interfaces import IProcessTransport
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from typing_extensions import override

from tests.support.helpers import wait_until, with_deadline
from tests.support.workers import children

ROUTES = "* 127.0.0.1:8080\n"


def write_config(folder: Path, text: str, routes: str = ROUTES, workers: int = 1) -> Path:
    """``text`` as fanout.conf beside ``routes``; with ``workers`` > 1, ``[runner] workers``
    too (the end-to-end modules run each twistd test with 1 and with 2 workers)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "routes").write_text(routes)
    path = folder / "fanout.conf"
    path.write_text(text + (f"\n[runner]\nworkers={workers}\n" if workers != 1 else ""))
    return path


def loopback_config(folder: Path, publish_port: int, workers: int = 1) -> Path:
    """Every listener on 127.0.0.1; ZeroMQ on wildcard ports, the client port on port 0."""
    return write_config(folder, (
        "[runner]\nhttp_port=127.0.0.1:0\n"
        "[proxy]\nroutesfile=routes\n"
        "[handler]\npush_in_spec=tcp://127.0.0.1:*\npush_in_sub_specs=tcp://127.0.0.1:*\n"
        f"push_in_http_addr=127.0.0.1\npush_in_http_port={publish_port}\n"
    ), workers=workers)


class TwistdOutput(ProcessProtocol):
    def __init__(self) -> None:
        self.output = b""
        self.ended: Deferred[Exception] = Deferred()

    @override
    def outReceived(self, data: bytes) -> None:
        self.output += data

    @override
    def errReceived(self, data: bytes) -> None:
        self.output += data

    @override
    def processEnded(self, reason: Failure) -> None:
        self.ended.callback(reason.value)  # ProcessDone or ProcessTerminated


async def kill_tree(process: IProcessTransport, output: TwistdOutput) -> None:
    """SIGKILL a twistd started by a test and, with ``[runner] workers`` > 1, its workers
    (left alone they drain and exit on their own: a supervisor's end closes their bus);
    returns once every one of them has gone."""
    pid = process.pid
    if pid is None:
        return
    workers = children(pid)
    process.signalProcess("KILL")
    for worker in workers:
        with contextlib.suppress(ProcessLookupError):
            os.kill(worker, signal.SIGKILL)
    await with_deadline(output.ended, "twistd did not end after SIGKILL")
    await wait_until(lambda: not any(Path(f"/proc/{w}").exists() for w in workers),
                     timeout=5.0, message="a worker outlived SIGKILL")


def start_twistd(test: TestCase, config: Path) -> tuple[IProcessTransport, TwistdOutput]:
    """``twistd -n fanout --config CONFIG`` in CONFIG's folder, killed (with its workers)
    when ``test`` ends."""
    output = TwistdOutput()
    twistd = Path(sys.executable).parent / "twistd"
    process = reactor.spawnProcess(
        output, str(twistd),
        [str(twistd), "-n", "--pidfile=", "fanout", "--config", str(config.resolve())],
        env=dict(os.environ), path=str(config.parent))
    test.addCleanup(lambda: Deferred.fromCoroutine(kill_tree(process, output)))
    return process, output


async def until_healthy(test: TestCase, output: TwistdOutput, publish_port: int,
                        seconds: float = 30) -> dict[str, Any]:
    """Poll /health until the server (every worker included) answers 200; its services.
    Fails ``test`` with the server's output if it exits or ``seconds`` pass first."""
    deadline = reactor.seconds() + seconds
    while True:
        if output.ended.called or reactor.seconds() > deadline:
            test.fail(output.output.decode(errors="replace"))
        try:
            response = await treq.get(f"http://127.0.0.1:{publish_port}/health",
                                      persistent=False)
            body = await treq.json_content(response)
            if response.code == 200:
                return dict(body["services"])
        except (ConnectionError, ConnectError):
            pass
        await deferLater(reactor, 0.1, lambda: None)
