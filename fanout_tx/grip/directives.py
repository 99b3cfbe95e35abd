"""Pushpin's ``%`` directive grammar, shared by the content filters and ``id_format``.

A template is copied byte for byte except for directives:

- ``%%`` is a literal ``%``;
- ``%X`` (``X`` an ASCII letter) is directive ``X`` without an argument;
- ``%(ARG)X`` is directive ``X`` with ``ARG``; inside the parentheses ``\\c`` stands for
  ``c`` (so ``\\)`` and ``\\\\`` can be written); an empty ``()`` means no argument.

Anything else after a ``%`` (end of text, another character, an unterminated field) is an
error, as is a directive the caller's handler rejects. One pass over the bytes, no regex, so
that all filters agree on what ``%`` means.
"""

from __future__ import annotations

from collections.abc import Callable

_PERCENT = ord("%")
_OPEN = ord("(")
_CLOSE = ord(")")
_BACKSLASH = ord("\\")

Handler = Callable[[str, bytes | None], bytes]
"""``handler(directive, argument)`` -> replacement bytes; raises FilterError to refuse."""


class FilterError(ValueError):
    """A content filter could not be applied for one subscriber (bad template, unknown
    variable, missing id); ``str()`` is the reason."""


def _is_letter(byte: int) -> bool:
    return 0x41 <= byte <= 0x5A or 0x61 <= byte <= 0x7A


def expand(template: bytes, handler: Handler) -> bytes:
    """``template`` with every directive replaced by ``handler``'s answer."""
    out: list[bytes] = []
    end = len(template)
    start = 0
    while True:
        marker = template.find(b"%", start)
        if marker < 0:
            out.append(template[start:])
            return b"".join(out)
        out.append(template[start:marker])
        n = marker + 1
        if n >= end:
            raise FilterError(f"expected a directive after '%' at position {marker}")
        c = template[n]
        if c == _PERCENT:
            out.append(b"%")
        elif c == _OPEN:
            n, argument = _field(template, n)
            out.append(_call(handler, chr(template[n]), argument, n))
        elif _is_letter(c):
            out.append(_call(handler, chr(c), None, n))
        else:
            raise FilterError(f"unknown directive {chr(c)!r} at position {n}")
        start = n + 1


def _field(template: bytes, opening: int) -> tuple[int, bytes | None]:
    """Parse ``(ARG)X`` starting at the ``(``; returns the position of ``X`` and ARG."""
    end = len(template)
    n = opening + 1
    if n >= end:
        raise FilterError(f"expected a character after '(' at position {opening}")
    argument = bytearray()
    while n < end:
        c = template[n]
        if c == _CLOSE:
            break
        if c == _BACKSLASH:
            n += 1
            if n >= end:
                raise FilterError(f"expected a character after '\\' at position {n - 1}")
            c = template[n]
        argument.append(c)
        n += 1
    else:
        raise FilterError(f"unterminated field starting at position {opening}")
    if n + 1 >= end:
        raise FilterError(f"expected a directive after ')' at position {n}")
    return n + 1, bytes(argument) if argument else None


def _call(handler: Handler, directive: str, argument: bytes | None, position: int) -> bytes:
    try:
        return handler(directive, argument)
    except FilterError as e:
        raise FilterError(f"{e} at position {position}") from None
