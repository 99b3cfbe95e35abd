"""Parsers for the ``http-response`` and ``http-stream`` publish formats (SPEC A4)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fanout_tx.core.formats.base import (
    Format,
    choice,
    content_filters,
    framing_headers,
    headers,
    optional_int,
    optional_reason,
    payload,
)


def parse_http_response(obj: Mapping[str, Any]) -> Format:
    """Framing and hop-by-hop headers are dropped, as Pushpin drops ``Content-Length``,
    ``Transfer-Encoding`` and ``Connection``: the server frames the response it writes. A
    code outside 200-599 is refused: a 1xx would make the body the client's real response."""
    action = choice(obj, "action", ("send", "hint"))
    if action == "hint":
        # As Pushpin: the send-only fields of a hint are ignored, not checked.
        return Format("http-response", "hint")
    body = payload(obj, "body", required=False)
    if body is None:
        body = b""
    pairs = headers(obj)
    dropped = framing_headers(pairs)
    fields = {
        "code": optional_int(obj, "code", 200, 599) or 200,
        "reason": optional_reason(obj, "reason"),
        "headers": tuple((n, v) for n, v in pairs if n.lower() not in dropped),
    }
    return Format("http-response", action, body, fields, content_filters(obj))


def parse_http_stream(obj: Mapping[str, Any]) -> Format:
    action = choice(obj, "action", ("send", "close", "hint"))
    if action != "send":
        # As Pushpin, which reads content only for a send: the npm HttpStreamFormat(null, true)
        # sends {"action": "close", "content": ""}.
        return Format("http-stream", action)
    content = payload(obj, "content", required=True)
    return Format("http-stream", action, content, {}, content_filters(obj))
