"""Composition root: ``twistd fanout`` options and the service tree.

The only module that reads the global reactor. ``makeService`` binds and connects nothing:
each listener is an endpoint service that starts listening in ``startService``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from twisted.application.service import IServiceCollection, MultiService
from twisted.logger import Logger
from twisted.python import usage

from fanout_tx import config as config_module
from fanout_tx.bus import LocalBus
from fanout_tx.config import Config, ConfigError, parse_listen_addresses
from fanout_tx.interfaces import IBus
from fanout_tx.router import Router
from fanout_tx.routes_watch import RoutesFile

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
            raise usage.UsageError(str(e)) from None


@dataclass(frozen=True)
class Settings:
    """Everything start-up needs, loaded and validated before any service is built."""

    config: Config
    routes: RoutesFile


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
    return Settings(config, routes)


@dataclass
class Core:
    """The shared pieces every transport is wired to."""

    config: Config
    router: Router
    bus: IBus
    routes: RoutesFile
    reactor: Any


def build_core(settings: Settings, reactor: Any) -> Core:
    handler = settings.config.handler
    router = Router(
        reactor,
        message_wait=handler.message_wait / 1000.0,
        id_cache_ttl=handler.id_cache_ttl,
    )
    return Core(settings.config, router, LocalBus(router), settings.routes, reactor)


def _named(service: Any, name: str, parent: IServiceCollection) -> None:
    service.setName(name)
    service.setServiceParent(parent)


def build_service(settings: Settings, reactor: Any) -> tuple[MultiService, Core]:
    """The whole service tree for ``settings``; returns the core too, for tests."""
    core = build_core(settings, reactor)
    root = MultiService()
    for notice in settings.config.notices:
        _log.info("{notice}", notice=notice)
    _named(core.routes.watcher(), "routes-watch", root)
    return root, core


def makeService(options: Options) -> MultiService:  # noqa: N802 - twistd plugin API
    from twisted.internet import reactor

    root, _core = build_service(options["settings"], reactor)
    return root
