"""A private Prosody for XMPP end-to-end tests: temporary config on free loopback ports.

c2s and component listeners on 127.0.0.1, no s2s, no TLS (plain SASL allowed on this
loopback-only server), virtual host ``localhost`` plus one component domain. Prosody
refuses to run as root, so it runs as the ``prosody`` user with its files owned by it.
Readiness is read from its log, never guessed; ``stop()`` kills it by the PID started here
(and a parent-death signal stops it should the test process die first).
"""

from __future__ import annotations

import atexit
import json
import os
import pwd
import select
import shutil
import subprocess
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredQueue
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.web.server import Site
from twisted.words.protocols.jabber import client, sasl, xmlstream
from twisted.words.protocols.jabber.jid import JID
from twisted.words.xish import domish
from typing_extensions import override

from fanout_tx.config.settings import Config, XmppConfig
from fanout_tx.core.router import Router
from fanout_tx.outbound.clients import origin_clients
from fanout_tx.transports.xmpp.component import XmppComponent, build_xmpp
from tests.support.helpers import with_deadline
from tests.support.services import free_port, require_binary

_CONFIG = """\
pidfile = "{dir}/prosody.pid"
data_path = "{dir}/data"
certificates = "{dir}/certs"
daemonize = false
log = {{ {{ levels = {{ min = "info" }}, to = "console" }} }}
modules_enabled = {{ "saslauth", "disco", "ping", "presence", "message", "iq" }}
modules_disabled = {{ "s2s", "tls", "offline", "posix" }}
interfaces = {{ "127.0.0.1" }}
c2s_ports = {{ {c2s_port} }}
c2s_interfaces = {{ "127.0.0.1" }}
component_ports = {{ {component_port} }}
component_interfaces = {{ "127.0.0.1" }}
s2s_ports = {{ }}
c2s_require_encryption = false
allow_unencrypted_plain_auth = true
authentication = "internal_plain"
VirtualHost "localhost"
Component "{domain}"
  component_secret = "{secret}"
"""

_READY = ("Activated service 'component'", "Activated service 'c2s'")


class ProsodyServer:
    """One Prosody process; ``users`` maps user name -> password (all on ``localhost``)."""

    def __init__(self, domain: str = "push.localhost", secret: str = "s3cret",
                 users: dict[str, str] | None = None, timeout: float = 15.0) -> None:
        self.binary = require_binary("prosody", "prosody")
        self.prosodyctl = require_binary("prosodyctl", "prosody")
        self.domain, self.secret = domain, secret
        self.c2s_port, self.component_port = free_port(), free_port()
        self.directory = Path(tempfile.mkdtemp(prefix="fanout-prosody-"))
        self.config = self.directory / "prosody.cfg.lua"
        (self.directory / "data").mkdir()
        (self.directory / "certs").mkdir()
        self.config.write_text(_CONFIG.format(
            dir=self.directory, c2s_port=self.c2s_port, component_port=self.component_port,
            domain=domain, secret=secret,
        ))
        self._chown()
        for user, password in (users or {}).items():
            subprocess.run(self._as_prosody(self.prosodyctl, "--config", str(self.config),
                                             "register", user, "localhost", password),
                           check=True, capture_output=True, timeout=30)
        self.log: deque[str] = deque(maxlen=500)
        self.process = subprocess.Popen(
            self._as_prosody(self.binary, "--config", str(self.config), "-F"),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        self._wait_ready(timeout)
        threading.Thread(target=self._drain, daemon=True).start()

    def _chown(self) -> None:
        if os.getuid() != 0:
            return  # not root: Prosody runs as this user, who owns the files already
        entry = pwd.getpwnam("prosody")
        for path in [self.directory, *self.directory.rglob("*")]:
            os.chown(path, entry.pw_uid, entry.pw_gid)

    @staticmethod
    def _as_prosody(*args: str) -> list[str]:
        """As the prosody user when we are root; either way killed if the tests die."""
        setpriv = [shutil.which("setpriv") or "setpriv", "--pdeathsig", "TERM"]
        if os.getuid() == 0:
            setpriv += ["--reuid=prosody", "--regid=prosody", "--init-groups"]
        return [*setpriv, *args]

    def _wait_ready(self, timeout: float) -> None:
        assert self.process.stdout is not None
        deadline = time.monotonic() + timeout
        pending = set(_READY)
        buffered = b""
        while pending:
            left = deadline - time.monotonic()
            if left <= 0 or self.process.poll() is not None:
                self.stop()
                raise AssertionError("prosody did not start:\n" + "\n".join(self.log))
            readable, _, _ = select.select([self.process.stdout], [], [], left)
            if not readable:
                continue
            chunk = os.read(self.process.stdout.fileno(), 65536)
            buffered += chunk
            *lines, buffered = buffered.split(b"\n")
            for line in lines:
                text = line.decode("utf-8", "replace")
                self.log.append(text)
                pending = {marker for marker in pending if marker not in text}

    def _drain(self) -> None:
        """Keep reading the log so Prosody never blocks on a full pipe."""
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.log.append(line.decode("utf-8", "replace").rstrip())

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        shutil.rmtree(self.directory, ignore_errors=True)


class _PlainClientAuthenticator(client.XMPPAuthenticator):
    """twisted.words' client authenticator without STARTTLS: the test server offers none
    (loopback only) and allows PLAIN there."""

    @override
    def associateWithStream(self, xs: xmlstream.XmlStream) -> None:
        xmlstream.ConnectAuthenticator.associateWithStream(self, xs)
        xs.initializers = [
            client.CheckVersionInitializer(xs),
            sasl.SASLInitiatingInitializer(xs, required=True),
            client.BindInitializer(xs, required=True),
            client.SessionInitializer(xs, required=False),
        ]


class XmppClient:
    """A real XMPP client (twisted.words) logged in to a ProsodyServer; every stanza it
    receives lands in ``received``."""

    def __init__(self, reactor: Any, server: ProsodyServer, user: str, password: str) -> None:
        self._reactor = reactor
        self._server = server
        self.jid = JID(f"{user}@localhost/test")
        self._password = password
        self.received: DeferredQueue[domish.Element] = DeferredQueue()
        self.xs: xmlstream.XmlStream | None = None
        self._lost: Deferred[None] = Deferred()

    async def connect(self) -> None:
        factory = xmlstream.XmlStreamFactory(_PlainClientAuthenticator(self.jid, self._password))
        factory.stopTrying()  # connected through an endpoint; never reconnect
        ready: Deferred[Any] = Deferred()
        factory.addBootstrap(xmlstream.STREAM_AUTHD_EVENT, ready.callback)
        factory.addBootstrap(xmlstream.INIT_FAILED_EVENT, ready.errback)
        factory.addBootstrap(xmlstream.STREAM_END_EVENT, lambda _r: self._lost.callback(None))
        endpoint = TCP4ClientEndpoint(self._reactor, "127.0.0.1", self._server.c2s_port)
        self.xs = await endpoint.connect(factory)
        await ready
        self.jid = self.xs.authenticator.jid  # the bound full JID
        for kind in ("message", "presence"):
            self.xs.addObserver(f"/{kind}", self.received.put)
        self.xs.send("<presence/>")

    def send(self, stanza: str) -> None:
        assert self.xs is not None
        self.xs.send(stanza)

    async def next(self, name: str = "message", seconds: float = 10.0) -> domish.Element:
        """The next received stanza called ``name`` (others are skipped); fails after
        ``seconds``."""
        deadline = time.monotonic() + seconds
        while True:
            left = deadline - time.monotonic()
            stanza = await with_deadline(self.received.get(), f"no <{name}/> stanza",
                                         max(left, 0.001))
            if stanza.name == name:
                return stanza

    async def iq(self, iq_type: str, to: str, child: domish.Element) -> domish.Element:
        """Send an iq and return its answer (result or error) as an element."""
        assert self.xs is not None
        request = xmlstream.IQ(self.xs, iq_type)
        request.addChild(child)
        answer: Deferred[domish.Element] = Deferred()
        self.xs.addOnetimeObserver(f"/iq[@id='{request['id']}']", answer.callback)
        request["to"] = to
        self.xs.send(request)
        return await answer

    async def disconnect(self) -> None:
        if self.xs is not None and not self._lost.called:
            self.xs.send("<presence type='unavailable'/>")
            self.xs.sendFooter()
            self.xs.transport.loseConnection()
        await self._lost


_shared: ProsodyServer | None = None


def shared_prosody(domain: str, secret: str, users: dict[str, str]) -> ProsodyServer:
    """One Prosody for the whole test run (both trial and pytest lack a common per-class
    hook), started on first use and killed by its PID when the interpreter exits."""
    global _shared
    if _shared is None:
        _shared = ProsodyServer(domain, secret, users)
        atexit.register(_shared.stop)
    return _shared


DOMAIN = "push.localhost"


SECRET = "s3cret"


Answer = tuple[int, dict[str, str], bytes]


class Backend(Resource):
    """The test's backend: records each POST and answers with ``self.answer(headers, body)``."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.requests: DeferredQueue[tuple[Headers, bytes]] = DeferredQueue()
        self.answer: Callable[[Headers, bytes], Answer] = lambda _h, _b: (200, {}, b"")

    @override
    def render_POST(self, request: Any) -> bytes:  # noqa: N802 - Resource hook
        body = request.content.read()
        self.requests.put((request.requestHeaders, body))
        code, headers, out = self.answer(request.requestHeaders, body)
        request.setResponseCode(code)
        for name, value in headers.items():
            request.setHeader(name, value)
        return out

    async def next_request(self, kind: str, stanza_type: str | None = None,
                           seconds: float = 10.0) -> Headers:
        """The next backend request for a ``kind`` stanza; fails after ``seconds``."""
        deadline = time.monotonic() + seconds
        while True:
            left = deadline - time.monotonic()
            headers, _body = await with_deadline(
                self.requests.get(), f"no backend request for a {kind} stanza",
                max(left, 0.001))
            if (headers.getRawHeaders("xmpp-kind") == [kind]
                    and headers.getRawHeaders("xmpp-type", [None])[0] == stanza_type):
                return headers


def header_value(headers: Headers, name: str) -> str | None:
    return headers.getRawHeaders(name, [None])[0]


def subscribe_and_echo(headers: Headers, body: bytes) -> Answer:
    """Subscribe every sender to ``news``; answer a message with a reply naming its meta."""
    if header_value(headers, "xmpp-kind") != "message":
        return 200, {"Grip-Channel": "news"}, b""
    instruct = {
        "subscribe": ["news"],
        "set-meta": {"user": header_value(headers, "xmpp-from").split("@")[0]},
        "reply": ["<message type='chat'><body>subscribed</body></message>"],
    }
    return 200, {"Content-Type": "application/grip-instruct"}, json.dumps(instruct).encode()


class ProsodyTestsMixin:
    timeout = 20
    """One Prosody for the run (users alice and bob); a backend and a component per test."""

    prosody: ProsodyServer

    def setUp(self) -> None:
        self.prosody = shared_prosody(DOMAIN, SECRET, {"alice": "pw-alice", "bob": "pw-bob"})

    def start_backend(self: Any) -> tuple[Backend, str]:
        backend = Backend()
        port = reactor.listenTCP(0, Site(backend), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return backend, f"http://127.0.0.1:{port.getHost().port}/xmpp"

    async def start_component(self: Any, router: Router, backend_url: str,
                              secret: str = SECRET, wait: bool = True,
                              max_stanza_size: int = XmppConfig.max_stanza_size,
                              ) -> XmppComponent:
        config = Config(xmpp=XmppConfig(
            enabled=True, jid=DOMAIN, port=self.prosody.component_port, secret=secret,
            backend=backend_url, backend_timeout=5, sig_key=b"xmpp-key", sig_iss="fanout",
            max_stanza_size=max_stanza_size,
        ))
        origins = origin_clients(reactor).verified
        self.addCleanup(origins.closeCachedConnections)
        component = build_xmpp(config, router, reactor, origins)
        up: Deferred[Any] = Deferred()
        ended: list[Deferred[Any]] = []
        component.factory.addBootstrap(xmlstream.STREAM_AUTHD_EVENT, up.callback)

        def track_end(xs: xmlstream.XmlStream) -> None:
            ended.append(Deferred())
            done = ended[-1]
            xs.addOnetimeObserver(xmlstream.STREAM_END_EVENT, lambda _r: done.callback(None))

        component.factory.addBootstrap(xmlstream.STREAM_CONNECTED_EVENT, track_end)

        async def stop() -> None:
            await component.stopService()
            for d in ended:
                await d

        component.startService()
        self.addCleanup(stop)
        if wait:
            await up
        return component

    async def login(self: Any, user: str) -> XmppClient:
        client = XmppClient(reactor, self.prosody, user, f"pw-{user}")
        await client.connect()
        self.addCleanup(client.disconnect)
        return client
