"""Pure tnetstring codec (the encoding Pushpin's ZeroMQ interfaces use).

``LEN:DATA`` followed by a type tag: ``,`` bytes, ``#`` integer, ``^`` float, ``!`` boolean,
``~`` null, ``}`` dictionary, ``]`` list. Decoding returns bytes for strings; callers decide
what is text.
"""

from __future__ import annotations

from typing import Any


class TnetstringError(ValueError):
    """The input is not a well-formed tnetstring."""


_MAX_LENGTH_DIGITS = 9


def _split(data: bytes) -> tuple[bytes, int, bytes]:
    colon = data.find(b":", 0, _MAX_LENGTH_DIGITS + 1)
    if colon <= 0 or not data[:colon].isdigit():
        raise TnetstringError("missing or invalid length prefix")
    length = int(data[:colon])
    end = colon + 1 + length
    if end >= len(data):
        raise TnetstringError("truncated tnetstring")
    return data[colon + 1 : end], data[end], data[end + 1 :]


def _decode(data: bytes) -> tuple[Any, bytes]:
    payload, tag, rest = _split(data)
    if tag == ord(","):
        return payload, rest
    if tag == ord("#"):
        try:
            return int(payload), rest
        except ValueError:
            raise TnetstringError("invalid integer") from None
    if tag == ord("^"):
        try:
            return float(payload), rest
        except ValueError:
            raise TnetstringError("invalid float") from None
    if tag == ord("!"):
        if payload not in (b"true", b"false"):
            raise TnetstringError("invalid boolean")
        return payload == b"true", rest
    if tag == ord("~"):
        if payload:
            raise TnetstringError("null with content")
        return None, rest
    if tag == ord("]"):
        items = []
        while payload:
            value, payload = _decode(payload)
            items.append(value)
        return items, rest
    if tag == ord("}"):
        mapping = {}
        while payload:
            key, payload = _decode(payload)
            if not isinstance(key, bytes):
                raise TnetstringError("dictionary key is not a string")
            if not payload:
                raise TnetstringError("dictionary key without value")
            mapping[key], payload = _decode(payload)
        return mapping, rest
    raise TnetstringError(f"unknown type tag {chr(tag)!r}")


def loads(data: bytes) -> Any:
    """Decode exactly one tnetstring; trailing bytes are an error."""
    try:
        value, rest = _decode(data)
    except RecursionError:
        raise TnetstringError("nesting too deep") from None
    if rest:
        raise TnetstringError("trailing data after tnetstring")
    return value


def dumps(value: Any) -> bytes:
    """Encode str (as UTF-8), bytes, int, float, bool, None, list and dict."""
    if value is None:
        return b"0:~"
    if isinstance(value, bool):
        body, tag = (b"true" if value else b"false"), b"!"
    elif isinstance(value, int):
        body, tag = str(value).encode(), b"#"
    elif isinstance(value, float):
        body, tag = repr(value).encode(), b"^"
    elif isinstance(value, str):
        body, tag = value.encode("utf-8"), b","
    elif isinstance(value, bytes):
        body, tag = value, b","
    elif isinstance(value, (list, tuple)):
        body, tag = b"".join(dumps(v) for v in value), b"]"
    elif isinstance(value, dict):
        body = b"".join(dumps(k) + dumps(v) for k, v in value.items())
        tag = b"}"
    else:
        raise TypeError(f"cannot encode {type(value).__name__} as tnetstring")
    return str(len(body)).encode() + b":" + body + tag
