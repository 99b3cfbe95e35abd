"""Config loading: defaults, Pushpin's own pushpin.conf unchanged, notices, errors, keys."""

from __future__ import annotations

import base64
import contextlib
import ipaddress
from dataclasses import replace
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from fanout_tx.config.settings import (
    AUTO_WORKERS,
    Config,
    ConfigError,
    HandlerConfig,
    ListenAddress,
    WebsocketConfig,
    default_config_path,
    load,
    parse_config,
    parse_listen_addresses,
)

# Debian's pushpin 1.36 package, /etc/pushpin/pushpin.conf, verbatim (CI may lack pushpin).
DEBIAN_PUSHPIN_CONF = """\
[global]
include={libdir}/internal.conf

# directory to save runtime files
rundir=/var/run/pushpin

# prefix for zmq ipc specs
ipc_prefix=pushpin-

# port offset for zmq tcp specs and http control server
port_offset=0

# TTL (seconds) for connection stats
stats_connection_ttl=120


[runner]
# services to start
services=condure,pushpin-proxy,pushpin-handler

# plain HTTP port to listen on for client connections
http_port=7999

# list of HTTPS ports to listen on for client connections (you must have certs set)
#https_ports=443

# list of unix socket paths to listen on for client connections
#local_ports={rundir}/{ipc_prefix}server

# directory to save log files
logdir=/var/log/pushpin

# logging level. 2 = info, >2 = verbose
log_level=2

# client full request header must fit in this buffer
client_buffer_size=8192

# maximum number of client connections
client_maxconn=50000

# paths
condure_bin=condure
mongrel2_bin=mongrel2
m2sh_bin=m2sh
zurl_bin=zurl


[proxy]
# routes config file (path relative to location of this file)
routesfile=routes

# enable debug mode to get informative error responses
debug=false

# whether to use automatic CORS and JSON-P wrapping
auto_cross_origin=false

# whether to accept x-forwarded-proto
accept_x_forwarded_protocol=false

# whether to assert x-forwarded-proto
set_x_forwarded_protocol=proto-only

# how to treat x-forwarded-for. example: "truncate:0,append"
x_forwarded_for=

# how to treat x-forwarded-for if grip-signed
x_forwarded_for_trusted=

# the following headers must be marked in order to qualify as orig
orig_headers_need_mark=

# whether to accept Pushpin-Route header
accept_pushpin_route=false

# include client IP address in logs
log_from=false

# include client user agent in logs
log_user_agent=false

# for signing proxied requests
sig_iss=pushpin

# for signing proxied requests. use "base64:" prefix for binary key
sig_key=changeme

# use this to allow grip to be forwarded upstream (e.g. to fanout.io)
upstream_key=

# for the sockjs iframe transport
sockjs_url=http://cdn.jsdelivr.net/sockjs/0.3.4/sockjs.min.js

# updates check has three modes:
#   report: check for new pushpin version and report anonymous usage info to
#           the pushpin developers
#   check:  check for new pushpin version only, don't report anything
#   off:    don't do any reporting or checking
# pushpin will output a log message when a new version is available. report
# mode helps the pushpin project build credibility, so please enable it if you
# enjoy this software :)
#
# NOTE: Upstream enables this feature by default. The debian package
# disables it for privacy reasons. please consider to enable it by setting
# updates_check to 'report'.
updates_check=off

# use this field to identify your organization in updates requests. if left
# blank, updates requests will be anonymous
organization_name=


[handler]
# ipc permissions (octal)
#ipc_file_mode=777

# bind PULL for receiving publish commands
push_in_spec=tcp://127.0.0.1:5560

# list of bind SUB for receiving published messages
push_in_sub_specs=tcp://127.0.0.1:5562

# whether the above SUB socket should connect instead of bind
push_in_sub_connect=false

# addr/port to listen on for receiving publish commands via HTTP
push_in_http_addr=127.0.0.1
push_in_http_port=5561

# maximum headers and body size in bytes when receiving publish commands via HTTP
push_in_http_max_headers_size=10000
push_in_http_max_body_size=1000000

# bind PUB for sending stats (metrics, subscription info, etc)
stats_spec=ipc://{rundir}/{ipc_prefix}stats

# bind REP for responding to commands
command_spec=tcp://127.0.0.1:5563

# max messages per second
message_rate=2500

# max rate-limited messages
message_hwm=25000

# set to report blocks counts in stats (content size / block size)
#message_block_size=

# max time (milliseconds) for out-of-order messages to wait
message_wait=5000

# time (seconds) to cache message ids
id_cache_ttl=60

# max subscriptions per connection
connection_subscription_max=20

# time (seconds) to linger response mode subscriptions
subscription_linger=60

# TTL (seconds) for subscription stats
stats_subscription_ttl=60

# interval (seconds) to send report stats
stats_report_interval=10

# stats output format
stats_format=tnetstring
"""


class DefaultTests(SynchronousTestCase):
    def test_empty_file_gives_defaults(self) -> None:
        """An empty config is the Pushpin defaults of SPEC A1."""
        config = parse_config("", "/x/fanout.conf")
        self.assertEqual(config.runner.http_ports, (ListenAddress("", 7999),))
        self.assertEqual(config.handler, HandlerConfig())
        self.assertEqual(config.handler.push_in_spec, "tcp://127.0.0.1:5560")
        self.assertEqual(config.handler.push_in_sub_specs, ("tcp://127.0.0.1:5562",))
        self.assertFalse(config.handler.push_in_sub_connect)
        self.assertEqual((config.handler.push_in_http_addr, config.handler.push_in_http_port),
                         ("127.0.0.1", 5561))
        self.assertEqual((config.handler.message_wait, config.handler.id_cache_ttl,
                          config.handler.connection_subscription_max), (5000, 60, 20))
        self.assertEqual(config.handler.id_cache_max, 100_000)
        self.assertEqual(config.handler.push_in_http_max_body_size, 1000000)
        self.assertEqual(config.notices, ())
        self.assertEqual(config.routes_path, Path("/x/routes"))

    def test_shipped_config_matches_the_defaults(self) -> None:
        """etc/fanout.conf documents every key with its default value."""
        shipped = load(Path(__file__).parent.parent / "etc" / "fanout.conf")
        default = Config()
        # [runner] workers is a shipped value: auto (the default is one process)
        self.assertEqual(shipped.runner, replace(default.runner, workers=AUTO_WORKERS))
        for section in ("handler", "xmpp", "webhooks", "redis", "history", "metrics",
                        "websocket"):
            self.assertEqual(getattr(shipped, section), getattr(default, section), section)
        self.assertEqual(shipped.notices, ())


class PushpinConfTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.config = parse_config(DEBIAN_PUSHPIN_CONF, "/etc/pushpin/pushpin.conf")

    def test_values(self) -> None:
        """Debian's pushpin.conf loads unchanged and every key that matters is read."""
        config = self.config
        self.assertEqual(config.runner.http_ports, (ListenAddress("", 7999),))
        self.assertEqual((config.runner.client_maxconn, config.runner.log_level), (50000, 2))
        self.assertEqual(config.routes_path, Path("/etc/pushpin/routes"))
        self.assertEqual((config.proxy.sig_iss, config.proxy.sig_key), ("pushpin", b"changeme"))
        self.assertEqual(config.proxy.set_x_forwarded_protocol, "proto-only")
        self.assertEqual(config.handler.push_in_spec, "tcp://127.0.0.1:5560")
        self.assertEqual(config.handler.push_in_http_port, 5561)
        self.assertEqual(config.handler.message_wait, 5000)
        # {rundir} and {ipc_prefix} come from [global], as in Pushpin.
        self.assertEqual(config.handler.stats_spec, "ipc:///var/run/pushpin/pushpin-stats")

    def test_multi_process_keys_are_noted_once_each(self) -> None:
        """Pushpin-only keys are accepted with one notice each naming file and line; the
        Debian file has no unknown key."""
        notices = self.config.notices
        self.assertIn("/etc/pushpin/pushpin.conf:19: [runner] services is ignored", notices[5])
        ignored = {n.split("] ")[1].split(" ")[0] for n in notices if "is ignored" in n}
        self.assertTrue({"include", "services", "condure_bin", "zurl_bin",
                         "sockjs_url", "message_hwm"} <= ignored)
        # rundir and ipc_prefix feed stats_spec: not called ignored (issue #18)
        used = [n for n in notices if "is ignored" not in n]
        self.assertEqual([n.split(": ", 1)[1] for n in used], [
            "[global] rundir is used only where other values refer to {rundir}",
            "[global] ipc_prefix is used only where other values refer to {ipc_prefix}"])
        self.assertEqual(len(ignored) + len(used), len(notices))
        self.assertEqual(self.config.warnings, ())
        # used, not ignored: the command socket and the stats socket, in the rundir
        self.assertEqual(self.config.handler.command_spec, "tcp://127.0.0.1:5563")
        self.assertEqual(self.config.handler.stats_spec, "ipc:///var/run/pushpin/pushpin-stats")

    def test_unknown_key_is_a_warning(self) -> None:
        config = parse_config("[handler]\nfrobnicate=1\n[nosuch]\nx=1\n", "f.conf")
        self.assertEqual(config.warnings, (
            "f.conf:2: unknown key [handler] frobnicate",
            "f.conf:4: unknown key [nosuch] x",
        ))
        self.assertEqual(config.notices, ())


class ErrorTests(SynchronousTestCase):
    def assert_error(self, text: str, line: int | None, reason: str) -> ConfigError:
        error = self.assertRaises(ConfigError, parse_config, text, "/etc/f.conf")
        self.assertEqual((error.path, error.line), ("/etc/f.conf", line))
        self.assertIn(reason, error.reason)
        self.assertTrue(str(error).startswith(f"/etc/f.conf:{line}: "))
        return error

    def test_bad_values_name_file_and_line(self) -> None:
        """Each bad value is a ConfigError with the file, the line and the reason."""
        self.assert_error("[handler]\n\npush_in_http_port=abc\n", 3,
                          "[handler] push_in_http_port: expected a whole number")
        self.assert_error("[handler]\npush_in_http_port=70000\n", 2, "port out of range")
        self.assert_error("[handler]\nmessage_wait=-1\n", 2, "expected a number >= 0")
        self.assert_error("[handler]\npush_in_sub_connect=maybe\n", 2, "expected true or false")
        self.assert_error("[runner]\nhttp_port=localhost\n", 2, "expected [addr:]port")
        self.assert_error("[runner]\nlog_level=loud\n", 2, "log_level")
        self.assert_error("[proxy]\nset_x_forwarded_protocol=sometimes\n", 2, "proto-only")
        self.assert_error("[handler]\nstats_format=xml\n", 2, "stats_format")
        self.assert_error("[redis]\nurl=http://x\n", 2, "redis://")
        self.assert_error("[webhooks]\nallow_cidrs=10.0.0.0/33\n", 2, "invalid CIDR")
        self.assert_error("[webhooks]\nretry_schedule=\n", 2, "at least one entry")
        self.assert_error("[xmpp]\nbackend_timeout=-2\n", 2, "seconds >= 0")
        self.assert_error("[websocket]\nmax_message=0\n", 2, "expected a number >= 1")
        self.assert_error("[history]\nmax_items=-1\n", 2, "expected a number >= 0")
        self.assert_error("[history]\nmax_items=100001\n", 2, "at most 100000")
        self.assert_error("[history]\nmax_age=soon\n", 2, "seconds >= 0")
        self.assert_error("[history]\nmax_bytes=0\n", 2, "expected a number >= 1")

    def test_history(self) -> None:
        """[history] is off by default (max_items = 0) and takes its three keys."""
        self.assertFalse(parse_config("", "f").history.enabled)
        history = parse_config("[history]\nmax_items=100\nmax_age=60\nmax_bytes=1000\n",
                               "f").history
        self.assertEqual((history.enabled, history.max_items, history.max_age,
                          history.max_bytes), (True, 100, 60.0, 1000))

    def test_values_that_used_to_fail_later(self) -> None:
        """Values a fuzzing pass got past the parser, where they failed at start-up (a
        traceback), at shutdown, or bound the wrong port: now errors naming the line."""
        self.assert_error("[xmpp]\njid=@@@\n", 2, "not a valid XMPP domain")
        self.assert_error("[xmpp]\njid=a@b/c\n", 2, "bare domain")
        self.assert_error("[xmpp]\njid=\n", 2, "not a valid XMPP domain: ''")
        self.assert_error("[xmpp]\nbackend=notaurl\n", 2, "http(s) URL")
        self.assert_error("[proxy]\nroutesfile=a\x00b\n", 2, "NUL")
        self.assert_error("[runner]\nhttp_port=7999,7999\n", 2, "listed twice")
        self.assert_error("[runner]\nhttp_port=\u0663\n", 2, "expected [addr:]port")
        self.assert_error("[runner]\nclient_maxconn=\u0663\n", 2, "whole number")
        for value in ("nan", "inf", "1e400", "-0", "40000000"):
            self.assert_error(f"[runner]\nshutdown_timeout={value}\n", 2, "seconds")
        self.assertEqual(parse_config("[runner]\nshutdown_timeout=2.5\n", "f").runner
                         .shutdown_timeout, 2.5)

    def test_workers(self) -> None:
        """[runner] workers: auto (one per core, counted at start-up), or 1 to 256
        processes; left out, one process."""
        def workers(text: str) -> int:
            return parse_config(f"[runner]\nworkers={text}\n", "f").runner.workers

        self.assertEqual((workers("auto"), workers(" AUTO "), workers("1"), workers("4")),
                         (AUTO_WORKERS, AUTO_WORKERS, 1, 4))
        self.assertEqual(parse_config("", "f").runner.workers, 1)
        for value in ("0", "-2", "two", ""):
            self.assert_error(f"[runner]\nworkers={value}\n", 2,
                              "[runner] workers: expected auto or a number of processes >= 1")
        self.assert_error("[runner]\nworkers=257\n", 2, "at most 256 processes")

    def test_not_a_regular_file(self) -> None:
        """/dev/zero as a config (or routes) file is refused at once, not read forever."""
        error = self.assertRaises(ConfigError, load, Path("/dev/zero"))
        self.assertIn("not a regular file", str(error))

    def test_syntax_errors(self) -> None:
        self.assert_error("[handler\n", 1, "malformed section header")
        self.assert_error("[runner]\nhttp_port 7999\n", 2, "expected key=value")
        self.assert_error("http_port=7999\n", 1, "outside of any [section]")

    def test_unreadable_file(self) -> None:
        missing = Path(self.mktemp())
        error = self.assertRaises(ConfigError, load, missing)
        self.assertEqual((error.path, error.line), (str(missing), None))
        self.assertIn("cannot read config", str(error))


class ValueTests(SynchronousTestCase):
    def test_key_formats(self) -> None:
        """sig_key and friends: plain text, base64:, and file: relative to the config."""
        folder = Path(self.mktemp()).resolve()
        folder.mkdir()
        (folder / "key.txt").write_bytes(b"from-file\n")
        encoded = base64.b64encode(b"\x00\xffsecret").decode()
        config = parse_config(
            "[proxy]\nsig_key=plain\nupstream_key=base64:" + encoded
            + "\n[xmpp]\nsig_key=base64:" + encoded
            + "\n[handler]\npush_in_http_key=file:key.txt\n", folder / "fanout.conf")
        self.assertEqual(config.proxy.sig_key, b"plain")
        self.assertEqual(config.proxy.upstream_key, b"\x00\xffsecret")
        self.assertEqual(config.xmpp.sig_key, b"\x00\xffsecret")
        self.assertEqual(config.handler.push_in_http_key, b"from-file")
        absolute = parse_config(f"[proxy]\nsig_key=file:{folder / 'key.txt'}\n", "/elsewhere/f")
        self.assertEqual(absolute.proxy.sig_key, b"from-file")

    def test_bad_keys(self) -> None:
        error = self.assertRaises(ConfigError, parse_config, "[proxy]\nsig_key=base64:!!\n", "f")
        self.assertEqual(error.line, 2)
        self.assertIn("invalid base64 key", error.reason)
        error = self.assertRaises(ConfigError, parse_config,
                                  "[proxy]\n\nsig_key=file:nope.key\n", Path(self.mktemp()))
        self.assertEqual(error.line, 3)
        self.assertIn("cannot read key file", error.reason)

    def test_listen_addresses(self) -> None:
        """http_port is a comma list of [addr:]port with bracketed IPv6 hosts."""
        addresses = parse_listen_addresses("7999, 127.0.0.1:8000,[::1]:8001")
        self.assertEqual(addresses, (ListenAddress("", 7999), ListenAddress("127.0.0.1", 8000),
                                     ListenAddress("::1", 8001)))
        self.assertEqual([a.endpoint_description() for a in addresses],
                         ["tcp:7999", "tcp:8000:interface=127.0.0.1",
                          "tcp:8001:interface=\\:\\:1"])
        self.assertRaises(ValueError, parse_listen_addresses, "")
        self.assertRaises(ValueError, parse_listen_addresses, "99999")

    def test_part_b_sections(self) -> None:
        config = parse_config(
            "[xmpp]\nenabled=true\njid=push.example\nport=5348\n"
            "[webhooks]\nallow_cidrs=127.0.0.0/8, ::1/128\nretry_schedule=0,1.5\n"
            "max_in_flight=2\n[redis]\nurl=unix:///tmp/r.sock\nprefix=p:\n"
            "[metrics]\naddr=127.0.0.1\nport=9100\n"
            "[websocket]\nmax_message=65536\nmax_outbound=4000000\n", "f")
        self.assertEqual((config.xmpp.enabled, config.xmpp.jid, config.xmpp.port),
                         (True, "push.example", 5348))
        self.assertEqual(config.webhooks.allow_cidrs, (ipaddress.ip_network("127.0.0.0/8"),
                                                       ipaddress.ip_network("::1/128")))
        self.assertEqual((config.webhooks.retry_schedule, config.webhooks.max_in_flight),
                         ((0.0, 1.5), 2))
        self.assertEqual((config.redis.url, config.redis.prefix), ("unix:///tmp/r.sock", "p:"))
        self.assertEqual((config.metrics.addr, config.metrics.port), ("127.0.0.1", 9100))
        self.assertEqual(config.websocket, WebsocketConfig(max_message=65536,
                                                           max_outbound=4_000_000))

    def test_relative_ipc_specs_from_the_config_folder(self) -> None:
        """Pushpin's ``ipc://{rundir}/...`` with a relative rundir is next to the config."""
        config = parse_config("[global]\nrundir=run\nipc_prefix=pushpin-\n[handler]\n"
                              "stats_spec=ipc://{rundir}/{ipc_prefix}stats\n"
                              "push_in_sub_specs=ipc:///abs/sub, tcp://127.0.0.1:5562\n",
                              "/etc/pp/pushpin.conf")
        self.assertEqual(config.handler.stats_spec, "ipc:///etc/pp/run/pushpin-stats")
        self.assertEqual(config.handler.push_in_sub_specs,
                         ("ipc:///abs/sub", "tcp://127.0.0.1:5562"))

    def test_comments_and_handler_aliases(self) -> None:
        """# and ; comments are skipped; push_in_sub_spec (singular) is accepted too."""
        config = parse_config("; c\n# c\n[handler]\npush_in_sub_spec=tcp://a:1, tcp://b:2\n"
                              "push_in_sub_connect=yes\n", "f")
        self.assertEqual(config.handler.push_in_sub_specs, ("tcp://a:1", "tcp://b:2"))
        self.assertTrue(config.handler.push_in_sub_connect)

    def test_inline_comments(self) -> None:
        """``value  # comment`` as SPEC's examples write it, or with ``;`` as the comment
        lines may; a ``#`` or ``;`` inside a value stays."""
        config = parse_config("[xmpp]\nenabled = false          # true starts it\n"
                              "sig_iss =         # empty\nsecret = a#b;c\n[proxy]\nsig_key=#k\n"
                              "[handler]\npush_in_http_iss = my-backend     ; optional\n",
                              "f")
        self.assertFalse(config.xmpp.enabled)
        self.assertEqual((config.xmpp.sig_iss, config.xmpp.secret), ("", "a#b;c"))
        self.assertEqual(config.proxy.sig_key, b"#k")
        self.assertEqual(config.handler.push_in_http_iss, "my-backend")

    def test_default_config_path(self) -> None:
        folder = Path(self.mktemp())
        folder.mkdir()
        second = folder / "b.conf"
        second.write_text("")
        self.assertEqual(default_config_path([folder / "a.conf", second]), second)
        self.assertIsNone(default_config_path([folder / "a.conf"]))


class PropertyTests(SynchronousTestCase):
    @given(st.lists(st.sampled_from([
        "[runner]", "[proxy]", "[handler]", "[xmpp]", "[webhooks]", "[redis]", "[metrics]",
        "[websocket]", "max_message=",
        "[global]", "http_port=", "sig_key=", "push_in_http_port=", "allow_cidrs=",
        "retry_schedule=", "log_level=", "url=", "{rundir}", "base64:", "file:", "=", "[",
        ",", ":", "\n", "#", "1", "-1", "true", " ", "\u00e9",
    ]) | st.text(max_size=8), max_size=30).map("".join))
    def test_any_text_gives_config_or_config_error(self, text: str) -> None:
        """Whatever the file holds, loading ends in a Config or a ConfigError, never
        another exception (which would be a traceback at start-up)."""
        with contextlib.suppress(ConfigError):
            parse_config(text, "/nonexistent/f.conf")
