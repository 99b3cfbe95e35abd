"""JSON-P on ``aco`` routes (and with ``[proxy] auto_cross_origin``), as Pushpin does it.

A ``GET`` carrying the callback parameter (``callback``, or the route's ``jsonp_cb=``) is a
JSON-P call: ``_method``, ``_headers`` (a JSON object) and ``_body`` (or the route's
``jsonp_body=`` parameter, sent as JSON) say what to send the origin, and those parameters
are removed from the query. Whatever the answer (relayed, a finished long-poll, an error),
the client gets ``200`` ``application/javascript``:

- extended mode (default): ``/**/CB({"code": .., "reason": .., "headers": {..}, "body": ".."});``
- basic mode (``jsonp_mode=basic``): ``/**/CB(BODY);`` (one trailing newline of the body
  dropped).

Pure functions; the proxy applies them (transports/http/proxy.py).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

from fanout_tx.config.routes import CALLBACK_NAME, JsonpConfig
from fanout_tx.core.codecs.json_input import loads
from fanout_tx.core.headers import Header, has_control, is_token

_SKIPPED_HEADERS = frozenset({"host", "accept"})  # set by the proxy itself, as Pushpin


class JsonpError(ValueError):
    """A malformed JSON-P call; the text is what the client reads (400)."""


@dataclass(frozen=True)
class JsonpCall:
    """A JSON-P request, rewritten into the request the origin gets."""

    callback: bytes
    extended: bool
    method: bytes
    uri: bytes  # path and the query without the JSON-P parameters
    headers: tuple[tuple[bytes, bytes], ...]  # from ``_headers``
    body: bytes
    json_body: bool  # the body came from ``jsonp_body=``: Content-Type application/json


def parse_jsonp(uri: bytes, config: JsonpConfig) -> JsonpCall | None:
    """The JSON-P call in a GET's ``uri``, None when it is not one; JsonpError if malformed."""
    path, _sep, query = uri.partition(b"?")
    pairs = [_split_pair(part) for part in query.split(b"&") if part]
    values: dict[bytes, bytes] = {}
    for key, value in pairs:
        values.setdefault(key, value)
    callback_param = config.callback_param.encode()
    body_param = config.body_param.encode()
    if callback_param in values:
        callback = unquote_to_bytes(values[callback_param])
        if not CALLBACK_NAME.fullmatch(callback.decode("latin-1")):
            raise JsonpError("Invalid callback parameter.")
    elif config.default_callback and body_param and body_param in values:
        callback = config.default_callback.encode()
    else:
        return None
    extended = config.mode != "basic"
    method = (config.default_method or ("GET" if extended else "POST")).encode()
    if b"_method" in values:
        method = unquote_to_bytes(values[b"_method"])
        if not is_token(method.decode("latin-1")):
            raise JsonpError("Invalid _method parameter.")
    headers = _headers(values[b"_headers"]) if b"_headers" in values else ()
    body_key = body_param or b"_body"
    body = unquote_to_bytes(values[body_key]) if body_key in values else b""
    used = {callback_param, b"_method", b"_headers", body_key}
    rest = b"&".join(part for part in query.split(b"&")
                     if part and _split_pair(part)[0] not in used)
    return JsonpCall(callback, extended, method, path + (b"?" + rest if rest else b""),
                     headers, body, bool(body_param) and body_param in values)


def _split_pair(part: bytes) -> tuple[bytes, bytes]:
    key, _sep, value = part.partition(b"=")
    return unquote_to_bytes(key.replace(b"+", b" ")), value.replace(b"+", b" ")


def _headers(raw: bytes) -> tuple[tuple[bytes, bytes], ...]:
    try:
        parsed = loads(unquote_to_bytes(raw))
    except ValueError:
        raise JsonpError("Invalid _headers parameter.") from None
    if not isinstance(parsed, dict) or not all(isinstance(v, str) for v in parsed.values()):
        raise JsonpError("Invalid _headers parameter.")
    headers = []
    for name, value in parsed.items():
        if not is_token(name) or has_control(value):
            raise JsonpError("Invalid _headers parameter.")
        if name.lower() not in _SKIPPED_HEADERS:  # loads refused lone surrogates
            headers.append((name.encode("ascii"), value.encode("utf-8")))
    return tuple(headers)


def wrap(callback: bytes, extended: bool, code: int, reason: bytes,
         headers: Sequence[Header], body: bytes) -> bytes:
    """The JSON-P answer for an HTTP answer; JsonpError when the body is not UTF-8 text."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise JsonpError("Upstream response could not be JSON-P encoded.") from None
    if not extended:
        if text.endswith("\r\n"):
            text = text[:-2]
        elif text.endswith("\n"):
            text = text[:-1]
        return b"/**/" + callback + b"(" + text.encode("utf-8") + b");\n"
    first: dict[str, str] = {}
    for name, value in headers:
        first.setdefault(name, value)
    inner = (f'{{"code": {code}, "reason": {json.dumps(reason.decode("latin-1"))}, '
             f'"headers": {json.dumps(dict(sorted(first.items())), separators=(",", ":"))}, '
             f'"body": {_js_string(text)}}}')
    return b"/**/" + callback + b"(" + inner.encode("utf-8") + b");\n"


def _js_string(text: str) -> str:
    """A JSON string that is also a JavaScript one: U+2028/U+2029 end a line in older
    JavaScript, so they are escaped (other text stays as it is, UTF-8)."""
    return (json.dumps(text, ensure_ascii=False)
            .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))


# The largest answer wrapped; JSON-P is for small replies, a larger one is an error.
MAX_WRAPPED = 1_000_000


class JsonpAnswer:
    """Collects an answer's body for wrapping (the proxy's request writes here)."""

    def __init__(self, callback: bytes, extended: bool) -> None:
        self.callback = callback
        self.extended = extended
        self._parts: list[bytes] = []
        self._size = 0

    def add(self, data: bytes) -> None:
        self._size += len(data)
        if self._size <= MAX_WRAPPED:
            self._parts.append(data)

    def discard(self) -> None:
        """Forget what was collected (an error answer replaces it)."""
        self._parts, self._size = [], 0

    def wrapped(self, code: int, reason: bytes,
                headers: Sequence[Header]) -> tuple[int, bytes]:
        """(status, body) for the client: 200 and the call, or 500 and the reason."""
        try:
            if self._size > MAX_WRAPPED:
                raise JsonpError(f"Upstream response too large for JSON-P "
                                 f"(over {MAX_WRAPPED} bytes).")
            return 200, wrap(self.callback, self.extended, code, reason, headers,
                             b"".join(self._parts))
        except JsonpError as e:
            return 500, f"{e}\n".encode()
