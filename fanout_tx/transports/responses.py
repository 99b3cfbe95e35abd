"""Answering a client's HTTP request, shared by every transport served over HTTP (the
proxy's own answers, held responses, a WebSocket origin's refusal relayed)."""

from __future__ import annotations

from collections.abc import Sequence

from twisted.web.http import NO_BODY_CODES, RESPONSES
from twisted.web.server import Request

from fanout_tx.core.headers import Header
from fanout_tx.transports.cors import cross_origin_headers

TEXT_PLAIN: list[Header] = [("Content-Type", "text/plain")]


def set_status_and_headers(
    request: Request, code: int, reason: str | None, headers: Sequence[Header],
) -> None:
    """Status line and headers; repeated names kept, Twisted's own defaults replaced. A
    request marked ``cross_origin`` (route ``aco``) also gets the CORS headers."""
    if getattr(request, "cross_origin", False):
        asked = [(n.decode("latin-1"), v.decode("latin-1"))
                 for n, vs in request.requestHeaders.getAllRawHeaders() for v in vs]
        headers = [*headers, *cross_origin_headers(asked, headers)]
    phrase = reason if reason is not None else RESPONSES.get(code, b"Unknown").decode("latin-1")
    request.setResponseCode(code, phrase.encode("latin-1", "replace"))
    grouped: dict[str, list[bytes]] = {}
    for name, value in headers:
        grouped.setdefault(name, []).append(value.encode("latin-1", "replace"))
    for name, values in grouped.items():
        request.responseHeaders.setRawHeaders(name.encode("latin-1", "replace"), values)


def write_response(
    request: Request, code: int, reason: str | None, headers: Sequence[Header], body: bytes,
) -> None:
    """A whole response with a Content-Length, then finish. A 204 or 304 has neither body
    nor Content-Length (RFC 9110 8.6): a client that trusted the length would take the next
    response's bytes as this one's body."""
    set_status_and_headers(request, code, reason, headers)
    if code in NO_BODY_CODES:
        request.responseHeaders.removeHeader(b"content-length")
        body = b""
    else:
        request.responseHeaders.setRawHeaders(b"content-length", [str(len(body)).encode()])
    request.write(body)
    request.finish()


def plain(request: Request, code: int, text: str) -> bytes:
    """A short text/plain answer for errors the server itself produces."""
    set_status_and_headers(request, code, None, TEXT_PLAIN)
    return text.encode("utf-8")
