"""Composition root: ``twistd fanout`` options and the service tree.

The only module that reads the global reactor. ``makeService`` binds and connects nothing:
each listener is an endpoint service that starts listening in ``startService``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar, cast

import zmq
from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IService, IServiceCollection
from twisted.internet.defer import DeferredList
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import ReactorNotRunning
from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint
from twisted.logger import Logger
from twisted.python import usage
from twisted.web.resource import Resource

from fanout_tx._reactor import IServerReactor
from fanout_tx.cluster.machine_bus import (
    STATS,
    ChannelUnion,
    MachineBus,
    MachineFanout,
    WorkerBus,
)
from fanout_tx.cluster.redis_bus import RedisBus
from fanout_tx.cluster.redis_history import RedisHistory
from fanout_tx.config import settings as config_module
from fanout_tx.config.redis_url import parse_redis_url
from fanout_tx.config.routes_watch import RoutesFile, RoutesWatcher, reload_on_sighup
from fanout_tx.config.settings import Config, ConfigError, ListenAddress, parse_listen_addresses
from fanout_tx.core.bus import LocalBus
from fanout_tx.core.history import MemoryHistory
from fanout_tx.core.interfaces import IBus, IHistory
from fanout_tx.core.router import Router
from fanout_tx.inputs.history_api import HistoryResource
from fanout_tx.inputs.publish_api import PublishRoot, PublishSite
from fanout_tx.inputs.publish_auth import BearerAuth
from fanout_tx.inputs.zmq_command import ZmqCommand
from fanout_tx.inputs.zmq_ingest import ZmqPullInput, ZmqReader, ZmqSubInput
from fanout_tx.ops.fd_limit import connection_cap, raise_open_files_limit
from fanout_tx.ops.gc_tuning import tune_gc
from fanout_tx.ops.health import (
    HealthResource,
    Listeners,
    address_text,
    redis_check,
    workers_check,
    xmpp_check,
    zmq_check,
)
from fanout_tx.ops.logs import filter_twistd_logging
from fanout_tx.ops.metrics import (
    InputCounters,
    MeteredBus,
    MetricSources,
    WorkerReports,
    metrics_resource,
    metrics_text,
)
from fanout_tx.ops.operations import FanoutRoot, bound_port, stop_on_signals
from fanout_tx.ops.shared_ports import AdoptedEndpoint, ClientPorts
from fanout_tx.ops.sig_warnings import signing_warnings
from fanout_tx.ops.startup import abandon_startup, quiet_startup_failures
from fanout_tx.ops.stats_pub import StatsPublisher, Totals
from fanout_tx.ops.workers import (
    FIRST_PORT_FD,
    WorkerLink,
    WorkerPool,
    worker_command,
    worker_count,
)
from fanout_tx.outbound.clients import OriginClients, origin_clients
from fanout_tx.transports.http.proxy_service import BACKLOG, ProxyService, build_proxy_service
from fanout_tx.transports.http.tls import ServerIdentities, load_identities
from fanout_tx.transports.webhooks.api import WebhooksResource
from fanout_tx.transports.webhooks.redis_store import warn_if_webhooks_elsewhere
from fanout_tx.transports.webhooks.service import WebhookService, build_webhooks
from fanout_tx.transports.write_budget import WriteBudget
from fanout_tx.transports.ws.service import WebSocketService, build_websocket_service
from fanout_tx.transports.xmpp.component import build_xmpp
from fanout_tx.transports.xmpp.link import LinkState

_log = Logger(namespace="fanout_tx.tap")
METRICS_MAX_BODY_SIZE = 10_000  # the metrics listener only answers GETs


class Options(usage.Options):
    synopsis = "[--config PATH] [--routes PATH] [--port [ADDR:]PORT]... [--route LINE]..."
    longdesc = (
        "Run the fanout_tx push server: GRIP proxy, WebSocket, publish API, ZeroMQ inputs "
        "and the XMPP and webhook transports, in one reactor."
    )
    optParameters = [
        ["config", "c", None, "Config file (default etc/fanout.conf, then "
                              "/etc/fanout_tx/fanout.conf)."],
        ["routes", "r", None, "Routes file (default: [proxy] routesfile of the config)."],
        ["worker", None, None, "Internal: run as worker N of a supervisor ([runner] workers).",
         int],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["ports"] = []
        self["route_lines"] = []
        self["forwarded"] = []  # --port/--route as given, for the workers' command line

    def opt_port(self, value: str) -> None:
        """Client HTTP/WebSocket port, [addr:]port; repeatable; overrides [runner] http_port."""
        try:
            self["ports"].extend(parse_listen_addresses(value))
        except ValueError as e:
            raise usage.UsageError(f"--port: {e}") from None
        self["forwarded"] += ["--port", value]

    def opt_route(self, value: str) -> None:
        """A routes line; repeatable; replaces the routes file, as Pushpin's --route does."""
        self["route_lines"].append(value)
        self["forwarded"] += ["--route", value]

    def worker_arguments(self) -> list[str]:
        """These options as a worker is given them: files by absolute path (a daemon
        changes folder)."""
        config = self["settings"].config.path
        arguments = ["--config", str(Path(config).resolve())] if config else []
        if self["routes"]:
            arguments += ["--routes", str(Path(self["routes"]).resolve())]
        return arguments + self["forwarded"]

    def postOptions(self) -> None:  # noqa: N802 - usage.Options hook
        try:
            self["settings"] = load_settings(
                self["config"], self["routes"], tuple(self["ports"]), tuple(self["route_lines"])
            )
        except ConfigError as e:
            # The one ``file:line: problem`` line on stderr, exit status 1: a UsageError
            # would make twistd print its whole usage text above it. (No daemon has forked
            # yet, so exiting here is safe; ops/startup.py says why later failures cannot.)
            raise SystemExit(str(e)) from None


@dataclass(frozen=True)
class Settings:
    """Everything start-up needs, loaded and validated before any service is built."""

    config: Config
    routes: RoutesFile
    # One (address, certificates) per ``[runner] https_ports`` entry, loaded and checked.
    tls: tuple[tuple[ListenAddress, ServerIdentities], ...] = ()


def load_settings(
    config_path: str | None,
    routes_path: str | None = None,
    ports: tuple = (),
    route_lines: tuple[str, ...] = (),
) -> Settings:
    """Load config and routes; raises ConfigError naming the file, line and problem."""
    path = Path(config_path) if config_path else config_module.default_config_path()
    if path is None:
        raise ConfigError(
            "etc/fanout.conf", None,
            "no config file found (tried etc/fanout.conf, /etc/fanout_tx/fanout.conf)",
        )
    config = config_module.load(path)
    if ports:
        config = replace(config, runner=replace(config.runner, http_ports=ports))
    routes = RoutesFile(Path(routes_path) if routes_path else config.routes_path, route_lines)
    tls = tuple((address, load_identities(config.certs_path, address.port))
                for address in config.runner.https_ports)
    return Settings(config, routes, tls)


@dataclass
class Core:
    """The shared pieces every transport is wired to."""

    config: Config
    router: Router
    bus: IBus
    routes: RoutesFile
    reactor: IServerReactor
    # What the inputs publish through: ``bus``, counting items and failures per input.
    input_bus: MeteredBus
    # ``[runner] max_buffered_bytes``, shared by HTTP streams and WebSockets.
    write_budget: WriteBudget
    # The origin clients, one per trust policy, handed to every transport that needs one.
    clients: OriginClients
    # With workers, what the inputs deliver to: this router and every worker's.
    machine: MachineFanout | None = None
    # The publish port's root; transports mount their pages on it (webhooks, metrics).
    publish_root: PublishRoot | None = None
    # Built by build_service; makeService hands it to the SIGHUP handler.
    routes_watcher: RoutesWatcher | None = None


def build_core(settings: Settings, reactor: IServerReactor,
               machine: Callable[[Router], MachineFanout] | None = None,
               share: bool = True) -> Core:
    """The router and the bus; ``machine`` makes the fan-out to the workers from the
    router; ``share`` False (a worker) leaves Redis to the supervisor."""
    handler = settings.config.handler
    router = Router(
        reactor,
        message_wait=handler.message_wait / 1000.0,
        id_cache_ttl=handler.id_cache_ttl,
        id_cache_max=handler.id_cache_max,
    )
    fanout = machine(router) if machine is not None else None
    redis = settings.config.redis
    bus: IBus
    if redis.url and share:
        bus = RedisBus(fanout or router, reactor, parse_redis_url(redis.url), redis.prefix)
    else:
        bus = MachineBus(fanout) if fanout is not None else LocalBus(router)
    # A worker keeps an in-memory history of its own (it sees every item); one in Redis is
    # the supervisor's to write, and every worker's to read (its clients resume from it).
    router.history = _history(settings.config, reactor, writer=share)
    return Core(settings.config, router, bus, settings.routes, reactor,
                input_bus=MeteredBus(bus, InputCounters()),
                write_budget=WriteBudget(reactor, settings.config.runner.max_buffered_bytes),
                clients=origin_clients(reactor, settings.config.webhooks.max_in_flight),
                machine=fanout)


def _history(config: Config, reactor: IServerReactor, writer: bool = True
             ) -> IHistory | None:
    """``[history]``: in Redis when ``[redis] url`` is set (shared, kept across restarts;
    ``writer`` False: read only, a worker's), else in memory; None when off."""
    history = config.history
    if not history.enabled:
        return None
    if config.redis.url:
        return RedisHistory(reactor, parse_redis_url(config.redis.url), history.max_items,
                            history.max_age, config.redis.prefix, writer=writer)
    return MemoryHistory(reactor, history.max_items, history.max_age, history.max_bytes)


S = TypeVar("S", bound=IService)


def _named(service: S, name: str, parent: IServiceCollection) -> S:
    service.setName(name)
    service.setServiceParent(parent)
    return service


@dataclass
class Workers:
    """``[runner] workers`` > 1: how many, and what each is started with."""

    count: int
    arguments: list[str]  # the plugin's options, as Options.worker_arguments gives them
    on_startup_failure: Callable[[str], None]


@dataclass
class Machine:
    """A supervisor's own pieces: the client ports, the workers, their channels."""

    ports: ClientPorts
    pool: WorkerPool
    channels: ChannelUnion


def _client_side(settings: Settings, core: Core, root: FanoutRoot,
                 endpoints: list[tuple[str, IStreamServerEndpoint]] | None = None,
                 ) -> tuple[WebSocketService, ProxyService]:
    """The WebSocket service and the proxy's listeners (``endpoints``: a worker's)."""
    config, reactor = settings.config, core.reactor
    websocket = _named(build_websocket_service(config, core.routes, core.router, reactor,
                                               core.clients, core.write_budget),
                       "websocket", root)
    proxy = _named(build_proxy_service(config, core.routes, core.router, reactor, core.clients,
                                       websocket_handler=websocket.handler, tls=settings.tls,
                                       write_budget=core.write_budget, endpoints=endpoints),
                   "http-proxy", root)
    return websocket, proxy


def _root(settings: Settings, core: Core, reactor: IServerReactor) -> FanoutRoot:
    root = FanoutRoot(core.router, reactor, settings.config.runner.shutdown_timeout)
    root.after_stop.append(core.clients.close_idle)  # once every user of them has stopped
    core.routes_watcher = _named(core.routes.watcher(clock=reactor), "routes-watch", root)
    if isinstance(core.router.history, RedisHistory):
        _named(core.router.history, "history", root)  # owns its Redis connection
    return root


def build_service(settings: Settings, reactor: IServerReactor,
                  zmq_context: zmq.Context | None = None,
                  workers: Workers | None = None) -> tuple[FanoutRoot, Core]:
    """The whole service tree for ``settings``; returns the core too, for tests. Every
    service is handed its collaborators here; nothing is looked up by name later. The
    ZeroMQ context is the process's one, unless a test brings its own. With ``workers``,
    the supervisor's tree: the client side runs in the workers (build_worker)."""
    config = settings.config
    machine: Machine | None = None

    def fan_out(router: Router) -> MachineFanout:
        nonlocal machine
        assert workers is not None
        runner = config.runner
        ports = ClientPorts((*runner.http_ports, *(address for address, _ in settings.tls)),
                            workers.count, BACKLOG)
        channels = ChannelUnion(router)
        pool = WorkerPool(reactor, workers.count,
                          lambda index: worker_command(index, workers.arguments),
                          ports.for_worker, channels, runner.shutdown_timeout,
                          workers.on_startup_failure)
        machine = Machine(ports, pool, channels)
        fanout = MachineFanout(router, pool.broadcast)
        pool.greeting = fanout.snapshot
        return fanout

    core = build_core(settings, reactor, fan_out if workers is not None else None)
    root = _root(settings, core, reactor)
    for notice in config.notices:
        _log.info("{notice}", notice=notice)
    for warning in (*config.warnings, *signing_warnings(config, settings.routes.table.routes)):
        _log.warn("{warning}", warning=warning)
    redis = core.bus if isinstance(core.bus, RedisBus) else None
    if redis is not None:
        _named(redis, "redis", root)  # owns the Redis connections
        if not config.webhooks.enabled:
            warn_if_webhooks_elsewhere(redis, config.redis.prefix)
    websocket: WebSocketService | None = None
    proxy: ProxyService | None = None
    if machine is None:
        websocket, proxy = _client_side(settings, core, root)
    else:
        _named(machine.ports, "http-proxy", root)  # its bind errors read as before
        _named(machine.pool, "workers", root)
    publish = _named(_publish_http(core), "publish-http", root)
    publish_root = core.publish_root
    assert publish_root is not None
    webhooks = _named(_webhooks(core), "webhooks", root) if config.webhooks.enabled else None
    handler = config.handler
    context = zmq_context if zmq_context is not None else zmq.Context.instance()
    pull = _named(ZmqPullInput(reactor, context, core.input_bus, handler.push_in_spec),
                  "zmq-pull", root)
    # SUB input is never shared through Redis: a PUB fans every item out to each instance's
    # SUB, which subscribes only to the channels of that instance's own subscribers (with
    # workers, of every router on the machine).
    sub_bus = MeteredBus(MachineBus(core.machine) if core.machine is not None
                         else LocalBus(core.router), core.input_bus.counters)
    sub = _named(ZmqSubInput(reactor, context, sub_bus,
                             machine.channels if machine is not None else core.router,
                             handler.push_in_sub_specs, connect=handler.push_in_sub_connect,
                             linger=handler.subscription_linger), "zmq-sub", root)
    zmq_readers: dict[str, ZmqReader] = {"zmq-pull": pull, "zmq-sub": sub}
    if handler.command_spec:
        zmq_readers["zmq-command"] = _named(_command(core, context, pull, sub), "zmq-command",
                                            root)
    xmpp = (_named(build_xmpp(config, core.router, reactor, core.clients.verified), "xmpp", root)
            if config.xmpp.enabled else None)
    sources = MetricSources(
        router=core.router,
        inputs=core.input_bus.counters,
        rejecting={"http": publish_root.publish, **zmq_readers,
                   **({"redis": redis} if redis else {})},
        ws_sessions=websocket.session_count if websocket is not None else None,
        webhooks=webhooks,
        xmpp_link=xmpp.link if xmpp is not None else None,
        redis=redis,
        client_connections=proxy.connection_limit if proxy is not None else None,
        write_budget=core.write_budget if proxy is not None else None,
    )
    _operations(root, core, sources, Operated(
        listeners={"publish-http": [publish], **({"http-proxy": list(proxy)} if proxy else {})},
        readers=zmq_readers, zmq_context=context,
        xmpp=xmpp.link if xmpp is not None else None, redis=redis,
        proxy_requests=(lambda: proxy.resource.requests) if proxy is not None else lambda: 0,
        machine=machine))
    return root, core


def build_worker(settings: Settings, reactor: IServerReactor, index: int,
                 count: int) -> tuple[FanoutRoot, Core]:
    """Worker ``index`` of ``count`` (ops/workers.py): the client side, on the sockets it
    inherited, fed items only by the machine bus. Client limits are shared out: each worker
    takes its part of ``client_maxconn`` and ``max_buffered_bytes``."""
    settings = _worker_share(settings, count)
    core = build_core(settings, reactor, share=False)
    root = _root(settings, core, reactor)
    runner = settings.config.runner
    endpoints: list[tuple[str, IStreamServerEndpoint]] = [
        (f"{address.host}:{address.port}",
         AdoptedEndpoint(reactor, FIRST_PORT_FD + offset, address))
        for offset, address in enumerate(runner.http_ports)
    ]
    endpoints += [
        (f"https {address.host}:{address.port}",
         AdoptedEndpoint(reactor, FIRST_PORT_FD + len(endpoints) + offset, address,
                         identities))
        for offset, (address, identities) in enumerate(settings.tls)
    ]
    websocket, proxy = _client_side(settings, core, root, endpoints)
    sources = MetricSources(router=core.router, inputs=core.input_bus.counters,
                            ws_sessions=websocket.session_count,
                            client_connections=proxy.connection_limit,
                            write_budget=core.write_budget)

    def supervisor_gone() -> None:
        if root.running:
            _log.warn("worker {index}: the supervisor has gone; stopping", index=index)
            reactor.callLater(0, _stop_reactor, reactor)

    bus = WorkerBus(core.router, supervisor_gone)
    link = _named(WorkerLink(reactor, reactor, bus, metrics_text(sources)), "machine-bus",
                  root)
    handler = settings.config.handler
    if handler.stats_spec:  # its connections, reported through the supervisor's socket
        totals = Totals(lambda: 0, core.router, lambda: proxy.resource.requests)
        _named(StatsPublisher(reactor, None, handler.stats_spec, handler.stats_format,
                              handler.stats_report_interval, core.router, totals,
                              upstream=lambda message: bus.send(STATS, message)),
               "stats", root)
    root.after_start.append(link.ready)
    return root, core


def _stop_reactor(reactor: IServerReactor) -> None:
    with contextlib.suppress(ReactorNotRunning):
        reactor.stop()


def _worker_share(settings: Settings, count: int) -> Settings:
    runner = settings.config.runner
    runner = replace(runner, client_maxconn=-(-runner.client_maxconn // count),
                     max_buffered_bytes=-(-runner.max_buffered_bytes // count))
    return replace(settings, config=replace(settings.config, runner=runner))


@dataclass
class Operated:
    """What the operations side watches, by the name it reports it under."""

    listeners: dict[str, list[StreamServerEndpointService]]
    readers: dict[str, ZmqReader]  # the ZeroMQ sockets: inputs and the command socket
    zmq_context: zmq.Context
    xmpp: LinkState | None
    redis: RedisBus | None
    proxy_requests: Callable[[], int]
    machine: Machine | None = None


def _operations(root: FanoutRoot, core: Core, sources: MetricSources,
                operated: Operated) -> None:
    """Mount /metrics and /health on the publish port, add the ``metrics`` listener and the
    ``stats`` socket when configured, and log one line with every bound address once all
    listeners are up."""
    assert core.publish_root is not None
    config = core.config
    health = HealthResource()
    machine = operated.machine
    reports = machine.pool.reports if machine is not None else None
    core.publish_root.mount(b"metrics", metrics_resource(sources, reports), public=True)
    core.publish_root.mount(b"health", health, public=True)
    listeners = dict(operated.listeners)
    if config.metrics.port:
        listeners["metrics"] = [_named(_metrics_listener(core, sources, health, reports),
                                       "metrics", root)]
    stats = None
    if config.handler.stats_spec:
        stats = _named(_stats(core, operated), "stats", root)
        if machine is not None:
            machine.pool.on_stats = stats.relay  # the workers' connections
    watched = {name: Listeners() for name in listeners}
    for name, group in watched.items():
        health.add(name, group.check)
    for name, reader in operated.readers.items():
        health.add(name, zmq_check(reader))
    if operated.xmpp is not None:
        health.add("xmpp", xmpp_check(operated.xmpp))
    if operated.redis is not None:
        health.add("redis", redis_check(operated.redis))
    if machine is not None:
        health.add("http-proxy", workers_check(machine.pool, machine.ports.bound))

    def started() -> None:
        ports = []
        for name, services in listeners.items():
            for service in services:
                watched[name].watch(service, bound_port)
                label = f"{name} tls" if (service.name or "").startswith("https ") else name
                ports.append(bound_port(service).addCallback(_labelled, label))
        clients = [] if machine is None else _client_addresses(core.config, machine.ports)
        DeferredList(ports).addCallback(_log_addresses, operated.readers, stats, clients)

    root.after_start.append(started)


def _labelled(port: IListeningPort | None, label: str) -> tuple[str, IListeningPort | None]:
    return label, port


def _client_addresses(config: Config, ports: ClientPorts) -> list[str]:
    """A supervisor's client ports for the start-up line, labelled as a listener's are."""
    plain = len(config.runner.http_ports)
    return [f"http-proxy{' tls' if number >= plain else ''} {address}"
            for number, address in enumerate(ports.bound())]


def _log_addresses(results: list[tuple[bool, Any]], readers: dict[str, ZmqReader],
                   stats: StatsPublisher | None, clients: list[str]) -> None:
    """The one start-up line: every address bound, by what it serves."""
    parts = [*clients]
    parts += [f"{name} {address_text(port)}" for ok, (name, port) in results
              if ok and port is not None]
    parts += [f"{name} {','.join(reader.endpoints)}" for name, reader in readers.items()
              if reader.endpoints]
    if stats is not None and stats.endpoint:
        parts.append(f"stats {stats.endpoint}")
    _log.info("fanout_tx listening: {addresses}", addresses="; ".join(parts))


def _metrics_listener(core: Core, sources: MetricSources, health: HealthResource,
                      reports: WorkerReports | None) -> StreamServerEndpointService:
    """``[metrics] addr``/``port``: /metrics and /health on a listener of their own."""
    config = core.config.metrics
    page = Resource()
    page.putChild(b"metrics", metrics_resource(sources, reports))
    page.putChild(b"health", health)
    address = ListenAddress(config.addr or "127.0.0.1", config.port)
    site = PublishSite(page, METRICS_MAX_BODY_SIZE, core.reactor)  # quiet: no access log
    return StreamServerEndpointService(
        serverFromString(core.reactor, address.endpoint_description()), site)


def _stats(core: Core, operated: Operated) -> StatsPublisher:
    """Pushpin's stats socket."""
    redis = operated.redis
    totals = Totals(lambda: sum(core.input_bus.counters.received.values())
                    + (redis.received_items if redis is not None else 0),
                    core.router, operated.proxy_requests)
    handler = core.config.handler
    return StatsPublisher(core.reactor, operated.zmq_context, handler.stats_spec,
                          handler.stats_format, handler.stats_report_interval, core.router,
                          totals)


def _command(core: Core, context: zmq.Context, pull: ZmqReader,
             sub: ZmqReader) -> ZmqCommand:
    """Pushpin's command socket; ``get-zmq-uris`` names the inputs as they are bound."""

    def uris() -> dict[str, str]:
        found = {"command": command.endpoints, "publish-pull": pull.endpoints,
                 "publish-sub": sub.endpoints}
        return {key: endpoints[0] for key, endpoints in found.items() if endpoints}

    recover = core.machine.recover_all if core.machine is not None else core.router.recover_all
    command = ZmqCommand(core.reactor, context, core.config.handler.command_spec, uris,
                         recover)
    return command


def _webhooks(core: Core) -> WebhookService:
    """The webhooks transport; its subscription API is mounted at /webhooks on the publish
    port (after ``_publish_http``, which makes the root)."""
    assert core.publish_root is not None
    config = core.config
    service = build_webhooks(config.webhooks, config.redis, core.router, core.reactor,
                             core.clients.vetted,
                             shutdown_timeout=config.runner.shutdown_timeout)
    core.publish_root.mount(b"webhooks", WebhooksResource(service))
    core.publish_root.add_publish_barrier(service.engine.writes_confirmed)
    return service


def _publish_http(core: Core) -> StreamServerEndpointService:
    """The publish API listener; sets ``core.publish_root`` so transports can mount on it."""
    handler = core.config.handler
    auth = BearerAuth(handler.push_in_http_key, handler.push_in_http_iss, core.reactor)
    core.publish_root = PublishRoot(core.input_bus, core.machine or core.router, auth)
    if core.router.history is not None:
        core.publish_root.mount(b"channels", HistoryResource(core.router.history))
    site = PublishSite(core.publish_root, handler.push_in_http_max_body_size, core.reactor)
    address = ListenAddress(handler.push_in_http_addr, handler.push_in_http_port)
    endpoint = serverFromString(core.reactor, address.endpoint_description())
    return StreamServerEndpointService(endpoint, site)


# The port a started endpoint service listens on (tests bind port 0 and read it here).
listening_port = bound_port


def with_descriptor_room(settings: Settings, open_files: int) -> Settings:
    """``settings`` with ``client_maxconn`` lowered to what ``open_files`` descriptors allow
    (ops/fd_limit.py), and a warning saying so."""
    runner = settings.config.runner
    cap = connection_cap(runner.client_maxconn, open_files)
    if cap == runner.client_maxconn:
        return settings
    _log.warn("client_maxconn {configured} lowered to {cap}: the process may open "
              "{open_files} files (ulimit -n); raise that limit to allow more",
              configured=runner.client_maxconn or "(none)", cap=cap, open_files=open_files)
    config = replace(settings.config, runner=replace(runner, client_maxconn=cap))
    return replace(settings, config=config)


def makeService(options: Options) -> FanoutRoot:  # noqa: N802 - twistd plugin API
    from twisted.internet import reactor as global_reactor

    reactor = cast(IServerReactor, global_reactor)
    settings = with_descriptor_room(options["settings"], raise_open_files_limit())
    filter_twistd_logging(settings.config.runner.log_level)
    count = worker_count(settings.config.runner.workers)
    hup: Callable[[], None] | None = None
    if options["worker"] is not None:
        root, core = build_worker(settings, reactor, options["worker"], count)
    elif count > 1:
        workers = Workers(count, options.worker_arguments(),
                          lambda reason: abandon_startup(reactor, reason))
        root, core = build_service(settings, reactor, workers=workers)
        pool = root.getServiceNamed("workers")
        hup = lambda: pool.signal_all("HUP")  # noqa: E731 - every worker reloads too
    else:
        root, core = build_service(settings, reactor)
    reactor.callWhenRunning(stop_on_signals, reactor)
    reactor.callWhenRunning(reload_on_sighup, reactor, core.routes_watcher, hup)
    quiet_startup_failures()
    tune_gc()
    return root
