"""The GRIP reverse proxy on the client port (SPEC A2, A3, A6).

``ProxyResource`` finds the route and hands the request to a ``ProxySession``, which forwards
it (failing over between targets on connect errors) and then either relays the answer chunk
by chunk, or, when the answer is a GRIP instruction, holds the request (hold.py). The session
is also what a hold calls back to re-request the origin (hint, recover, prev-id) or to follow
a ``Grip-Link``.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any, Protocol, cast
from urllib.parse import urljoin, urlsplit

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectError, DNSLookupError
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Protocol as TwistedProtocol
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import server
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IAgent, IBodyProducer, IResponse
from twisted.web.resource import Resource
from typing_extensions import override

from fanout_tx._transport import stream_transport
from fanout_tx.config.routes import Route, RouteSource, RouteTarget
from fanout_tx.core.headers import Header, end_to_end, get
from fanout_tx.core.router import Router
from fanout_tx.grip.instruct import (
    Channel,
    GripError,
    Instruct,
    Link,
    Response,
    is_instruct,
    parse_instruct,
    parse_link,
)
from fanout_tx.ops.deadlines import ClientTimeouts
from fanout_tx.ops.logs import url_for_log
from fanout_tx.outbound.body import BytesProducer
from fanout_tx.outbound.deadline_set import DeadlineSet
from fanout_tx.outbound.origin import (
    BodyCollector,
    BodyRelay,
    ProxySettings,
    header_pairs,
    link_headers,
    link_target,
    origin_headers,
    origin_url,
    trusted_client,
)
from fanout_tx.transports.http.conn_limit import ConnectionLimit
from fanout_tx.transports.http.hold import (
    DEFAULT_MAX_CLIENT_BUFFER,
    HeldResponse,
    HeldStream,
)
from fanout_tx.transports.http.jsonp import JsonpAnswer, JsonpCall, JsonpError, parse_jsonp
from fanout_tx.transports.http.server_channel import (
    HttpServerFactory,
    ServerRequest,
)
from fanout_tx.transports.http.upload import (
    REPLAY_LIMIT,
    UploadInterruptedError,
    UploadStream,
    UploadTooLargeError,
)
from fanout_tx.transports.responses import TEXT_PLAIN, plain, set_status_and_headers, write_response
from fanout_tx.transports.write_batch import WriteBatch
from fanout_tx.transports.write_budget import WriteBudget

_BODY_METHODS = frozenset({b"POST", b"PUT", b"PATCH"})


def _is_websocket_events(request: server.Request) -> bool:
    media_type = (request.getHeader(b"content-type") or b"").partition(b";")[0]
    return media_type.strip().lower() == b"application/websocket-events"


class UpgradeRenderer(Protocol):
    """The seam for issue 4: renders a request that asks for ``Upgrade: websocket`` (it
    does its own ``proto=ws`` route lookup)."""

    def render(self, request: server.Request) -> bytes | int: ...


class ProxyRequest(ServerRequest):
    """A request whose body is refused (413) past ``max_request_body``, and streamed to the
    origin once it is larger than ``REPLAY_LIMIT`` (transports/http/upload.py): the request
    is then processed while its body still arrives."""

    body_too_large = False
    cross_origin = False  # route ``aco``: answers get CORS headers (transports/cors.py)
    jsonp: JsonpAnswer | None = None  # a JSON-P call: the answer is wrapped at finish
    upload: UploadStream | None = None  # set once the body streams
    _body_size = 0
    _length: int | None = None
    _stream_at_first_chunk = False

    def _limit(self) -> int:
        return cast(ProxyFactory, self.channel.factory).max_request_body

    @override
    def gotLength(self, length: int | None) -> None:
        self._length = length
        # Bodies up to REPLAY_LIMIT stay in memory; larger ones stream (not to a temp file).
        self.content = io.BytesIO()
        if length is not None and length > self._limit():
            self.body_too_large = True
            return
        # Streaming starts with the first chunk, not here: an ``Expect: 100-continue``
        # client must get its 100 before any final answer.
        self._stream_at_first_chunk = length is not None and length > REPLAY_LIMIT

    @override
    def handleContentChunk(self, data: bytes) -> None:
        if self.body_too_large:
            return
        self._body_size += len(data)
        if self._body_size > self._limit():
            self._refuse_body()
            return
        if self.upload is not None:
            self.upload.feed(data)
            return
        self.content.write(data)
        if self._stream_at_first_chunk or self._body_size > REPLAY_LIMIT:
            # Processed now (once its turn comes), the body so far queued in an UploadStream.
            self.upload = UploadStream(self._length, stream_transport(self.channel))
            self.upload.feed(self.content.getvalue())
            self.content = io.BytesIO()

    def _refuse_body(self) -> None:
        self.body_too_large = True
        self.content = io.BytesIO()
        if self.upload is not None:
            self.upload.fail(UploadTooLargeError(f"body over {self._limit()} bytes"))
            if self.finished:
                stream_transport(self.channel).loseConnection()  # answered; the rest is not wanted

    @override
    def ready(self) -> bool:
        return self.body_complete or self.upload is not None

    @override
    def all_content_received(self) -> None:
        super().all_content_received()
        if self.upload is not None and not self.body_too_large:
            self.upload.finish()

    def take_jsonp(self, call: JsonpCall) -> None:
        """Become the request a JSON-P call stands for, as Pushpin rewrites it: method,
        query, ``_headers`` first, ``Accept: */*``, the body; its answer gets wrapped."""
        self.method, self.uri = call.method, call.uri
        self.path = call.uri.split(b"?", 1)[0]
        headers = Headers()
        for name, value in call.headers:
            headers.addRawHeader(name, value)
        for name, values in self.requestHeaders.getAllRawHeaders():
            if name.lower() != b"accept":
                for value in values:
                    headers.addRawHeader(name, value)
        headers.setRawHeaders(b"accept", [b"*/*"])
        if call.json_body:
            headers.setRawHeaders(b"content-type", [b"application/json"])
        self.requestHeaders = headers
        self.content = io.BytesIO(call.body)
        self.cross_origin = False  # JSON-P answers carry no CORS headers (Pushpin's rule)
        self.jsonp = JsonpAnswer(call.callback, call.extended)

    @override
    def write(self, data: bytes) -> None:
        if self.jsonp is None:
            super().write(data)
        else:
            self.jsonp.add(data)

    @override
    def finish(self) -> None:
        jsonp, self.jsonp = self.jsonp, None
        if jsonp is not None:
            answered = [(n.decode("latin-1"), v.decode("latin-1"))
                        for n, vs in self.responseHeaders.getAllRawHeaders() for v in vs]
            code, body = jsonp.wrapped(self.code, self.code_message, end_to_end(answered))
            self.setResponseCode(code)
            kind = b"application/javascript" if code == 200 else b"text/plain"
            self.responseHeaders = Headers({b"content-type": [kind],
                                            b"content-length": [b"%d" % len(body)]})
            super().write(body)
        super().finish()
        if self.body_too_large and self.upload is not None and not self.upload.complete:
            # Answered (413) while the body still arrives: the rest is not wanted.
            stream_transport(self.channel).loseConnection()

    @override
    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.upload is not None:
            self.upload.fail(UploadInterruptedError("client went away mid-body"))
        super().connectionLost(reason)


class ProxyFactory(HttpServerFactory):
    """The client port: ProxyRequests on HttpServerChannels, bodies up to the proxy's
    ``max_request_body``; the access log only at debug level (one line per request is too
    much for a push server)."""

    request_factory = ProxyRequest

    def __init__(self, resource: ProxyResource, reactor: IReactorTime, access_log: bool = True,
                 connection_limit: ConnectionLimit | None = None,
                 client_timeouts: ClientTimeouts | None = None) -> None:
        super().__init__(resource, reactor, access_log, connection_limit, client_timeouts)
        self.max_request_body = resource.settings.max_request_body


class ProxyResource(Resource):
    """Serves the client port: route lookup, then a ProxySession per request."""

    isLeaf = True
    _log = Logger()

    def __init__(
        self, routes: RouteSource, router: Router, clock: IReactorTime, agent: IAgent,
        settings: ProxySettings | None = None, insecure_agent: IAgent | None = None,
        websocket_handler: UpgradeRenderer | None = None,
        max_client_buffer: int = DEFAULT_MAX_CLIENT_BUFFER,
        write_batch: WriteBatch | None = None,
        write_budget: WriteBudget | None = None,
    ) -> None:
        super().__init__()
        self.routes = routes
        self.router = router
        self.clock = clock
        self.agent = agent
        self.insecure_agent = insecure_agent or agent
        self.settings = settings or ProxySettings()
        self.websocket_handler = websocket_handler
        self.max_client_buffer = max_client_buffer
        # Shared by every stream: one flush per reactor turn. Tests that drive timers with a
        # fake clock still want real turns for output, so they pass their own.
        self.write_batch = write_batch or WriteBatch(clock)
        self.write_budget = write_budget  # [runner] max_buffered_bytes, shared with WebSockets
        self.requests = 0  # client requests received, for the stats socket's activity
        # What sessions wait for from origins (_in_time), cancelled when it is late
        self.origin_deadlines: DeadlineSet[Deferred[Any]] = DeadlineSet(clock, Deferred.cancel)

    @override
    def render(self, request: ProxyRequest) -> bytes | int:
        self.requests += 1
        if getattr(request, "body_too_large", False):
            self._log.info("413 for {path}: body over {limit} bytes",
                           path=url_for_log(request.uri), limit=self.settings.max_request_body)
            return plain(request, 413, "Request body too large.\n")
        if not request.uri.startswith(b"/"):
            # Absolute-form (``http://h/p``), authority-form (CONNECT) and ``*``: this is a
            # reverse proxy, and such a target pasted after the origin's address could name
            # another port (``0/x`` after ``:2808``).
            self._log.info("400 for request target {target!r}: not a path",
                           target=url_for_log(request.uri))
            return plain(request, 400, "Request target must be a path starting with /.\n")
        host = (request.getHeader(b"host") or b"").decode("latin-1")
        path = request.path.decode("utf-8", "replace")
        if (request.getHeader(b"upgrade") or b"").lower() == b"websocket":
            if self.websocket_handler is None:
                return plain(request, 501, "WebSocket is not supported on this port.\n")
            return self.websocket_handler.render(request)
        route = self.routes.table.match(host, path, "http", request.isSecure())
        if route is None:
            self._log.info("no route for {host}{path}", host=host, path=path)
            name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
            return plain(request, 502, f"No route for host: {name}\n")  # Pushpin's words
        request.cross_origin = route.aco or self.settings.auto_cross_origin
        if request.cross_origin and request.method == b"GET":
            try:
                call = parse_jsonp(request.uri, route.jsonp)
                if call is not None and getattr(request, "upload", None) is not None:
                    # a body over 100 kB streams to the origin as it arrives: _body cannot
                    # take its place
                    raise JsonpError("Request body too large for a JSON-P call.")
            except JsonpError as e:
                self._log.info("JSON-P call refused: {reason}", reason=str(e))
                return plain(request, 400, f"{e}\n")
            if call is not None:
                request.take_jsonp(call)
        if route.targets[0].kind == "test":
            return self._render_test(request, route)
        ProxySession(self, request, route).start()
        return server.NOT_DONE_YET

    def _render_test(self, request: ProxyRequest, route: Route) -> bytes | int:
        """Pushpin's built-in ``test`` target, as Pushpin 1.36 answers it."""
        if request.path == b"/":
            return plain(request, 200, "Hello from the Pushpin test handler!\n")
        if request.path == b"/stream":
            if getattr(request, "jsonp", None) is not None:
                return plain(request, 502, "JSON-P is not available for streams.\n")
            instruct = Instruct(
                hold="stream", channels=(Channel("test"),),
                response=Response(200, None, tuple(TEXT_PLAIN), b"[stream opened]\n"),
            )
            HeldStream(request, self.router, self.clock, instruct, _TestOrigin(route),
                       self.max_client_buffer, self.write_batch, self.write_budget).start()
            return server.NOT_DONE_YET
        return plain(request, 404, "no such test resource\n")


class _TestOrigin:
    """The ``test`` target has nothing to re-request."""

    def __init__(self, route: Route) -> None:
        self.route = route

    def retry(self, grip_last: Sequence[Header] = ()) -> None:
        """Nothing to ask again."""

    def fetch_link(self, link: Link, grip_last: Sequence[Header]) -> Deferred[Instruct]:
        raise GripError("the test target has no links")

    def channel_name(self, name: str) -> str:
        return self.route.prefix + name


class _Discard(TwistedProtocol):
    """Takes a response body nobody wants and closes its connection."""

    @override
    def connectionMade(self) -> None:
        stream_transport(self).stopProducing()


class OriginTimeoutError(Exception):
    """The origin did not answer in time."""


class ProxySession:
    """One client request and everything done for it at the origin."""

    _log = Logger()

    def __init__(self, proxy: ProxyResource, request: ProxyRequest, route: Route) -> None:
        self.proxy = proxy
        self.request = request
        self.route = route
        self.gone = False
        self.url = b""
        self._pending: Deferred[Any] | None = None
        self._relay: BodyRelay | None = None
        self._asked_with_last = False
        self._hold: HeldResponse | HeldStream | None = None
        # A GRIP proxy in front of this one gets the origin's instructions to carry out.
        self.trusted = trusted_client(request, proxy.settings, proxy.clock.seconds())
        self.passthrough = route.no_grip or self.trusted
        request.notifyFinish().addBoth(self._finished)

    # -- HoldOwner, what the holds use -----------------------------------------------

    def channel_name(self, name: str) -> str:
        return self.route.prefix + name

    def retry(self, grip_last: Sequence[Header] = ()) -> None:
        if not self.gone:
            self._hold = None
            self._forward(0, grip_last)

    def fetch_link(self, link: Link, grip_last: Sequence[Header]) -> Deferred[Instruct]:
        """GET the link with ``Grip-Last`` only (outbound/origin.py ``link_headers``); a link
        to another host:port than the route's targets is refused (GripError) unless the
        route has ``link_any_host``."""
        url = urljoin(self.url.decode("latin-1"), link.uri)
        target = link_target(url, self.route)
        if target is None and not self.route.link_any_host:
            parts = urlsplit(url)
            raise GripError(f"Grip-Link to {parts.scheme}://{parts.netloc} refused: not one "
                            "of the route's targets (route option link_any_host allows it)")
        headers = link_headers(self.request, self.route, target, self.proxy.settings,
                               self.proxy.clock.seconds(), grip_last)
        agent = (self.proxy.insecure_agent if target is not None and target.insecure
                 else self.proxy.agent)
        return self._ask(b"GET", url.encode("latin-1"), headers, None, agent).addCallback(
            self._read_link_answer)

    def _read_link_answer(self, response: IResponse) -> Deferred[Instruct]:
        if not 200 <= response.code < 300:
            response.deliverBody(_Discard())
            raise GripError(f"Grip-Link answered {response.code}")
        return self._collect(response).addCallback(
            lambda body: self._parse(response, header_pairs(response.headers), body)
        )

    # -- forwarding -----------------------------------------------------------------------

    def start(self) -> None:
        self._forward(0, ())

    @property
    def _target(self) -> RouteTarget:
        return self.route.targets[self._target_index]

    @property
    def _agent(self) -> IAgent:
        return self.proxy.insecure_agent if self._target.insecure else self.proxy.agent

    def _forward(self, index: int, extra: Sequence[Header]) -> None:
        self._target_index = index
        request, target = self.request, self.route.targets[index]
        if target.over_http and not self.trusted and _is_websocket_events(request):
            # As Pushpin: only this proxy (or a trusted one) may speak for a WebSocket.
            self._log.info("websocket-events from {client} refused",
                           client=request.getClientAddress())
            write_response(request, 403, None, TEXT_PLAIN,
                           b"Client not allowed to send WebSocket events directly.\n")
            return
        path = self.route.rewrite_path(request.path.decode("utf-8", "replace"))
        query = request.uri.partition(b"?")
        self.url = origin_url(target, path.encode("utf-8") + query[1] + query[2])
        headers = origin_headers(request, self.route, target, self.proxy.settings,
                                 self.proxy.clock.seconds(), extra)
        d = self._ask(request.method, self.url, headers, self._body())
        d.addCallback(self._got_response)
        d.addErrback(self._origin_failed, index, extra)

    @property
    def _upload(self) -> UploadStream | None:
        return getattr(self.request, "upload", None)

    def _body(self) -> IBodyProducer | None:
        """The client's body for an origin request: the stream, or the buffered body again."""
        if self._upload is not None:
            return self._upload
        body = self.request.content.getvalue()  # at most REPLAY_LIMIT bytes, in memory
        if body or self.request.method in _BODY_METHODS:
            return BytesProducer(body)  # written with the head: one segment, no cooperator
        return None

    def _ask(self, method: bytes, url: bytes, headers: Headers, body: IBodyProducer | None,
             agent: IAgent | None = None) -> Deferred[IResponse]:
        """One origin request; cancelled when the client leaves, and failed with
        OriginTimeoutError when no response head arrives within ``origin_timeout``."""
        d = (agent or self._agent).request(method, url, headers, body)
        return self._in_time(d, "no answer")

    def _in_time(self, d: Deferred[Any], missing: str) -> Deferred[Any]:
        """``d`` (a response head, or a body read whole) is what the session waits for:
        cancelled when the client leaves, and failed with OriginTimeoutError when it has
        not come within ``origin_timeout`` (its canceller closes the origin connection)."""
        self._pending = d
        timeout = self.proxy.settings.origin_timeout
        deadlines = self.proxy.origin_deadlines
        deadlines.add(d, timeout)

        def settled(result: Any) -> Any:
            if self._pending is d:
                self._pending = None
            if not deadlines.discard(d) and isinstance(result, Failure) and not self.gone:
                raise OriginTimeoutError(f"{missing} within {timeout}s")
            return result

        return d.addBoth(settled)

    def _origin_failed(self, failure: Failure, index: int, extra: Sequence[Header]) -> None:
        upload = self._upload
        if (failure.check(ConnectError, DNSLookupError) and index + 1 < len(self.route.targets)
                and (upload is None or not upload.started)):  # a streamed body goes once
            self._log.info("origin {url} unreachable, failing over",
                           url=url_for_log(self.url))
            self._forward(index + 1, extra)
            return
        self._fail(failure)

    def _fail(self, failure: Failure) -> None:
        if self.gone or failure.check(CancelledError):
            return
        reason = (failure.getErrorMessage() if failure.check(GripError)
                  else f"{failure.type.__name__}: {failure.getErrorMessage()}")
        self._log.warn("proxying {method} {url} failed: {reason}",
                       method=self.request.method.decode("latin-1"),
                       url=url_for_log(self.url), reason=reason)
        if self.request.startedWriting:
            stream_transport(self.request.channel).abortConnection()
            return
        jsonp = getattr(self.request, "jsonp", None)
        if jsonp is not None:  # what was collected of the failed answer is not the answer
            jsonp.discard()
            self.request.responseHeaders = Headers()
        if getattr(self.request, "body_too_large", False):  # found out while streaming it
            write_response(self.request, 413, None, TEXT_PLAIN, b"Request body too large.\n")
            return
        text = "Error while proxying to origin."
        if self.route.debug or self.proxy.settings.debug:
            # Pushpin's wording with the route's (or [proxy]) debug option.
            if failure.check(ConnectError, DNSLookupError):
                tried = ", ".join(f"{t.host}:{t.port}" for t in self.route.targets)
                text = f"Unable to connect to any targets. Tried: {tried}"
            elif failure.check(GripError):
                text = f"Failed to parse accept instructions: {reason}"
            else:
                text = f"Error while proxying to origin: {reason}"
        write_response(self.request, 502, None, TEXT_PLAIN, text.encode("utf-8") + b"\n")

    def _got_response(self, response: IResponse) -> Deferred[Any] | None:
        self._pending = None
        if self.gone:
            response.deliverBody(_Discard())
            return None
        headers = header_pairs(response.headers)
        if not self.passthrough and is_instruct(headers):
            if self._upload is not None:
                # As Pushpin: a body too large to keep cannot be re-sent, so no hold.
                response.deliverBody(_Discard())
                self._log.info("GRIP instruction for a request with a streamed body, 400")
                write_response(self.request, 400, None, TEXT_PLAIN,
                               b"Request too large to accept GRIP instruct.\n")
                return None
            instruct = self._collect(response).addCallback(
                lambda body: self._parse(response, headers, body))
            return instruct.addCallback(self._handle_instruct).addErrback(self._fail)
        return self._relay_body(response, headers).addErrback(self._fail)

    def _collect(self, response: IResponse) -> Deferred[bytes]:
        """An answer read whole before the client hears anything (an instruction, a link's
        answer): at most ``max_hold_body`` bytes, complete within ``origin_timeout`` of its
        head, or a trickling origin would hold the client for as long as it likes."""
        collector = BodyCollector(self.proxy.settings.max_hold_body)
        response.deliverBody(collector)
        return self._in_time(collector.done, "body not complete")

    def _parse(self, response: IResponse, headers: list[Header], body: bytes) -> Instruct:
        reason = response.phrase.decode("latin-1") if response.phrase else None
        return parse_instruct(response.code, reason, headers, body,
                              self.proxy.settings.connection_subscription_max)

    # -- plain answers --------------------------------------------------------------------

    def _relay_body(self, response: IResponse, headers: list[Header]) -> Deferred[None]:
        link = None if self.passthrough else parse_link(get(headers, "Grip-Link"))
        drop = ("content-length",) if link else ()
        reason = response.phrase.decode("latin-1") if response.phrase else None
        set_status_and_headers(self.request, response.code, reason,
                               end_to_end(headers, drop, keep_grip=self.trusted))
        # Twisted's client keeps Content-Length apart, as response.length.
        if link is None and response.length != UNKNOWN_LENGTH and self.request.method != b"HEAD":
            self.request.responseHeaders.setRawHeaders(b"content-length",
                                                       [b"%d" % response.length])
        self._relay = BodyRelay(self.request)
        response.deliverBody(self._relay)
        if not self.request.startedWriting:
            # The body is parsed after the head: the head waits for it until the end of
            # this turn (then goes alone: the body may take its time).
            self.request.head_soon(self.proxy.write_batch)
        done = self._relay.done
        if getattr(self.request, "jsonp", None) is not None:
            # Wrapped at the end, so read whole first: the same deadline as _collect. A
            # streamed body goes to the client at the origin's pace and has none.
            done = self._in_time(done, "body not complete")
        return done.addCallback(lambda _: self._after_body(link))

    def _after_body(self, link: Link | None) -> Deferred[Any] | None:
        """A plain body is done: end the response, or follow ``Grip-Link rel=next``."""
        self._relay = None
        if self.gone:
            return None
        if link is None:
            self.request.finish()
            return None
        return self.fetch_link(link, ()).addCallback(self._continue_chain)

    def _continue_chain(self, answer: Instruct) -> Deferred[Any] | None:
        if self.gone:
            return None
        if answer.hold == "stream":
            self._start_hold(answer, send_head=False)
            return None
        if answer.hold == "response":
            raise GripError("a Grip-Link answer cannot be a response hold")
        self.request.write(answer.response.body)
        return self._after_body(answer.next_link)

    # -- instructions ---------------------------------------------------------------------

    def _handle_instruct(self, instruct: Instruct) -> Deferred[Any] | None:
        if self.gone:
            return None
        if instruct.hold is None:
            response = instruct.response
            if instruct.next_link is None:
                write_response(self.request, response.code, response.reason, response.headers,
                               response.body)
                return None
            set_status_and_headers(self.request, response.code, response.reason,
                                   response.headers)
            self.request.write(response.body)
            return self._after_body(instruct.next_link)
        if instruct.hold == "response" and not self._asked_with_last:
            grip_last = self._stale_channels(instruct.channels)
            if grip_last and self.proxy.router.history is not None:
                # Built-in history answers first, the origin only when it cannot
                # (docs/reliability.rst): the hold does both.
                self._asked_with_last = True
                self._start_hold(instruct, send_head=True, behind=grip_last)
                return None
            if grip_last:
                # As Pushpin: ask the origin once more at once, telling it where the client is.
                self._asked_with_last = True
                self._log.debug("prev-id behind on {last}; re-requesting", last=grip_last)
                self._forward(0, grip_last)
                return None
        self._start_hold(instruct, send_head=True)
        return None

    def _stale_channels(self, channels: Sequence[Channel]) -> list[Header]:
        stale = []
        for channel in channels:
            last = self.proxy.router.last_id(self.channel_name(channel.name))
            if channel.prev_id is not None and last is not None and last != channel.prev_id:
                stale.append(("Grip-Last", f"{channel.name}; last-id={channel.prev_id}"))
        return stale

    def _start_hold(self, instruct: Instruct, send_head: bool,
                    behind: Sequence[Header] = ()) -> None:
        proxy = self.proxy
        if instruct.hold == "stream" and getattr(self.request, "jsonp", None) is not None:
            raise GripError("JSON-P is not available for stream holds")
        if instruct.hold == "stream":
            stream = HeldStream(self.request, proxy.router, proxy.clock, instruct, self,
                                proxy.max_client_buffer, proxy.write_batch, proxy.write_budget)
            self._hold = stream
            stream.start(send_head)
        else:
            held = HeldResponse(self.request, proxy.router, proxy.clock, instruct, self)
            self._hold = held
            held.start(behind)

    # -- the client going away ------------------------------------------------------------

    def _finished(self, result: object) -> None:
        self.gone = True
        if isinstance(result, Failure):
            if self._pending is not None:
                self._pending.cancel()
            if self._relay is not None and self._relay.transport is not None:
                stream_transport(self._relay).stopProducing()
        # The hold points back at this session (its origin): drop our end, so the pair is
        # freed by reference counting, not by the cyclic collector (issue 19).
        self._hold = self._relay = self._pending = None

