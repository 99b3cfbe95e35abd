"""The client port's HTTP/1.1 server side (SPEC A2): requests parsed by llhttp
(``httptools.HttpRequestParser``, Node.js's parser, hardened against request smuggling),
answered in order, with as little work per request as the proxy's hot path allows.

twisted.web's HTTPChannel and Request cost most of a proxied request (a line receiver,
per-line header parsing, a Request with cookies, args and resource traversal, the response
head built header by header). Here a connection is one ``HttpServerChannel``: llhttp calls
back with the request line and headers, a ``ServerRequest`` (the Request API the proxy,
holds, JSON-P, CORS, uploads and the WebSocket hand-off use, and nothing else) is built when
its head is complete, and processed once its body is complete (or once it streams,
transports/http/upload.py). Its answer's head goes out with the first body bytes in one
write. Pipelined requests are parsed ahead and answered one after the other; past
``MAX_WAITING`` waiting (or one with a body), reading pauses until the answers catch up.

Refusals, each answered (unless an answer to that request already started) and the
connection closed, nothing of that request reaching the origin: anything llhttp rejects (400:
CL+TE, duplicate Content-Length, obs-fold, bare CR or LF, an unknown Transfer-Encoding,
invalid names or values, chunk-size overflow, an unknown method), several Host headers
(400), a head over ``MAX_HEAD`` bytes or ``MAX_HEADERS`` fields (431), an HTTP version other
than 1.0 or 1.1 (505).
"""

from __future__ import annotations

import io
from collections import Counter
from typing import Any, ClassVar, cast

from httptools import (
    HttpParserCallbackError,
    HttpParserError,
    HttpParserInvalidURLError,
    HttpParserUpgrade,
    HttpRequestParser,
)
from twisted.internet.interfaces import IAddress, IProducer, IReactorTime, ISSLTransport
from twisted.internet.protocol import Protocol, ServerFactory, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import NO_BODY_CODES
from twisted.web.http_headers import Headers
from twisted.web.server import NOT_DONE_YET, Request
from typing_extensions import override

from fanout_tx._transport import stream_transport
from fanout_tx._twisted import checked_headers, send_directly
from fanout_tx.ops.deadlines import ClientDeadlines, ClientTimeouts
from fanout_tx.ops.logs import url_for_log
from fanout_tx.outbound.tcp_options import no_delay
from fanout_tx.transports.http.conn_limit import ConnectionLimit, Slot
from fanout_tx.transports.write_batch import WriteBatch

MAX_HEAD = 16384  # bytes of a request line and its headers (Twisted's limit, too)
MAX_HEADERS = 100  # header fields in one request
MAX_WAITING = 8  # complete pipelined requests queued behind the one being answered

_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_VERSIONS = {"1.1": b"HTTP/1.1", "1.0": b"HTTP/1.0"}


def _answer(code: int, reason: bytes, text: bytes) -> bytes:
    return (b"HTTP/1.1 %d %b\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n"
            b"Connection: close\r\n\r\n%b" % (code, reason, len(text), text))


class RefusedError(Exception):
    """A request the server will not read on from: its answer, then the connection closes."""

    def __init__(self, code: int, reason: bytes, text: str) -> None:
        super().__init__(text)
        self.answer = _answer(code, reason, text.encode("latin-1", "replace") + b"\n")
        self.code = code


class ServerRequest(Request):
    """One request on an HttpServerChannel: the part of twisted.web's Request API that the
    proxy's code uses, with Twisted's semantics (``write`` sends the head first, chunked
    when there is no Content-Length; ``finish``, ``notifyFinish``, producers). Subclasses
    it only so that code typed for a Request takes it: its ``__init__`` and every method
    that would reach for twisted.web's channel are replaced."""

    processing = False  # handed to the resource
    expects_continue = False  # ``Expect: 100-continue``, not answered yet
    body_complete = False
    persistent = True  # the connection stays open after this answer
    _drop_body = False  # HEAD, 204, 304: the head only
    # Twisted types these as its own channel and as None (documented: an IProducer, a BinaryIO)
    channel: HttpServerChannel  # type: ignore[assignment]
    producer: IProducer | None  # type: ignore[assignment]
    content: io.BytesIO  # type: ignore[assignment]

    def __init__(self, channel: HttpServerChannel, method: bytes, uri: bytes,
                 version: bytes, headers: Headers) -> None:
        self.channel = channel
        self.transport = channel.transport
        self.client = channel.peer
        self.method = method
        self.uri = uri
        self.path = uri.split(b"?", 1)[0]
        self.clientproto = version
        self.requestHeaders = headers
        self.responseHeaders = Headers()
        self.notifications = []
        connection = headers.getRawHeaders(b"connection")
        if version != b"HTTP/1.1" or connection and b"close" in (
                token.strip().lower() for value in connection for token in value.split(b",")):
            self.persistent = False  # (HTTP/1.0 keep-alive is not offered, as twisted.web)

    @override
    def gotLength(self, length: int | None) -> None:
        self.content = io.BytesIO()

    @override
    def handleContentChunk(self, data: bytes) -> None:
        self.content.write(data)

    def ready(self) -> bool:
        """Whether it can be processed: its body is complete (or is streaming)."""
        return self.body_complete

    def all_content_received(self) -> None:
        """The body is complete."""
        self.body_complete = True

    @override
    def process(self) -> None:
        """Render with the channel's resource; an answer of bytes is sent whole."""
        self.processing = True
        if self.path == b"*":
            self._star()
            return
        try:
            body = self.channel.factory.resource.render(self)
        except Exception:
            self.channel.log.failure("rendering {method} {uri} failed",
                                     method=self.method, uri=url_for_log(self.uri))
            if self.startedWriting or self._disconnected:
                if self.transport is not None:
                    stream_transport(self.channel).abortConnection()
                return
            self.responseHeaders = Headers({b"content-type": [b"text/plain"]})
            self.setResponseCode(500)
            body = b"Internal server error.\n"
        if body is NOT_DONE_YET:
            return
        self.responseHeaders.setRawHeaders(b"content-length", [b"%d" % len(body)])
        self.write(body)
        self.finish()

    def _star(self) -> None:
        """``OPTIONS *`` is a probe (200); any other method on ``*`` gets a 405."""
        if self.method != b"OPTIONS":
            self.setResponseCode(405)
            self.setHeader(b"Allow", b"OPTIONS")
        self.setHeader(b"Content-Length", b"0")
        self.finish()

    # -- the answer -------------------------------------------------------------------------

    def _head(self) -> bytes:
        code = self.code
        headers = self.responseHeaders
        self._drop_body = self.method == b"HEAD" or code in NO_BODY_CODES
        if not headers.hasHeader(b"content-length") and code not in NO_BODY_CODES:
            if self.clientproto == b"HTTP/1.1" and self.method != b"HEAD":
                self.chunked = 1
                headers.setRawHeaders(b"transfer-encoding", [b"chunked"])
            elif self.method != b"HEAD":
                self.persistent = False  # the body ends with the connection
        if not self.persistent:
            headers.setRawHeaders(b"connection", [b"close"])
        lines = [b"%b %d %b\r\n" % (self.clientproto, code, self.code_message)]
        lines.extend(b"%b: %b\r\n" % (name, value)
                     for name, values in headers.getAllRawHeaders() for value in values)
        lines.append(b"\r\n")
        return b"".join(lines)

    def head_soon(self, batch: WriteBatch) -> None:
        """Send the head at the end of this reactor turn unless body bytes (or ``finish``)
        take it along before: an answer whose body is already here goes in one ``send``."""
        batch.add(self)

    def flush(self) -> None:
        """(WriteBatch) The head, if nothing took it along."""
        if not (self.startedWriting or self.finished or self._disconnected):
            self.write(b"")

    @override
    def write(self, data: bytes) -> None:
        if self.finished:
            raise RuntimeError("Request.write called on a request after Request.finish")
        if self._disconnected:
            return
        if not self.startedWriting:
            self.startedWriting = 1
            head = self._head()
            if self._drop_body or not data:
                self.channel.write(head)
            elif self.chunked:
                self.channel.write(b"%b%x\r\n%b\r\n" % (head, len(data), data))
            else:
                self.channel.write(head + data)
            return
        if data and not self._drop_body:
            self.channel.write(b"%x\r\n%b\r\n" % (len(data), data) if self.chunked else data)

    @override
    def finish(self) -> None:
        if self._disconnected:
            raise RuntimeError("Request.finish called on a request after its connection "
                               "was lost")
        if self.finished:
            return
        if not self.startedWriting:
            self.write(b"")
        if self.chunked and not self._drop_body:
            self.channel.write(b"0\r\n\r\n")
        self.finished = 1
        if self.channel.factory.access_log:
            self.channel.log.debug("{method} {path} -> {code}", method=self.method,
                                   path=url_for_log(self.uri), code=self.code)
        notifications, self.notifications = self.notifications, []
        for d in notifications:
            d.callback(None)
        self.channel.request_done(self)

    @override
    def registerProducer(self, producer: IProducer, streaming: bool) -> None:
        if self.producer:
            raise ValueError(f"registering producer {producer} before the previous one "
                             f"({self.producer}) was unregistered")
        self.producer = producer
        self.channel.registerProducer(producer, streaming)

    @override
    def unregisterProducer(self) -> None:
        self.producer = None
        if self.channel is not None:
            self.channel.unregisterProducer()

    @override
    def connectionLost(self, reason: Failure) -> None:
        self._disconnected = True
        self.channel = None  # type: ignore[assignment]  # as Twisted's: no cycle left behind
        notifications, self.notifications = self.notifications, []
        for d in notifications:
            d.errback(reason)


class HttpServerChannel(ClientDeadlines, Protocol):
    """One client connection: counted against ``client_maxconn`` and refused past
    ``client_maxconn_per_ip`` (conn_limit.py), held to the request deadlines
    (ops/deadlines.py), and pushes go out without waiting for Nagle."""

    factory: HttpServerFactory
    log: ClassVar[Logger] = Logger()
    limit_slot: Slot | None = None
    peer: IAddress
    _parsing: ServerRequest | None = None  # the request whose body is arriving
    _closed = False  # no more requests are read on this connection
    _in_head = False
    _head_bytes = 0  # of the head's fields parsed so far
    _head_raw = 0  # of the head received in later data than its start
    _completed = 0  # requests complete in the data being parsed
    _advancing = False
    _paused = False
    _refusal: bytes | None = None  # written once the answers before it are done
    _producer: IProducer | None = None

    @property
    @override
    def deadline_source(self) -> Any:
        return self.factory

    @override
    def connectionMade(self) -> None:
        transport = stream_transport(self)
        no_delay(transport)
        self.peer = transport.getPeer()
        self.secure = ISSLTransport(transport, None) is not None
        # [0] is the one being answered; a list (a deque is ~600 bytes per connection)
        self.requests: list[ServerRequest] = []
        # Made when bytes come, dropped between requests: a parser is ~1 kB, held for as
        # long as the connection (a held stream's) is, and 0.5 µs to make.
        self._parser: HttpRequestParser | None = None
        self._expect_head()
        limit = self.factory.connection_limit
        if limit is None:
            return
        self.limit_slot = limit.take(getattr(self.peer, "host", ""))
        if self.limit_slot is None:
            self._closed = True
            self.log.info("503 for {client}: over {limit} connections from its address "
                          "([runner] client_maxconn_per_ip)", client=self.peer,
                          limit=limit.per_address)
            transport.write(_answer(503, b"Service Unavailable",
                                    b"Too many connections from your address.\n"))
            self._close()

    def isSecure(self) -> bool:  # noqa: N802 - Request.isSecure asks its channel
        return self.secure

    def write(self, data: bytes) -> None:
        """To the kernel at once when nothing is queued ahead (one ``send``, where the
        transport's own write costs two ``epoll_ctl`` and a turn), else queued."""
        if self.transport is not None and (rest := send_directly(self.transport, data)):
            self.transport.write(rest)

    def registerProducer(self, producer: IProducer, streaming: bool) -> None:  # noqa: N802
        self._producer = producer
        stream_transport(self).registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:  # noqa: N802
        if self._producer is not None and self.transport is not None:
            self._producer = None
            stream_transport(self).unregisterProducer()

    # -- reading ----------------------------------------------------------------------------

    @override
    def dataReceived(self, data: bytes) -> None:
        if self._closed:
            return
        self._data_arrived(len(data))
        try:
            self._feed(data)
        except RefusedError as e:
            self._refuse(e)
        self._advance()

    def _feed(self, data: bytes) -> None:
        # The whole of ``data`` is head if the head is still not complete, and it started
        # before, or nothing before it ended in ``data``.
        whole = self._in_head
        self._completed = 0
        if self._parser is None:
            self._parser = HttpRequestParser(self)
        try:
            self._parser.feed_data(data)
        except HttpParserUpgrade:
            # CONNECT, or Upgrade with Connection: upgrade: what follows the head is not
            # HTTP (a WebSocket client waits for the 101 before it sends more), and the
            # connection ends with this answer unless it is handed to a WebSocket.
            self._closed = True
            if self.requests:
                self.requests[-1].persistent = False
        except HttpParserCallbackError as e:
            if isinstance(e.__context__, RefusedError):
                raise e.__context__ from None
            self.log.failure("reading a request failed", Failure(e.__context__))
            raise RefusedError(500, b"Internal Server Error", "Internal server error.") from e
        except HttpParserInvalidURLError as e:
            raise RefusedError(400, b"Bad Request",
                               "Request target must be a path starting with /.") from e
        except HttpParserError as e:
            raise RefusedError(400, b"Bad Request", f"Bad request: {e}.") from e
        if self._in_head and (whole or not self._completed):
            # What llhttp buffers of an unfinished line is bounded here (a head that began
            # after another request in this data: by the fields parsed, and the next data).
            self._head_raw += len(data)
            if self._head_raw > MAX_HEAD:
                raise _head_too_large()
        elif not self._in_head and self._parsing is None:
            self._parser = None  # between requests

    def _refuse(self, refusal: RefusedError) -> None:
        self._closed = True
        self.log.info("{code} for {client}: {reason}", code=refusal.code, client=self.peer,
                      reason=str(refusal))
        broken = self._parsing
        self._parsing = None
        if broken is not None and broken in self.requests:
            if broken.processing:  # a streamed body: the origin must not take it as whole
                broken.connectionLost(Failure(ConnectionError(str(refusal))))
                if broken.startedWriting:
                    self._close()
                    return
            self.requests.remove(broken)
        self._refusal = refusal.answer
        self._advance()

    # llhttp's callbacks

    def on_message_begin(self) -> None:
        self._in_head = True
        self._head_bytes = self._head_raw = 0
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_bytes += len(name) + len(value) + 4
        pairs = self._headers
        if len(pairs) >= MAX_HEADERS or self._head_bytes > MAX_HEAD:
            raise _head_too_large()
        # llhttp leaves trailing whitespace in the value: not part of it (RFC 9110 5.5)
        pairs.append((name, value.rstrip(b" \t")))

    def on_headers_complete(self) -> None:
        self._in_head = False
        parser = cast(HttpRequestParser, self._parser)
        version = _VERSIONS.get(parser.get_http_version())
        if version is None:
            raise RefusedError(505, b"HTTP Version Not Supported",
                          "Only HTTP/1.1 and HTTP/1.0 are supported.")
        if len(self._url) + self._head_bytes > MAX_HEAD:
            raise _head_too_large()
        headers = checked_headers(self._headers)
        self._headers = []  # (its tuples would stay for as long as the connection)
        if len(headers.getRawHeaders(b"host", ())) > 1:
            # RFC 9112 3.2. Routing would read one value and the origin get another: a
            # request routed as one site could be another to the origin.
            raise RefusedError(400, b"Bad Request", "Request has more than one Host header.")
        request = self.factory.request_factory(self, parser.get_method(), self._url, version,
                                               headers)
        self._parsing = request
        self.requests.append(request)
        length: int | None = 0
        if headers.hasHeader(b"transfer-encoding"):
            length = None
        elif (values := headers.getRawHeaders(b"content-length")) is not None:
            length = int(values[0])  # llhttp checked it: one value, digits
        request.gotLength(length)
        if length != 0:
            if len(self.requests) == 1:
                self._start_window()
            expect = headers.getRawHeaders(b"expect")
            if expect and expect[0].lower() == b"100-continue" and version == b"HTTP/1.1":
                request.expects_continue = True

    def on_body(self, data: bytes) -> None:
        if self._parsing is not None:
            self._parsing.handleContentChunk(data)

    def on_message_complete(self) -> None:
        self._completed += 1
        request, self._parsing = self._parsing, None
        if request is None:
            return
        request.content.seek(0)
        request.all_content_received()
        if not request.persistent:
            self._closed = True  # nothing after it is read
        if self.requests and self.requests[0] is request:
            self._enter("busy", 0)
        elif not self.requests:  # a streamed body, its answer already sent
            self._enter("idle", self.timeouts.keepalive)

    # -- answering in order -----------------------------------------------------------------

    def _advance(self) -> None:
        """Process the request at the head of the queue once it is ready; write a refusal
        once every answer before it is done; pause reading while requests wait."""
        if self._advancing or self.transport is None:
            return
        self._advancing = True
        try:
            while self.requests:
                head = self.requests[0]
                if head.processing:
                    break
                if head.expects_continue and not head.body_complete:
                    head.expects_continue = False
                    self.write(_CONTINUE)
                if not head.ready():
                    break
                head.process()
                if self.transport is None:  # handed to a WebSocket
                    return
        finally:
            self._advancing = False
        if not self.requests and self._refusal is not None:
            self.write(self._refusal)
            self._refusal = None
            self._close()
            return
        waiting = len(self.requests) - 1
        pause = waiting >= MAX_WAITING or (waiting > 0 and self._parsing is self.requests[-1])
        if pause != self._paused:
            self._paused = pause
            transport = stream_transport(self)
            if pause:
                transport.pauseProducing()
            else:
                transport.resumeProducing()

    def request_done(self, request: ServerRequest) -> None:
        """``request``'s answer is complete: on to the next, or close."""
        self.unregisterProducer()
        if self.requests and self.requests[0] is request:
            del self.requests[0]
        if not request.persistent:
            self._closed = True
            self.requests.clear()
            self._close()
            return
        if self.requests:
            if not self.requests[0].body_complete:
                self._start_window()
        elif self._parsing is request:
            pass  # the rest of a streamed body still arrives, to be dropped
        elif self._in_head:
            self._expect_head()
        elif self._refusal is None and not self._closed:
            self._enter("idle", self.timeouts.keepalive)
        self._advance()

    @override
    def _answer_started(self) -> bool:
        return bool(self.requests) and bool(self.requests[0].startedWriting)

    @override
    def _upload(self) -> Any:
        return getattr(self._parsing, "upload", None)

    def handed_off(self) -> None:
        """The connection is a WebSocket's now (transports/ws/handler.py): let go of the
        parser and the requests, which point back here (issue 19: no cycles left behind)."""
        self._stop_deadlines()
        self._closed = True
        self.requests.clear()
        self._parsing = None
        self._parser = None

    @override
    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._stop_deadlines()
        self._closed = True
        self._parser = None  # it holds this channel's methods
        self._producer = None
        requests, self.requests = self.requests, []
        if self._parsing is not None and self._parsing not in requests:
            requests.append(self._parsing)
        self._parsing = None
        for request in requests:
            request.connectionLost(reason)
        if self.limit_slot is not None:
            self.limit_slot.release()


def _head_too_large() -> RefusedError:
    return RefusedError(431, b"Request Header Fields Too Large", "Request header too large.")


class HttpServerFactory(ServerFactory[HttpServerChannel]):
    """Builds an HttpServerChannel per connection; what the channels share: the resource
    that renders requests, the request class, the limits and the deadlines."""

    noisy = False
    request_factory: type[ServerRequest] = ServerRequest

    def __init__(self, resource: Any, reactor: IReactorTime, access_log: bool = True,
                 connection_limit: ConnectionLimit | None = None,
                 client_timeouts: ClientTimeouts | None = None) -> None:
        self.resource = resource
        self.reactor = reactor
        self.access_log = access_log
        self.connection_limit = connection_limit
        self.client_timeouts = client_timeouts or ClientTimeouts()
        # connections dropped by reason (deadlines.py), for /metrics
        self.dropped = connection_limit.dropped if connection_limit is not None else Counter()

    @override
    def buildProtocol(self, addr: IAddress | None) -> HttpServerChannel:
        channel = HttpServerChannel()
        channel.factory = self
        return channel
