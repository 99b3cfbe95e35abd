"""Composition root: ``twistd fanout`` options and the service tree.

The only module that reads the global reactor. ``makeService`` binds and connects nothing:
each listener is an endpoint service that starts listening in ``startService``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import zmq
from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IServiceCollection, MultiService
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger
from twisted.python import usage

from fanout_tx.cluster.redis_bus import RedisBus
from fanout_tx.config import settings as config_module
from fanout_tx.config.redis_url import parse_redis_url
from fanout_tx.config.routes_watch import RoutesFile, reload_on_sighup
from fanout_tx.config.settings import Config, ConfigError, ListenAddress, parse_listen_addresses
from fanout_tx.core.bus import LocalBus
from fanout_tx.core.interfaces import IBus
from fanout_tx.core.router import Router
from fanout_tx.inputs.publish_api import PublishRoot, PublishSite
from fanout_tx.inputs.publish_auth import BearerAuth
from fanout_tx.inputs.zmq_command import ZmqCommand
from fanout_tx.inputs.zmq_ingest import ZmqPullInput, ZmqSubInput
from fanout_tx.ops.fd_limit import connection_cap, raise_open_files_limit
from fanout_tx.ops.gc_tuning import tune_gc
from fanout_tx.ops.logs import filter_twistd_logging
from fanout_tx.ops.metrics import InputCounters, MeteredBus
from fanout_tx.ops.operations import FanoutRoot, bound_port, install, stop_on_signals
from fanout_tx.ops.sig_warnings import signing_warnings
from fanout_tx.ops.startup import quiet_startup_failures
from fanout_tx.transports.http.proxy_service import build_proxy_service
from fanout_tx.transports.http.tls import ServerIdentities, load_identities
from fanout_tx.transports.webhooks.api import WebhooksResource
from fanout_tx.transports.webhooks.redis_store import warn_if_webhooks_elsewhere
from fanout_tx.transports.webhooks.service import WebhookService, build_webhooks
from fanout_tx.transports.write_budget import WriteBudget
from fanout_tx.transports.ws.service import build_websocket_service
from fanout_tx.transports.xmpp.component import build_xmpp

_log = Logger(namespace="fanout_tx.tap")


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
    ]

    def __init__(self) -> None:
        super().__init__()
        self["ports"] = []
        self["route_lines"] = []

    def opt_port(self, value: str) -> None:
        """Client HTTP/WebSocket port, [addr:]port; repeatable; overrides [runner] http_port."""
        try:
            self["ports"].extend(parse_listen_addresses(value))
        except ValueError as e:
            raise usage.UsageError(f"--port: {e}") from None

    def opt_route(self, value: str) -> None:
        """A routes line; repeatable; replaces the routes file, as Pushpin's --route does."""
        self["route_lines"].append(value)

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
    reactor: Any
    # The publish port's root; transports mount their pages on it (webhooks, metrics).
    publish_root: PublishRoot | None = None
    # What the inputs publish through: ``bus``, counting items and failures per input.
    input_bus: MeteredBus | None = None
    # ``[runner] max_buffered_bytes``, shared by HTTP streams and WebSockets.
    write_budget: WriteBudget | None = None


def build_core(settings: Settings, reactor: Any) -> Core:
    handler = settings.config.handler
    router = Router(
        reactor,
        message_wait=handler.message_wait / 1000.0,
        id_cache_ttl=handler.id_cache_ttl,
        id_cache_max=handler.id_cache_max,
    )
    redis = settings.config.redis
    bus: IBus = (
        RedisBus(router, reactor, parse_redis_url(redis.url), redis.prefix)
        if redis.url else LocalBus(router)
    )
    return Core(settings.config, router, bus, settings.routes, reactor,
                input_bus=MeteredBus(bus, InputCounters()),
                write_budget=WriteBudget(reactor, settings.config.runner.max_buffered_bytes))


def _named(service: Any, name: str, parent: IServiceCollection) -> None:
    service.setName(name)
    service.setServiceParent(parent)


def build_service(settings: Settings, reactor: Any) -> tuple[MultiService, Core]:
    """The whole service tree for ``settings``; returns the core too, for tests."""
    core = build_core(settings, reactor)
    root = FanoutRoot(core.router, reactor, settings.config.runner.shutdown_timeout)
    for notice in settings.config.notices:
        _log.info("{notice}", notice=notice)
    for warning in (*settings.config.warnings,
                    *signing_warnings(settings.config, settings.routes.table.routes)):
        _log.warn("{warning}", warning=warning)
    _named(core.routes.watcher(), "routes-watch", root)
    if isinstance(core.bus, RedisBus):
        _named(core.bus, "redis", root)  # owns the Redis connections
        if not settings.config.webhooks.enabled:
            warn_if_webhooks_elsewhere(core.bus, settings.config.redis.prefix)
    websocket = build_websocket_service(settings.config, core.routes, core.router, reactor,
                                        core.write_budget)
    _named(websocket, "websocket", root)
    _named(build_proxy_service(settings.config, core.routes, core.router, reactor,
                               websocket_handler=websocket.handler, tls=settings.tls,
                               write_budget=core.write_budget),
           "http-proxy", root)
    _named(_publish_http(core), "publish-http", root)
    if settings.config.webhooks.enabled:
        _named(_webhooks(core), "webhooks", root)
    handler = settings.config.handler
    zmq_context = zmq.Context.instance()
    _named(ZmqPullInput(reactor, zmq_context, core.input_bus, handler.push_in_spec),
           "zmq-pull", root)
    # SUB input is never shared through Redis: a PUB fans every item out to each instance's
    # SUB, which subscribes only to the channels of that instance's own subscribers.
    assert core.input_bus is not None
    sub_bus = MeteredBus(LocalBus(core.router), core.input_bus.counters)
    _named(ZmqSubInput(reactor, zmq_context, sub_bus, core.router,
                       handler.push_in_sub_specs,
                       connect=handler.push_in_sub_connect,
                       linger=handler.subscription_linger), "zmq-sub", root)
    if handler.command_spec:
        _named(_command(root, core, zmq_context), "zmq-command", root)
    if settings.config.xmpp.enabled:
        _named(build_xmpp(settings.config, core.router, reactor), "xmpp", root)
    install(root, core, reactor, zmq_context)  # /metrics, /health, stats, start-up line
    return root, core


def _command(root: MultiService, core: Core, context: zmq.Context) -> ZmqCommand:
    """Pushpin's command socket; ``get-zmq-uris`` names the inputs as they are bound."""

    def uris() -> dict[str, str]:
        found = {"command": command.endpoints}
        for name, key in (("zmq-pull", "publish-pull"), ("zmq-sub", "publish-sub")):
            found[key] = root.getServiceNamed(name).endpoints
        return {key: endpoints[0] for key, endpoints in found.items() if endpoints}

    command = ZmqCommand(core.reactor, context, core.config.handler.command_spec, uris,
                         core.router.recover_all)
    return command


def _webhooks(core: Core) -> WebhookService:
    """The webhooks transport; its subscription API is mounted at /webhooks on the publish
    port (after ``_publish_http``, which makes the root)."""
    assert core.publish_root is not None
    config = core.config
    service = build_webhooks(config.webhooks, config.redis, core.router, core.reactor,
                             shutdown_timeout=config.runner.shutdown_timeout)
    core.publish_root.mount(b"webhooks", WebhooksResource(service))
    core.publish_root.add_publish_barrier(service.engine.writes_confirmed)
    return service


def _publish_http(core: Core) -> StreamServerEndpointService:
    """The publish API listener; sets ``core.publish_root`` so transports can mount on it."""
    handler = core.config.handler
    auth = BearerAuth(handler.push_in_http_key, handler.push_in_http_iss, core.reactor)
    core.publish_root = PublishRoot(core.input_bus, core.router, auth)
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


def makeService(options: Options) -> MultiService:  # noqa: N802 - twistd plugin API
    from twisted.internet import reactor

    settings = with_descriptor_room(options["settings"], raise_open_files_limit())
    filter_twistd_logging(settings.config.runner.log_level)
    root, _core = build_service(settings, reactor)
    reactor.callWhenRunning(stop_on_signals, reactor)
    reactor.callWhenRunning(reload_on_sighup, reactor, root.getServiceNamed("routes-watch"))
    quiet_startup_failures()
    tune_gc()
    return root
