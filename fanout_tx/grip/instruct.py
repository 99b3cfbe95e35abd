"""Pure GRIP instruction parsing (SPEC A3): an origin response -> Instruct, or GripError.

Like Pushpin's ``Instruct::fromResponse``: one function reads the ``Grip-*`` headers or an
``application/grip-instruct`` JSON body and returns a frozen value; every malformed value is a
GripError naming the problem, which the proxy answers with a 502. The route ``prefix=`` is
applied by the caller, which knows the route.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from fanout_tx.core.codecs.json_input import loads
from fanout_tx.core.headers import (
    Header,
    end_to_end,
    get,
    has_control,
    is_reason_phrase,
    is_token,
    split_list,
    split_params,
)

DEFAULT_TIMEOUT = 55
MIN_TIMEOUT = 5
DEFAULT_KEEP_ALIVE_TIMEOUT = 55
DEFAULT_LINK_TIMEOUT = 120
INSTRUCT_CONTENT_TYPE = "application/grip-instruct"
MAX_SECONDS = 31_536_000  # a year: larger timers are certainly a mistake
MIN_CODE, MAX_CODE = 200, 599  # a final status: a 1xx would make the body the next answer


class GripError(ValueError):
    """The origin's GRIP instruction is malformed; ``str()`` is the reason."""


@dataclass(frozen=True)
class Channel:
    name: str
    prev_id: str | None = None
    filters: tuple[str, ...] = ()
    # Built-in history (docs/reliability.rst), a fanout_tx extension: replay the items after
    # this id (``history-since``), or the newest N (``history-rewind``), before live ones.
    # Read only when [history] is on; Pushpin ignores both parameters.
    history_since: str | None = None
    history_rewind: int = 0


# The most items a history-rewind may ask for (config's MAX_HISTORY_ITEMS).
MAX_REWIND = 100_000


def _rewind(text: str | None) -> int:
    try:
        number = int((text or "").strip())
    except ValueError:
        raise GripError(f"history-rewind must be a whole number, got {text!r}") from None
    if not 0 <= number <= MAX_REWIND:
        raise GripError(f"history-rewind out of range: {number}")
    return number


@dataclass(frozen=True)
class GripKeepAlive:
    data: bytes
    timeout: int = DEFAULT_KEEP_ALIVE_TIMEOUT
    mode: str = "idle"  # "idle": restart on every write; "interval": fixed period


@dataclass(frozen=True)
class Link:
    uri: str
    timeout: int = DEFAULT_LINK_TIMEOUT


@dataclass(frozen=True)
class Response:
    """What the client gets (the held response, or the plain answer of a hold-less instruct)."""

    code: int = 200
    reason: str | None = None
    headers: tuple[Header, ...] = ()
    body: bytes = b""


@dataclass(frozen=True)
class Instruct:
    hold: str | None  # None, "response" or "stream"
    channels: tuple[Channel, ...] = ()
    timeout: int = DEFAULT_TIMEOUT
    keep_alive: GripKeepAlive | None = None
    meta: Mapping[str, str] = field(default_factory=dict)
    response: Response = field(default_factory=Response)
    next_link: Link | None = None


def is_instruct(headers: Sequence[Header]) -> bool:
    """True when the response must be parsed (and its body read) as an instruction."""
    return bool(get(headers, "Grip-Hold")) or _is_instruct_type(headers)


def _is_instruct_type(headers: Sequence[Header]) -> bool:
    return any(
        v.split(";", 1)[0].strip().lower() == INSTRUCT_CONTENT_TYPE
        for v in get(headers, "Content-Type")
    )


def parse_instruct(
    code: int, reason: str | None, headers: Sequence[Header], body: bytes,
    max_channels: int = 20,
) -> Instruct:
    """The origin response (status, headers in wire order, whole body) -> Instruct."""
    if _is_instruct_type(headers):
        if code != 200:
            raise GripError(f"grip-instruct response has status {code}, expected 200")
        return _from_json(body, max_channels)
    return _from_headers(code, reason, headers, body, max_channels)


# --- headers -------------------------------------------------------------------------------


def _int(text: str | None, what: str, low: int = 0) -> int:
    try:
        number = int((text or "").strip())
    except ValueError:
        raise GripError(f"{what} must be a whole number, got {text!r}") from None
    if number < low or number > MAX_SECONDS:
        raise GripError(f"{what} out of range: {number}")
    return number


def _channels_from_headers(values: list[str], max_channels: int) -> tuple[Channel, ...]:
    channels = []
    for value in values:
        for item in split_list(value):
            name, params = split_params(item)
            if not name:
                raise GripError("Grip-Channel has an empty channel name")
            prev_id, filters, since, rewind = None, [], None, 0
            for key, param in params:
                if key == "prev-id":
                    prev_id = param
                elif key == "filter" and param:
                    filters.append(param)
                elif key == "history-since" and param:
                    since = param
                elif key == "history-rewind":
                    rewind = _rewind(param)
            channels.append(Channel(name, prev_id, tuple(filters), since, rewind))
    return _checked_channels(channels, max_channels)


def _checked_channels(channels: list[Channel], max_channels: int) -> tuple[Channel, ...]:
    if len(channels) > max_channels:
        raise GripError(f"too many channels: {len(channels)} > {max_channels}")
    for channel in channels:  # both go back to the origin later, in a Grip-Last header
        if (has_control(channel.name) or has_control(channel.prev_id or "")
                or has_control(channel.history_since or "")):
            raise GripError(f"control character in channel {channel.name!r}")
    return tuple(channels)


def _checked_response(code: int, reason: str | None, headers: Sequence[Header],
                      body: bytes) -> Response:
    """What the client will get, checked now: a status line or header that cannot be
    written (or would split the head) must be a 502 now, not an exception at the timeout
    or publish, when the hold has already ended."""
    if not MIN_CODE <= code <= MAX_CODE:
        raise GripError(f"response code must be from {MIN_CODE} to {MAX_CODE}, got {code}")
    if reason is not None and not is_reason_phrase(reason):
        raise GripError(f"invalid response reason {reason!r}")
    for name, value in headers:
        if not is_token(name) or has_control(value):
            raise GripError(f"invalid response header {name!r}")
    return Response(code, reason, tuple(headers), body)


_CSTRING_ESCAPES = {"\\": "\\", "r": "\r", "n": "\n", "t": "\t"}


def decode_cstring(text: str) -> bytes:
    """Keep-alive ``format=cstring``: ``\\\\ \\r \\n \\t \\xHH``; anything else is an error."""
    out = bytearray()
    i = 0
    while i < len(text):
        char = text[i]
        if char != "\\":
            out += char.encode("utf-8")
            i += 1
            continue
        escape = text[i + 1 : i + 2]
        if escape in _CSTRING_ESCAPES:
            out += _CSTRING_ESCAPES[escape].encode("ascii")
            i += 2
        elif escape == "x" and len(text) >= i + 4:
            try:
                out.append(int(text[i + 2 : i + 4], 16))
            except ValueError:
                raise GripError("Grip-Keep-Alive has an invalid \\x escape") from None
            i += 4
        else:
            raise GripError(f"Grip-Keep-Alive has an invalid escape at {i}")
    return bytes(out)


def _keep_alive_from_header(value: str) -> GripKeepAlive:
    data_text, params = split_params(value)
    options = dict(params)
    fmt = options.get("format") or "raw"
    if fmt == "raw":
        data = data_text.encode("utf-8")
    elif fmt == "cstring":
        data = decode_cstring(data_text)
    elif fmt == "base64":
        try:
            data = base64.b64decode(data_text, validate=True)
        except (binascii.Error, ValueError):
            raise GripError("Grip-Keep-Alive data is not valid base64") from None
    else:
        raise GripError(f"Grip-Keep-Alive format must be raw, cstring or base64, got {fmt!r}")
    timeout = DEFAULT_KEEP_ALIVE_TIMEOUT
    if "timeout" in options:
        timeout = _int(options["timeout"], "Grip-Keep-Alive timeout", low=1)
    mode = options.get("mode") or "idle"
    if mode not in ("idle", "interval"):
        raise GripError(f"Grip-Keep-Alive mode must be idle or interval, got {mode!r}")
    return GripKeepAlive(data, timeout, mode)


def _meta_from_headers(values: list[str]) -> dict[str, str]:
    meta = {}
    for value in values:
        for item in split_list(value):
            key, sep, text = item.partition("=")
            if not sep or not key.strip():
                raise GripError(f"Grip-Set-Meta must be key=value, got {item!r}")
            meta[key.strip()] = split_params(text)[0]
    return meta


def parse_status(value: str) -> tuple[int, str | None]:
    """``Grip-Status: CODE[ REASON]`` (code and reason are checked with the response)."""
    code_text, _sep, reason = value.strip().partition(" ")
    return _int(code_text, "Grip-Status code"), reason.strip() or None


def _link_uri(uri: str) -> str:
    """A Grip-Link URI the proxy can fetch: a relative reference or an http(s) URL, ASCII;
    checked here so a bad one is a 502 now, not a failed recovery later."""
    if not uri.isascii() or any(c.isspace() or not c.isprintable() for c in uri):
        raise GripError(f"Grip-Link URI must be printable ASCII, got {uri!r}")
    try:
        parts = urlsplit(uri)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        raise GripError(f"Grip-Link URI is malformed: {uri!r}") from None
    if parts.scheme not in ("", "http", "https") or (parts.scheme and not parts.hostname):
        raise GripError(f"Grip-Link URI must be relative or http(s), got {uri!r}")
    return uri


def parse_link(values: list[str]) -> Link | None:
    """The ``rel=next`` link among ``Grip-Link`` values, if any."""
    for value in values:
        for item in split_list(value):
            target, params = split_params(item)
            options = dict(params)
            if options.get("rel") != "next":
                continue
            if not (target.startswith("<") and target.endswith(">")) or len(target) < 3:
                raise GripError(f"Grip-Link target must be <URI>, got {target!r}")
            timeout = DEFAULT_LINK_TIMEOUT
            if "timeout" in options:
                timeout = _int(options["timeout"], "Grip-Link timeout", low=1)
            return Link(_link_uri(target[1:-1].strip()), timeout)
    return None


def _from_headers(
    code: int, reason: str | None, headers: Sequence[Header], body: bytes, max_channels: int,
) -> Instruct:
    holds = get(headers, "Grip-Hold")
    hold = holds[0].strip() if holds else None
    if hold is not None and hold not in ("response", "stream"):
        raise GripError(f"Grip-Hold must be response or stream, got {hold!r}")
    channels = _channels_from_headers(get(headers, "Grip-Channel"), max_channels)
    if hold and not channels:
        raise GripError("Grip-Hold without any Grip-Channel")
    timeout = DEFAULT_TIMEOUT
    timeouts = get(headers, "Grip-Timeout")
    if timeouts:
        timeout = max(MIN_TIMEOUT, _int(timeouts[0], "Grip-Timeout"))
    keep_alives = get(headers, "Grip-Keep-Alive")
    keep_alive = _keep_alive_from_header(keep_alives[0]) if keep_alives else None
    statuses = get(headers, "Grip-Status")
    if statuses:
        code, reason = parse_status(statuses[0])
    return Instruct(
        hold=hold,
        channels=channels,
        timeout=timeout,
        keep_alive=keep_alive,
        meta=_meta_from_headers(get(headers, "Grip-Set-Meta")),
        response=_checked_response(code, reason, client_headers(headers), body),
        next_link=parse_link(get(headers, "Grip-Link")),
    )


def client_headers(headers: Sequence[Header]) -> list[Header]:
    """The origin headers the client may see: end-to-end, no Grip-*, no Content-Length (the
    proxy frames the body itself); only the ``Grip-Expose-Headers`` names when that is set
    (as Pushpin 1.36 does: even Content-Type goes unless listed)."""
    kept = end_to_end(headers, drop=("content-length",))
    exposed = get(headers, "Grip-Expose-Headers")
    if exposed:
        names = {n.strip().lower() for v in exposed for n in v.split(",") if n.strip()}
        kept = [(n, v) for n, v in kept if n.lower() in names]
    return kept


# --- application/grip-instruct -------------------------------------------------------------


def _expect(value: Any, kind: type | tuple[type, ...], what: str) -> Any:
    if not isinstance(value, kind):
        raise GripError(f"{what} has the wrong type")
    return value


def _opt_text(obj: Mapping[str, Any], key: str, what: str) -> str | None:
    value = obj.get(key)
    return None if value is None else _expect(value, str, f"{what} {key}")


def _json_payload(obj: Mapping[str, Any], key: str, what: str) -> bytes | None:
    if key in obj:
        return _expect(obj[key], str, f"{what} {key}").encode("utf-8")
    if key + "-bin" in obj:
        try:
            return base64.b64decode(_expect(obj[key + "-bin"], str, what), validate=True)
        except (binascii.Error, ValueError):
            raise GripError(f"{what} {key}-bin is not valid base64") from None
    return None


def _json_headers(value: Any) -> tuple[Header, ...]:
    if value is None:
        return ()
    pairs = list(value.items()) if isinstance(value, dict) else value
    if not isinstance(pairs, list):
        raise GripError("response headers must be an object or a list of pairs")
    result = []
    for pair in pairs:
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2
                and all(isinstance(p, str) for p in pair)):
            raise GripError("response headers must be [name, value] strings")
        result.append((pair[0], pair[1]))
    return tuple(result)


def _json_response(value: Any) -> Response:
    if value is None:
        return Response()
    obj = _expect(value, dict, "response")
    code = obj.get("code", 200)
    if isinstance(code, bool) or not isinstance(code, int):
        raise GripError("response code must be a number")
    headers = _json_headers(obj.get("headers"))
    return _checked_response(
        code, _opt_text(obj, "reason", "response"),
        end_to_end(headers, drop=("content-length",)),
        _json_payload(obj, "body", "response") or b"",
    )


def _json_channels(value: Any, max_channels: int) -> tuple[Channel, ...]:
    channels = []
    for entry in _expect(value if value is not None else [], list, "hold channels"):
        obj = _expect(entry, dict, "channel")
        name = obj.get("name")
        if not isinstance(name, str) or not name:
            raise GripError("channel needs a name")
        filters = obj.get("filters", [])
        if not isinstance(filters, list) or not all(isinstance(f, str) for f in filters):
            raise GripError("channel filters must be a list of strings")
        rewind = obj.get("history-rewind", 0)
        if not isinstance(rewind, int) or isinstance(rewind, bool):
            raise GripError("channel history-rewind must be a whole number")
        channels.append(Channel(name, _opt_text(obj, "prev-id", "channel"), tuple(filters),
                                _opt_text(obj, "history-since", "channel") or None,
                                _rewind(str(rewind))))
    return _checked_channels(channels, max_channels)


def _json_keep_alive(value: Any) -> GripKeepAlive | None:
    if value is None:
        return None
    obj = _expect(value, dict, "keep-alive")
    data = _json_payload(obj, "content", "keep-alive")
    if data is None:
        raise GripError("keep-alive needs content or content-bin")
    timeout = obj.get("timeout", DEFAULT_KEEP_ALIVE_TIMEOUT)
    if isinstance(timeout, bool) or not isinstance(timeout, int) or not 1 <= timeout <= MAX_SECONDS:
        raise GripError("keep-alive timeout must be a positive whole number")
    mode = obj.get("mode", "idle")
    if mode not in ("idle", "interval"):
        raise GripError("keep-alive mode must be idle or interval")
    return GripKeepAlive(data, timeout, mode)


def _from_json(body: bytes, max_channels: int) -> Instruct:
    try:
        document = loads(body)
    except ValueError:
        raise GripError("grip-instruct body is not valid JSON") from None
    obj = _expect(document, dict, "grip-instruct body")
    response = _json_response(obj.get("response"))
    hold_obj = obj.get("hold")
    if hold_obj is None:
        return Instruct(hold=None, response=response)
    hold = _expect(hold_obj, dict, "hold")
    mode = hold.get("mode", "response")
    if mode not in ("response", "stream"):
        raise GripError(f"hold mode must be response or stream, got {mode!r}")
    channels = _json_channels(hold.get("channels"), max_channels)
    if not channels:
        raise GripError("hold without any channel")
    timeout = hold.get("timeout", DEFAULT_TIMEOUT)
    if isinstance(timeout, bool) or not isinstance(timeout, int) or not 0 <= timeout <= MAX_SECONDS:
        raise GripError("hold timeout must be a whole number of seconds")
    meta = _expect(hold.get("meta", {}), dict, "hold meta")
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        raise GripError("hold meta values must be strings")
    return Instruct(
        hold=mode,
        channels=channels,
        timeout=max(MIN_TIMEOUT, timeout),
        keep_alive=_json_keep_alive(hold.get("keep-alive")),
        meta=dict(meta),
        response=response,
    )
