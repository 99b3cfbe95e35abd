"""Routes reloads an editor or operator can trip (issue #13), with the whole server on
loopback and a real client asking all along: a file caught empty or half-written while it
is being rewritten (``cat > routes``) never replaces a working table, and SIGHUP re-reads
the file at once."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import treq
from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource
from twisted.web.server import Site
from typing_extensions import override

from fanout_tx.config.routes_watch import reload_on_sighup
from fanout_tx.tap import build_service, listening_port, load_settings
from tests.support.twistd import write_config
from tests.support.ws import listen_endpoint


class Named(Resource):
    """An origin that answers its name."""

    isLeaf = True

    def __init__(self, name: bytes) -> None:
        super().__init__()
        self.name = name

    @override
    def render(self, request: object) -> bytes:
        return self.name


class RoutesReloadTests(TestCase):
    timeout = 30

    async def start(self) -> None:
        ports = []
        for name in (b"A", b"B"):
            port = await listen_endpoint().listen(Site(Named(name)))
            self.addCleanup(port.stopListening)
            ports.append(port.getHost().port)
        self.a, self.b = ports
        folder = Path(self.mktemp())
        config = write_config(folder, (
            "[runner]\nhttp_port=127.0.0.1:0\n[proxy]\nroutesfile=routes\n"
            "[handler]\npush_in_spec=tcp://127.0.0.1:*\npush_in_sub_specs=tcp://127.0.0.1:*\n"
            "push_in_http_addr=127.0.0.1\npush_in_http_port=0\n[webhooks]\nenabled=false\n"
        ), routes=f"* 127.0.0.1:{self.a}\n")
        self.routes = folder / "routes"
        self.root, self.core = build_service(load_settings(str(config)), reactor)
        self.addCleanup(self.core.clients.close_idle)  # after every user stopped
        self.root.startService()
        self.addCleanup(self.root.stopService)
        proxy = next(iter(self.root.getServiceNamed("http-proxy")))
        self.url = f"http://127.0.0.1:{(await listening_port(proxy)).getHost().port}/"
        self.answers: list[tuple[int, bytes]] = []

    async def ask(self) -> bytes:
        response = await treq.get(self.url, persistent=False)
        self.answers.append((response.code, await treq.content(response)))
        return self.answers[-1][1]

    async def ask_for(self, seconds: float) -> None:
        """Ask through the proxy every 50 ms for ``seconds``."""
        deadline = reactor.seconds() + seconds
        while reactor.seconds() < deadline:
            await self.ask()
            await deferLater(reactor, 0.05, lambda: None)

    async def test_rewrite_in_progress_keeps_the_old_table(self) -> None:
        """``cat > routes``: the file is empty, then holds half a line, for more than a poll
        each; every request still reaches origin A (no 502), and the finished file
        (origin B) is installed once it has settled."""
        await self.start()
        self.assertEqual(await self.ask(), b"A")
        with self.routes.open("w") as writer:  # truncated, as the shell does before cat runs
            await self.ask_for(1.6)
            writer.write("* 127.0.0.1:")
            writer.flush()
            await self.ask_for(1.6)
            writer.write(f"{self.b}\n")
        deadline = reactor.seconds() + 5
        while await self.ask() != b"B":
            self.assertLess(reactor.seconds(), deadline, "the finished file was not loaded")
            await deferLater(reactor, 0.05, lambda: None)
        self.assertEqual({code for code, _body in self.answers}, {200})
        self.assertEqual(len(self.core.routes.table), 1)

    async def test_sighup_reloads_at_once(self) -> None:
        """SIGHUP reads the changed file without waiting for the poll (stopped here)."""
        await self.start()
        watcher = self.root.getServiceNamed("routes-watch")
        watcher.stopService()
        previous = signal.getsignal(signal.SIGHUP)
        self.addCleanup(signal.signal, signal.SIGHUP, previous)
        reload_on_sighup(reactor, watcher)
        self.routes.write_text(f"* 127.0.0.1:{self.b}\n")
        os.kill(os.getpid(), signal.SIGHUP)
        deadline = reactor.seconds() + 5
        while await self.ask() != b"B":
            self.assertLess(reactor.seconds(), deadline, "SIGHUP did not reload the routes")
            await deferLater(reactor, 0.05, lambda: None)
