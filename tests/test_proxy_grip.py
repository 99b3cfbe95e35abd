"""GRIP through the real proxy: long-poll, stream, reliability, bad instructions.

Real sockets for client, proxy and origin; the proxy's clock is a task.Clock, so hold
timeouts and keep-alives are driven by the test, not by waiting.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet import reactor, task
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from twisted.web.http_headers import Headers
from twisted.web.server import NOT_DONE_YET, Request
from typing_extensions import override

from fanout_tx.outbound.origin import ProxySettings
from tests.support.helpers import wait_until
from tests.support.proxy_fixtures import ProxyHarness, Started, grip


def long_poll(request: Request) -> bytes:
    request.setHeader("X-Held", "held")
    request.setHeader("X-Replace", "origin")
    request.setHeader("Content-Type", "text/x-timeout")
    return grip(request, b"timed out\n", Grip_Hold="response", Grip_Channel="news")


def stream(request: Request) -> bytes:
    request.setHeader("Content-Type", "text/event-stream")
    return grip(request, b"start\n", Grip_Hold="stream", Grip_Channel="news",
                Grip_Keep_Alive=r"ka\n; format=cstring; timeout=20")


def instruct(document: dict) -> Any:
    def answer(request: Request) -> bytes:
        request.setHeader("Content-Type", "application/grip-instruct")
        return json.dumps(document).encode()
    return answer


class LongPollTests(TestCase):
    def setUp(self) -> None:
        self.clock = task.Clock()
        self.proxy = ProxyHarness(self, clock=self.clock)
        self.proxy.handle(b"/lp", long_poll)

    async def held(self, path: bytes = b"/lp", channel: str = "news") -> Started:
        started = Started(self.proxy, path)
        await wait_until(lambda: self.proxy.router.has_subscribers(channel))
        return started

    async def test_publish_completes_with_inherited_headers(self) -> None:
        """The published response inherits held headers; published ones replace same-named."""
        started = await self.held()
        self.proxy.publish("news", http_response={
            "code": 201, "headers": {"X-Replace": "published"}, "body": "news!\n"})
        body = await started.body()
        headers = started.response.headers
        self.assertEqual((started.response.code, body), (201, b"news!\n"))
        self.assertEqual(headers.getRawHeaders(b"x-held"), [b"held"])
        self.assertEqual(headers.getRawHeaders(b"x-replace"), [b"published"])
        self.assertIsNone(headers.getRawHeaders(b"grip-hold"))
        self.assertFalse(self.proxy.router.has_subscribers("news"))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    async def test_publish_reaches_only_once(self) -> None:
        """A second publish after completion goes nowhere; the code defaults to 200."""
        started = await self.held()
        self.proxy.publish("news", http_response={"body": "one"})
        self.proxy.publish("news", http_response={"body": "two"})
        self.assertEqual(await started.body(), b"one")
        self.assertEqual(started.response.code, 200)

    async def test_timeout_returns_origin_response(self) -> None:
        """After Grip-Timeout (default 55 s) the client gets the origin's own response."""
        started = await self.held()
        self.clock.advance(54)
        self.assertEqual(self.proxy.router.subscriber_count(), 1)
        self.clock.advance(1)
        self.assertEqual(await started.body(), b"timed out\n")
        self.assertEqual(started.response.headers.getRawHeaders(b"content-type"),
                         [b"text/x-timeout"])
        self.assertEqual(self.proxy.router.subscriber_count(), 0)

    async def test_grip_status_and_expose_headers(self) -> None:
        """Grip-Status sets the timeout status line; Grip-Expose-Headers limits headers."""
        self.proxy.handle(b"/exp", lambda r: grip(
            r, b"later\n", Grip_Hold="response", Grip_Channel="news", Grip_Timeout="7",
            Grip_Status="202 Waited", Grip_Expose_Headers="X-Keep", X_Keep="1", X_Drop="2"))
        started = await self.held(b"/exp")
        self.clock.advance(7)
        self.assertEqual(await started.body(), b"later\n")
        self.assertEqual((started.response.code, started.response.phrase), (202, b"Waited"))
        self.assertEqual(started.response.headers.getRawHeaders(b"x-keep"), [b"1"])
        self.assertIsNone(started.response.headers.getRawHeaders(b"x-drop"))

    async def test_grip_instruct_body_hold(self) -> None:
        """An application/grip-instruct hold with a prefix route and a JSON response."""
        self.proxy.handle(b"/json", instruct({
            "hold": {"mode": "response", "channels": [{"name": "news"}], "timeout": 10},
            "response": {"code": 200, "headers": {"X-J": "1"}, "body": "json timeout"}}))
        started = await self.held(b"/json")
        self.clock.advance(10)
        self.assertEqual(await started.body(), b"json timeout")
        self.assertEqual(started.response.headers.getRawHeaders(b"x-j"), [b"1"])

    async def test_client_gone_unsubscribes_and_cancels_timers(self) -> None:
        started = await self.held()
        started.deferred.cancel()
        await wait_until(lambda: not self.proxy.router.has_subscribers("news"))
        self.assertEqual(self.clock.getDelayedCalls(), [])
        started.deferred.addErrback(lambda _: None)

    async def test_prev_id_behind_rerequests_with_grip_last(self) -> None:
        """prev-id older than the channel's last id: the origin is asked again at once with
        Grip-Last, and its new answer is held (no loop)."""
        self.proxy.router.set_last_id("news", "new-1")
        self.proxy.handle(b"/prev", lambda r: grip(r, b"", Grip_Hold="response",
                                                    Grip_Channel="news; prev-id=old"))
        started = await self.held(b"/prev")
        self.assertEqual(len(self.proxy.origin.requests), 2)
        self.assertIsNone(self.proxy.origin.header(0, "grip-last"))
        self.assertEqual(self.proxy.origin.header(1, "grip-last"), ["news; last-id=old"])
        self.proxy.publish_item({"channel": "news", "id": "new-2", "prev-id": "old",
                                 "no-seq": True, "http-response": {"body": "caught up"}})
        self.assertEqual(await started.body(), b"caught up")

    async def test_item_without_prev_id_rerequests_with_grip_last(self) -> None:
        """As Pushpin: on a channel held with a prev-id, an item without one (or with another)
        does not follow the poll; the origin is asked again, told where the client is."""
        self.proxy.handle(b"/prev", lambda r: grip(r, b"", Grip_Hold="response",
                                                    Grip_Channel="news; prev-id=7"))
        started = await self.held(b"/prev")
        self.proxy.handle(b"/prev", lambda r: b"from origin")
        self.proxy.publish("news", http_response={"body": "out of sequence"})
        self.assertEqual(await started.body(), b"from origin")
        self.assertEqual(self.proxy.origin.header(1, "grip-last"), ["news; last-id=7"])

    async def test_hint_rerequests_origin(self) -> None:
        """action hint: the origin is asked again and its new answer is what the client gets."""
        started = await self.held()
        self.proxy.handle(b"/lp", lambda r: b"fresh from origin")
        self.proxy.publish("news", http_response={"action": "hint"})
        self.assertEqual(await started.body(), b"fresh from origin")
        self.assertEqual(len(self.proxy.origin.requests), 2)

    async def test_recover_rerequests_origin(self) -> None:
        """POST /recover (router.recover_all) re-requests every held long-poll."""
        started = await self.held()
        self.proxy.handle(b"/lp", lambda r: b"recovered")
        self.assertEqual(self.proxy.router.recover_all(), 1)
        self.assertEqual(await started.body(), b"recovered")


class StreamTests(TestCase):
    timeout = 15
    def setUp(self) -> None:
        self.clock = task.Clock()
        self.proxy = ProxyHarness(self, clock=self.clock)
        self.proxy.handle(b"/s", stream)

    async def open(self, path: bytes = b"/s", channel: str = "news") -> Started:
        started = Started(self.proxy, path)
        await started.headers_arrived()
        await wait_until(lambda: self.proxy.router.has_subscribers(channel))
        return started

    async def test_content_and_close(self) -> None:
        """Initial body at once, then text and content-bin items, then close ends it."""
        started = await self.open()
        self.assertEqual(started.response.headers.getRawHeaders(b"content-type"),
                         [b"text/event-stream"])
        await wait_until(lambda: started.text() == b"start\n")
        self.proxy.publish("news", http_stream={"content": "one\n"})
        self.proxy.publish("news", http_stream={"content-bin": "dHdvCg=="})
        await wait_until(lambda: started.text() == b"start\none\ntwo\n")
        self.proxy.publish("news", http_stream={"action": "close"})
        self.assertEqual(await started.collect.done, b"start\none\ntwo\n")
        self.assertEqual(self.clock.getDelayedCalls(), [])

    async def test_keep_alive_idle(self) -> None:
        """Keep-alive data after the idle timeout; a publish restarts the timer."""
        started = await self.open()
        self.clock.advance(19)
        self.proxy.publish("news", http_stream={"content": "x\n"})
        self.clock.advance(19)
        await wait_until(lambda: started.text() == b"start\nx\n")
        self.clock.advance(1)
        await wait_until(lambda: started.text() == b"start\nx\nka\n")

    async def test_keep_alive_interval(self) -> None:
        self.proxy.handle(b"/i", lambda r: grip(r, b"", Grip_Hold="stream", Grip_Channel="news",
                                                 Grip_Keep_Alive="k; timeout=10; mode=interval"))
        started = await self.open(b"/i")
        self.clock.advance(9)
        self.proxy.publish("news", http_stream={"content": "x"})
        self.clock.advance(1)
        await wait_until(lambda: started.text() == b"xk")

    async def test_filters_and_meta(self) -> None:
        """Grip-Set-Meta feeds the channel filters: skip-self drops the user's own items,
        var-subst fills in the user's meta."""
        self.proxy.handle(b"/f", lambda r: grip(
            r, b"", Grip_Hold="stream", Grip_Set_Meta="user=alice",
            Grip_Channel="news; filter=skip-self; filter=var-subst"))
        started = await self.open(b"/f")
        self.proxy.publish_item({"channel": "news", "meta": {"sender": "alice"},
                                 "formats": {"http-stream": {"content": "own\n"}}})
        self.proxy.publish_item({"channel": "news", "meta": {"sender": "bob"},
                                 "formats": {"http-stream": {"content": "hi %(user)s\n"}}})
        await wait_until(lambda: started.text() == b"hi alice\n")

    async def test_link_recovery_on_gap_splices_once(self) -> None:
        """A gap in prev-ids makes the proxy GET the Grip-Link with Grip-Last; items that
        arrive meanwhile are spliced after the answer, each exactly once."""
        self.proxy.handle(b"/r", lambda r: grip(
            r, b"", Grip_Hold="stream", Grip_Channel="news; prev-id=1",
            Grip_Link="</r/next>; rel=next; timeout=60"))
        fetches: list[Request] = []

        def next_link(request: Request) -> int:
            fetches.append(request)
            return 1  # NOT_DONE_YET: answered by the test below

        self.proxy.handle(b"/r/next", next_link)
        started = await self.open(b"/r")
        self.proxy.publish_item({"channel": "news", "id": "2", "prev-id": "1",
                                 "formats": {"http-stream": {"content": "2\n"}}})
        await wait_until(lambda: started.text() == b"2\n")
        self.proxy.publish_item({"channel": "news", "id": "4", "prev-id": "3", "no-seq": True,
                                 "formats": {"http-stream": {"content": "4\n"}}})
        await wait_until(lambda: len(fetches) == 1)
        self.assertEqual(fetches[0].requestHeaders.getRawHeaders(b"grip-last"),
                         [b"news; last-id=2"])
        self.proxy.publish_item({"channel": "news", "id": "5", "prev-id": "4",
                                 "formats": {"http-stream": {"content": "5\n"}}})
        answer = fetches[0]
        for name, value in (("Grip-Hold", "stream"), ("Grip-Channel", "news; prev-id=3"),
                            ("Grip-Link", "</r/next>; rel=next")):
            answer.setHeader(name, value)
        answer.write(b"3\n")
        answer.finish()
        await wait_until(lambda: started.text() == b"2\n3\n4\n5\n")

    async def test_link_recovery_when_idle(self) -> None:
        """After the link timeout without items the link is fetched; a plain answer with
        no further link ends the stream."""
        self.proxy.handle(b"/r", lambda r: grip(
            r, b"", Grip_Hold="stream", Grip_Channel="news; prev-id=1",
            Grip_Link="</r/next>; rel=next; timeout=30"))
        self.proxy.handle(b"/r/next", lambda r: b"the end\n")
        started = await self.open(b"/r")
        self.clock.advance(30)
        self.assertEqual(await started.collect.done, b"the end\n")
        self.assertEqual(self.proxy.origin.header(1, "grip-last"), ["news; last-id=1"])

    async def test_grip_link_without_hold_chains(self) -> None:
        """Grip-Link rel=next without a hold: each linked body is appended."""
        self.proxy.handle(b"/a", lambda r: grip(r, b"a\n", Grip_Link="</b>; rel=next"))
        self.proxy.handle(b"/b", lambda r: grip(r, b"b\n", Grip_Link="<c>; rel=next"))
        self.proxy.handle(b"/c", lambda r: b"c\n")
        _response, body = await self.proxy.fetch(b"/a")
        self.assertEqual(body, b"a\nb\nc\n")


class BadInstructionTests(TestCase):
    def setUp(self) -> None:
        self.proxy = ProxyHarness(self, clock=task.Clock())

    async def assert_502(self, handler: Any, reason: str) -> None:
        """The client gets a 502 and the reason is logged."""
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        self.proxy.handle(b"/bad", handler)
        response, body = await self.proxy.fetch(b"/bad")
        self.assertEqual((response.code, body), (502, b"Error while proxying to origin.\n"))
        self.assertEqual(self.proxy.router.subscriber_count(), 0)
        reasons = [e.get("reason", "") for e in events if "proxying" in e.get("log_format", "")]
        self.assertTrue(any(reason in r for r in reasons), reasons)

    async def test_bad_grip_hold(self) -> None:
        await self.assert_502(lambda r: grip(r, Grip_Hold="bogus", Grip_Channel="a"),
                              "Grip-Hold must be response or stream")

    async def test_bad_json(self) -> None:
        await self.assert_502(lambda r: (r.setHeader("Content-Type", "application/grip-instruct"),
                                         b"{nope")[1], "not valid JSON")

    async def test_non_200_instruct(self) -> None:
        def answer(request: Request) -> bytes:
            request.setResponseCode(404)
            request.setHeader("Content-Type", "application/grip-instruct")
            return b"{}"
        await self.assert_502(answer, "status 404")

    async def test_hold_body_too_large(self) -> None:
        await self.assert_502(lambda r: grip(r, b"x" * 200_000, Grip_Hold="response",
                                             Grip_Channel="a"), "larger than 100000 bytes")


class ManySubscribersTests(TestCase):
    timeout = 60

    async def test_500_long_polls_and_500_streams(self) -> None:
        """500 held long-polls and 500 streams each receive exactly one publish."""
        proxy = ProxyHarness(self, clock=task.Clock())
        proxy.handle(b"/lp", long_poll)
        proxy.handle(b"/s", stream)
        polls = [Started(proxy, b"/lp") for _ in range(500)]
        streams = [Started(proxy, b"/s") for _ in range(500)]
        await wait_until(lambda: proxy.router.subscriber_count() == 1000, timeout=30)
        for started in streams:
            await started.headers_arrived()
        proxy.publish_item({"channel": "news", "formats": {
            "http-response": {"body": "lp!"}, "http-stream": {"content": "st!"}}})
        bodies = [await started.body() for started in polls]
        self.assertEqual(set(bodies), {b"lp!"})
        await wait_until(lambda: all(s.text() == b"start\nst!" for s in streams), timeout=30)
        proxy.publish("news", http_stream={"action": "close"})
        for started in streams:
            self.assertEqual(await started.collect.done, b"start\nst!")
        self.assertEqual(proxy.router.deliveries["http-response"], 500)


class HeaderPassingTests(TestCase):
    async def test_client_grip_headers_not_trusted_for_holds(self) -> None:
        """A client-sent Grip-Last is stripped; the origin sees only what the proxy adds."""
        proxy = ProxyHarness(self, clock=task.Clock())
        proxy.handle(b"/", lambda r: b"ok")
        await proxy.fetch(b"/", headers=Headers({"Grip-Last": ["x; last-id=1"]}))
        self.assertIsNone(proxy.origin.header(0, "grip-last"))


class Stalled(Protocol):
    """A stream client that sends its request and then never reads."""

    def __init__(self) -> None:
        self.lost: Deferred[None] = Deferred()

    @override
    def connectionMade(self) -> None:
        self.transport.write(b"GET /s HTTP/1.1\r\nHost: test\r\n\r\n")
        self.transport.pauseProducing()

    @override
    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.lost.callback(None)


class SlowClientTests(TestCase):
    timeout = 30

    async def test_stalled_client_dropped_others_unaffected(self) -> None:
        """A stream client that stops reading is dropped once its queue passes the bound;
        a reading client on the same channel gets every byte."""
        proxy = ProxyHarness(self, clock=task.Clock(), max_client_buffer=64 * 1024)
        proxy.handle(b"/s", stream)
        reader = Started(proxy, b"/s")
        await reader.headers_arrived()
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", proxy.proxy_port.getHost().port)
        stalled = await connectProtocol(endpoint, Stalled())
        await wait_until(lambda: proxy.router.subscriber_count() == 2)
        chunk = "x" * 65536
        sent = 0
        while proxy.router.subscriber_count() == 2:
            self.assertLess(sent, 400, "the stalled client was never dropped")
            proxy.publish("news", http_stream={"content": chunk})
            sent += 1
            await task.deferLater(reactor, 0.001, lambda: None)
        stalled.transport.resumeProducing()  # read again, to see the proxy's reset
        await stalled.lost
        proxy.publish("news", http_stream={"action": "close"})
        self.assertEqual(len(await reader.collect.done), len(b"start\n") + sent * 65536)


class PrefixTests(TestCase):
    async def test_route_prefix_applies_to_channels(self) -> None:
        """A route ``prefix=`` is prepended to the origin's channel names."""
        proxy = ProxyHarness(self, route="*,prefix=app-", clock=task.Clock())
        proxy.handle(b"/lp", long_poll)
        started = Started(proxy, b"/lp")
        await wait_until(lambda: proxy.router.has_subscribers("app-news"))
        self.assertFalse(proxy.router.has_subscribers("news"))
        proxy.publish("app-news", http_response={"body": "prefixed"})
        self.assertEqual(await started.body(), b"prefixed")


class OriginTimeoutTests(TestCase):
    async def test_hanging_origin_502_after_timeout(self) -> None:
        """An origin that never answers gets the client a 502 after origin_timeout; the
        timer is gone afterwards."""
        clock = task.Clock()
        proxy = ProxyHarness(self, clock=clock, settings=ProxySettings(origin_timeout=30))
        proxy.handle(b"/hang", lambda r: NOT_DONE_YET)
        started = Started(proxy, b"/hang")
        await wait_until(lambda: len(proxy.origin.requests) == 1)
        clock.advance(29)
        self.assertEqual(len(clock.getDelayedCalls()), 1)  # still waiting
        clock.advance(1)
        self.assertEqual(await started.body(), b"Error while proxying to origin.\n")
        self.assertEqual(started.response.code, 502)
        self.assertEqual(clock.getDelayedCalls(), [])
