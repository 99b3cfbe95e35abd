"""A lean HTTP/1.1 client for the GRIP proxy's requests to origins.

twisted.web.client.Agent cost about 40 % of a proxied request's CPU (URI objects, a pool
keyed per call, a line-by-line response parser, several Deferred hops per request). This
client does what the proxy needs and no more: persistent connections per origin; request
bodies from an ``IBodyProducer`` (``Content-Length`` or chunked, the producer paused while
the socket is full); answers parsed by llhttp (``response_parser.py``, which also finds where
each ends, for the pool); bodies handed to an ``IProtocol`` that can pause, resume or stop
the connection. Answers carry the ``IResponse`` attributes the proxy reads (``code``,
``phrase``, ``headers``, ``length``, ``deliverBody``) with the same meaning as Agent's:
connection-control headers are kept out of ``headers`` and ``length`` is the body's length
when it is known.

One client is one trust policy: the proxy keeps verified and ``insecure`` TLS connections in
different clients, so a connection made without checks is never reused for a route that
asks for them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple, cast

from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.error import ConnectionAborted, ConnectionDone
from twisted.internet.interfaces import (
    IAddress,
    IConsumer,
    IProducer,
    IProtocol,
    IPushProducer,
    IReactorTime,
)
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone, ResponseFailed, ResponseNeverReceived
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IAgent, IAgentEndpointFactory, IBodyProducer
from typing_extensions import override
from zope.interface import implementer

from fanout_tx._transport import StreamTransport, stream_transport
from fanout_tx._twisted import release_client_connection, send_directly
from fanout_tx.outbound.deadline_set import DeadlineSet
from fanout_tx.outbound.response_parser import CLOSE, BadResponseError, ResponseParser
from fanout_tx.outbound.tcp_options import no_delay, quick_ack, unread_input

__all__ = ["BadResponseError", "OriginClient", "OriginResponse", "split_url"]

_HELD_BODY = 64 * 1024  # body bytes kept before deliverBody; past this reading pauses
_IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"DELETE", b"TRACE"})


class OriginAddress(NamedTuple):
    """What an ``IAgentEndpointFactory`` reads of a URI (Agent passes a ``URI``)."""

    scheme: bytes
    host: bytes
    port: int


def split_url(url: bytes) -> tuple[OriginAddress, bytes, bytes]:
    """``http://host:port/path?q`` -> (address, ``Host`` value, request target)."""
    scheme, sep, rest = url.partition(b"://")
    if not sep or scheme not in (b"http", b"https"):
        raise ValueError(f"not an http(s) URL: {url!r}")
    cut = min((i for i in (rest.find(b"/"), rest.find(b"?")) if i >= 0), default=len(rest))
    authority, target = rest[:cut], rest[cut:]
    if not target.startswith(b"/"):
        target = b"/" + target
    if authority.startswith(b"["):
        host, _bracket, port_text = authority[1:].partition(b"]")
        port_text = port_text[1:]
    else:
        host, _colon, port_text = authority.partition(b":")
    port = int(port_text) if port_text else (443 if scheme == b"https" else 80)
    return OriginAddress(scheme, host, port), authority, target


class OriginResponse:
    """An origin's answer; its body goes to the protocol given to ``deliverBody``."""

    def __init__(self, exchange: _Exchange, version: bytes, code: int, phrase: bytes,
                 headers: Headers, length: int | object) -> None:
        self._exchange = exchange
        self.version = version
        self.code = code
        self.phrase = phrase
        self.headers = headers
        self.length = length

    def deliverBody(self, protocol: IProtocol) -> None:  # noqa: N802 - IResponse's name
        self._exchange.deliver_body(protocol)


@implementer(IPushProducer)
class _BodyTransport:
    """What a body's reader sees as its transport: flow control on the origin connection,
    detached once the body has ended (the connection may serve someone else by then)."""

    def __init__(self, connection: OriginConnection | None) -> None:
        self.connection = connection
        self.paused = False

    def pauseProducing(self) -> None:  # noqa: N802
        self.paused = True
        if self.connection is not None:
            self.connection.pause_body()

    def resumeProducing(self) -> None:  # noqa: N802
        self.paused = False
        if self.connection is not None:
            self.connection.resume_body()

    def stopProducing(self) -> None:  # noqa: N802
        if self.connection is not None:
            self.connection.stop_body()


@implementer(IConsumer)
class _ChunkedWriter:
    """The consumer a body of unknown length writes to: each write becomes one chunk."""

    def __init__(self, transport: StreamTransport) -> None:
        self._transport = transport

    def write(self, data: bytes) -> None:
        if data:
            self._transport.write(b"%x\r\n%b\r\n" % (len(data), data))

    def registerProducer(self, producer: IProducer, streaming: bool) -> None:  # noqa: N802
        self._transport.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:  # noqa: N802
        self._transport.unregisterProducer()


class _Exchange:
    """One request, its answer, and the answer's body on its way to a reader."""

    def __init__(self, method: bytes, head: bytes, body: IBodyProducer | None,
                 answer: Deferred[OriginResponse]) -> None:
        self.method = method
        self.head = head
        self.body = body
        self.answer = answer
        self.producing = False  # the request body is being written
        self.cancelled = False
        self.connecting: Deferred[OriginConnection] | None = None
        self.connection: OriginConnection | None = None
        self.endpoints: IAgentEndpointFactory | None = None  # for a new connection
        self.reader: IProtocol | None = None  # the protocol given to deliverBody
        self.reader_transport: _BodyTransport | None = None
        self.held: list[bytes] = []  # body bytes that came before deliverBody
        self.held_size = 0
        self.held_paused = False  # reading paused because too much was held
        self.ended: Failure | None = None  # how the body ended, if before deliverBody

    def body_data(self, data: bytes) -> None:
        if self.reader is not None:
            self.reader.dataReceived(data)
            return
        self.held.append(data)
        self.held_size += len(data)
        if self.held_size > _HELD_BODY and self.connection is not None:
            self.held_paused = True
            self.connection.pause_body()

    def body_ended(self, reason: Failure) -> None:
        if self.reader_transport is not None:
            self.reader_transport.connection = None
        reader, self.reader = self.reader, None
        if reader is not None:
            reader.connectionLost(reason)
        else:
            self.ended = reason

    def deliver_body(self, protocol: IProtocol) -> None:
        connection = self.connection if self.ended is None else None
        transport = _BodyTransport(connection)
        # The reader's transport is a producer, as with twisted.web's own responses
        protocol.makeConnection(transport)  # type: ignore[arg-type]
        held, self.held, self.held_size = self.held, [], 0
        for data in held:
            protocol.dataReceived(data)
        if self.ended is not None:
            transport.connection = None
            ended, self.ended = self.ended, None
            protocol.connectionLost(ended)
            return
        self.reader, self.reader_transport = protocol, transport
        if self.held_paused:
            self.held_paused = False
            if not transport.paused and connection is not None:
                connection.resume_body()


class OriginConnection(Protocol):
    """One persistent connection to an origin, one exchange at a time."""

    _log = Logger()

    def __init__(self, client: OriginClient, address: OriginAddress) -> None:
        self._client = client
        self.address = address
        self.reused = False  # taken from the idle pool at least once
        self._exchange: _Exchange | None = None
        self._answer = ResponseParser(self)
        self._buffer = b""  # bytes not parsed yet, while the body's reader has paused us
        self._state = "idle"  # idle | busy (an exchange is on) | done | stopped
        self._reusable = True
        self._feeding = False  # inside the parser: a resume must not feed it again
        self.paused = False  # reading paused by the body's reader (AnswerSink.paused)
        self._received_any = False
        self._quick_ack: Callable[[], None] | None = None
        self.closed: Deferred[None] = Deferred()  # fires when the connection has closed

    @override
    def connectionMade(self) -> None:
        no_delay(self.transport)
        self._quick_ack = quick_ack(self.transport)

    # -- sending ----------------------------------------------------------------------------

    def send(self, exchange: _Exchange) -> None:
        self._exchange = exchange
        exchange.connection = self
        self._state = "busy"
        self._answer.begin(exchange.method)
        self._reusable = True
        self._received_any = False
        body = exchange.body
        transport = stream_transport(self)
        if body is None:
            self._write_head(exchange.head + b"\r\n")
            return
        consumer: IConsumer
        if body.length is UNKNOWN_LENGTH:
            self._write_head(exchange.head + b"Transfer-Encoding: chunked\r\n\r\n")
            consumer = _ChunkedWriter(transport)
        else:
            self._write_head(exchange.head + b"Content-Length: %d\r\n\r\n" % body.length)
            consumer = cast(IConsumer, transport)  # a stream transport consumes its writes
        exchange.producing = True
        transport.registerProducer(body, True)
        produced = body.startProducing(consumer)
        produced.addCallbacks(self._body_done, self._body_failed,
                              callbackArgs=(exchange, consumer), errbackArgs=(exchange,))

    def _write_head(self, head: bytes) -> None:
        """To the kernel at once when nothing is queued ahead (one ``send``, where the
        transport's own write costs two ``epoll_ctl`` and a reactor turn), else queued."""
        if rest := send_directly(self.transport, head):
            stream_transport(self).write(rest)

    def _body_done(self, _result: object, exchange: _Exchange, consumer: IConsumer) -> None:
        if exchange is not self._exchange or not exchange.producing:
            return
        exchange.producing = False
        stream_transport(self).unregisterProducer()
        if isinstance(consumer, _ChunkedWriter):
            stream_transport(self).write(b"0\r\n\r\n")

    def _body_failed(self, failure: Failure, exchange: _Exchange) -> None:
        if exchange is not self._exchange or not exchange.producing:
            return
        exchange.producing = False
        stream_transport(self).unregisterProducer()
        self._reusable = False
        if not exchange.answer.called:
            exchange.answer.errback(failure)
        stream_transport(self).abortConnection()

    def _stop_body_producer(self) -> None:
        exchange = self._exchange
        if exchange is not None and exchange.producing:
            exchange.producing = False
            self._reusable = False
            stream_transport(self).unregisterProducer()
            exchange.body.stopProducing()  # type: ignore[union-attr]

    def cancel(self, exchange: _Exchange) -> None:
        if exchange is self._exchange:
            self._reusable = False
            self._stop_body_producer()
            stream_transport(self).abortConnection()

    # -- receiving --------------------------------------------------------------------------

    @override
    def dataReceived(self, data: bytes) -> None:
        self._received_any = True
        if self._buffer:
            data, self._buffer = self._buffer + data, b""
        exchange = self._exchange
        self._consume(data)
        if self._quick_ack is not None and self._state == "busy" and self._exchange is exchange:
            # More of this answer is to come: acknowledge what came at once (the ACK
            # still pending is sent then). An answer read whole needs no setsockopt.
            self._quick_ack()

    def _consume(self, data: bytes) -> None:
        """Parse as far as the answer goes; stop at its end, or while the body's reader has
        paused us (the rest waits in ``_buffer``)."""
        if self._state != "busy":  # idle, done or stopped: bytes nobody asked for
            self._reusable = False
            self._client.forget(self)  # before anyone else can take it from the pool
            self.stray_bytes(len(data))
            return
        answer = self._answer
        self._feeding = True
        try:
            used = answer.feed(data)
        except BadResponseError as error:
            self._fail_exchange(Failure(error))
            return
        finally:
            self._feeding = False
        if self._state != "busy":
            return  # stopped by the body's reader meanwhile
        if answer.done:
            self._end(len(data) - used, answer.overrun)
        elif used < len(data):
            self._buffer = data[used:]

    # -- what the parser found (AnswerSink) ---------------------------------------------------

    def answer_head(self, version: bytes, code: int, phrase: bytes, headers: Headers,
                    length: int | object) -> None:
        exchange: _Exchange = self._exchange  # type: ignore[assignment]
        exchange.answer.callback(OriginResponse(exchange, version, code, phrase, headers, length))

    def answer_body(self, data: bytes) -> None:
        self._exchange.body_data(data)  # type: ignore[union-attr]

    def _end(self, extra: int, overrun: bool) -> None:
        """The answer is complete: the connection goes back to the pool (or is closed:
        bytes after the answer, or a request body still being sent, leave it out of step),
        then the body's reader hears of the end."""
        exchange: _Exchange = self._exchange  # type: ignore[assignment]
        self._state = "done"
        if extra or overrun:
            self._reusable = False
            self.stray_bytes(None if overrun else extra)  # an overrun's size is not known
        self._stop_body_producer()  # answered before the whole request body was sent
        if self.paused:  # paused by the body's reader, which is done with it now
            self.paused = False
            stream_transport(self).resumeProducing()
        self._exchange = None
        if self._reusable and self._answer.reusable:
            self._state = "idle"
            self._client.release(self)
        else:
            stream_transport(self).loseConnection()
        exchange.body_ended(Failure(ResponseDone("Response body fully received")))

    def stray_bytes(self, size: int | None) -> None:
        """The origin wrote past its answer: this connection is out of step for good."""
        address = self.address
        self._log.info("origin {host}:{port} sent {size} bytes past its answer; connection "
                       "closed, not reused", host=address.host.decode("latin-1"),
                       port=address.port, size="unread" if size is None else size)
        stream_transport(self).abortConnection()

    # -- flow control asked for by the body's reader ----------------------------------------

    def pause_body(self) -> None:
        if not self.paused:
            self.paused = True
            stream_transport(self).pauseProducing()

    def resume_body(self) -> None:
        if self.paused:
            self.paused = False
            stream_transport(self).resumeProducing()
            if self._buffer and not self._feeding:  # else the parser's loop goes on
                buffer, self._buffer = self._buffer, b""
                self._consume(buffer)

    def stop_body(self) -> None:
        """The body's reader wants no more: this connection ends, and the reader hears the
        body failed (as with Agent), so whatever waits on it is not left pending."""
        self._reusable = False
        self._state = "stopped"
        self._answer.stop()
        self._stop_body_producer()
        stream_transport(self).abortConnection()
        if self._exchange is not None:
            self._exchange.body_ended(Failure(ResponseFailed([Failure(ConnectionAborted())])))

    # -- failures -------------------------------------------------------------------------

    def _fail_exchange(self, failure: Failure) -> None:
        self._reusable = False
        exchange = self._exchange
        if exchange is not None:
            if not exchange.answer.called:
                exchange.answer.errback(failure)
            elif self._state not in ("done", "stopped"):
                exchange.body_ended(Failure(ResponseFailed([failure])))
        self._state = "stopped"
        stream_transport(self).abortConnection()

    @override
    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._client.forget(self)
        release_client_connection(self.transport)
        self.closed.callback(None)
        exchange, self._exchange = self._exchange, None
        if exchange is None:
            return
        if exchange.producing:
            exchange.producing = False
            exchange.body.stopProducing()  # type: ignore[union-attr]
        if not exchange.answer.called:
            if (self.reused and not self._received_any and exchange.method in _IDEMPOTENT
                    and exchange.body is None and self._client.resend_stale):
                # The origin closed an idle keep-alive connection as we reused it.
                self._client.resend(self.address, exchange)
                return
            exchange.answer.errback(ResponseNeverReceived([reason]))
        elif self._answer.framing == CLOSE and reason.check(ConnectionDone):
            exchange.body_ended(Failure(PotentialDataLoss()))  # the close ends the body
        elif self._state not in ("done", "stopped"):
            exchange.body_ended(Failure(ResponseFailed([reason])))


class _ConnectionFactory(Factory):
    """Builds one OriginConnection; quiet (a log line per origin connection is noise)."""

    noisy = False

    def __init__(self, client: OriginClient, address: OriginAddress) -> None:
        self._client = client
        self._address = address

    @override
    def buildProtocol(self, addr: IAddress | None) -> OriginConnection:
        return OriginConnection(self._client, self._address)


@implementer(IAgent)
class OriginClient:
    """Requests to origins over persistent connections, at most ``max_idle`` idle ones per
    origin, each closed after ``idle_timeout`` seconds unused (the pool's deadlines share
    one timer: none is set and cancelled per request)."""

    def __init__(self, reactor: IReactorTime, endpoints: IAgentEndpointFactory | None,
                 max_idle: int = 256, idle_timeout: float = 240.0,
                 resend_stale: bool = True) -> None:
        self._reactor = reactor
        self._endpoints = endpoints  # None: every request brings its own
        self._max_idle = max_idle
        self._idle_timeout = idle_timeout
        self.resend_stale = resend_stale  # a GET meeting a just-closed kept-alive connection
        self._idle: dict[OriginAddress, list[OriginConnection]] = {}
        self._idle_deadlines: DeadlineSet[OriginConnection] = DeadlineSet(
            reactor, lambda connection: stream_transport(connection).loseConnection())

    # Twisted's Deferred is invariant, so Deferred[OriginResponse] (an IResponse) does not
    # match IAgent's Deferred[IResponse]
    def request(  # type: ignore[override]
        self, method: bytes, uri: bytes, headers: Headers | None = None,
        bodyProducer: IBodyProducer | None = None,  # noqa: N803 - IAgent's name
        endpoints: IAgentEndpointFactory | None = None,
    ) -> Deferred[OriginResponse]:
        """As ``IAgent.request``; ``endpoints`` says how to reach the origin when a new
        connection is needed (webhooks connect to the address they vetted)."""
        address, authority, target = split_url(uri)
        head = [b"%b %b HTTP/1.1\r\n" % (method, target)]
        has_host = False
        if headers is not None:
            for name, values in headers.getAllRawHeaders():
                has_host = has_host or name.lower() == b"host"
                for value in values:
                    head.append(b"%b: %b\r\n" % (name, value))
        if not has_host:
            head.append(b"Host: %b\r\n" % authority)
        if bodyProducer is None and method in (b"POST", b"PUT", b"PATCH"):
            head.append(b"Content-Length: 0\r\n")
        exchange = _Exchange(method, b"".join(head), bodyProducer,
                             Deferred(lambda d: self._cancel(exchange)))
        exchange.endpoints = endpoints or self._endpoints
        if exchange.endpoints is None:
            raise ValueError("no endpoint factory for this request")
        self._start(address, exchange)
        return exchange.answer

    def _start(self, address: OriginAddress, exchange: _Exchange) -> None:
        idle = self._idle.get(address)
        while idle:
            connection = idle.pop()
            self._idle_deadlines.discard(connection)
            if unread_input(connection.transport):
                # Bytes after the last answer (not read yet), or the origin's close: this
                # connection is out of step, and its stray bytes must reach nobody.
                connection.stray_bytes(None)
                continue
            connection.reused = True
            connection.send(exchange)
            return
        endpoint = exchange.endpoints.endpointForURI(address)  # type: ignore[union-attr]
        connecting = endpoint.connect(_ConnectionFactory(self, address))
        exchange.connecting = connecting
        connecting.addCallbacks(self._connected, self._connect_failed,
                                callbackArgs=(exchange,), errbackArgs=(exchange,))

    def resend(self, address: OriginAddress, exchange: _Exchange) -> None:
        """Once more on a fresh connection (the reused one was closed under us)."""
        idle = self._idle.pop(address, [])
        for connection in idle:  # siblings of a closed connection are likely closed too
            stream_transport(connection).loseConnection()
        self._start(address, exchange)

    def _connected(self, connection: OriginConnection, exchange: _Exchange) -> None:
        exchange.connecting = None
        connection.send(exchange)

    def _connect_failed(self, failure: Failure, exchange: _Exchange) -> None:
        exchange.connecting = None
        if not exchange.cancelled:
            exchange.answer.errback(failure)

    def _cancel(self, exchange: _Exchange) -> None:
        """The caller gave up (timeout, client gone): the Deferred fails with
        CancelledError and the connection, if any, is dropped."""
        exchange.cancelled = True
        if exchange.connecting is not None:
            exchange.connecting.cancel()
        elif exchange.connection is not None:
            exchange.connection.cancel(exchange)

    def release(self, connection: OriginConnection) -> None:
        idle = self._idle.setdefault(connection.address, [])
        if len(idle) >= self._max_idle:
            stream_transport(connection).loseConnection()
            return
        idle.append(connection)
        self._idle_deadlines.add(connection, self._idle_timeout)

    def forget(self, connection: OriginConnection) -> None:
        idle = self._idle.get(connection.address)
        if idle and connection in idle:
            idle.remove(connection)
            self._idle_deadlines.discard(connection)

    def closeCachedConnections(self) -> Deferred[list[None]]:  # noqa: N802 - as the pool's
        """Close the idle connections; fires once they are closed (busy ones close with
        their exchange)."""
        closing = [connection for idle in self._idle.values() for connection in idle]
        self._idle.clear()
        self._idle_deadlines.stop()
        for connection in closing:
            stream_transport(connection).loseConnection()
        return gatherResults([connection.closed for connection in closing])
