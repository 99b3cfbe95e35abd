"""JSON from outside the process: one parse whose every failure is a ValueError.

``json.loads`` raises RecursionError, not ValueError, for input nested too deep (a few
thousand ``[``); each caller would otherwise have to remember it, and one that forgot
answered such input with a 500 or a traceback.

``json.loads`` also accepts lone surrogates (``"\\ud800"``, or the bytes ``ED A0 80``): the
result is a str that cannot be encoded, so whatever writes it later (a header, a ZeroMQ
subscription, a body) raises far from the input that let it in. They are refused here, for
every JSON input at once.
"""

from __future__ import annotations

import json
from typing import Any

# Only a backslash escape, or bytes json.loads decodes with surrogatepass (UTF-8-encoded
# surrogates start with 0xED; UTF-16/32 input has a NUL in its first 4 bytes), can make a
# lone surrogate: input with none of them (one memchr each) skips the walk.
_MAY_HOLD = (b"\\", b"\xed")


class LoneSurrogateError(ValueError):
    """A JSON string holds a lone surrogate: valid JSON syntax, but not Unicode text."""


def loads(data: str | bytes) -> Any:
    """``json.loads``; ValueError for anything malformed, nesting too deep and lone
    surrogates (LoneSurrogateError) included."""
    try:
        document = json.loads(data)
    except RecursionError:
        raise ValueError("JSON nested too deep") from None
    if _may_hold_surrogates(data):
        _refuse_surrogates(document)
    return document


def _may_hold_surrogates(data: str | bytes) -> bool:
    if isinstance(data, str):
        return "\\" in data or not data.isascii()
    return b"\x00" in data[:4] or any(marker in data for marker in _MAY_HOLD)


def _refuse_surrogates(document: Any) -> None:
    """Walk every key and string (iteratively: the depth is the input's). ASCII strings
    are text; others are encoded, which finds a surrogate at C speed."""
    stack = [document]
    while stack:
        value = stack.pop()
        if isinstance(value, str):
            if not value.isascii():
                try:
                    value.encode("utf-8")
                except UnicodeEncodeError as e:
                    raise LoneSurrogateError(
                        f"a string holds a lone surrogate (\\u{ord(value[e.start]):04x}), "
                        "which is not Unicode text") from None
        elif isinstance(value, dict):
            stack.extend(value.keys())
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
