"""The twistd plugin: options, start-up errors, the service tree, and real ``twistd`` runs."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path
from typing import Any

from treq.client import HTTPClient
from twisted.application.service import IServiceMaker, MultiService, Service
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import MemoryReactorClock
from twisted.plugin import getPlugins
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, HTTPConnectionPool

from fanout_tx.cluster.redis_history import RedisHistory
from fanout_tx.config.settings import ListenAddress
from fanout_tx.core.history import MemoryHistory
from fanout_tx.core.items import parse_item
from fanout_tx.core.router import Router
from fanout_tx.ops.operations import FanoutRoot
from fanout_tx.outbound.origin_client import OriginClient
from fanout_tx.tap import Options, build_service, build_worker
from tests.support.services import free_port
from tests.support.twistd import TwistdOutput, kill_tree, loopback_config, write_config


def parse(*args: str) -> Options:
    options = Options()
    options.parseOptions(list(args))
    return options


class OptionsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.folder = Path(self.mktemp())
        self.config = write_config(self.folder, "[handler]\nmessage_wait=250\n")

    def test_config(self) -> None:
        """--config loads the file and the routes file named in it."""
        settings = parse("--config", str(self.config))["settings"]
        self.assertEqual(settings.config.handler.message_wait, 250)
        self.assertEqual(settings.routes.path, self.folder / "routes")
        self.assertEqual(settings.routes.table.routes[0].targets[0].port, 8080)

    def test_port_and_route_overrides(self) -> None:
        """--port (repeatable) replaces [runner] http_port; --route replaces the routes."""
        options = parse("--config", str(self.config), "--port", "127.0.0.1:8001",
                        "--port", "8002", "--route", "* 10.0.0.1:80",
                        "--route", "a.com 10.0.0.2:80")
        settings = options["settings"]
        self.assertEqual(settings.config.runner.http_ports,
                         (ListenAddress("127.0.0.1", 8001), ListenAddress("", 8002)))
        self.assertEqual([r.targets[0].host for r in settings.routes.table.routes],
                         ["10.0.0.2", "10.0.0.1"])

    def test_routes_option(self) -> None:
        other = self.folder / "other-routes"
        other.write_text("* 127.0.0.1:9999\n")
        settings = parse("--config", str(self.config), "--routes", str(other))["settings"]
        self.assertEqual(settings.routes.table.routes[0].targets[0].port, 9999)

    def assert_usage_error(self, args: list[str], text: str) -> None:
        error = self.assertRaises(usage.UsageError, parse, *args)
        self.assertIn(text, str(error))

    def assert_config_exit(self, args: list[str], text: str) -> None:
        """A bad file exits with its one line (SystemExit(text): stderr, status 1)."""
        error = self.assertRaises(SystemExit, parse, *args)
        self.assertIsInstance(error.code, str)
        self.assertIn(text, error.code)

    def test_errors_name_file_and_line(self) -> None:
        """Bad config, bad routes and a missing file exit with the file, line and reason; a
        bad --port is a usage error."""
        bad = write_config(self.folder / "bad", "[handler]\n\npush_in_http_port=abc\n")
        self.assert_config_exit(["--config", str(bad)],
                                f"{bad}:3: [handler] push_in_http_port: expected a whole")
        broken_routes = write_config(self.folder / "routes-bad", "", routes="* h:1\n*,x h:1\n")
        self.assert_config_exit(["--config", str(broken_routes)],
                                f"{broken_routes.parent / 'routes'}:2: unknown route option")
        self.assert_config_exit(["--config", str(self.folder / "missing.conf")],
                                "cannot read config")
        self.assert_usage_error(["--config", str(self.config), "--port", "x"], "--port:")
        self.assert_config_exit(["--config", str(self.config), "--route", "*"], "--route:1:")


class BuildServiceTests(SynchronousTestCase):
    def test_named_children_and_nothing_bound(self) -> None:
        """build_service returns a MultiService of named children, binding nothing."""
        config = loopback_config(Path(self.mktemp()), 0)
        memory = MemoryReactorClock()
        root, core = build_service(parse("--config", str(config))["settings"], memory)
        self.assertIsInstance(root, MultiService)
        names = {service.name for service in root}
        self.assertTrue({"routes-watch", "publish-http", "zmq-pull", "zmq-sub"} <= names, names)
        self.assertEqual(memory.tcpServers, [])
        self.assertEqual(root.getServiceNamed("zmq-pull").endpoints, [])
        self.assertFalse(root.running)
        self.assertIs(core.router, core.bus.router)

    def test_history_store(self) -> None:
        """[history] off: the router records nothing. On: in memory, or in Redis (a named
        child that owns its connection) when [redis] url is set."""
        folder = Path(self.mktemp())
        config = loopback_config(folder, 0)
        base = config.read_text()
        _root, core = build_service(parse("--config", str(config))["settings"],
                                    MemoryReactorClock())
        self.assertIsNone(core.router.history)
        config.write_text(base + "[history]\nmax_items=7\n")
        _root, core = build_service(parse("--config", str(config))["settings"],
                                    MemoryReactorClock())
        self.assertIsInstance(core.router.history, MemoryHistory)
        config.write_text(base + "[history]\nmax_items=7\n[redis]\nurl=redis://127.0.0.1:1\n")
        root, core = build_service(parse("--config", str(config))["settings"],
                                   MemoryReactorClock())
        self.assertIs(root.getServiceNamed("history"), core.router.history)
        self.assertIsInstance(core.router.history, RedisHistory)
        # A worker reads the supervisor's history in Redis (its clients resume from it)
        # and writes none of it.
        settings = parse("--config", str(config))["settings"]
        root, core = build_worker(settings, MemoryReactorClock(), 0, 2)
        history = root.getServiceNamed("history")
        self.assertIs(history, core.router.history)
        history.record(parse_item({"channel": "c", "id": "1",
                                   "formats": {"http-stream": {"content": "x"}}}))
        self.assertEqual(history.failed, 0)  # not even tried: Redis is not up here

    def test_one_set_of_origin_clients(self) -> None:
        """The origin clients are built once, in tap.py, and handed to every user: the
        proxy, the WebSocket-over-HTTP sessions, the XMPP backend (verified and insecure)
        and the webhooks (vetted)."""
        built: list[OriginClient] = []
        original = OriginClient.__init__

        def counting(client: OriginClient, *args: Any, **kwargs: Any) -> None:
            built.append(client)
            original(client, *args, **kwargs)

        self.patch(OriginClient, "__init__", counting)
        folder = Path(self.mktemp())
        config = loopback_config(folder, 0)
        config.write_text(config.read_text()
                          + "[xmpp]\nenabled=true\nsecret=s\n[webhooks]\nenabled=true\n")
        root, core = build_service(parse("--config", str(config))["settings"],
                                   MemoryReactorClock())
        clients = core.clients
        self.assertEqual(built, [clients.verified, clients.insecure, clients.vetted])
        proxy = root.getServiceNamed("http-proxy")
        self.assertIs(proxy.resource.agent, clients.verified)
        self.assertIs(proxy.resource.insecure_agent, clients.insecure)

    def test_shared_clients_close_after_every_child_stopped(self) -> None:
        """The root closes what its children share once all of them have stopped."""
        clock = Clock()
        root = FanoutRoot(Router(clock), clock, shutdown_timeout=10)
        child_stopped: Deferred[None] = Deferred()
        child = Service()
        child.stopService = lambda: child_stopped  # type: ignore[method-assign]
        child.setServiceParent(root)
        closing: Deferred[None] = Deferred()
        root.after_stop.append(lambda: closing)
        root.startService()
        done = root.stopService()
        self.assertFalse(closing.called)
        child_stopped.callback(None)
        self.assertNoResult(done)
        closing.callback(None)
        self.successResultOf(done)

    def test_plugin(self) -> None:
        """twistd finds the plugin by its tapname, and its options and makeService load."""
        [maker] = [m for m in getPlugins(IServiceMaker) if m.tapname == "fanout"]
        self.assertIs(maker.options, Options)
        self.assertTrue(callable(maker.makeService))


class TwistdTests(TestCase):
    """End-to-end: ``twistd -n fanout`` as a subprocess, stopped by the PID started here."""

    workers = 1  # [runner] workers of every config written here

    def twistd(self, *args: str, open_files: int | None = None,
               daemon: bool = False) -> TwistdOutput:
        """Start twistd (in the foreground unless ``daemon``); with ``open_files``, under
        that ``ulimit -n`` (soft and hard)."""
        folder = Path(self.mktemp())
        folder.mkdir(parents=True, exist_ok=True)
        protocol = TwistdOutput()
        twistd = Path(sys.executable).parent / "twistd"
        where = folder.resolve()
        mode = (f"--pidfile={where}/twistd.pid", f"--logfile={where}/twistd.log") if daemon \
            else ("-n", "--pidfile=")
        command = [str(twistd), *mode, "fanout", *args]
        if open_files is not None:
            command = ["/bin/sh", "-c", f'ulimit -n {open_files} && exec "$0" "$@"', *command]
        process = reactor.spawnProcess(protocol, command[0], command, env=dict(os.environ),
                                       path=str(folder))

        async def stop() -> None:
            await kill_tree(process, protocol)

        self.addCleanup(lambda: Deferred.fromCoroutine(stop()))
        self.process = process
        return protocol

    async def get(self, url: bytes, protocol: TwistdOutput,
                  timeout: float = 20) -> tuple[int, bytes]:
        """GET ``url`` once something answers; fail early if the server process died."""
        client = HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False)))
        deadline = reactor.seconds() + timeout
        while True:
            if protocol.ended.called:
                self.fail(f"twistd exited early:\n{protocol.output.decode(errors='replace')}")
            try:
                response = await client.get(url)
                return response.code, await response.content()
            except Exception:
                if reactor.seconds() > deadline:
                    self.fail(f"no answer:\n{protocol.output.decode(errors='replace')}")
            await deferLater(reactor, 0.1, lambda: None)

    async def test_start_answer_and_stop(self) -> None:
        """The server starts from a config with loopback ports, answers GET / on the publish
        port, and shuts down cleanly on SIGTERM with exit code 0 (operations.stop_on_signals
        keeps twistd from re-raising the signal after a clean stop)."""
        publish_port = free_port()
        config = loopback_config(Path(self.mktemp()), publish_port, self.workers)
        protocol = self.twistd("--config", str(config.resolve()))
        code, _body = await self.get(f"http://127.0.0.1:{publish_port}/".encode(), protocol)
        self.assertEqual(code, 200)
        self.process.signalProcess("TERM")
        reason = await protocol.ended
        output = protocol.output.decode(errors="replace")
        self.assertIsInstance(reason, ProcessDone, output)
        self.assertIn("zmq-pull listening on tcp://127.0.0.1:", output)
        self.assertIn("Server Shut Down.", output)
        self.assertNotIn("Traceback", output)

    async def test_client_maxconn_fits_the_open_files_limit(self) -> None:
        """Under ``ulimit -n 600`` the default client_maxconn (50,000) cannot be met: it is
        lowered to what the descriptors allow, and the log says so."""
        publish_port = free_port()
        config = loopback_config(Path(self.mktemp()), publish_port, self.workers)
        protocol = self.twistd("--config", str(config.resolve()), open_files=600)
        code, _body = await self.get(f"http://127.0.0.1:{publish_port}/".encode(), protocol)
        self.assertEqual(code, 200)
        self.assertIn("client_maxconn 50000 lowered to 344: the process may open 600 files",
                      protocol.output.decode(errors="replace"))

    async def test_bad_config_refuses_to_start(self) -> None:
        """A bad config stops start-up with file:line and the reason, no traceback, and a
        non-zero exit code."""
        config = write_config(Path(self.mktemp()), "[runner]\nhttp_port=nope\n",
                              workers=self.workers).resolve()
        protocol = self.twistd("--config", str(config))
        reason = await protocol.ended
        self.assertIsInstance(reason, ProcessTerminated)
        self.assertNotEqual(reason.exitCode, 0)
        self.assertIn(f"{config}:2: [runner] http_port".encode(), protocol.output)
        self.assertNotIn(b"Traceback", protocol.output)
        # only that line: no twistd usage text around it (issue #18)
        self.assertNotIn(b"Usage:", protocol.output)
        self.assertEqual(reason.exitCode, 1)
        self.assertEqual(len(protocol.output.strip().splitlines()), 1, protocol.output)

    async def test_taken_addresses_refuse_to_start(self) -> None:
        """A client port and a ZeroMQ port held by another process (Pushpin during a
        migration, say): each is named with the reason, no traceback, exit code 1 before
        anything is served (ops/startup.py)."""
        taken = socket.socket()
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        self.addCleanup(taken.close)
        port = taken.getsockname()[1]
        config = write_config(Path(self.mktemp()), (
            f"[runner]\nhttp_port=127.0.0.1:{port}\n"
            "[proxy]\nroutesfile=routes\n"
            f"[handler]\npush_in_spec=tcp://127.0.0.1:{port}\n"
            "push_in_sub_specs=tcp://127.0.0.1:*\n"
            f"push_in_http_addr=127.0.0.1\npush_in_http_port={free_port()}\n"
        ), workers=self.workers).resolve()
        protocol = self.twistd("--config", str(config))
        reason = await protocol.ended
        output = protocol.output.decode(errors="replace")
        self.assertIsInstance(reason, ProcessTerminated, output)
        self.assertEqual(reason.exitCode, 1, output)
        self.assertIn(f"cannot start http-proxy: cannot listen on 127.0.0.1:{port}: "
                      "Address already in use", output)
        self.assertIn(f"cannot start zmq-pull: zmq-pull cannot open tcp://127.0.0.1:{port}: "
                      "Address already in use", output)
        self.assertNotIn("Traceback", output)
        self.assertNotIn("fanout_tx listening:", output)

    async def test_taken_address_as_a_daemon(self) -> None:
        """Daemonized (no ``-n``), the waiting parent hears of it and exits 1 with the
        reason (a SystemExit would have left it waiting forever)."""
        taken = socket.socket()
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        self.addCleanup(taken.close)
        port = taken.getsockname()[1]
        config = loopback_config(Path(self.mktemp()), free_port(), self.workers)
        protocol = self.twistd("--config", str(config.resolve()), "--port",
                               f"127.0.0.1:{port}", daemon=True)
        reason = await protocol.ended
        output = protocol.output.decode(errors="replace")
        self.assertIsInstance(reason, ProcessTerminated, output)
        self.assertEqual(reason.exitCode, 1, output)
        # (twistd passes the parent the first 100 bytes; the log has every line)
        self.assertIn(f"An error has occurred: b'fanout_tx.ops.startup.StartupAbandonedError: "
                      f"http-proxy: cannot listen on 127.0.0.1:{port}", output)


class TwistdWorkersTests(TwistdTests):
    """The same with ``[runner] workers = 2``: a supervisor and two workers."""

    workers = 2
