"""Trusted clients (``[proxy] upstream_key``): a GRIP proxy in front of this one, recognised by
its Grip-Sig, as Pushpin does it. Real client -> proxy (-> proxy) -> origin on loopback."""

from __future__ import annotations

from twisted.internet import reactor
from twisted.trial.unittest import TestCase
from twisted.web.http_headers import Headers

from fanout_tx.grip.signature import encode_hs256, verify_hs256
from fanout_tx.outbound.origin import ProxySettings
from tests.support.helpers import wait_until
from tests.support.proxy_fixtures import Collect, ProxyHarness, grip

UPSTREAM = b"upstream secret"
SETTINGS = ProxySettings(upstream_key=UPSTREAM, sig_key=b"own key",
                         x_forwarded_for=("truncate:0", "append"),
                         x_forwarded_for_trusted=("append",))


def signed(key: bytes = UPSTREAM, lifetime: int = 3600) -> Headers:
    token = encode_hs256({"iss": "front", "exp": int(reactor.seconds()) + lifetime}, key)
    return Headers({"Grip-Sig": [token], "Grip-Last": ["c; last-id=7"],
                    "X-Forwarded-For": ["203.0.113.9"]})


def held(request: object) -> bytes:
    return grip(request, b"[opened]\n", Grip_Hold="stream", Grip_Channel="news")


class TrustedClientTests(TestCase):
    async def test_trusted_client_request_headers(self) -> None:
        """A valid Grip-Sig: the client's Grip-* reach the origin, no Grip-Sig or
        Grip-Feature of our own, and ``x_forwarded_for_trusted`` applies."""
        proxy = ProxyHarness(self, settings=SETTINGS)
        proxy.handle(b"/h", lambda r: b"ok")
        headers = signed()  # one token: two signed at different seconds differ in exp
        await proxy.fetch(b"/h", headers=headers)
        origin = proxy.origin
        self.assertEqual(origin.header(0, "grip-sig"), headers.getRawHeaders("grip-sig"))
        self.assertEqual(origin.header(0, "grip-last"), ["c; last-id=7"])
        self.assertIsNone(origin.header(0, "grip-feature"))
        self.assertEqual(origin.header(0, "x-forwarded-for"), ["203.0.113.9, 127.0.0.1"])

    async def test_trusted_client_gets_instructions_unprocessed(self) -> None:
        """The origin's GRIP instruction goes back as it is, for the front proxy to hold."""
        proxy = ProxyHarness(self, settings=SETTINGS)
        proxy.handle(b"/s", held)
        response, body = await proxy.fetch(b"/s", headers=signed())
        self.assertEqual(body, b"[opened]\n")
        self.assertEqual(response.headers.getRawHeaders(b"grip-hold"), [b"stream"])
        self.assertEqual(response.headers.getRawHeaders(b"grip-channel"), [b"news"])

    async def test_untrusted_signatures(self) -> None:
        """Wrong key, expired, or garbage: an ordinary client (Grip-* stripped, own
        signature, ``x_forwarded_for``), and its request is held here."""
        proxy = ProxyHarness(self, settings=SETTINGS)
        proxy.handle(b"/h", lambda r: b"ok")
        for headers in (signed(b"wrong key"), signed(lifetime=-10),
                        Headers({"Grip-Sig": ["not.a.jwt"]})):
            await proxy.fetch(b"/h", headers=headers)
        for index in range(3):
            self.assertIsNone(proxy.origin.header(index, "grip-last"))
            self.assertIn("link:next", proxy.origin.header(index, "grip-feature")[0])
            self.assertNotEqual(proxy.origin.header(index, "grip-sig"),
                                signed().getRawHeaders("grip-sig"))
            self.assertEqual(proxy.origin.header(index, "x-forwarded-for"), ["127.0.0.1"])
        proxy.handle(b"/s", held)
        response = await proxy.request(b"/s", headers=signed(b"wrong key"))
        self.assertIsNone(response.headers.getRawHeaders(b"grip-hold"))
        collect = Collect()
        response.deliverBody(collect)
        await wait_until(lambda: collect.chunks == [b"[opened]\n"])
        proxy.publish("news", http_stream={"content": "item\n"})
        await wait_until(lambda: b"".join(collect.chunks) == b"[opened]\nitem\n")
        proxy.publish("news", http_stream={"action": "close"})
        await collect.done

    async def test_chained_proxies(self) -> None:
        """front proxy (signs with K) -> back proxy (upstream_key K) -> origin: the back one
        passes the stream instruction through, the front one holds the client and delivers
        what is published to it."""
        back = ProxyHarness(self, settings=ProxySettings(upstream_key=b"K"))
        back.handle(b"/s", held)
        front = ProxyHarness(self, settings=ProxySettings(sig_key=b"K", sig_iss="front"))
        front.set_routes(f"* 127.0.0.1:{back.proxy_port.getHost().port}")
        response = await front.request(b"/s")
        self.assertIsNone(response.headers.getRawHeaders(b"grip-hold"))
        collect = Collect()
        response.deliverBody(collect)
        await wait_until(lambda: collect.chunks == [b"[opened]\n"])
        [token] = back.origin.header(0, "grip-sig")
        self.assertEqual(verify_hs256(token, b"K", reactor.seconds())["iss"], "front")
        self.assertIsNotNone(back.origin.header(0, "grip-feature"))  # the front one's
        front.publish("news", http_stream={"content": "via front\n"})
        back.publish("news", http_stream={"content": "never: back holds nothing\n"})
        front.publish("news", http_stream={"action": "close"})
        self.assertEqual(await collect.done, b"[opened]\nvia front\n")

    async def test_websocket_events_only_from_trusted_clients(self) -> None:
        """As Pushpin: a client may not post websocket-events to an ``over_http`` target
        (it would speak for a WebSocket connection); a trusted proxy may."""
        proxy = ProxyHarness(self, settings=SETTINGS, target_options=",over_http")
        proxy.handle(b"/ws", lambda r: b"")
        events = Headers({"Content-Type": ["application/websocket-events; charset=utf-8"]})
        response, body = await proxy.fetch(b"/ws", method=b"POST", headers=events)
        self.assertEqual((response.code, body),
                         (403, b"Client not allowed to send WebSocket events directly.\n"))
        self.assertEqual(proxy.origin.requests, [])
        trusted = signed()
        trusted.setRawHeaders("Content-Type", ["application/websocket-events"])
        response, _body = await proxy.fetch(b"/ws", method=b"POST", headers=trusted)
        self.assertEqual(response.code, 200)
        self.assertEqual(len(proxy.origin.requests), 1)
