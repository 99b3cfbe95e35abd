"""Pure header helpers shared by the proxy and the GRIP parser: hop-by-hop and Grip-* names,
and the small ``value; key=value`` parameter grammar GRIP headers use."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

Header = tuple[str, str]

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110 token, ASCII only
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # CR, LF, NUL and the rest but tab
# RFC 9112 4: reason-phrase = 1*( HTAB / SP / VCHAR / obs-text ), obs-text being 0x80-0xFF.
_REASON = re.compile(r"[\t \x21-\x7e\x80-\xff]*")

# Never forwarded in either direction (RFC 9110 7.6.1, plus Pushpin's list).
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection",
    "te", "trailer", "trailers", "transfer-encoding", "upgrade",
})


def is_framing(name: str) -> bool:
    """A header only this server may set on a message it writes: hop-by-hop, ``Proxy-*`` or
    ``Content-Length``. One a publisher chose could frame a second, forged response."""
    lowered = name.lower()
    return lowered in HOP_BY_HOP or lowered == "content-length" or lowered.startswith("proxy-")


def is_token(name: str) -> bool:
    """A valid header name (an RFC 9110 token)."""
    return _TOKEN.fullmatch(name) is not None


def has_control(value: str) -> bool:
    """A control character (tab aside), which would split or break a message head."""
    return _CONTROL.search(value) is not None


def is_reason_phrase(reason: str) -> bool:
    """RFC 9112's reason-phrase grammar (empty allowed): anything else could split the status
    line into a forged header, so every reason from an origin, GRIP or a publish is checked."""
    return _REASON.fullmatch(reason) is not None


def is_grip(name: str) -> bool:
    return name.lower().startswith("grip-")


def connection_listed(headers: Iterable[Header]) -> frozenset[str]:
    """Header names a ``Connection`` header marks as hop-by-hop for this message."""
    names: set[str] = set()
    for name, value in headers:
        if name.lower() == "connection":
            names.update(token.strip().lower() for token in value.split(",") if token.strip())
    return frozenset(names)


def end_to_end(headers: Sequence[Header], drop: Iterable[str] = (),
               keep_grip: bool = False) -> list[Header]:
    """``headers`` without hop-by-hop, Connection-listed, ``drop`` and (unless ``keep_grip``,
    for a trusted GRIP proxy in front) Grip-* names."""
    skip = HOP_BY_HOP | connection_listed(headers) | {d.lower() for d in drop}
    return [(n, v) for n, v in headers
            if n.lower() not in skip and (keep_grip or not is_grip(n))]


def get(headers: Sequence[Header], name: str) -> list[str]:
    """Every value of ``name`` (case-insensitive), in order."""
    lowered = name.lower()
    return [v for n, v in headers if n.lower() == lowered]


def _split_outside_quotes(value: str, separator: str, angle_brackets: bool) -> list[str]:
    """Split on ``separator`` where it is outside double quotes (and, when asked, outside
    ``<...>``, which holds Grip-Link URIs)."""
    parts: list[str] = []
    current: list[str] = []
    quoted = angled = escaped = False
    for char in value:
        if escaped:
            escaped = False
        elif quoted and char == "\\":
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif angle_brackets and not quoted and char in "<>":
            angled = char == "<"
        elif char == separator and not quoted and not angled:
            parts.append("".join(current))
            current = []
            continue
        current.append(char)
    parts.append("".join(current))
    return parts


def split_list(value: str) -> list[str]:
    """Split a header value on commas that are outside double quotes and ``<...>``."""
    return [p.strip() for p in _split_outside_quotes(value, ",", True) if p.strip()]


def _unquote(text: str) -> str:
    text = text.strip()
    if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
        out, escaped = [], False
        for char in text[1:-1]:
            if escaped or char != "\\":
                out.append(char)
                escaped = False
            else:
                escaped = True
        return "".join(out)
    return text


def split_params(item: str) -> tuple[str, list[tuple[str, str | None]]]:
    """``first; k=v; k2="v 2"; flag`` -> (first, [(k, v), (k2, "v 2"), (flag, None)])."""
    pieces = _split_outside_quotes(item, ";", False)
    first = _unquote(pieces[0])
    params: list[tuple[str, str | None]] = []
    for piece in pieces[1:]:
        if not piece.strip():
            continue
        key, sep, value = piece.partition("=")
        params.append((key.strip().lower(), _unquote(value) if sep else None))
    return first, params
