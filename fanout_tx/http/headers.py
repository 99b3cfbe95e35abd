"""Pure header helpers shared by the proxy and the GRIP parser: hop-by-hop and Grip-* names,
and the small ``value; key=value`` parameter grammar GRIP headers use."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

Header = tuple[str, str]

# Never forwarded in either direction (RFC 9110 7.6.1, plus Pushpin's list).
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection",
    "te", "trailer", "trailers", "transfer-encoding", "upgrade",
})


def is_grip(name: str) -> bool:
    return name.lower().startswith("grip-")


def connection_listed(headers: Iterable[Header]) -> frozenset[str]:
    """Header names a ``Connection`` header marks as hop-by-hop for this message."""
    names = set()
    for name, value in headers:
        if name.lower() == "connection":
            names.update(token.strip().lower() for token in value.split(",") if token.strip())
    return frozenset(names)


def end_to_end(headers: Sequence[Header], drop: Iterable[str] = ()) -> list[Header]:
    """``headers`` without hop-by-hop, Connection-listed, Grip-* and ``drop`` names."""
    skip = HOP_BY_HOP | connection_listed(headers) | {d.lower() for d in drop}
    return [(n, v) for n, v in headers if n.lower() not in skip and not is_grip(n)]


def get(headers: Sequence[Header], name: str) -> list[str]:
    """Every value of ``name`` (case-insensitive), in order."""
    lowered = name.lower()
    return [v for n, v in headers if n.lower() == lowered]


def split_list(value: str) -> list[str]:
    """Split a header value on commas that are outside double quotes and ``<...>``."""
    parts, current, quoted, angled = [], [], False, False
    escaped = False
    for char in value:
        if escaped:
            escaped = False
        elif quoted and char == "\\":
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif not quoted and char == "<":
            angled = True
        elif not quoted and char == ">":
            angled = False
        elif char == "," and not quoted and not angled:
            parts.append("".join(current).strip())
            current = []
            continue
        current.append(char)
    parts.append("".join(current).strip())
    return [p for p in parts if p]


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
    pieces, current, quoted, escaped = [], [], False, False
    for char in item:
        if escaped:
            escaped = False
        elif quoted and char == "\\":
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == ";" and not quoted:
            pieces.append("".join(current))
            current = []
            continue
        current.append(char)
    pieces.append("".join(current))
    first = _unquote(pieces[0])
    params: list[tuple[str, str | None]] = []
    for piece in pieces[1:]:
        if not piece.strip():
            continue
        key, sep, value = piece.partition("=")
        params.append((key.strip().lower(), _unquote(value) if sep else None))
    return first, params
