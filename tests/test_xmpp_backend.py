"""The backend answer size cap, against a real HTTP backend on a loopback socket (the XMPP
side is an in-memory stream)."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site
from twisted.words.xish import domish

from fanout_tx import wokkel_compat
from fanout_tx.core.formats.xmpp import parse_fragment
from fanout_tx.core.router import Router
from fanout_tx.outbound.origin import DEFAULT_MAX_HOLD_BODY
from fanout_tx.transports.xmpp.backend import BackendClient
from fanout_tx.transports.xmpp.handler import ComponentHandler
from fanout_tx.transports.xmpp.render import StanzaRenderer
from tests.support.helpers import TrackingFactory

wokkel_compat.install()
from wokkel.test.helpers import XmlStreamStub  # noqa: E402 - needs wokkel_compat first

DOMAIN = "push.example"
ALICE = "alice@example/phone"
INSTRUCT = b"application/grip-instruct"


def instruct_of_size(size: int) -> bytes:
    """A valid grip-instruct body of exactly ``size`` bytes: two reply messages (one may
    be at most 64 KiB)."""
    empty = json.dumps({"reply": ["<message><body></body></message>"] * 2}).encode()
    pad = size - len(empty)
    body = json.dumps({"reply": [f"<message><body>{'x' * n}</body></message>"
                                 for n in (pad // 2, pad - pad // 2)]}).encode()
    assert len(body) == size
    return body


class Backend(Resource):
    """Answers 200 grip-instruct with ``body``; with ``endless``, keeps the response open
    after writing it, as a misbehaving backend streaming without end. ``gone`` fires with
    the error when a response's connection is lost before it finished."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.body = b""
        self.endless = False
        self.gone: Deferred[Exception] = Deferred()

    def render_POST(self, request: Any) -> bytes | int:  # noqa: N802 - Resource hook
        request.setHeader(b"content-type", INSTRUCT)
        request.notifyFinish().addErrback(lambda failure: self.gone.callback(failure.value))
        if not self.endless:
            return self.body
        request.write(self.body)
        return NOT_DONE_YET


class BackendSizeTests(TestCase):
    timeout = 20

    async def asyncSetUp(self) -> None:  # noqa: N802 - called from setUp
        self.backend = Backend()
        self.site = TrackingFactory(Site(self.backend))
        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(self.site)
        self.addCleanup(port.stopListening)
        pool = HTTPConnectionPool(reactor, persistent=False)
        url = f"http://127.0.0.1:{port.getHost().port}/xmpp"
        client = BackendClient(Agent(reactor, pool=pool), reactor, url, 10)
        self.handler = ComponentHandler(StanzaRenderer(DOMAIN), client, Router(reactor))
        self.stub = XmlStreamStub()
        self.handler.makeConnection(self.stub.xmlstream)
        self.handler.connectionInitialized()
        self.events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)

    def setUp(self) -> Deferred[None]:  # noqa: N802 - trial hook
        return Deferred.fromCoroutine(self.asyncSetUp())

    async def iq_answer(self) -> list[domish.Element]:
        """Sends one iq get to the component; what it sent back once the backend call and
        its connection ended."""
        self.stub.send(parse_fragment(
            f"<iq type='get' id='i1' from='{ALICE}' to='bot@{DOMAIN}'><q xmlns='urn:q'/></iq>"
        )[0])
        await self.handler.when_idle()
        await self.site.wait_closed()
        return [o if isinstance(o, domish.Element) else parse_fragment(o.decode())[0]
                for o in self.stub.output]

    async def test_body_at_the_limit_is_applied(self) -> None:
        """An answer of exactly 100,000 bytes is read and applied: the iq gets a result."""
        self.backend.body = instruct_of_size(DEFAULT_MAX_HOLD_BODY)
        *replies, answer = await self.iq_answer()
        self.assertEqual([r.name for r in replies], ["message", "message"])
        self.assertEqual((answer.name, answer["type"], answer["id"]), ("iq", "result", "i1"))
        self.assertFalse(self.backend.gone.called)

    async def test_oversized_body_closes_the_backend_connection(self) -> None:
        """One byte over the limit, and a backend that never ends its body: the connection
        is closed, the reason is logged and the iq gets service-unavailable (wait), as for
        any other backend failure."""
        self.backend.body = instruct_of_size(DEFAULT_MAX_HOLD_BODY + 1)
        self.backend.endless = True
        [answer] = await self.iq_answer()
        await self.backend.gone  # the response never ended: only the closed connection ends it
        self.assertEqual((answer["type"], answer.error["type"],
                          next(answer.error.elements()).name),
                         ("error", "wait", "service-unavailable"))
        reasons = [e.get("reason") for e in self.events if e.get("sender") == ALICE]
        self.assertEqual(reasons, ["backend answer larger than 100000 bytes; connection closed"])
