"""GRIP instructions a client's answer cannot be made of, through the real proxy: a reason
phrase or header that would split the head, an interim status, a header Twisted cannot
write. Each is a bad instruction (502) at once, never a hold that ends without an answer;
and whatever goes wrong while a hold is answered, its connection is aborted and its
``client_maxconn`` slot freed (issue 13, items 3 and 6)."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.trial.unittest import TestCase
from twisted.web.server import Request

from fanout_tx.transports.http import hold
from fanout_tx.transports.http.conn_limit import ConnectionLimit
from tests.support.helpers import RawClient, wait_until
from tests.support.proxy_fixtures import Collect, ProxyHarness, grip

BAD_INSTRUCTION = b"Error while proxying to origin.\n"


def instruct(document: dict) -> Any:
    def answer(request: Request) -> bytes:
        request.setHeader("Content-Type", "application/grip-instruct")
        return json.dumps(document).encode()
    return answer


def within(d: Deferred[Any], seconds: float = 3.0) -> Deferred[Any]:
    return d.addTimeout(seconds, reactor)


async def fetch(proxy: ProxyHarness, path: bytes) -> tuple[Any, bytes]:
    response = await within(proxy.request(path))
    collect = Collect()
    response.deliverBody(collect)
    return response, await within(collect.done)


class BadInstructionTests(TestCase):
    async def assert_bad_instruction(self, handler: Any) -> None:
        proxy = ProxyHarness(self)
        proxy.handle(b"/x", handler)
        response, body = await fetch(proxy, b"/x")
        self.assertEqual((response.code, body), (502, BAD_INSTRUCTION))
        self.assertIsNone(response.headers.getRawHeaders(b"set-cookie"))
        self.assertEqual(proxy.router.subscriber_count(), 0)

    async def test_reason_that_splits_the_status_line(self) -> None:
        for reason in ("OK\r\nSet-Cookie: x=1", "OK\nSet-Cookie: x=1", "O\x00K"):
            await self.assert_bad_instruction(instruct(
                {"response": {"reason": reason, "body": "hi"}}))
            await self.assert_bad_instruction(instruct(
                {"hold": {"channels": [{"name": "c"}]}, "response": {"reason": reason}}))

    async def test_grip_status_interim_code(self) -> None:
        """A 1xx as the held answer's status would make its body the client's next answer;
        refused when the instruction comes, not at the timeout."""
        await self.assert_bad_instruction(lambda request: grip(
            request, b"HTTP/1.1 200 OK\r\nX-Injected-By: x\r\nContent-Length: 0\r\n\r\n",
            Grip_Hold="response", Grip_Channel="c", Grip_Status="100 Continue"))
        await self.assert_bad_instruction(instruct({"response": {"code": 101}}))

    async def test_header_that_cannot_be_written(self) -> None:
        """Not an RFC 9110 token as a name, or a control character in a value: today's 502,
        instead of a hold whose timeout or publish raises."""
        for pair in (["X(Y", "1"], ["X-A", "a\u0000b"], ["X A", "1"], ["X-A", "a\rb"]):
            await self.assert_bad_instruction(instruct(
                {"hold": {"channels": [{"name": "c"}]}, "response": {"headers": [pair]}}))

    async def test_channel_with_control_characters(self) -> None:
        """Channel names and prev-ids go back to the origin in Grip-Last headers."""
        for channel in ({"name": "a\r\nX-Evil: 1"}, {"name": "a", "prev-id": "1\n2"}):
            await self.assert_bad_instruction(instruct({"hold": {"channels": [channel]}}))


class AnsweringFailureTests(TestCase):
    async def test_failure_while_answering_aborts_and_frees_the_slot(self) -> None:
        """Whatever raises while a held long-poll is answered (here: the publish path), the
        client's connection is aborted, logged, and with ``client_maxconn = 1`` the next
        client gets in."""
        proxy = ProxyHarness(self)
        limit = ConnectionLimit(1)
        limit.add_port(proxy.proxy_port)
        proxy.proxy_factory.wrappedFactory.connection_limit = limit
        proxy.handle(b"/lp", lambda request: grip(request, Grip_Hold="response",
                                                  Grip_Channel="c"))
        proxy.handle(b"/plain", lambda request: b"plain")

        def broken(*_args: Any) -> None:
            raise RuntimeError("cannot write this answer")

        self.patch(hold, "write_response", broken)
        client = RawClient()
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", proxy.proxy_port.getHost().port)
        await within(connectProtocol(endpoint, client))
        self.addCleanup(client.transport.abortConnection)
        client.transport.write(b"GET /lp HTTP/1.1\r\nHost: x\r\n\r\n")
        await wait_until(lambda: proxy.router.has_subscribers("c"), timeout=3)
        proxy.publish("c", http_response={"body": "done"})
        await wait_until(lambda: client.closed.called, timeout=3)  # closed by the proxy
        self.assertEqual(client.data, b"")
        await wait_until(lambda: limit.open == 0, timeout=3)
        response, body = await fetch(proxy, b"/plain")
        self.assertEqual((response.code, body), (200, b"plain"))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
