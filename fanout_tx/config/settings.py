"""Pure configuration loading: INI text (Pushpin's ``pushpin.conf`` accepted as is) -> Config.

Nothing here touches the reactor or the network. Every problem becomes a ConfigError naming
the file, the line and the reason, so ``twistd fanout`` can refuse to start with one clear line.
Notices (ignored Pushpin-only keys, unknown keys) are collected, not logged, and the
composition root logs them at start-up.
"""

from __future__ import annotations

import base64
import ipaddress
import re
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from twisted.words.protocols.jabber.jid import JID, InvalidFormat

from fanout_tx.config.redis_url import parse_redis_url


class ConfigError(Exception):
    """A config or routes file is unusable; names the file, the line and the problem."""

    def __init__(self, path: str | Path, line: int | None, reason: str) -> None:
        self.path = str(path)
        self.line = line
        self.reason = reason
        where = f"{self.path}:{line}" if line else self.path
        super().__init__(f"{where}: {reason}")


@dataclass(frozen=True)
class ListenAddress:
    """One ``[addr:]port`` entry; an empty host means every interface (Pushpin's default)."""

    host: str
    port: int

    def endpoint_description(self) -> str:
        """A Twisted server endpoint string for this address."""
        if not self.host:
            return f"tcp:{self.port}"
        return f"tcp:{self.port}:interface={self.host.replace(':', chr(92) + ':')}"


@dataclass(frozen=True)
class RunnerConfig:
    http_ports: tuple[ListenAddress, ...] = (ListenAddress("", 7999),)
    # TLS client ports; certificates in ``certs_dir`` (relative to the config file's folder,
    # where Pushpin's runner looks: /etc/pushpin/runner/certs beside pushpin.conf).
    https_ports: tuple[ListenAddress, ...] = ()
    certs_dir: Path = Path("runner/certs")
    client_maxconn: int = 50000
    # Client request deadlines (ops/deadlines.py) and a cap per peer address; 0 = off.
    client_maxconn_per_ip: int = 0
    client_header_timeout: float = 10.0
    client_keepalive_timeout: float = 60.0
    client_body_min_rate: int = 1024
    client_body_rate_window: float = 10.0
    # Bytes queued for push clients that do not read, all connections together (0 = no cap).
    max_buffered_bytes: int = 256 * 1024 * 1024
    log_level: int = 2
    # Seconds a graceful stop (SIGTERM/SIGINT) may take before the process exits anyway.
    shutdown_timeout: float = 10.0
    # Worker processes serving the client ports (ops/workers.py); 1 = one process, as
    # before; AUTO_WORKERS (``auto``) = one per core this process may run on.
    workers: int = 1


@dataclass(frozen=True)
class ProxyConfig:
    routes_file: Path = Path("routes")
    sig_iss: str = "pushpin"
    sig_key: bytes = b""
    x_forwarded_for: tuple[str, ...] = ()
    x_forwarded_for_trusted: tuple[str, ...] = ()
    # Clients whose Grip-Sig verifies with this key are GRIP proxies in front of this one.
    upstream_key: bytes = b""
    set_x_forwarded_protocol: str = "false"
    accept_x_forwarded_protocol: bool = False
    debug: bool = False
    auto_cross_origin: bool = False


@dataclass(frozen=True)
class HandlerConfig:
    push_in_spec: str = "tcp://127.0.0.1:5560"
    push_in_sub_specs: tuple[str, ...] = ("tcp://127.0.0.1:5562",)
    push_in_sub_connect: bool = False
    push_in_http_addr: str = "127.0.0.1"
    push_in_http_port: int = 5561
    push_in_http_max_body_size: int = 1000000
    push_in_http_key: bytes = b""
    push_in_http_iss: str = ""
    message_wait: int = 5000
    id_cache_ttl: int = 60
    id_cache_max: int = 100_000
    connection_subscription_max: int = 20
    stats_report_interval: int = 10
    stats_spec: str = ""
    stats_format: str = "tnetstring"
    command_spec: str = ""  # Pushpin's command REP socket; off unless set
    subscription_linger: int = 60  # seconds the SUB input stays subscribed to an empty channel


@dataclass(frozen=True)
class XmppConfig:
    enabled: bool = False
    jid: str = "push.localhost"
    host: str = "127.0.0.1"
    port: int = 5347
    secret: str = ""
    backend: str = "http://127.0.0.1:8080/xmpp"
    backend_timeout: float = 10.0
    sig_iss: str = ""
    sig_key: bytes = b""
    max_stanza_size: int = 64 * 1024  # bytes per inbound stanza; larger ones are refused
    # bytes waiting for an XMPP server that does not read; past it stanzas are dropped
    max_buffered_bytes: int = 16 * 1024 * 1024


@dataclass(frozen=True)
class WebhooksConfig:
    enabled: bool = True
    allow_cidrs: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    verify: bool = True
    timeout: float = 10.0
    retry_schedule: tuple[float, ...] = (0, 5, 300, 1800, 7200, 18000, 36000, 36000)
    max_in_flight: int = 4
    ca_file: str = ""
    max_subscriptions: int = 10_000  # per instance (per Redis prefix): 409 past it
    max_pending: int = 10_000  # deliveries per subscription: oldest become dead letters
    max_pending_bytes: int = 64 * 1024 * 1024  # per subscription: oldest become dead letters
    # all subscriptions together: the largest backlog's oldest become dead letters
    max_pending_bytes_total: int = 512 * 1024 * 1024
    max_dead_letter_bytes: int = 64 * 1024 * 1024  # all subscriptions: oldest dropped


@dataclass(frozen=True)
class RedisConfig:
    url: str = ""
    prefix: str = "fanout_tx:"


@dataclass(frozen=True)
class HistoryConfig:
    """Built-in channel history (docs/reliability.rst); ``max_items = 0`` turns it off."""

    max_items: int = 0  # items kept per channel
    max_age: float = 3600.0  # seconds an item is kept; 0 = no age limit
    max_bytes: int = 64 * 1024 * 1024  # in-memory store, all channels: oldest out first

    @property
    def enabled(self) -> bool:
        return self.max_items > 0


@dataclass(frozen=True)
class MetricsConfig:
    addr: str = ""
    port: int = 0


@dataclass(frozen=True)
class WebsocketConfig:
    max_message: int = 1_000_000  # bytes per message, either way (1009 past it)
    max_outbound: int = 1_000_000  # bytes queued for a client that does not read (1008)


@dataclass(frozen=True)
class Config:
    path: Path | None = None
    runner: RunnerConfig = field(default_factory=RunnerConfig)
    proxy: ProxyConfig = field(default_factory=ProxyConfig)
    handler: HandlerConfig = field(default_factory=HandlerConfig)
    xmpp: XmppConfig = field(default_factory=XmppConfig)
    webhooks: WebhooksConfig = field(default_factory=WebhooksConfig)
    redis: RedisConfig = field(default_factory=RedisConfig)
    history: HistoryConfig = field(default_factory=HistoryConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    websocket: WebsocketConfig = field(default_factory=WebsocketConfig)
    notices: tuple[str, ...] = ()  # Pushpin-only keys, ignored (logged at info)
    warnings: tuple[str, ...] = ()  # unknown keys, likely typos (logged at warn)

    @property
    def base_dir(self) -> Path:
        return self.path.parent if self.path else Path.cwd()

    @property
    def routes_path(self) -> Path:
        return self.base_dir / self.proxy.routes_file

    @property
    def certs_path(self) -> Path:
        return self.base_dir / self.runner.certs_dir


# --- value parsers: each takes the raw string and the config folder, raises ValueError ---


def parse_bool(value: str, _base: Path | None = None) -> bool:
    lowered = value.strip().lower()
    if lowered in ("true", "yes", "on", "1"):
        return True
    if lowered in ("false", "no", "off", "0", ""):
        return False
    raise ValueError(f"expected true or false, got {value!r}")


def parse_int(value: str, _base: Path | None = None) -> int:
    text = value.strip()
    if not re.fullmatch(r"[+-]?[0-9]+", text):  # int() would take "٣" and "1_000"
        raise ValueError(f"expected a whole number, got {value!r}")
    return int(text)


def _non_negative_int(value: str, base: Path | None = None) -> int:
    number = parse_int(value, base)
    if number < 0:
        raise ValueError(f"expected a number >= 0, got {number}")
    return number


def _positive_int(value: str, base: Path | None = None) -> int:
    number = parse_int(value, base)
    if number < 1:
        raise ValueError(f"expected a number >= 1, got {number}")
    return number


# The most items history keeps per channel: a resume or rewind replays at most this many.
MAX_HISTORY_ITEMS = 100_000


def _history_items(value: str, base: Path | None = None) -> int:
    number = _non_negative_int(value, base)
    if number > MAX_HISTORY_ITEMS:
        raise ValueError(f"expected at most {MAX_HISTORY_ITEMS}, got {number}")
    return number


def _port(value: str, base: Path | None = None) -> int:
    number = parse_int(value, base)
    if not 0 <= number <= 65535:
        raise ValueError(f"port out of range: {number}")
    return number


# The longest duration a setting may ask for (a year); also keeps timers finite.
MAX_SECONDS = 31_536_000


def _seconds(value: str, _base: Path | None = None) -> float:
    text = value.strip()
    if not re.fullmatch(r"[0-9]+(\.[0-9]*)?|\.[0-9]+", text):  # no nan, inf, 1e400, "-1"
        raise ValueError(f"expected a number of seconds >= 0, got {value!r}")
    number = float(text)
    if number > MAX_SECONDS:
        raise ValueError(f"expected at most {MAX_SECONDS} seconds, got {value!r}")
    return number


# ``[runner] workers = auto``: one worker per core, counted at start-up.
AUTO_WORKERS = 0
MAX_WORKERS = 256


def _workers(value: str, base: Path | None = None) -> int:
    if value.strip().lower() == "auto":
        return AUTO_WORKERS
    try:
        number = _positive_int(value, base)
    except ValueError:
        raise ValueError(f"expected auto or a number of processes >= 1, got {value!r}") from None
    if number > MAX_WORKERS:
        raise ValueError(f"expected at most {MAX_WORKERS} processes, got {number}")
    return number


def _path(value: str, _base: Path | None = None) -> Path:
    text = value.strip()
    if "\0" in text:
        raise ValueError("a path cannot hold a NUL character")
    return Path(text)


def _domain_jid(value: str, _base: Path | None = None) -> str:
    """The component's JID: a bare domain (``push.example.com``)."""
    text = value.strip()
    try:
        jid = JID(text)
    except (InvalidFormat, UnicodeError, ValueError, RuntimeError):  # RuntimeError: empty
        raise ValueError(f"not a valid XMPP domain: {text!r}") from None
    if jid.user or jid.resource or not jid.host:
        raise ValueError(f"must be a bare domain like push.example.com, got {text!r}")
    return text


def _http_url(value: str, _base: Path | None = None) -> str:
    text = value.strip()
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        raise ValueError(f"not a valid URL: {text!r}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"expected an http(s) URL, got {text!r}")
    return text


def _text(value: str, _base: Path | None = None) -> str:
    return value.strip()


def _zmq_spec(value: str, base: Path | None = None) -> str:
    """A ZeroMQ endpoint; a relative ``ipc://`` path is taken from the config's folder, as
    Pushpin's ``ipc://{rundir}/...`` with a relative ``rundir`` means."""
    spec = value.strip()
    if spec.startswith("ipc://") and base is not None:
        path = Path(spec[len("ipc://"):])
        if not path.is_absolute():
            spec = f"ipc://{base / path}"
    return spec


def _zmq_specs(value: str, base: Path | None = None) -> tuple[str, ...]:
    return tuple(_zmq_spec(part, base) for part in _csv(value))


def _csv(value: str, _base: Path | None = None) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


def parse_key(value: str, base: Path | None = None) -> bytes:
    """A signing key: plain text, ``base64:...`` or ``file:PATH`` (relative to the config)."""
    value = value.strip()
    if value.startswith("base64:"):
        try:
            return base64.b64decode(value[len("base64:") :], validate=True)
        except ValueError:
            raise ValueError("invalid base64 key") from None
    if value.startswith("file:"):
        path = Path(value[len("file:") :])
        if not path.is_absolute() and base is not None:
            path = base / path
        try:
            return path.read_bytes().strip()
        except OSError as e:
            raise ValueError(f"cannot read key file {path}: {e.strerror}") from None
    return value.encode("utf-8")


def _existing_file(value: str, base: Path | None = None) -> str:
    """A file that must exist (relative to the config's folder); empty means none."""
    value = value.strip()
    if not value:
        return ""
    path = Path(value)
    if not path.is_absolute() and base is not None:
        path = base / path
    if not path.is_file():
        raise ValueError(f"no such file: {path}")
    return str(path)


def parse_listen_addresses(value: str, _base: Path | None = None) -> tuple[ListenAddress, ...]:
    """``[addr:]port`` entries, comma separated; IPv6 hosts in brackets."""
    addresses = []
    for entry in _csv(value):
        match = re.fullmatch(r"(?:\[(?P<v6>[^\]]+)\]:|(?P<host>[^:\[\]]+):)?(?P<port>[0-9]+)",
                             entry)
        if not match:
            raise ValueError(f"expected [addr:]port, got {entry!r}")
        port = int(match["port"])
        if not 0 <= port <= 65535:
            raise ValueError(f"port out of range: {port}")
        address = ListenAddress(match["v6"] or match["host"] or "", port)
        if address in addresses and port != 0:
            raise ValueError(f"{entry} is listed twice")
        addresses.append(address)
    if not addresses:
        raise ValueError("no port given")
    return tuple(addresses)


def _optional_listen_addresses(value: str, base: Path | None = None
                               ) -> tuple[ListenAddress, ...]:
    """As ``parse_listen_addresses``, but empty means none (``https_ports=``)."""
    return parse_listen_addresses(value, base) if value.strip() else ()


def _cidrs(value: str, _base: Path | None = None
           ) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    try:
        return tuple(ipaddress.ip_network(part, strict=False) for part in _csv(value))
    except ValueError as e:
        raise ValueError(f"invalid CIDR list: {e}") from None


def _schedule(value: str, base: Path | None = None) -> tuple[float, ...]:
    schedule = tuple(_seconds(part, base) for part in _csv(value))
    if not schedule:
        raise ValueError("retry_schedule needs at least one entry")
    return schedule


def _log_level(value: str, _base: Path | None = None) -> int:
    names = {"error": 0, "warn": 1, "warning": 1, "info": 2, "debug": 3}
    lowered = value.strip().lower()
    if lowered in names:
        return names[lowered]
    number = parse_int(value)
    if not 0 <= number <= 4:
        raise ValueError(f"log_level must be 0-4 or error/warn/info/debug, got {value!r}")
    return number


def _stats_format(value: str, _base: Path | None = None) -> str:
    if value.strip() not in ("tnetstring", "json"):
        raise ValueError(f"stats_format must be tnetstring or json, got {value!r}")
    return value.strip()


def _x_forwarded_protocol(value: str, _base: Path | None = None) -> str:
    lowered = value.strip().lower()
    if lowered in ("", "false", "no"):
        return "false"
    if lowered in ("true", "yes"):
        return "true"
    if lowered == "proto-only":
        return lowered
    raise ValueError(f"expected true, false or proto-only, got {value!r}")


def _redis_url(value: str, _base: Path | None = None) -> str:
    value = value.strip()
    if value:
        parse_redis_url(value)  # raises ValueError naming the problem
    return value


Parser = Callable[[str, Path | None], object]

# section -> key -> (dataclass field, parser). Keys mirror pushpin.conf where they overlap.
_KNOWN: dict[str, dict[str, tuple[str, Parser]]] = {
    "runner": {
        "http_port": ("http_ports", parse_listen_addresses),
        "https_ports": ("https_ports", _optional_listen_addresses),
        "certs_dir": ("certs_dir", lambda v, _b: Path(v.strip())),
        "client_maxconn": ("client_maxconn", _non_negative_int),
        "client_maxconn_per_ip": ("client_maxconn_per_ip", _non_negative_int),
        "client_header_timeout": ("client_header_timeout", _seconds),
        "client_keepalive_timeout": ("client_keepalive_timeout", _seconds),
        "client_body_min_rate": ("client_body_min_rate", _non_negative_int),
        "client_body_rate_window": ("client_body_rate_window", _seconds),
        "max_buffered_bytes": ("max_buffered_bytes", _non_negative_int),
        "log_level": ("log_level", _log_level),
        "shutdown_timeout": ("shutdown_timeout", _seconds),
        "workers": ("workers", _workers),
    },
    "proxy": {
        "routesfile": ("routes_file", _path),
        "sig_iss": ("sig_iss", _text),
        "sig_key": ("sig_key", parse_key),
        "x_forwarded_for": ("x_forwarded_for", _csv),
        "x_forwarded_for_trusted": ("x_forwarded_for_trusted", _csv),
        "upstream_key": ("upstream_key", parse_key),
        "set_x_forwarded_protocol": ("set_x_forwarded_protocol", _x_forwarded_protocol),
        "accept_x_forwarded_protocol": ("accept_x_forwarded_protocol", parse_bool),
        "debug": ("debug", parse_bool),
        "auto_cross_origin": ("auto_cross_origin", parse_bool),
    },
    "handler": {
        "push_in_spec": ("push_in_spec", _zmq_spec),
        "push_in_sub_specs": ("push_in_sub_specs", _zmq_specs),
        "push_in_sub_spec": ("push_in_sub_specs", _zmq_specs),
        "push_in_sub_connect": ("push_in_sub_connect", parse_bool),
        "push_in_http_addr": ("push_in_http_addr", _text),
        "push_in_http_port": ("push_in_http_port", _port),
        "push_in_http_max_body_size": ("push_in_http_max_body_size", _non_negative_int),
        "push_in_http_key": ("push_in_http_key", parse_key),
        "push_in_http_iss": ("push_in_http_iss", _text),
        "message_wait": ("message_wait", _non_negative_int),
        "id_cache_ttl": ("id_cache_ttl", _non_negative_int),
        "id_cache_max": ("id_cache_max", _positive_int),
        "connection_subscription_max": ("connection_subscription_max", _non_negative_int),
        "stats_report_interval": ("stats_report_interval", _non_negative_int),
        "stats_spec": ("stats_spec", _zmq_spec),
        "command_spec": ("command_spec", _zmq_spec),
        "stats_format": ("stats_format", _stats_format),
        "subscription_linger": ("subscription_linger", _non_negative_int),
    },
    "xmpp": {
        "enabled": ("enabled", parse_bool),
        "jid": ("jid", _domain_jid),
        "host": ("host", _text),
        "port": ("port", _port),
        "secret": ("secret", _text),
        "backend": ("backend", _http_url),
        "backend_timeout": ("backend_timeout", _seconds),
        "sig_iss": ("sig_iss", _text),
        "sig_key": ("sig_key", parse_key),
        "max_stanza_size": ("max_stanza_size", _positive_int),
        "max_buffered_bytes": ("max_buffered_bytes", _positive_int),
    },
    "webhooks": {
        "enabled": ("enabled", parse_bool),
        "allow_cidrs": ("allow_cidrs", _cidrs),
        "verify": ("verify", parse_bool),
        "timeout": ("timeout", _seconds),
        "retry_schedule": ("retry_schedule", _schedule),
        "max_in_flight": ("max_in_flight", _non_negative_int),
        "ca_file": ("ca_file", _existing_file),
        "max_subscriptions": ("max_subscriptions", _positive_int),
        "max_pending": ("max_pending", _positive_int),
        "max_pending_bytes": ("max_pending_bytes", _positive_int),
        "max_pending_bytes_total": ("max_pending_bytes_total", _positive_int),
        "max_dead_letter_bytes": ("max_dead_letter_bytes", _positive_int),
    },
    "redis": {
        "url": ("url", _redis_url),
        "prefix": ("prefix", _text),
    },
    "history": {
        "max_items": ("max_items", _history_items),
        "max_age": ("max_age", _seconds),
        "max_bytes": ("max_bytes", _positive_int),
    },
    "metrics": {
        "addr": ("addr", _text),
        "port": ("port", _port),
    },
    "websocket": {
        "max_message": ("max_message", _positive_int),
        "max_outbound": ("max_outbound", _positive_int),
    },
}

# Keys that only make sense in Pushpin's multi-process layout (or features not offered here):
# accepted so a pushpin.conf loads unchanged, and noted once each.
_IGNORED_KEYS = {
    "global": {"include", "rundir", "ipc_prefix", "port_offset", "stats_connection_ttl", "libdir"},
    "runner": {
        "services", "logdir", "client_buffer_size", "local_ports",
        "allow_compression",
    },
    "proxy": {
        "orig_headers_need_mark", "accept_pushpin_route", "log_from", "log_user_agent",
        "sockjs_url", "updates_check", "organization_name", "cdn_loop",
        "max_open_requests", "local_ports",
    },
    "handler": {
        "push_in_http_max_headers_size", "message_rate", "message_hwm",
        "stats_subscription_ttl", "stats_connection_ttl",
        "stats_connection_send", "prometheus_port", "prometheus_prefix",
    },
}
_IGNORED_PATTERNS = (
    re.compile(r".*_bin$"),
    re.compile(r"^(zurl|condure|m2a|mongrel2|m2sh)_.*"),
    re.compile(r".*_(in|out|stream)_spec(s)?$"),
    re.compile(r"^ipc_.*"),
)

_SECTION_TYPES = {
    "runner": RunnerConfig,
    "proxy": ProxyConfig,
    "handler": HandlerConfig,
    "xmpp": XmppConfig,
    "webhooks": WebhooksConfig,
    "redis": RedisConfig,
    "history": HistoryConfig,
    "metrics": MetricsConfig,
    "websocket": WebsocketConfig,
}


@dataclass
class _Entry:
    section: str
    key: str
    value: str
    line: int


_INLINE_COMMENT = re.compile(r"\s[#;].*$")


def _read_ini(text: str, path: Path) -> list[_Entry]:
    """Lines of ``[section]`` and ``key=value``, with ``#``/``;`` comment lines and
    ``value  # comment`` or ``value  ; comment`` (after whitespace; SPEC's examples write
    them); keeps line numbers."""
    entries: list[_Entry] = []
    section = ""
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            if not line.endswith("]") or len(line) < 3:
                raise ConfigError(path, number, f"malformed section header {line!r}")
            section = line[1:-1].strip()
            continue
        if "=" not in line:
            raise ConfigError(path, number, f"expected key=value, got {line!r}")
        if not section:
            raise ConfigError(path, number, "key outside of any [section]")
        key, _, value = line.partition("=")
        value = _INLINE_COMMENT.sub("", value)
        entries.append(_Entry(section, key.strip(), value.strip(), number))
    return entries


def _expand(value: str, variables: dict[str, str]) -> str:
    """Pushpin's ``{name}`` references to [global] keys; unknown names are left as written."""
    return re.sub(r"\{(\w+)\}", lambda m: variables.get(m[1], m[0]), value)


def _is_ignored(section: str, key: str) -> bool:
    if key in _IGNORED_KEYS.get(section, ()):
        return True
    return any(pattern.match(key) for pattern in _IGNORED_PATTERNS)


def parse_config(text: str, path: str | Path) -> Config:
    """Parse config text; ``path`` names the file in errors and anchors relative paths."""
    path = Path(path)
    entries = _read_ini(text, path)
    variables = {e.key: e.value for e in entries if e.section == "global"}
    # [global] keys that a used value refers to as {name} (stats_spec's {rundir}) are used.
    referenced = {name for e in entries if _KNOWN.get(e.section, {}).get(e.key)
                  for name in re.findall(r"\{(\w+)\}", e.value)}
    values: dict[str, dict[str, object]] = {name: {} for name in _SECTION_TYPES}
    notices: list[str] = []
    warnings: list[str] = []
    for entry in entries:
        known = _KNOWN.get(entry.section, {}).get(entry.key)
        where = f"{path}:{entry.line}"
        if known is None:
            if entry.section == "global" and entry.key in referenced:
                notices.append(f"{where}: [global] {entry.key} is used only where other "
                               f"values refer to {{{entry.key}}}")
            elif _is_ignored(entry.section, entry.key) or entry.section == "global":
                notices.append(
                    f"{where}: [{entry.section}] {entry.key} is ignored "
                    "(Pushpin multi-process setting, not needed here)"
                )
            else:
                warnings.append(f"{where}: unknown key [{entry.section}] {entry.key}")
            continue
        field_name, parser = known
        try:
            values[entry.section][field_name] = parser(
                _expand(entry.value, variables), path.parent
            )
        except ValueError as e:
            raise ConfigError(path, entry.line, f"[{entry.section}] {entry.key}: {e}") from None
    sections = {name: cls(**values[name]) for name, cls in _SECTION_TYPES.items()}
    return Config(path=path, notices=tuple(notices), warnings=tuple(warnings), **sections)


# A config or routes file is a few kB; this bounds what a wrong path (a log) can cost.
MAX_FILE_BYTES = 16 * 1024 * 1024


def read_text(path: Path, what: str) -> str:
    """A config-like file's text; unreadable, not a regular file (``/dev/zero`` would never
    end), over MAX_FILE_BYTES or not UTF-8 is a ConfigError naming it."""
    try:
        if not stat.S_ISREG(path.stat().st_mode):
            raise ConfigError(path, None, f"cannot read {what}: not a regular file")
        with path.open("rb") as file:
            data = file.read(MAX_FILE_BYTES + 1)
        if len(data) > MAX_FILE_BYTES:
            raise ConfigError(path, None, f"cannot read {what}: larger than {MAX_FILE_BYTES} "
                                          "bytes")
        return data.decode("utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(path, None, f"cannot read {what}: {e}") from None


def load(path: str | Path) -> Config:
    """Read and parse a config file; unreadable files are a ConfigError too."""
    path = Path(path)
    return parse_config(read_text(path, "config"), path)


def default_config_path(candidates: Iterable[str | Path] = (
    "etc/fanout.conf",
    "/etc/fanout_tx/fanout.conf",
)) -> Path | None:
    """The first config file that exists, as SPEC A1 orders them."""
    for candidate in candidates:
        if Path(candidate).is_file():
            return Path(candidate)
    return None
