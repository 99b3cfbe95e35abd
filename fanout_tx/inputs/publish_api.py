"""The HTTP publish port (SPEC A5): ``/publish/``, ``/recover``, ``/`` and mounted children.

Other transports add their own pages to this port with ``PublishRoot.mount`` (webhooks,
metrics, health). Status codes and texts follow Pushpin 1.36's handler, observed on Debian's
package: ``Published``, ``Updated``, ``Method not allowed: GET.``, ``Request body too large.``
(Pushpin answers the latter with 400; here it is 413, which SPEC A5 allows).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from io import BytesIO
from typing import Protocol, cast

from twisted.internet.defer import Deferred, gatherResults, maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from typing_extensions import override

from fanout_tx.core.bus import BusUnavailableError
from fanout_tx.core.interfaces import IBus
from fanout_tx.core.items import PublishError, parse_items_json
from fanout_tx.inputs.publish_auth import BearerAuth
from fanout_tx.ops.deadlines import DeadlineChannel

PublishBarrier = Callable[[], Deferred[bool]]


class Recovers(Protocol):
    """What ``/recover`` asks: a Router, or the machine's fan-out to its workers."""

    def recover_all(self) -> int: ...

_Headers = Iterable[tuple[bytes, bytes]]


def _peer(request: Request) -> str:
    address = request.getClientAddress()
    host = getattr(address, "host", None)
    return f"{host}:{address.port}" if host is not None else str(address)


def _wants_json(request: Request) -> bool:
    accept = request.getHeader(b"accept") or b""
    return any(part.split(b";")[0].strip() == b"application/json" for part in accept.split(b","))


def _text(request: Request, code: int, text: str, headers: _Headers = ()) -> bytes:
    """Set a one-line text/plain answer on ``request`` and return its body."""
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"text/plain")
    for name, value in headers:
        request.setHeader(name, value)
    return (" ".join(text.splitlines()) + "\n").encode("utf-8")


def _success(request: Request, message: str) -> bytes:
    """200 with ``message`` as text, or as ``{"message": ...}`` when JSON is accepted."""
    if _wants_json(request):
        request.setResponseCode(200)
        request.setHeader(b"content-type", b"application/json")
        return json.dumps({"message": message}, separators=(",", ":")).encode("utf-8") + b"\n"
    return _text(request, 200, message)


def _method_not_allowed(request: Request, allowed: bytes) -> bytes:
    method = request.method.decode("latin-1")
    return _text(request, 405, f"Method not allowed: {method}.", ((b"allow", allowed),))


def _finish(request: Request, body: bytes) -> None:
    """Complete a deferred answer (with a length, as a synchronous one would have)."""
    request.setHeader(b"content-length", b"%d" % len(body))
    request.write(body)
    request.finish()


class TextPage(Resource):
    """A fixed one-line answer for any method and any path below it (404, 401, 413)."""

    isLeaf = True

    def __init__(self, code: int, text: str, headers: _Headers = ()) -> None:
        super().__init__()
        self._code = code
        self._text = text
        self._headers = tuple(headers)

    @override
    def render(self, request: Request) -> bytes:
        return _text(request, self._code, self._text, self._headers)


class LimitedRequest(Request):
    """Keeps at most the site's ``max_body_size`` body bytes. Past it the body is only counted
    and dropped, so an oversized upload costs no memory, and the request gets a 413."""

    body_too_large = False
    _body_size = 0
    channel: DeadlineChannel  # PublishSite.protocol
    # Twisted declares ``content = None`` (documented: a BinaryIO); here always a BytesIO
    content: BytesIO  # type: ignore[assignment]

    @property
    def max_body_size(self) -> int:
        return cast(PublishSite, self.channel.site).max_body_size

    @override
    def gotLength(self, length: int | None) -> None:
        # Bounded by the limit, so memory is fine (the base class spools big bodies to disk).
        self.content = BytesIO()
        if length is not None and length > self.max_body_size:
            self.body_too_large = True

    @override
    def handleContentChunk(self, data: bytes) -> None:
        if self.body_too_large:
            return
        self._body_size += len(data)
        if self._body_size > self.max_body_size:
            self.body_too_large = True
            self.content = BytesIO()
            return
        self.content.write(data)


class PublishSite(Site):
    """The publish port's Site (and the metrics listener's): bounded bodies, bodies never
    parsed as forms (Pushpin reads JSON whatever the Content-Type), no tracebacks to
    clients, no per-request access log, and the default request deadlines (deadlines.py)."""

    noisy = False
    displayTracebacks = False
    requestFactory = LimitedRequest
    # HTTP/1.1 only, as the port has no TLS. Twisted types ``protocol`` as a factory of its
    # HTTP/1.1-or-2 wrapper, though a channel class is what Site.buildProtocol needs.
    protocol = DeadlineChannel  # type: ignore[assignment]

    def __init__(self, root: IResource, max_body_size: int, reactor: IReactorTime) -> None:
        super().__init__(root, parsePOSTFormSubmission=False, reactor=reactor)
        self.max_body_size = max_body_size

    @override
    def log(self, request: http.Request) -> None:
        """No access log: a line per publish would flood the log at publish rates."""


class PublishResource(Resource):
    """``POST /publish`` and ``/publish/``: ``{"items": [...]}``, all valid or none published."""

    isLeaf = True
    _log = Logger()

    def __init__(self, bus: IBus, barriers: list[PublishBarrier]) -> None:
        super().__init__()
        self._bus = bus
        self._barriers = barriers
        self.rejected = 0  # refused requests, for fanout_publish_errors_total{input="http"}

    @override
    def render(self, request: Request) -> bytes | int:
        if request.postpath not in ([], [b""]):
            return _text(request, 404, "Not Found")
        if request.method != b"POST":
            return _method_not_allowed(request, b"POST")
        try:
            # Twisted declares Request.content = None (documented: a BinaryIO)
            items = parse_items_json(request.content.read())  # type: ignore[attr-defined]
        except PublishError as e:
            self.rejected += 1
            self._log.info("publish request rejected from {peer}: {reason}",
                           peer=_peer(request), reason=str(e))
            return _text(request, 400, str(e))
        except Exception:  # a parser bug: still this body's error, and a retry won't help
            self.rejected += 1
            self._log.failure("publish request from {peer} could not be parsed",
                              peer=_peer(request))
            return _text(request, 400, "Invalid item: it could not be parsed.")
        lost: list[Failure] = []
        request.notifyFinish().addErrback(lost.append)
        done = (maybeDeferred(self._bus.publish, items, "http")
                .addCallback(lambda _: self._wait_for_barriers())
                .addCallbacks(lambda _: _success(request, "Published"),
                              lambda failure: self._failed(request, failure)))
        done.addCallback(lambda body: None if lost else _finish(request, body))
        done.addErrback(lambda failure: self._log.failure("publish response failed", failure))
        return NOT_DONE_YET

    def _wait_for_barriers(self) -> Deferred[None]:
        """Hold the answer until every transport that persists deliveries has stored them."""

        def check(results: list[bool]) -> None:
            if not all(results):
                raise BusUnavailableError("webhook deliveries could not be stored")

        return gatherResults([barrier() for barrier in self._barriers]).addCallback(check)

    def _failed(self, request: Request, failure: Failure) -> bytes:
        if failure.check(BusUnavailableError):
            reason = str(failure.value) or "the message bus is unavailable"
            self._log.warn("publish failed, bus unavailable: {reason}", reason=reason)
            return _text(request, 503, f"Service unavailable: {reason}")
        self._log.failure("publish failed", failure)
        return _text(request, 500, "Internal error while publishing.")


class RecoverResource(Resource):
    """``POST /recover``: every held session re-requests its origin (as Pushpin's)."""

    isLeaf = True
    _log = Logger()

    def __init__(self, router: Recovers) -> None:
        super().__init__()
        self._router = router

    @override
    def render(self, request: Request) -> bytes:
        if request.method != b"POST":
            return _method_not_allowed(request, b"POST")
        count = self._router.recover_all()
        self._log.info("recover requested by {peer}: {count} sessions", peer=_peer(request),
                       count=count)
        return _success(request, "Updated")


class PublishRoot(Resource):
    """The publish port's root. Every child needs auth (when a key is set) except ``GET /``
    and children mounted ``public``; bodies over the size limit get 413 everywhere."""

    _log = Logger()

    def __init__(self, bus: IBus, router: Recovers, auth: BearerAuth) -> None:
        super().__init__()
        self._auth = auth
        self._public: set[bytes] = set()
        self._barriers: list[PublishBarrier] = []
        self.putChild(b"", TextPage(200, "fanout_tx publish API"))
        self.publish = PublishResource(bus, self._barriers)  # its ``rejected``, for /metrics
        self.putChild(b"publish", self.publish)
        self.putChild(b"recover", RecoverResource(router))

    def mount(self, name: bytes, resource: IResource, public: bool = False) -> None:
        """Serve ``resource`` at ``/name`` on this port; ``public`` skips auth (metrics)."""
        if name in self.children:
            raise ValueError(f"{name!r} is already mounted on the publish port")
        self.putChild(name, resource)
        if public:
            self._public.add(name)

    def add_publish_barrier(self, barrier: PublishBarrier) -> None:
        """``POST /publish`` answers only once ``barrier()`` fires True (False -> 503)."""
        self._barriers.append(barrier)

    @override
    def getChild(self, path: bytes, request: Request) -> IResource:
        return TextPage(404, "Not Found")

    @override
    def getChildWithDefault(self, path: bytes, request: Request) -> IResource:
        index = path == b"" and request.method in (b"GET", b"HEAD")
        if not index and path not in self._public:
            refusal = self._auth.refusal(request)
            if refusal is not None:
                self._log.warn("publish API request refused from {peer}: {reason}",
                               peer=_peer(request), reason=refusal)
                return TextPage(401, refusal, ((b"www-authenticate", b"Bearer"),))
        if isinstance(request, LimitedRequest) and request.body_too_large:
            self._log.info("publish API request from {peer} rejected: body over {limit} bytes",
                           peer=_peer(request), limit=request.max_body_size)
            if path == b"publish":  # a refused publish, in fanout_publish_errors_total
                self.publish.rejected += 1
            return TextPage(413, "Request body too large.")
        return super().getChildWithDefault(path, request)
