"""The client port's channel (transports/http/server_channel.py) in memory: pipelined
requests answered in order, reading paused while too many wait, ``Expect: 100-continue``
never inside another answer, HEAD and chunked answers, keep-alive and close."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.server import NOT_DONE_YET

from fanout_tx.transports.http.server_channel import (
    MAX_WAITING,
    HttpServerChannel,
    HttpServerFactory,
    ServerRequest,
)


class Held:
    """Answers ``/now`` at once (its path as the body); holds everything else."""

    def __init__(self) -> None:
        self.held: list[ServerRequest] = []

    def render(self, request: ServerRequest) -> bytes | int:
        if request.path == b"/now":
            return request.uri
        self.held.append(request)
        return NOT_DONE_YET


def connect() -> tuple[HttpServerChannel, StringTransport, Held]:
    resource = Held()
    channel = HttpServerFactory(resource, Clock(), access_log=False).buildProtocol(None)
    transport = StringTransport()
    channel.makeConnection(transport)
    return channel, transport, resource


def get(path: bytes, *headers: bytes) -> bytes:
    return b"GET %b HTTP/1.1\r\nHost: x\r\n%b\r\n" % (path, b"".join(h + b"\r\n" for h in headers))


class PipeliningTests(SynchronousTestCase):
    def test_answers_in_order(self) -> None:
        channel, transport, resource = connect()
        channel.dataReceived(get(b"/held") + get(b"/now?1") + get(b"/now?2"))
        self.assertEqual(transport.value(), b"")  # the first is not answered yet
        held = resource.held[0]
        held.write(b"first")
        held.finish()
        answers = transport.value().split(b"HTTP/1.1 200 OK\r\n")[1:]
        self.assertEqual(len(answers), 3)
        self.assertIn(b"first", answers[0])
        self.assertTrue(answers[1].endswith(b"/now?1"))
        self.assertTrue(answers[2].endswith(b"/now?2"))

    def test_reading_pauses_while_too_many_wait(self) -> None:
        channel, transport, resource = connect()
        channel.dataReceived(get(b"/held") + get(b"/now") * MAX_WAITING)
        self.assertEqual(transport.producerState, "paused")
        resource.held[0].finish()
        self.assertEqual(transport.producerState, "producing")
        self.assertEqual(transport.value().count(b"HTTP/1.1 200 OK"), MAX_WAITING + 1)

    def test_continue_waits_for_the_answer_before(self) -> None:
        """A pipelined ``Expect: 100-continue`` gets its 100 after the answer ahead of it,
        never inside it."""
        channel, transport, resource = connect()
        channel.dataReceived(get(b"/held") + b"POST /now HTTP/1.1\r\nHost: x\r\n"
                             b"Content-Length: 2\r\nExpect: 100-continue\r\n\r\n")
        self.assertEqual(transport.value(), b"")
        resource.held[0].finish()
        self.assertTrue(transport.value().endswith(b"HTTP/1.1 100 Continue\r\n\r\n"))
        channel.dataReceived(b"ok")
        self.assertTrue(transport.value().endswith(b"/now"))


class AnswerTests(SynchronousTestCase):
    def test_no_length_is_chunked_and_head_has_no_body(self) -> None:
        channel, transport, resource = connect()
        channel.dataReceived(get(b"/held") + b"HEAD /held HTTP/1.1\r\nHost: x\r\n\r\n")
        first = resource.held[0]
        first.write(b"abc")
        first.finish()
        second = resource.held[1]
        second.write(b"not sent")
        second.finish()
        one, two = transport.value().split(b"HTTP/1.1 200 OK\r\n")[1:]
        self.assertEqual(one, b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
        self.assertEqual(two, b"\r\n")
        self.assertFalse(transport.disconnecting)

    def test_connection_close_and_http_1_0_end_the_connection(self) -> None:
        for request in (get(b"/now", b"Connection: close") + get(b"/now?ignored"),
                        b"GET /now HTTP/1.0\r\n\r\n"):
            channel, transport, _resource = connect()
            channel.dataReceived(request)
            self.assertEqual(transport.value().count(b" 200 OK\r\n"), 1)
            self.assertIn(b"\r\nConnection: close\r\n", transport.value())
            self.assertTrue(transport.disconnecting)

    def test_star(self) -> None:
        channel, transport, _resource = connect()
        channel.dataReceived(b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n"
                             b"GET * HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual(transport.value(),
                         b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
                         b"HTTP/1.1 405 Method Not Allowed\r\nAllow: OPTIONS\r\n"
                         b"Content-Length: 0\r\n\r\n")
