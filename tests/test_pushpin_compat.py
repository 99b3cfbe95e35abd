"""Issue #18: what real GRIP stacks do that Pushpin accepts, over real sockets to the whole
service tree (tap.build_service) on loopback."""

from __future__ import annotations

import zmq
from twisted.trial.unittest import TestCase

from fanout_tx import tnetstring
from tests.helpers import wait_until
from tests.ops_fixtures import Server


def zmq_peer(test: TestCase, socket_type: int, endpoint: str) -> zmq.Socket:
    sock = zmq.Context.instance().socket(socket_type)
    sock.setsockopt(zmq.LINGER, 0)
    test.addCleanup(sock.close)
    sock.connect(endpoint)
    return sock


RAW = b"\x00\xff\xfe binary"


class PublishFormatTests(TestCase):
    timeout = 20

    async def test_close_with_empty_content_ends_the_stream(self) -> None:
        """The npm HttpStreamFormat(null, true) sends content with action close: accepted
        (content ignored, as Pushpin), and the held stream ends."""
        server = await Server(self).start()
        client = await server.raw("/stream")
        await server.held(1)
        await server.publish(**{"http-stream": {"action": "close", "content": ""}})
        await wait_until(lambda: client.data.endswith(b"\r\n0\r\n\r\n"))
        self.assertIn(b"stream open\n", client.data)
        await server.held(0)

    async def test_hint_ignores_send_only_fields(self) -> None:
        """A hint with content, filters or a body is accepted in every format."""
        server = await Server(self).start()
        code, body = await server.post_json("/publish/", {"items": [{"channel": "room", "formats": {
            "http-stream": {"action": "hint", "content": 5, "content-filters": "x"},
            "http-response": {"action": "hint", "body": 7, "code": "x"},
            "ws-message": {"action": "hint", "content": 1}}}]})
        self.assertEqual((code, body), (200, b"Published\n"))

    async def _binary_over_zmq(self, input_name: str, socket_type: int,
                               parts: list[bytes]) -> None:
        server = await Server(self).start()
        side = await server.websocket()
        [endpoint] = server.root.getServiceNamed(input_name).endpoints
        sock = zmq_peer(self, socket_type, endpoint)

        def delivered() -> bool:
            # A PUB drops what it sends before the SUB's subscription reached it: repeat.
            if len(side.messages) < 2:
                sock.send_multipart(parts)
            return len(side.messages) >= 2

        await wait_until(delivered, interval=0.1)
        self.assertEqual(side.messages[1], (RAW, True))
        side.client.sendClose(1000)
        await side.closed

    async def test_tnetstring_content_bin_is_raw_on_pull(self) -> None:
        """A tnetstring ws-message's content-bin is the bytes themselves (as Pushpin), not
        base64 and not refused as "not UTF-8"."""
        item = {"channel": "room", "formats": {"ws-message": {"content-bin": RAW}}}
        await self._binary_over_zmq("zmq-pull", zmq.PUSH, [tnetstring.dumps(item)])

    async def test_tnetstring_content_bin_is_raw_on_sub(self) -> None:
        """The same through the SUB input ([channel, payload])."""
        item = {"formats": {"ws-message": {"content-bin": RAW}}}
        await self._binary_over_zmq("zmq-sub", zmq.PUB, [b"room", b"T" + tnetstring.dumps(item)])
