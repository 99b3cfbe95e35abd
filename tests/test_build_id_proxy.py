"""build-id end to end: a real HTTP client, the proxy and an origin on 127.0.0.1 sockets.

The expected bytes are what Debian's pushpin 1.36 sends for the same origin answers and
publishes (checked by hand against a private instance): the prev ids advance with each
item before it is rendered (1_7 -> 2_7 -> 2_8 -> 3_8), and the origin's own body sees no
prev ids (a bare ``%I`` there ends the stream).
"""

from __future__ import annotations

from typing import Any

from twisted.internet import task
from twisted.trial.unittest import TestCase
from twisted.web.server import Request

from tests.support.helpers import wait_until
from tests.support.proxy_fixtures import Collect, ProxyHarness, grip


def sse_origin(body: bytes) -> Any:
    def answer(request: Request) -> bytes:
        request.setHeader("Content-Type", "text/event-stream")
        request.responseHeaders.addRawHeader("Grip-Channel", "a; prev-id=1; filter=build-id")
        request.responseHeaders.addRawHeader("Grip-Channel", "b; prev-id=7; filter=build-id")
        return grip(request, body, Grip_Hold="stream", Grip_Set_Meta="id_format=%(a)s_%(b)s",
                    Grip_Link="</s/next>; rel=next; timeout=120")
    return answer


class BuildIdProxyTests(TestCase):
    timeout = 15

    def setUp(self) -> None:
        self.clock = task.Clock()  # the hold's keep-alive and link timers never fire
        self.proxy = ProxyHarness(self, clock=self.clock)

    async def open(self, body: bytes) -> tuple[Any, Collect]:
        self.proxy.handle(b"/s", sse_origin(body))
        response = await self.proxy.request(b"/s")
        collect = Collect()
        response.deliverBody(collect)
        self.proxy.bodies.append(collect.done)
        return response, collect

    def publish(self, channel: str, item_id: str, prev_id: str) -> None:
        self.proxy.publish_item({"channel": channel, "id": item_id, "prev-id": prev_id,
                                 "formats": {"http-stream": {"content": "id: %I\n\n"}}})

    async def test_composite_id_advances(self) -> None:
        response, collect = await self.open(b": 100%% ready %(none)I\n\n")
        self.assertEqual(response.code, 200)
        self.assertIn("filter:build-id", self.proxy.origin.header(0, "grip-feature")[0])
        await wait_until(lambda: self.proxy.router.has_subscribers("b"))
        sent = [b": 100% ready none\n\n"]
        for channel, item_id, prev_id, composite in (
            ("a", "2", "1", b"2_7"), ("b", "8", "7", b"2_8"), ("a", "3", "2", b"3_8"),
        ):
            self.publish(channel, item_id, prev_id)
            sent.append(b"id: %s\n\n" % composite)
            await wait_until(lambda: b"".join(collect.chunks) == b"".join(sent))
        # On a prev-id channel the close too must follow the last id (as Pushpin).
        self.proxy.publish_item({"channel": "a", "prev-id": "3",
                                 "formats": {"http-stream": {"action": "close"}}})
        self.assertEqual(await collect.done, b"".join(sent))
        self.assertEqual(len(self.proxy.origin.requests), 1)  # no gap, no recovery

    async def test_bare_id_in_the_origin_body_ends_the_stream(self) -> None:
        response, collect = await self.open(b"id: %I\n\n")
        self.assertEqual(response.code, 200)
        self.assertEqual(await collect.done, b"")
        self.assertEqual(self.proxy.router.subscriber_count(), 0)
