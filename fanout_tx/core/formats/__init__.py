"""Publish formats: one pure parser per format name (SPEC A4, B1, B2).

A transport's formats are registered here, in one table, so item parsing can reject
unknown names and every transport sees the same validated Format values. Part of the pure
core: may import ``core`` and ``grip`` only.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from fanout_tx.core.formats.base import Format, FormatError
from fanout_tx.core.formats.http import parse_http_response, parse_http_stream
from fanout_tx.core.formats.webhook import parse_http_request
from fanout_tx.core.formats.ws import parse_ws_message
from fanout_tx.core.formats.xmpp import parse_xmpp_message, parse_xmpp_stanza

FormatParser = Callable[[Mapping[str, Any]], Format]

PARSERS: dict[str, FormatParser] = {
    "http-response": parse_http_response,
    "http-stream": parse_http_stream,
    "ws-message": parse_ws_message,
    "http-request": parse_http_request,
    "xmpp-message": parse_xmpp_message,
    "xmpp-stanza": parse_xmpp_stanza,
}

__all__ = ["PARSERS", "Format", "FormatError", "FormatParser"]
