"""What operators see and do: /metrics and /health, the stats socket, the start-up line and
the graceful, bounded stop. ``install`` wires them onto a service tree built by tap.py."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Callable
from typing import Any

import zmq
from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import ReactorNotRunning
from twisted.internet.interfaces import IListeningPort, IReactorTime
from twisted.logger import Logger
from twisted.web.resource import Resource
from typing_extensions import override

from fanout_tx._twisted import listening_port
from fanout_tx.config.settings import ListenAddress, MetricsConfig
from fanout_tx.core.router import Router
from fanout_tx.inputs.publish_api import PublishSite
from fanout_tx.ops.health import (
    HealthResource,
    Listeners,
    address_text,
    redis_check,
    xmpp_check,
    zmq_check,
)
from fanout_tx.ops.metrics import MetricSources, metrics_resource
from fanout_tx.ops.startup import exit_if_failed, listen_strictly, start_children
from fanout_tx.ops.stats_pub import StatsPublisher, Totals

SHUTDOWN_REASON = "shutdown"
MAX_BODY_SIZE = 10_000  # the metrics listener only answers GETs

_log = Logger(namespace="fanout_tx.ops.operations")


def bound_port(service: StreamServerEndpointService) -> Deferred[IListeningPort | None]:
    """The port a started endpoint service listens on, or None when it could not bind (the
    service has logged why). Twisted keeps the listen Deferred private."""
    result: Deferred[IListeningPort | None] = Deferred()

    def fire(port: IListeningPort | None) -> IListeningPort | None:
        result.callback(port)
        return port

    listening_port(service).addCallback(fire)
    return result


class FanoutRoot(MultiService):
    """The service tree's root. A socket that cannot be opened at start-up ends the process
    (ops/startup.py). Stopping it (SIGTERM/SIGINT under twistd) stops every child
    (listeners stop accepting, WebSockets hear 1001, inputs close), then answers whatever is
    still held (long-polls get their timeout response, streams end) and gives up waiting
    after ``shutdown_timeout`` seconds so the process always exits."""

    _log = Logger()

    def __init__(self, router: Router, clock: IReactorTime, shutdown_timeout: float) -> None:
        super().__init__()
        self._router = router
        self._clock = clock
        self._timeout = shutdown_timeout
        self.after_start: list[Callable[[], None]] = []
        self._startup_failures: list[str] = []

    @override
    def privilegedStartService(self) -> None:
        Service.privilegedStartService(self)
        listen_strictly(self)
        self._startup_failures = start_children(self, lambda c: c.privilegedStartService())

    @override
    def startService(self) -> None:
        """Exits the process when a socket could not be opened; both phases' failures are
        reported together."""
        Service.startService(self)
        listen_strictly(self)
        failures = start_children(self, lambda child: child.startService())
        exit_if_failed(self._startup_failures + failures)
        for hook in self.after_start:
            hook()

    @override
    def stopService(self) -> Deferred[None]:
        Service.stopService(self)
        pending: dict[str, Deferred[Any]] = {}
        for child in reversed(list(self)):
            stopping = maybeDeferred(child.stopService)
            pending[child.name or repr(child)] = stopping
            stopping.addBoth(self._stopped, pending, child.name or repr(child))
        self._router.close_all(SHUTDOWN_REASON)
        done: Deferred[None] = Deferred()
        everything = DeferredList(list(pending.values()), consumeErrors=True)
        timer = self._clock.callLater(self._timeout, self._gave_up, done, pending)
        everything.addCallback(self._all_stopped, done, timer)
        return done

    @staticmethod
    def _stopped(result: Any, pending: dict[str, Deferred[Any]], name: str) -> Any:
        pending.pop(name, None)
        return result

    def _all_stopped(self, _result: Any, done: Deferred[None], timer: Any) -> None:
        if timer.active():
            timer.cancel()
            self._log.info("stopped cleanly")
            done.callback(None)

    def _gave_up(self, done: Deferred[None], pending: dict[str, Deferred[Any]]) -> None:
        self._log.warn("shutdown took over {timeout}s; exiting without waiting for "
                       "{services}", timeout=self._timeout, services=", ".join(sorted(pending)))
        done.callback(None)


def stop_on_signals(reactor: Any) -> None:
    """SIGTERM and SIGINT stop the reactor (and so the service tree, gracefully), and the
    process then exits 0. Twisted's own handlers would re-raise the signal after the stop, so
    a supervisor would see a death by signal even after a clean shutdown. Called once the
    reactor runs (it installs its handlers at start-up)."""

    def stop() -> None:
        with contextlib.suppress(ReactorNotRunning):  # a second signal while stopping
            reactor.stop()

    def handler(signum: int, _frame: Any) -> None:
        _log.info("received {signal}, shutting down", signal=signal.Signals(signum).name)
        reactor.callFromThread(stop)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, handler)


def _child(root: MultiService, name: str) -> Any:
    try:
        return root.getServiceNamed(name)
    except KeyError:
        return None


def _endpoint_services(service: Any) -> list[StreamServerEndpointService]:
    if isinstance(service, StreamServerEndpointService):
        return [service]
    if isinstance(service, MultiService):
        return [s for s in service if isinstance(s, StreamServerEndpointService)]
    return []


def install(root: FanoutRoot, core: Any, reactor: Any,
            context: zmq.Context | None = None) -> HealthResource:
    """Mount /metrics and /health on the publish port, add the ``metrics`` listener and the
    ``stats`` socket when configured, and log one line with every bound address once all
    listeners are up. ``core`` is tap.Core; the transports are already children of ``root``."""
    sources = _metric_sources(root, core)
    health = HealthResource()
    core.publish_root.mount(b"metrics", metrics_resource(sources), public=True)
    core.publish_root.mount(b"health", health, public=True)
    if core.config.metrics.port:
        _named(_metrics_listener(core.config.metrics, sources, health, reactor), "metrics",
               root)
    if core.config.handler.stats_spec:
        _named(_stats(root, core, reactor, context or zmq.Context.instance()), "stats", root)
    watched = _add_checks(root, health)

    def started() -> None:
        ports = []
        for name, listeners in watched.items():
            for service in _endpoint_services(_child(root, name)):
                listeners.watch(service, bound_port)
                label = f"{name} tls" if (service.name or "").startswith("https ") else name
                ports.append(bound_port(service).addCallback(lambda p, n=label: (n, p)))
        DeferredList(ports).addCallback(_log_addresses, root)

    root.after_start.append(started)
    return health


def _named(service: Service, name: str, root: MultiService) -> None:
    service.setName(name)
    service.setServiceParent(root)


def _metric_sources(root: MultiService, core: Any) -> MetricSources:
    websocket = _child(root, "websocket")
    xmpp = _child(root, "xmpp")
    return MetricSources(
        router=core.router,
        inputs=core.input_bus.counters,
        rejecting={"http": core.publish_root.children[b"publish"],
                   **{name: _child(root, name)
                      for name in ("zmq-pull", "zmq-sub", "zmq-command", "redis")
                      if _child(root, name) is not None}},
        ws_sessions=(lambda: len(websocket.handler.sessions)) if websocket else None,
        webhooks=_child(root, "webhooks"),
        xmpp_link=xmpp.link if xmpp is not None else None,
        redis=_child(root, "redis"),
        client_connections=getattr(_child(root, "http-proxy"), "connection_limit", None),
        write_budget=getattr(core, "write_budget", None),
    )


def _metrics_listener(config: MetricsConfig, sources: MetricSources, health: HealthResource,
                      reactor: Any) -> StreamServerEndpointService:
    """``[metrics] addr``/``port``: /metrics and /health on a listener of their own."""
    page = Resource()
    page.putChild(b"metrics", metrics_resource(sources))
    page.putChild(b"health", health)
    address = ListenAddress(config.addr or "127.0.0.1", config.port)
    site = PublishSite(page, MAX_BODY_SIZE, reactor)  # quiet: no access log
    return StreamServerEndpointService(
        serverFromString(reactor, address.endpoint_description()), site)


def _stats(root: MultiService, core: Any, reactor: Any, context: zmq.Context) -> StatsPublisher:
    proxy = _child(root, "http-proxy")
    redis = _child(root, "redis")
    totals = Totals(lambda: sum(core.input_bus.counters.received.values())
                    + (redis.received_items if redis is not None else 0),
                    core.router, lambda: proxy.resource.requests if proxy else 0)
    handler = core.config.handler
    return StatsPublisher(reactor, context, handler.stats_spec, handler.stats_format,
                          handler.stats_report_interval, core.router, totals)


def _add_checks(root: MultiService, health: HealthResource) -> dict[str, Listeners]:
    """One check per configured component; returns the listener groups to watch."""
    watched = {name: Listeners() for name in ("http-proxy", "publish-http", "metrics")
               if _child(root, name)}
    for name, listeners in watched.items():
        health.add(name, listeners.check)
    for name in ("zmq-pull", "zmq-sub", "zmq-command"):
        if _child(root, name) is not None:
            health.add(name, zmq_check(root.getServiceNamed(name)))
    xmpp = _child(root, "xmpp")
    if xmpp is not None:
        health.add("xmpp", xmpp_check(xmpp.link))
    redis = _child(root, "redis")
    if redis is not None:
        health.add("redis", redis_check(redis))
    return watched


def _log_addresses(results: list[tuple[bool, Any]], root: MultiService) -> None:
    """The one start-up line: every address bound, by what it serves."""
    parts = [f"{name} {address_text(port)}" for ok, (name, port) in results
             if ok and port is not None]
    for name in ("zmq-pull", "zmq-sub", "zmq-command"):
        service = _child(root, name)
        if service is not None and service.endpoints:
            parts.append(f"{name} {','.join(service.endpoints)}")
    stats = _child(root, "stats")
    if stats is not None and stats.endpoint:
        parts.append(f"stats {stats.endpoint}")
    _log.info("fanout_tx listening: {addresses}", addresses="; ".join(parts))

