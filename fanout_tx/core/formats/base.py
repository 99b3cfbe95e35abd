"""The shape every publish format parses into, and the checks the format parsers share."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from fanout_tx.core.headers import (
    connection_listed,
    has_control,
    is_framing,
    is_reason_phrase,
    is_token,
)


class FormatError(ValueError):
    """One format of a published item is invalid; the text names the field and the problem."""


@dataclass(frozen=True)
class Format:
    """One representation of an item for one kind of transport.

    ``content`` is the payload whatever the field was called on the wire (``content``,
    ``content-bin``, ``body``, ``body-bin``), so content filters can rewrite it the same way
    for every format. ``fields`` holds the rest, already validated and typed.
    """

    name: str
    action: str = "send"
    content: bytes | None = None
    fields: Mapping[str, Any] = field(default_factory=dict)
    content_filters: tuple[str, ...] = ()

    def with_content(self, content: bytes) -> Format:
        return replace(self, content=content)


def expect_mapping(value: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise FormatError(f"{what} must be an object")
    return value


def optional_str(obj: Mapping[str, Any], key: str, default: str | None = None) -> str | None:
    value = obj.get(key, default)
    if value is not None and not isinstance(value, str):
        raise FormatError(f"{key} must be a string")
    return value


def optional_reason(obj: Mapping[str, Any], key: str) -> str | None:
    """A reason phrase for a status line: RFC 9112's grammar, or it could split the head."""
    value = optional_str(obj, key)
    if value is not None and not is_reason_phrase(value):
        raise FormatError(f"{key} must be an RFC 9112 reason phrase: no control "
                          "characters, only tab, space, visible ASCII and Latin-1")
    return value


def optional_int(obj: Mapping[str, Any], key: str, low: int, high: int) -> int | None:
    value = obj.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise FormatError(f"{key} must be a whole number from {low} to {high}")
    return value


def choice(obj: Mapping[str, Any], key: str, allowed: tuple[str, ...]) -> str:
    """A string field limited to ``allowed``; the first entry is the default."""
    value = obj.get(key, allowed[0])
    if value not in allowed:
        raise FormatError(f"{key} must be one of {', '.join(allowed)}, got {value!r}")
    return value


def payload(obj: Mapping[str, Any], text_key: str, required: bool,
            raw_bin: bool = False) -> bytes | None:
    """``text_key`` (text) or ``text_key + '-bin'`` (base64), never both.

    A tnetstring's ``-bin`` value arrives as bytes: with ``raw_bin`` (``ws-message``, as
    Pushpin) those are the payload itself; otherwise they are base64 text, as pubcontrol's
    ZeroMQ client sends ``content-bin``/``body-bin`` (which Pushpin reads from JSON only).
    """
    bin_key = text_key + "-bin"
    if text_key in obj and bin_key in obj:
        raise FormatError(f"only one of {text_key} and {bin_key} may be given")
    if text_key in obj:
        value = obj[text_key]
        if isinstance(value, bytes):  # tnetstring input is bytes already
            return value
        if not isinstance(value, str):
            raise FormatError(f"{text_key} must be a string")
        return value.encode("utf-8")
    if bin_key in obj:
        value = obj[bin_key]
        if isinstance(value, bytes) and raw_bin:
            return value
        if not isinstance(value, (str, bytes)):
            raise FormatError(f"{bin_key} must be a base64 string")
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise FormatError(f"{bin_key} is not valid base64") from None
    if required:
        raise FormatError(f"{text_key} or {bin_key} is required")
    return None


def headers(obj: Mapping[str, Any], key: str = "headers") -> tuple[tuple[str, str], ...]:
    """Headers as an object or as a list of [name, value] pairs; order and repeats kept."""
    value = obj.get(key)
    if value is None:
        return ()
    if isinstance(value, Mapping):
        pairs = list(value.items())
    elif isinstance(value, list):
        pairs = value
    else:
        raise FormatError(f"{key} must be an object or a list of [name, value] pairs")
    result = []
    for pair in pairs:
        if (
            not isinstance(pair, (list, tuple))
            or len(pair) != 2
            or not all(isinstance(p, str) for p in pair)
        ):
            raise FormatError(f"{key} entries must be [name, value] strings")
        name, header_value = pair
        if not is_token(name) or has_control(header_value):
            raise FormatError(f"invalid header {name!r}")
        result.append((name, header_value))
    return tuple(result)


def framing_headers(pairs: tuple[tuple[str, str], ...]) -> frozenset[str]:
    """The names in ``pairs`` a publisher may not set (lowercase): framing and hop-by-hop
    headers (``is_framing``) and whatever a ``Connection`` header lists. One rule for every
    format with headers: responses drop them, webhook requests refuse them."""
    listed = connection_listed(pairs)
    return frozenset(n.lower() for n, _v in pairs if is_framing(n) or n.lower() in listed)


def content_filters(obj: Mapping[str, Any]) -> tuple[str, ...]:
    if "content-filters" not in obj:
        return ()
    value = obj["content-filters"]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise FormatError("content-filters must be a list of filter names")
    return tuple(value)
