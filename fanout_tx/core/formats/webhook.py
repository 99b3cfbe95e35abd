"""Parser for the ``http-request`` publish format, delivered by the webhooks transport (SPEC B2).

The format describes the outbound request; the subscription supplies the URL. Headers that
would let a publisher break the framing (``Host``, ``Content-Length``, ...) or forge the
Standard Webhooks signature (``webhook-*``) are refused here, so no transport ever sees them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from fanout_tx.core.formats.base import (
    Format,
    FormatError,
    framing_headers,
    headers,
    optional_str,
    payload,
)

_METHOD = re.compile(r"[A-Z]{1,20}")  # fullmatch: "$" would let a final newline through
# Printable ASCII without space, '#' (fragments are not sent) and '\\'.
_PATH = re.compile(r"/[!-\"$-\[\]-~]*")

TEXT_CONTENT_TYPE = "text/plain; charset=utf-8"
BINARY_CONTENT_TYPE = "application/octet-stream"


def check_header_names(pairs: Iterable[tuple[str, str]]) -> None:
    """Refuse headers nobody but the transport may set (shared with the subscription API):
    ``Host``, ``webhook-*`` and the framing ones every format keeps from publishers."""
    pairs = tuple(pairs)
    framing = framing_headers(pairs)
    for name, _value in pairs:
        lowered = name.lower()
        if lowered == "host" or lowered in framing or lowered.startswith("webhook-"):
            raise FormatError(f"header {name!r} may not be set")


def parse_http_request(obj: Mapping[str, Any]) -> Format:
    """``{"method"?, "path"?, "headers"?, "body" | "body-bin"}`` -> Format("http-request").

    ``fields`` holds ``method``, ``path`` (without query), ``query`` (raw, added to the
    subscription URL's query) and ``headers`` with the Content-Type default filled in.
    """
    method = (optional_str(obj, "method") or "POST").upper()
    if not _METHOD.fullmatch(method):
        raise FormatError(f"method {method!r} is not an HTTP method name")
    raw_path = optional_str(obj, "path") or ""
    if raw_path and not _PATH.fullmatch(raw_path):
        raise FormatError("path must start with / and hold no spaces, # or control characters")
    path, _, query = raw_path.partition("?")
    pairs = headers(obj)
    check_header_names(pairs)
    is_binary = "body-bin" in obj
    body = payload(obj, "body", required=False) or b""
    if not any(name.lower() == "content-type" for name, _value in pairs):
        pairs += (("Content-Type", BINARY_CONTENT_TYPE if is_binary else TEXT_CONTENT_TYPE),)
    fields = {
        "method": method,
        "path": path,
        "query": query,
        "headers": pairs,
    }
    return Format("http-request", "send", body, fields)
