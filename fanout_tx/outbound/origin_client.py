"""A lean HTTP/1.1 client for the GRIP proxy's requests to origins.

twisted.web.client.Agent cost about 40 % of a proxied request's CPU (URI objects, a pool
keyed per call, a line-by-line response parser, several Deferred hops per request). This
client does what the proxy needs and no more: persistent connections per origin; request
bodies from an ``IBodyProducer`` (``Content-Length`` or chunked, the producer paused while
the socket is full); the response head parsed in one pass; bodies handed to an
``IProtocol`` that can pause, resume or stop the connection. Answers carry the
``IResponse`` attributes the proxy reads (``code``, ``phrase``, ``headers``, ``length``,
``deliverBody``) with the same meaning as Agent's: connection-control headers are kept out
of ``headers`` and ``length`` is the body's length when it is known.

One client is one trust policy: the proxy keeps verified and ``insecure`` TLS connections in
different clients, so a connection made without checks is never reused for a route that
asks for them.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import NamedTuple, cast

from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.error import ConnectionAborted, ConnectionDone
from twisted.internet.interfaces import (
    IAddress,
    IConsumer,
    IDelayedCall,
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
from fanout_tx._twisted import release_client_connection
from fanout_tx.core.headers import has_control, is_reason_phrase, is_token
from fanout_tx.outbound.tcp_options import no_delay, quick_ack, unread_input

MAX_HEAD = 64 * 1024  # a response head larger than this is refused
_HELD_BODY = 64 * 1024  # body bytes kept before deliverBody; past this reading pauses
_CONNECTION_CONTROL = frozenset({
    b"connection", b"content-length", b"keep-alive", b"proxy-connection", b"te", b"trailers",
    b"transfer-encoding", b"upgrade",
})
_NO_BODY_CODES = frozenset({204, 304})
_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,16}")
_STATUS_LINE = re.compile(rb"(HTTP/1\.[0-9]) ([0-9]{3})(?: (.*))?", re.DOTALL)
_IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"DELETE", b"TRACE"})


class OriginAddress(NamedTuple):
    """What an ``IAgentEndpointFactory`` reads of a URI (Agent passes a ``URI``)."""

    scheme: bytes
    host: bytes
    port: int


class BadResponseError(Exception):
    """The origin's answer is not valid HTTP/1.x."""


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
        self.idle_timer: IDelayedCall | None = None
        self._exchange: _Exchange | None = None
        self._buffer = b""
        # idle | head | length | chunk-size | chunk-data | chunk-end | trailer | close |
        # done | stopped
        self._state = "idle"
        self._remaining = 0
        self._reusable = True
        self._paused = False
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
        self._state = "head"
        self._reusable = True
        self._received_any = False
        body = exchange.body
        transport = stream_transport(self)
        if body is None:
            transport.write(exchange.head + b"\r\n")
            return
        consumer: IConsumer
        if body.length is UNKNOWN_LENGTH:
            transport.write(exchange.head + b"Transfer-Encoding: chunked\r\n\r\n")
            consumer = _ChunkedWriter(transport)
        else:
            transport.write(exchange.head + b"Content-Length: %d\r\n\r\n" % body.length)
            consumer = cast(IConsumer, transport)  # a stream transport consumes its writes
        exchange.producing = True
        transport.registerProducer(body, True)
        produced = body.startProducing(consumer)
        produced.addCallbacks(self._body_done, self._body_failed,
                              callbackArgs=(exchange, consumer), errbackArgs=(exchange,))

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
        if self._quick_ack is not None:
            self._quick_ack()
        self._received_any = True
        buffer = self._buffer + data if self._buffer else data
        self._buffer = b""
        try:
            self._consume(buffer)
        except BadResponseError as error:
            self._fail_exchange(Failure(error))

    def _consume(self, data: bytes) -> None:
        """Parse as far as the data goes; stop at the end of the answer, or while the
        body's reader has paused us (the rest waits in ``_buffer``)."""
        while data:
            if self._paused:
                self._buffer = data
                return
            state = self._state
            if state == "head":
                data = self._read_head(data)
            elif state in ("length", "chunk-data"):
                piece, data = data[:self._remaining], data[self._remaining:]
                self._remaining -= len(piece)
                self._exchange.body_data(piece)  # type: ignore[union-attr]
                if self._remaining == 0:
                    if state == "chunk-data":
                        self._state = "chunk-end"
                    else:
                        self._end(data)
                        return
            elif state == "close":
                self._exchange.body_data(data)  # type: ignore[union-attr]
                return
            elif state in ("chunk-size", "chunk-end", "trailer"):
                line, found, rest = data.partition(b"\r\n")
                if not found:
                    if len(data) > MAX_HEAD:
                        raise BadResponseError("chunk framing line too long")
                    self._buffer = data
                    return
                data = rest
                if self._chunk_line(state, line):
                    self._end(data)
                    return
            else:  # idle, done or stopped: bytes nobody asked for
                self._reusable = False
                self._client.forget(self)  # before anyone else can take it from the pool
                self.stray_bytes(len(data))
                return

    def _read_head(self, data: bytes) -> bytes:
        end = data.find(b"\r\n\r\n")
        if end < 0:
            if len(data) > MAX_HEAD:
                raise BadResponseError("response head too large")
            first_lf = data.find(b"\n")
            if first_lf == 0 or (first_lf > 0 and data[first_lf - 1] != 0x0D):
                raise BadResponseError("bare LF in the response head")  # fail now, not later
            self._buffer = data
            return b""
        head, rest = data[:end], data[end + 4:]
        if has_control(head.decode("latin-1").replace("\r\n", "")):
            # A bare CR or LF (or NUL...) is a line end to some readers and not to others:
            # the way to smuggle a header or a second answer (RFC 9112 2.2, 5).
            raise BadResponseError("control character or bare CR/LF in the response head")
        lines = head.split(b"\r\n")
        status = _STATUS_LINE.fullmatch(lines[0])
        if status is None:
            raise BadResponseError(f"bad status line {lines[0][:80]!r}")
        version, code, phrase = status[1], int(status[2]), status[3] or b""
        if code < 100 or code == 101 or not is_reason_phrase(phrase.decode("latin-1")):
            raise BadResponseError(f"bad status line {lines[0][:80]!r}")  # 101: not asked for
        if code < 200:
            return rest  # 100 Continue and friends: the real answer follows
        headers, control = _parse_headers(lines[1:])
        connection = b",".join(control.get(b"connection", ())).lower()
        if b"close" in connection or (version == b"HTTP/1.0" and b"keep-alive" not in connection):
            self._reusable = False
        exchange: _Exchange = self._exchange  # type: ignore[assignment]
        length: int | object = UNKNOWN_LENGTH
        bodyless = code in _NO_BODY_CODES or exchange.method == b"HEAD"
        if bodyless:
            # No body by definition, yet buggy origins write one after it, where the next
            # exchange would read it as its answer: such a connection is not reused.
            length = 0
            self._reusable = False
        elif b"transfer-encoding" in control:
            _check_chunked(version, control[b"transfer-encoding"])
            if b"content-length" in control:
                self._reusable = False  # TE overrides; a smuggling sign (RFC 9112 6.3)
            self._state = "chunk-size"
        elif b"content-length" in control:
            lengths = {v.strip() for v in b",".join(control[b"content-length"]).split(b",")}
            if len(lengths) != 1 or not next(iter(lengths)).isdigit():
                raise BadResponseError("bad content-length")
            length = self._remaining = int(lengths.pop())
            self._state = "length"
        else:
            self._state = "close"
            self._reusable = False
        exchange.answer.callback(OriginResponse(exchange, version, code, phrase, headers, length))
        if bodyless or length == 0:
            self._end(rest)
            return b""
        return rest

    def _chunk_line(self, state: str, line: bytes) -> bool:
        """One framing line of a chunked body; True at the end of the body."""
        if state == "chunk-end":
            if line:
                raise BadResponseError("chunk not followed by CRLF")
            self._state = "chunk-size"
            return False
        if state == "trailer":
            if has_control(line.decode("latin-1")):
                raise BadResponseError("control character in a trailer line")
            return not line  # trailer fields are dropped; an empty line ends them
        size_text = line.partition(b";")[0].strip()
        if not _CHUNK_SIZE.fullmatch(size_text):  # int() would take "+5", "0x5", "1_0"
            raise BadResponseError(f"bad chunk size {size_text[:20]!r}")
        size = int(size_text, 16)
        if size == 0:
            self._state = "trailer"
        else:
            self._state, self._remaining = "chunk-data", size
        return False

    def _end(self, leftover: bytes) -> None:
        """The answer is complete: the connection goes back to the pool (or is closed:
        bytes after the answer, or a request body still being sent, leave it out of step),
        then the body's reader hears of the end."""
        if self._state == "stopped":
            return
        exchange: _Exchange = self._exchange  # type: ignore[assignment]
        self._state = "done"
        if leftover:
            self._reusable = False
            self.stray_bytes(len(leftover))
        self._stop_body_producer()  # answered before the whole request body was sent
        if self._paused:  # paused by the body's reader, which is done with it now
            self._paused = False
            stream_transport(self).resumeProducing()
        self._exchange = None
        if self._reusable:
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
        if not self._paused:
            self._paused = True
            stream_transport(self).pauseProducing()

    def resume_body(self) -> None:
        if self._paused:
            self._paused = False
            stream_transport(self).resumeProducing()
            if self._buffer:
                buffer, self._buffer = self._buffer, b""
                try:
                    self._consume(buffer)
                except BadResponseError as error:
                    self._fail_exchange(Failure(error))

    def stop_body(self) -> None:
        """The body's reader wants no more: this connection ends, and the reader hears the
        body failed (as with Agent), so whatever waits on it is not left pending."""
        self._reusable = False
        self._state = "stopped"
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
        if self.idle_timer is not None and self.idle_timer.active():
            self.idle_timer.cancel()
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
        elif self._state == "close" and reason.check(ConnectionDone):
            exchange.body_ended(Failure(PotentialDataLoss()))  # the close ends the body
        elif self._state not in ("done", "stopped"):
            exchange.body_ended(Failure(ResponseFailed([reason])))


def _check_chunked(version: bytes, values: list[bytes]) -> None:
    """Transfer-Encoding must be exactly ``chunked`` (the one coding we can take off), and
    not in an HTTP/1.0 answer, whose framing is then faulty (RFC 9112 6.1)."""
    if version == b"HTTP/1.0":
        raise BadResponseError("Transfer-Encoding in an HTTP/1.0 answer")
    codings = [c.strip().lower() for c in b",".join(values).split(b",") if c.strip()]
    if codings != [b"chunked"]:
        raise BadResponseError(f"unsupported transfer-encoding {b','.join(values)[:80]!r}")


def _parse_headers(lines: list[bytes]) -> tuple[Headers, dict[bytes, list[bytes]]]:
    """Header lines -> (end-to-end headers, connection-control values by lowered name)."""
    pairs: list[list[bytes]] = []
    for line in lines:
        if line[:1] in (b" ", b"\t"):  # obsolete line folding: part of the last value
            if not pairs:
                raise BadResponseError("folded line before any header")
            pairs[-1][1] += b" " + line.strip()
            continue
        name, colon, value = line.partition(b":")
        if not colon or not is_token(name.strip().decode("latin-1")):
            raise BadResponseError(f"bad header line {line[:80]!r}")
        pairs.append([name.strip(), value.strip()])
    headers = Headers()
    control: dict[bytes, list[bytes]] = {}
    for name, value in pairs:
        lowered = name.lower()
        if lowered in _CONNECTION_CONTROL:
            control.setdefault(lowered, []).append(value)
        else:
            headers.addRawHeader(name, value)
    return headers, control


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
    origin, each closed after ``idle_timeout`` seconds unused."""

    def __init__(self, reactor: IReactorTime, endpoints: IAgentEndpointFactory | None,
                 max_idle: int = 256, idle_timeout: float = 240.0,
                 resend_stale: bool = True) -> None:
        self._reactor = reactor
        self._endpoints = endpoints  # None: every request brings its own
        self._max_idle = max_idle
        self._idle_timeout = idle_timeout
        self.resend_stale = resend_stale  # a GET meeting a just-closed kept-alive connection
        self._idle: dict[OriginAddress, list[OriginConnection]] = {}

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
            if connection.idle_timer is not None and connection.idle_timer.active():
                connection.idle_timer.cancel()
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
        connection.idle_timer = self._reactor.callLater(
            self._idle_timeout, stream_transport(connection).loseConnection)

    def forget(self, connection: OriginConnection) -> None:
        idle = self._idle.get(connection.address)
        if idle and connection in idle:
            idle.remove(connection)

    def closeCachedConnections(self) -> Deferred[list[None]]:  # noqa: N802 - as the pool's
        """Close the idle connections; fires once they are closed (busy ones close with
        their exchange)."""
        closing = [connection for idle in self._idle.values() for connection in idle]
        self._idle.clear()
        for connection in closing:
            stream_transport(connection).loseConnection()
        return gatherResults([connection.closed for connection in closing])
