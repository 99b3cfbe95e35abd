"""Pure: the CORS headers Pushpin's ``auto_cross_origin`` / route ``aco`` adds to answers.

Observed on Pushpin 1.36: each header is added only when the origin did not send it;
preflights are still forwarded to the origin (the origin's answer gets the headers).
"""

from __future__ import annotations

from collections.abc import Sequence

from fanout_tx.core.headers import HOP_BY_HOP, Header, get

DEFAULT_METHODS = "OPTIONS, HEAD, GET, POST, PUT, DELETE"
MAX_AGE = "3600"
# Response headers a browser shows scripts anyway (and Content-Length), never listed.
_SIMPLE = frozenset({
    "cache-control", "content-language", "content-length", "content-type", "expires",
    "last-modified", "pragma",
})


def cross_origin_headers(
    request_headers: Sequence[Header], response_headers: Sequence[Header],
) -> list[Header]:
    """The Access-Control-* headers to append to ``response_headers``."""
    present = {name.lower() for name, _value in response_headers}
    added: list[Header] = []

    def add(name: str, value: str | None) -> None:
        if value and name.lower() not in present:
            added.append((name, value))

    def asked(name: str) -> str | None:
        values = get(request_headers, name)
        return values[0] if values else None

    exposed: list[str] = []
    for name, _value in response_headers:
        lowered = name.lower()
        if (lowered not in _SIMPLE and lowered not in HOP_BY_HOP
                and not lowered.startswith("access-control-")
                and lowered not in (e.lower() for e in exposed)):
            exposed.append(name)
    add("Access-Control-Allow-Methods", asked("Access-Control-Request-Method") or DEFAULT_METHODS)
    # Only a preflight asks: every Access-Control-Request-Headers line, echoed (as Pushpin).
    requested = [part.strip() for value in get(request_headers, "Access-Control-Request-Headers")
                 for part in value.split(",") if part.strip()]
    add("Access-Control-Allow-Headers", ", ".join(requested))
    add("Access-Control-Expose-Headers", ", ".join(exposed))
    add("Access-Control-Allow-Credentials", "true")
    add("Access-Control-Allow-Origin", asked("Origin") or "*")
    add("Access-Control-Max-Age", MAX_AGE)
    return added
