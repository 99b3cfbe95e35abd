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


def parse_ws_message(obj: Mapping[str, Any]) -> Format:
    action = choice(obj, "action", ("send", "close", "hint"))
    if action == "hint":
        # pushpin-publish --hint sends it; Pushpin accepts it and WebSockets have nothing to
        # re-request, so it is accepted and ignored.
        return Format("ws-message", "hint")
    if action == "close":
        code = optional_int(obj, "code", 1000, 4999)
        reason = optional_str(obj, "reason") or ""
        if len(reason.encode("utf-8")) > 123:
            raise FormatError("reason must be at most 123 bytes")
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
