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
import re
from typing import Any

# What can make a lone surrogate: a \uD800-\uDFFF escape, or UTF-8-encoded surrogates
# (json.loads decodes bytes with surrogatepass). Valid pairs match too; the walk decides.
_MAYBE_SURROGATE_BYTES = re.compile(rb"\\u[dD][89a-fA-F]|\xed[\xa0-\xbf]")
_MAYBE_SURROGATE_TEXT = re.compile(r"\\u[dD][89a-fA-F]|[\ud800-\udfff]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")


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
    """A cheap scan of the raw input, so the common case skips the walk. UTF-16/32 input
    (NUL bytes where JSON text starts) is always walked."""
    if isinstance(data, str):
        return _MAYBE_SURROGATE_TEXT.search(data) is not None
    return b"\x00" in data[:4] or _MAYBE_SURROGATE_BYTES.search(data) is not None


def _refuse_surrogates(document: Any) -> None:
    """Walk every key and string (iteratively: the depth is the input's)."""
    stack = [document]
    while stack:
        value = stack.pop()
        if isinstance(value, str):
            found = _SURROGATE.search(value)
            if found is not None:
                raise LoneSurrogateError(
                    f"a string holds a lone surrogate (\\u{ord(found.group()):04x}), "
                    "which is not Unicode text")
        elif isinstance(value, dict):
            stack.extend(value.keys())
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
