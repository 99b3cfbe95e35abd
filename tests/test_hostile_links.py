"""Grip-Link fetches (issue 13 item 5): a link carries ``Grip-Last`` and nothing of the
client's, is signed only towards the route's own targets, and a link to another host:port is
refused unless the route says ``link_any_host``.

Real sockets: client -> proxy -> origin, and a second origin on another port standing for
the foreign host; it records every request it gets.
"""

from __future__ import annotations

from twisted.internet import task
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import TestCase
from twisted.web.client import ResponseFailed, ResponseNeverReceived
from twisted.web.http_headers import Headers

from fanout_tx.config.routes import parse_route_line
from fanout_tx.outbound.origin import ProxySettings, link_target
from tests.support.helpers import wait_until
from tests.support.proxy_fixtures import Collect, ProxyHarness, grip, origin_on_loopback

SECRETS = Headers({b"Cookie": [b"session=s3cret"], b"Authorization": [b"Bearer t0ken"]})
KEY = b"route-key"


class LinkTests(TestCase):
    def proxy(self, route: str = "*") -> ProxyHarness:
        self.clock = task.Clock()
        # made first, so it is stopped after the proxy's origin pools have closed
        self.foreign, port = origin_on_loopback(self, {b"/next": lambda r: b"foreign end\n"})
        self.foreign_url = f"http://127.0.0.1:{port}/next"
        return ProxyHarness(self, route=route, clock=self.clock,
                            settings=ProxySettings(sig_key=KEY))

    async def stream_with_link(self, proxy: ProxyHarness, link: str) -> Collect:
        """A stream whose Grip-Link is ``link``; the link's idle timeout (30 s) is passed."""
        proxy.handle(b"/s", lambda r: grip(
            r, b"", Grip_Hold="stream", Grip_Channel="news; prev-id=1",
            Grip_Link=f"<{link}>; rel=next; timeout=30"))
        response = await proxy.request(b"/s", headers=SECRETS)
        collect = Collect()
        response.deliverBody(collect)
        proxy.bodies.append(collect.done)
        await wait_until(lambda: proxy.router.has_subscribers("news"))
        self.clock.advance(30)
        return collect

    def assert_no_client_secrets(self, headers: Headers) -> None:
        for name in (b"cookie", b"authorization"):
            self.assertIsNone(headers.getRawHeaders(name), name)

    async def test_link_to_foreign_host_refused_and_logged(self) -> None:
        """The foreign origin never hears of the client; the stream goes on as after a
        failed recovery, and the refusal is logged with the host:port."""
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        proxy = self.proxy()
        collect = await self.stream_with_link(proxy, self.foreign_url)
        await wait_until(lambda: any("refused" in e.get("reason", "") for e in events))
        self.assertEqual(self.foreign.requests, [])
        proxy.publish("news", http_stream={"content": "still here\n"})
        await wait_until(lambda: b"".join(collect.chunks) == b"still here\n")

    async def test_link_to_foreign_host_allowed_carries_grip_last_only(self) -> None:
        """With ``link_any_host`` the foreign host gets Grip-Last, its own Host, and no
        Cookie, Authorization, Grip-Sig or client Host."""
        proxy = self.proxy("*,link_any_host")
        collect = await self.stream_with_link(proxy, self.foreign_url)
        self.assertEqual(await collect.done, b"foreign end\n")
        headers = self.foreign.requests[0].requestHeaders
        self.assert_no_client_secrets(headers)
        self.assertIsNone(headers.getRawHeaders(b"grip-sig"))
        self.assertEqual(headers.getRawHeaders(b"grip-last"), [b"news; last-id=1"])
        self.assertEqual(headers.getRawHeaders(b"host"),
                         [self.foreign_url.split("/")[2].encode()])

    async def test_link_to_own_target_is_signed_without_client_credentials(self) -> None:
        """A relative link goes to the route's target: signed, with Grip-Last, but the
        client's Cookie and Authorization stay behind."""
        proxy = self.proxy()
        proxy.handle(b"/next", lambda r: b"own end\n")
        collect = await self.stream_with_link(proxy, "/next")
        self.assertEqual(await collect.done, b"own end\n")
        self.assertIsNotNone(proxy.origin.header(0, "cookie"))  # the client's own request
        fetch = proxy.origin.requests[1].requestHeaders
        self.assert_no_client_secrets(fetch)
        self.assertEqual(len(fetch.getRawHeaders(b"grip-sig") or []), 1)
        self.assertEqual(fetch.getRawHeaders(b"grip-last"), [b"news; last-id=1"])

    async def test_chained_link_to_foreign_host_refused(self) -> None:
        """A Grip-Link on a plain answer (no hold) to a foreign host is not followed: the
        client's response is cut short and the foreign host gets nothing."""
        proxy = self.proxy()
        proxy.handle(b"/a", lambda r: grip(r, b"a\n", Grip_Link=f"<{self.foreign_url}>; rel=next"))
        # cut short: before or after the head arrived
        with self.assertRaises((ResponseFailed, ResponseNeverReceived)):
            await proxy.fetch(b"/a", headers=SECRETS)
        self.assertEqual(self.foreign.requests, [])


class LinkTargetTests(TestCase):
    def test_scheme_host_and_port_must_all_match(self) -> None:
        route = parse_route_line("* Example.com:80 127.0.0.1:8443,ssl", 1)
        self.assertEqual(link_target("http://example.COM/x", route), route.targets[0])
        self.assertEqual(link_target("https://127.0.0.1:8443/x", route), route.targets[1])
        for url in ("http://127.0.0.1:8443/x", "https://example.com/x",
                    "http://example.com:81/", "http://evil.example/", "http://[::1]:80/",
                    "http://example.com:bad/", "ftp://example.com:80/"):
            self.assertIsNone(link_target(url, route), url)
