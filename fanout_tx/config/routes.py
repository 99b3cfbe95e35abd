"""Pure routes file parsing (Pushpin syntax) and route lookup: (host, path) -> Route.

One route per line: ``CONDITION[,opt...] TARGET[,opt...] [TARGET[,opt...]...]``. Several
targets mean failover on connect errors. The most specific route wins whatever the line
order: a route with ``proto`` set beats one without, then the longer ``path_beg``, then one
with ``ssl`` set (as Pushpin's DomainMap ranks them).
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from fanout_tx.config.settings import ConfigError, parse_bool, parse_int, parse_key, read_text
from fanout_tx.core.headers import is_token

# A JSON-P callback: a JavaScript name path. (differs) Pushpin takes any non-empty text; a
# name keeps what is reflected into the page harmless.
CALLBACK_NAME = re.compile(r"[A-Za-z0-9_$.]+")


@dataclass(frozen=True)
class RouteTarget:
    """Where a route sends requests. ``kind`` is ``http`` or Pushpin's built-in ``test``."""

    host: str = ""
    port: int = 0
    kind: str = "http"
    ssl: bool = False
    insecure: bool = False
    host_header: str = ""
    over_http: bool = False
    subscriptions: tuple[str, ...] = ()
    one_event: bool = False


@dataclass(frozen=True)
class JsonpConfig:
    """JSON-P on an ``aco`` route (transports/http/jsonp.py): Pushpin's ``jsonp_*`` options."""

    mode: str = "extended"  # or "basic"
    callback_param: str = "callback"  # jsonp_cb
    body_param: str = ""  # jsonp_body: a parameter whose value is sent as a JSON body
    default_callback: str = ""  # jsonp_defcb: used when only the body parameter is given
    default_method: str = ""  # jsonp_defmethod; "" = GET (extended) or POST (basic)


@dataclass(frozen=True)
class Route:
    line: int
    targets: tuple[RouteTarget, ...]
    host: str = ""  # "" matches every host ("*")
    path_beg: str = ""
    proto: str = ""  # "", "http" or "ws"
    ssl: bool | None = None
    id: str = ""
    sig_iss: str = ""
    sig_key: bytes = b""
    prefix: str = ""
    path_rem: int = 0
    replace_beg: str = ""
    as_host: str = ""
    headers: tuple[tuple[str, str], ...] = ()
    no_grip: bool = False
    debug: bool = False
    aco: bool = False
    # Grip-Link URLs may name any host:port, not only this route's targets (outbound/origin.py)
    link_any_host: bool = False
    jsonp: JsonpConfig = JsonpConfig()

    def matches(self, host: str, path: str, proto: str, ssl: bool) -> bool:
        if self.host and self.host.lower() != host.lower():
            return False
        if self.proto and self.proto != proto:
            return False
        if self.ssl is not None and self.ssl != ssl:
            return False
        return path.startswith(self.path_beg)

    def specificity(self) -> tuple[int, int, int]:
        return (1 if self.proto else 0, len(self.path_beg), 0 if self.ssl is None else 1)

    def rewrite_path(self, path: str) -> str:
        """The path as the origin sees it, after ``path_rem`` and ``replace_beg``."""
        if self.path_rem:
            path = path[self.path_rem :] or "/"
            if not path.startswith("/"):
                path = "/" + path
        if self.replace_beg and path.startswith(self.path_beg):
            path = self.replace_beg + path[len(self.path_beg) :]
        return path


class RouteTable:
    """Routes ranked by specificity; lookups scan the (short) list once."""

    def __init__(self, routes: list[Route], notices: tuple[str, ...] = ()) -> None:
        self.notices = notices  # Pushpin-only options that were ignored, one line each
        # Host-specific routes first, then by specificity, then by line (stable tie-break).
        self.routes = sorted(
            routes,
            key=lambda r: (0 if r.host else 1, tuple(-x for x in r.specificity()), r.line),
        )

    def match(self, host: str, path: str, proto: str = "http", ssl: bool = False) -> Route | None:
        host = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
        for route in self.routes:
            if route.matches(host, path, proto, ssl):
                return route
        return None

    def __len__(self) -> int:
        return len(self.routes)


class RouteSource(Protocol):
    """Anything with the current route table (``RoutesFile`` reloads it)."""

    table: RouteTable


def _split_opts(token: str) -> tuple[str, list[tuple[str, str | None]]]:
    head, *rest = token.split(",")
    opts = []
    for opt in rest:
        name, sep, value = opt.partition("=")
        opts.append((name.strip(), value if sep else None))
    return head, opts


def _need_value(name: str, value: str | None) -> str:
    if value is None or value == "":
        raise ValueError(f"option {name} needs a value")
    return value


_FLAG_CONDITIONS = {"no_grip", "debug", "aco", "link_any_host"}

# Pushpin 1.36 route options this server does not implement: a Pushpin routes file still
# loads (Pushpin itself ignores options it does not know), each one named in a notice.
PUSHPIN_ONLY_CONDITIONS = frozenset({"orig_headers", "session", "sockjs", "sockjs_as_path"})
_JSONP_OPTIONS = {"jsonp_cb": "callback_param", "jsonp_body": "body_param",
                  "jsonp_defcb": "default_callback", "jsonp_defmethod": "default_method"}
PUSHPIN_ONLY_TARGET_OPTIONS = frozenset({"untrusted", "trust_connect_host", "ipc_file_mode"})


def _parse_condition(token: str, notices: list[str]) -> dict:
    head, opts = _split_opts(token)
    fields: dict = {"host": "" if head == "*" else head}
    headers = []
    jsonp: dict[str, str] = {}
    for name, value in opts:
        if name in _FLAG_CONDITIONS:
            fields[name] = True if value is None else parse_bool(value)
        elif name == "path_beg":
            fields["path_beg"] = _need_value(name, value)
        elif name == "proto":
            if value not in ("http", "ws"):
                raise ValueError(f"proto must be http or ws, got {value!r}")
            fields["proto"] = value
        elif name == "ssl":
            fields["ssl"] = parse_bool(_need_value(name, value))
        elif name in ("id", "sig_iss", "prefix", "replace_beg", "as_host"):
            fields[name] = _need_value(name, value)
        elif name == "sig_key":
            fields["sig_key"] = parse_key(_need_value(name, value))
        elif name == "path_rem":
            fields["path_rem"] = parse_int(_need_value(name, value))
            if fields["path_rem"] < 0:
                raise ValueError(f"path_rem must be >= 0, got {value}")
        elif name == "header":
            header_name, sep, header_value = _need_value(name, value).partition(":")
            if not sep or not header_name.strip():
                raise ValueError(f"header option must be Name:Value, got {value!r}")
            headers.append((header_name.strip(), header_value.strip()))
        elif name == "jsonp_mode":
            if value not in ("basic", "extended"):
                raise ValueError(f"jsonp_mode must be basic or extended, got {value!r}")
            jsonp["mode"] = value
        elif name in _JSONP_OPTIONS:
            jsonp[_JSONP_OPTIONS[name]] = _need_value(name, value)
        elif name in PUSHPIN_ONLY_CONDITIONS:
            notices.append(name)
        else:
            raise ValueError(f"unknown route option {name!r}")
    fields["headers"] = tuple(headers)
    if jsonp:
        fields["jsonp"] = _jsonp_config(jsonp)
    return fields


def _jsonp_config(options: dict[str, str]) -> JsonpConfig:
    """The route's JSON-P settings, held to the rules a client's own values meet."""
    config = JsonpConfig(**options)
    if config.default_method and not is_token(config.default_method):
        raise ValueError(f"jsonp_defmethod must be an HTTP method, got {config.default_method!r}")
    if config.default_callback and not CALLBACK_NAME.fullmatch(config.default_callback):
        raise ValueError("jsonp_defcb must be a JavaScript name (letters, digits, _ $ .), "
                         f"got {config.default_callback!r}")
    return config


def _parse_target(token: str, notices: list[str]) -> RouteTarget:
    head, opts = _split_opts(token)
    if head == "test":
        return RouteTarget(kind="test")
    if head.startswith(("zhttp/", "zhttpreq/")):
        raise ValueError(f"Pushpin's ZeroMQ targets ({head.partition('/')[0]}/...) are not "
                         "supported: use host:port")
    host, sep, port_text = head.rpartition(":")
    if not sep or not host:
        raise ValueError(f"target must be host:port, got {head!r}")
    host = host.strip("[]")
    port = parse_int(port_text)
    if not 0 < port <= 65535:
        raise ValueError(f"target port out of range: {port}")
    fields: dict = {"host": host, "port": port}
    subscriptions = []
    for name, value in opts:
        if name in ("ssl", "insecure", "over_http", "one_event"):
            fields[name] = True if value is None else parse_bool(value)
        elif name == "host":
            fields["host_header"] = _need_value(name, value)
        elif name == "sub":
            subscriptions.append(_need_value(name, value))
        elif name in PUSHPIN_ONLY_TARGET_OPTIONS:
            notices.append(name)
        else:
            raise ValueError(f"unknown target option {name!r}")
    return RouteTarget(subscriptions=tuple(subscriptions), **fields)


def parse_route_line(line: str, number: int, notices: list[str] | None = None) -> Route:
    """One non-comment routes line; raises ValueError with the reason. Pushpin-only options
    are accepted and their names added to ``notices``."""
    notices = [] if notices is None else notices
    tokens = shlex.split(line, comments=False, posix=True)
    if len(tokens) < 2:
        raise ValueError("a route needs a condition and at least one target")
    condition = _parse_condition(tokens[0], notices)
    targets = tuple(_parse_target(t, notices) for t in tokens[1:])
    return Route(line=number, targets=targets, **condition)


def parse_routes(text: str, path: str | Path = "<routes>") -> RouteTable:
    routes, notices = [], []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        ignored: list[str] = []
        try:
            routes.append(parse_route_line(line, number, ignored))
        except ValueError as e:
            raise ConfigError(path, number, str(e)) from None
        notices += [f"{path}:{number}: Pushpin route option {name!r} is not supported "
                    "here; ignored" for name in dict.fromkeys(ignored)]
    if not routes:  # loads (a file being written may be empty for a moment), but say so
        notices.append(f"{path}: no routes: every request gets 502 No route for host")
    return RouteTable(routes, tuple(notices))


def load_routes(path: str | Path, override_lines: tuple[str, ...] = ()) -> RouteTable:
    """Read a routes file; ``--route`` lines replace it entirely, as in Pushpin's runner."""
    if override_lines:
        return parse_routes("\n".join(override_lines), "--route")
    path = Path(path)
    return parse_routes(read_text(path, "routes"), path)
