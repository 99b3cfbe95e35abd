"""Parser for the ``ws-message`` publish format (SPEC A4)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fanout_tx.core.formats.base import (
    Format,
    FormatError,
    choice,
    content_filters,
    optional_int,
    optional_str,
    payload,
)

_TYPES = ("text", "binary", "ping", "pong")
MAX_CLOSE_REASON = 123  # bytes: a close frame's payload is at most 125 (RFC 6455 5.5)


def is_wire_close_code(code: int) -> bool:
    """A close code an endpoint may send (RFC 6455 7.4 and the IANA registry): 1000-1003,
    1007-1014, 3000-4999. 1004-1006 and 1015 are reserved or never sent, the rest below
    3000 unassigned: a browser fails the connection on any of them."""
    return 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999


def wire_close(code: int | None, reason: str) -> tuple[int | None, bytes]:
    """The close frame that may be sent for ``code`` and ``reason`` (from an origin, or a
    client's close passed on): no code or reason when the code may not be sent, the reason
    cut to 123 bytes at a character boundary (a cut character is invalid UTF-8, which the
    peer fails the connection for)."""
    if code is None or not is_wire_close_code(code):
        return None, b""
    raw = reason.encode("utf-8")[:MAX_CLOSE_REASON]
    return code, raw.decode("utf-8", "ignore").encode("utf-8")


def parse_ws_message(obj: Mapping[str, Any]) -> Format:
    action = choice(obj, "action", ("send", "close", "hint"))
    if action == "hint":
        # pushpin-publish --hint sends it; Pushpin accepts it and WebSockets have nothing to
        # re-request, so it is accepted and ignored.
        return Format("ws-message", "hint")
    if action == "close":
        code = optional_int(obj, "code", 1000, 4999)
        if code is not None and not is_wire_close_code(code):
            raise FormatError(f"code {code} may not be sent in a close frame (RFC 6455 "
                              "7.4): use 1000-1003, 1007-1014 or 3000-4999")
        reason = optional_str(obj, "reason") or ""
        if len(reason.encode("utf-8")) > MAX_CLOSE_REASON:
            raise FormatError(f"reason must be at most {MAX_CLOSE_REASON} bytes of UTF-8")
        return Format("ws-message", "close", None, {"code": code, "reason": reason})
    # As Pushpin: content-bin without an explicit type means a binary message.
    default_type = "binary" if "content-bin" in obj and "type" not in obj else "text"
    message_type = obj.get("type", default_type)
    if message_type not in _TYPES:
        raise FormatError(f"type must be one of {', '.join(_TYPES)}, got {message_type!r}")
    content = payload(obj, "content", required=message_type in ("text", "binary"), raw_bin=True)
    content = content if content is not None else b""
    if message_type == "text":
        try:
            content.decode("utf-8")
        except UnicodeDecodeError:
            raise FormatError("text message content must be UTF-8") from None
    if message_type in ("ping", "pong") and len(content) > 125:
        raise FormatError("ping/pong content must be at most 125 bytes")
    return Format("ws-message", "send", content, {"type": message_type}, content_filters(obj))
