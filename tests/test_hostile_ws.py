"""WebSocket ``detach`` (SPEC A7, issue #13) with a real WebSocket client over loopback, in
both modes: after the origin's ``detach`` the client keeps its connection and its
subscriptions, what it sends no longer reaches the origin, published items keep arriving,
and whatever the origin does with its side afterwards (answer the CLOSE with CLOSE, fail,
go away) never reaches the client."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from fanout_tx.transports.ws import events as ev
from tests.support.ws import WsProxyMixin, WsTestMixin, events_reply

SETTLE = 0.3  # seconds for a message that should not arrive to have arrived


def detaching_origin(close_answer: str) -> Any:
    """Grip on; TEXT "sub:X" subscribes to X, "detach" detaches; the CLOSE that follows
    the detach is answered with CLOSE, a 500 or a malformed body (``close_answer``)."""

    def answer(events: list[ev.Event], headers: dict[str, str]) -> tuple:
        out = []
        for event in events:
            if event.name == "OPEN":
                out.append(ev.Event("OPEN"))
            elif event.name == "TEXT" and event.content.startswith(b"sub:"):
                control = {"type": "subscribe", "channel": event.content[4:].decode()}
                out += [ev.Event("TEXT", b"c:" + json.dumps(control).encode()),
                        ev.Event("TEXT", b"m:subscribed")]
            elif event.name == "TEXT" and event.content == b"detach":
                # What follows the detach in the same answer is dropped too.
                out += [ev.Event("TEXT", b'c:{"type": "detach"}'),
                        ev.Event("TEXT", b"m:dropped"), ev.Event("CLOSE")]
            elif event.name == "CLOSE":
                if close_answer == "500":
                    return 500, [("Content-Type", "text/plain")], b"gone\n"
                if close_answer == "garbage":
                    return 200, [("Content-Type", "application/websocket-events")], b"?!\r\n"
                out.append(ev.Event("CLOSE", ev.close_content(1000, "bye")))
        return events_reply(*out, headers=[("Sec-WebSocket-Extensions", "grip")])

    return answer


class OverHttpDetachTests(WsTestMixin, TestCase):
    timeout = 30

    @inlineCallbacks
    def check_detach(self, close_answer: str):
        yield self.start(detaching_origin(close_answer))
        side, client = yield self.connect()
        client.sendMessage(b"sub:news")
        yield side.wait_messages(1)
        client.sendMessage(b"detach")
        yield self.origin.wait_for(lambda: "CLOSE" in self.origin.event_names())
        before = len(self.origin.requests)
        client.sendMessage(b"not for the origin")
        yield deferLater(reactor, SETTLE, lambda: None)
        self.assertFalse(side.closed.called, "the client was closed by the detach")
        self.publish("news", content="still subscribed")
        messages = yield side.wait_messages(2).addTimeout(5, reactor)
        self.assertEqual(messages, [(b"subscribed", False), (b"still subscribed", False)])
        self.assertEqual(len(self.origin.requests), before)
        self.assertNotIn(b"not for the origin",
                         [e.content for _h, es, _u in self.origin.requests for e in es])
        (session,) = self.handler.sessions
        client.sendClose(1000)
        yield session.finished
        self.assertEqual(self.router.subscriber_count(), 0)
        self.assertEqual(len(self.origin.requests), before)  # no CLOSE after the detach

    def test_detach_origin_answers_close(self):
        """The origin answers the detach's CLOSE with CLOSE (as WebSocket-over-HTTP
        libraries do): that close is the origin's side ending, not the client's."""
        return self.check_detach("close")

    def test_detach_origin_fails_afterwards(self):
        """A 500 or malformed answer to the detach's CLOSE does not close the client."""
        return self.check_detach("500")

    def test_detach_origin_answers_garbage(self):
        return self.check_detach("garbage")


class ProxyDetachTests(WsProxyMixin, TestCase):
    """The plain WebSocket proxy mode (a real autobahn origin, test_ws_proxy's)."""

    timeout = 30

    @inlineCallbacks
    def test_detach_keeps_client(self):
        """After detach the origin connection is closed, the client's messages go nowhere
        and it stays open and subscribed."""
        yield self.start_ws()
        side, client = yield self.connect("/grip/x")
        client.sendMessage(b"sub:news")
        yield side.wait_messages(1)
        closed = self.origin_closed()
        client.sendMessage(b"detach")
        yield closed
        requests = len(self.origin_factory.requests)
        client.sendMessage(b"not for the origin")
        yield deferLater(reactor, SETTLE, lambda: None)
        self.assertFalse(side.closed.called)
        self.publish("news", content="still subscribed")
        messages = yield side.wait_messages(2).addTimeout(5, reactor)
        self.assertEqual(messages[1], (b"still subscribed", False))
        self.assertEqual(len(self.origin_factory.requests), requests)  # no reconnection
        d: Deferred = side.closed
        client.sendClose(1000)
        yield d
