"""``GET /health``: each configured component's state, as JSON; 503 when one is down.

A load balancer or an orchestrator polls it, so it reads state only (no probes, no I/O):
listeners that have bound, ZeroMQ sockets that are open, the XMPP link and the Redis bus as
they last saw themselves.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from twisted.application.internet import StreamServerEndpointService
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IListeningPort
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource

# A check answers (up, details) from what its component knows right now.
Check = Callable[[], tuple[bool, dict[str, Any]]]


def address_text(port: IListeningPort) -> str:
    host = port.getHost()
    if not isinstance(host, IPv4Address | IPv6Address):  # the client ports are TCP
        return str(host)
    return f"[{host.host}]:{host.port}" if ":" in host.host else f"{host.host}:{host.port}"


@dataclass
class Listeners:
    """The bound ports of a group of endpoint services (``http-proxy``, ``publish-http``),
    recorded as each one binds, so a check is a lookup."""

    expected: int = 0
    ports: list[IListeningPort] = field(default_factory=list)

    def watch(self, service: StreamServerEndpointService,
              listening: Callable[[StreamServerEndpointService], Any]) -> None:
        """``listening(service)`` fires with the port once bound (tap.listening_port)."""
        self.expected += 1
        listening(service).addCallback(self._bound)

    def _bound(self, port: IListeningPort | None) -> None:
        if port is not None:  # None: it could not bind (and has logged why)
            self.ports.append(port)

    def check(self) -> tuple[bool, dict[str, Any]]:
        return (len(self.ports) == self.expected and self.expected > 0,
                {"listening": [address_text(p) for p in self.ports]})


class ReaderState(Protocol):
    """What a ZeroMQ input (inputs/zmq_ingest.ZmqReader) tells of itself."""

    @property
    def endpoints(self) -> list[str]: ...

    def problem(self) -> str | None: ...


class LinkState(Protocol):
    """The XMPP component link's state (transports/xmpp/link.LinkState)."""

    @property
    def up(self) -> bool: ...

    @property
    def last_error(self) -> str | None: ...


class BusState(Protocol):
    """The Redis bus (cluster/redis_bus.RedisBus)."""

    @property
    def up(self) -> bool: ...


def zmq_check(service: ReaderState) -> Check:
    """A ZeroMQ input (zmq_ingest.ZmqReader) is up while it reads: socket open and reader
    in the reactor; otherwise ``error`` says why."""

    def check() -> tuple[bool, dict[str, Any]]:
        problem = service.problem()
        details: dict[str, Any] = {"endpoints": service.endpoints}
        if problem is not None:
            details["error"] = problem
        return problem is None, details

    return check


def xmpp_check(link: LinkState) -> Check:
    """The component link (xmpp.link.LinkState): up after the handshake."""

    def check() -> tuple[bool, dict[str, Any]]:
        details: dict[str, Any] = {}
        if link.last_error:
            details["last_error"] = link.last_error
        return link.up, details

    return check


def redis_check(bus: BusState) -> Check:
    def check() -> tuple[bool, dict[str, Any]]:
        return bus.up, {}

    return check


class HealthResource(Resource):
    """``GET /health``: ``{"status": "ok"|"down", "services": {name: {"state": ...}}}``."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.checks: dict[str, Check] = {}

    def add(self, name: str, check: Check) -> None:
        self.checks[name] = check

    def report(self) -> tuple[bool, dict[str, Any]]:
        services = {}
        healthy = True
        for name, check in self.checks.items():
            up, details = check()
            healthy = healthy and up
            services[name] = {"state": "up" if up else "down", **details}
        return healthy, {"status": "ok" if healthy else "down", "services": services}

    def render_GET(self, request: IRequest) -> bytes:  # noqa: N802 - twisted.web hook
        healthy, body = self.report()
        request.setResponseCode(200 if healthy else 503)
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        return json.dumps(body, sort_keys=True).encode("utf-8") + b"\n"

    render_HEAD = render_GET  # noqa: N815 - twisted.web hook


class WorkerState(Protocol):
    """The supervisor's workers (ops/workers.WorkerPool)."""

    count: int

    def ready_count(self) -> int: ...


def workers_check(pool: WorkerState, bound: Callable[[], list[str]]) -> Check:
    """A supervisor's client ports: up while every worker serves them."""

    def check() -> tuple[bool, dict[str, Any]]:
        ready = pool.ready_count()
        return ready == pool.count, {"listening": bound(), "workers": pool.count,
                                     "workers_serving": ready}

    return check
