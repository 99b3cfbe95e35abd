"""Pure codec for ``application/websocket-events`` and the GRIP ``c:`` control messages.

Events are ``NAME\\r\\n`` or ``NAME <hex-len>\\r\\n<bytes>\\r\\n`` back to back (SPEC A7).
Control messages are the JSON objects an origin sends as ``c:``-prefixed TEXT when the
``grip`` WebSocket extension is on. Both parsers return typed values or raise their own
error type (EventsError, ControlError), never anything else, so adapters can close the one
connection with a clear reason.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from fanout_tx.core.codecs.json_input import loads
from fanout_tx.grip.instruct import MAX_REWIND

EVENT_NAMES = frozenset({"OPEN", "TEXT", "BINARY", "PING", "PONG", "CLOSE", "DISCONNECT"})

_NAME = re.compile(rb"[A-Z][A-Z0-9-]*\Z")
_HEX = re.compile(rb"[0-9a-fA-F]{1,8}\Z")


class EventsError(ValueError):
    """A websocket-events body is malformed; the text says where."""


class ControlError(ValueError):
    """A ``c:`` control message is not valid JSON, has an unknown type or a bad field."""


@dataclass(frozen=True)
class Event:
    """One event. ``content`` None means the event had no length (``NAME\\r\\n``)."""

    name: str
    content: bytes | None = None


def encode_events(events: Iterable[Event]) -> bytes:
    parts = []
    for event in events:
        name = event.name.encode("ascii")
        if event.content is None:
            parts.append(name + b"\r\n")
        else:
            parts.append(b"%s %x\r\n%s\r\n" % (name, len(event.content), event.content))
    return b"".join(parts)


def decode_events(data: bytes) -> list[Event]:
    """Every event in ``data``; unknown names are kept (the session ignores them)."""
    events = []
    pos = 0
    while pos < len(data):
        end = data.find(b"\r\n", pos)
        if end == -1:
            raise EventsError(f"event line at byte {pos} has no CRLF")
        name, sep, length_text = data[pos:end].partition(b" ")
        if not _NAME.match(name):
            raise EventsError(f"invalid event name at byte {pos}: {name[:32]!r}")
        pos = end + 2
        if not sep:
            events.append(Event(name.decode("ascii")))
            continue
        if not _HEX.match(length_text):
            raise EventsError(f"invalid hex length for {name.decode()}: {length_text[:32]!r}")
        length = int(length_text, 16)
        content = data[pos : pos + length]
        if len(content) < length or data[pos + length : pos + length + 2] != b"\r\n":
            raise EventsError(f"{name.decode()} content is shorter than its length {length}")
        events.append(Event(name.decode("ascii"), content))
        pos += length + 2
    return events


def is_utf8(data: bytes) -> bool:
    """What a text frame must be (RFC 6455 8.1)."""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def close_content(code: int | None, reason: str = "") -> bytes | None:
    """CLOSE event content: 2-byte big-endian code + UTF-8 reason; None without a code."""
    if code is None:
        return None
    return code.to_bytes(2, "big") + reason.encode("utf-8")


def parse_close(content: bytes | None) -> tuple[int | None, str]:
    if not content or len(content) < 2:
        return None, ""
    return int.from_bytes(content[:2], "big"), content[2:].decode("utf-8", "replace")


# -- the grip extension --------------------------------------------------------------------


def grip_parameters(extension_headers: Iterable[str]) -> dict[str, str] | None:
    """The ``grip`` extension's parameters (``name=value``, quotes stripped) when ``grip`` is
    among the ``Sec-WebSocket-Extensions`` values, else None."""
    for header in extension_headers:
        for offer in header.split(","):
            name, *params = (p.strip() for p in offer.split(";"))
            if name != "grip":
                continue
            found = {}
            for param in params:
                key, sep, value = param.partition("=")
                if sep:
                    found[key.strip()] = value.strip().strip('"')
            return found
    return None


def grip_message_prefix(extension_headers: Iterable[str]) -> str | None:
    """The message prefix when ``grip`` is on (default ``m:``), else None."""
    params = grip_parameters(extension_headers)
    return None if params is None else params.get("message-prefix", "m:")


def grip_history_id_prefix(extension_headers: Iterable[str]) -> str | None:
    """``history-id-prefix="..."`` among the ``grip`` parameters (a fanout_tx extension,
    docs/reliability.rst): each published message with an id is then preceded by a text
    message of the prefix and the id, so the client knows where to resume. None when
    absent."""
    params = grip_parameters(extension_headers)
    return None if params is None else params.get("history-id-prefix")


# -- control messages ----------------------------------------------------------------------

MESSAGE_TYPES = ("text", "binary", "ping", "pong")


@dataclass(frozen=True)
class Subscribe:
    channel: str
    filters: tuple[str, ...] = ()
    # Built-in history (docs/reliability.rst), a fanout_tx extension: replay the items
    # after this id, or the newest N, before live ones; ignored with [history] off.
    since: str | None = None
    rewind: int = 0



@dataclass(frozen=True)
class Unsubscribe:
    channel: str


@dataclass(frozen=True)
class Detach:
    pass


@dataclass(frozen=True)
class Session:
    """Accepted for compatibility; sessions are not tracked across connections."""

    id: str | None = None


@dataclass(frozen=True)
class SetMeta:
    name: str
    value: str  # "" deletes


@dataclass(frozen=True)
class KeepAlive:
    """``content`` None turns keep-alives off."""

    content: bytes | None
    message_type: str = "text"
    timeout: int = 0
    mode: str = "idle"


@dataclass(frozen=True)
class SendDelayed:
    content: bytes
    message_type: str = "text"
    timeout: int = 0


@dataclass(frozen=True)
class FlushDelayed:
    pass


ControlMessage = (
    Subscribe | Unsubscribe | Detach | Session | SetMeta | KeepAlive | SendDelayed | FlushDelayed
)


def _string(obj: dict[str, Any], key: str, required: bool) -> str | None:
    value = obj.get(key)
    if value is None:
        if required:
            raise ControlError(f"'{key}' is required")
        return None
    if not isinstance(value, str):
        raise ControlError(f"'{key}' must be a string")
    return value


def _content(obj: dict[str, Any]) -> tuple[bytes | None, str | None]:
    """(content, implied message type) from ``content-bin`` (base64) or ``content``."""
    if "content-bin" in obj:
        value = obj["content-bin"]
        if not isinstance(value, str):
            raise ControlError("'content-bin' must be a base64 string")
        try:
            return base64.b64decode(value, validate=True), "binary"
        except (binascii.Error, ValueError):
            raise ControlError("'content-bin' is not valid base64") from None
    if "content" in obj:
        value = obj["content"]
        if not isinstance(value, str):
            raise ControlError("'content' must be a string")
        return value.encode("utf-8"), "text"
    return None, None


def _message_type(obj: dict[str, Any], implied: str | None) -> str:
    value = _string(obj, "message-type", required=False)
    if value is None:
        return implied or "text"
    if value not in MESSAGE_TYPES:
        raise ControlError(f"'message-type' must be one of {', '.join(MESSAGE_TYPES)}")
    return value


# The longest timer a control message may set (a day); JSON integers are unbounded.
MAX_TIMEOUT = 86_400


def _timeout(obj: dict[str, Any]) -> int:
    value = obj.get("timeout", 0)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_TIMEOUT:
        raise ControlError(f"'timeout' must be a whole number of seconds, 0 to {MAX_TIMEOUT}")
    return value


def parse_control(payload: bytes) -> ControlMessage:
    """One control message (the JSON after ``c:``)."""
    try:
        obj = loads(payload)
    except ValueError:
        raise ControlError("control message is not valid JSON") from None
    if not isinstance(obj, dict):
        raise ControlError("control message must be a JSON object")
    kind = _string(obj, "type", required=True)
    if kind in ("subscribe", "unsubscribe"):
        channel = _string(obj, "channel", required=True)
        if not channel:
            raise ControlError("'channel' must not be empty")
        if kind == "unsubscribe":
            return Unsubscribe(channel)
        filters = obj.get("filters", [])
        if not isinstance(filters, list) or not all(isinstance(f, str) for f in filters):
            raise ControlError("'filters' must be a list of strings")
        since = _string(obj, "since", required=False) or None
        rewind = obj.get("rewind", 0)
        if isinstance(rewind, bool) or not isinstance(rewind, int) or not (
                0 <= rewind <= MAX_REWIND):
            raise ControlError(f"'rewind' must be a whole number, 0 to {MAX_REWIND}")
        return Subscribe(channel, tuple(filters), since, rewind)
    if kind == "detach":
        return Detach()
    if kind == "session":
        return Session(_string(obj, "id", required=False))
    if kind == "set-meta":
        name = _string(obj, "name", required=True)
        if not name:
            raise ControlError("'name' must not be empty")
        return SetMeta(name, _string(obj, "value", required=False) or "")
    if kind in ("keep-alive", "send-delayed"):
        content, implied = _content(obj)
        message_type = _message_type(obj, implied)
        if message_type == "text" and content is not None and not is_utf8(content):
            raise ControlError("content of a text message must be UTF-8")
        timeout = _timeout(obj)
        if kind == "send-delayed":
            if content is None:
                raise ControlError("send-delayed needs 'content' or 'content-bin'")
            return SendDelayed(content, message_type, timeout)
        mode = _string(obj, "mode", required=False) or "idle"
        if mode not in ("idle", "interval"):
            raise ControlError("'mode' must be idle or interval")
        return KeepAlive(content, message_type, timeout, mode)
    if kind == "flush-delayed":
        return FlushDelayed()
    raise ControlError(f"unknown control message type {kind!r}")
