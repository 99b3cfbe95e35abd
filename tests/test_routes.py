"""Routes files in Pushpin syntax: every option, specificity, errors, --route overrides."""

from __future__ import annotations

import base64
import contextlib
import itertools
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from fanout_tx.config.routes import (
    JsonpConfig,
    Route,
    RouteTarget,
    load_routes,
    parse_route_line,
    parse_routes,
)
from fanout_tx.config.settings import ConfigError


class ConditionTests(SynchronousTestCase):
    def test_every_condition_option(self) -> None:
        key = base64.b64encode(b"k\x00").decode()
        route = parse_route_line(
            "example.com,path_beg=/api/,proto=ws,ssl=yes,id=r1,sig_iss=iss,"
            f"sig_key=base64:{key},prefix=p-,path_rem=4,replace_beg=/v2/,as_host=origin.local,"
            "header=X-A:1,header=X-B:two,no_grip,debug,aco 127.0.0.1:8080", 3)
        self.assertEqual(route, Route(
            line=3, targets=(RouteTarget("127.0.0.1", 8080),), host="example.com",
            path_beg="/api/", proto="ws", ssl=True, id="r1", sig_iss="iss", sig_key=b"k\x00",
            prefix="p-", path_rem=4, replace_beg="/v2/", as_host="origin.local",
            headers=(("X-A", "1"), ("X-B", "two")), no_grip=True, debug=True, aco=True))

    def test_defaults_and_flag_values(self) -> None:
        """``*`` matches every host; flags may be given as name=false."""
        route = parse_route_line("*,no_grip=false,ssl=no 127.0.0.1:80", 1)
        self.assertEqual((route.host, route.no_grip, route.ssl, route.proto), ("", False,
                                                                               False, ""))
        self.assertEqual(parse_route_line("* h:1", 1).sig_key, b"")

    def test_matching(self) -> None:
        route = parse_route_line("Example.com,path_beg=/a,proto=http,ssl=no 127.0.0.1:80", 1)
        self.assertTrue(route.matches("example.COM", "/abc", "http", False))
        self.assertFalse(route.matches("other.com", "/abc", "http", False))
        self.assertFalse(route.matches("example.com", "/b", "http", False))
        self.assertFalse(route.matches("example.com", "/a", "ws", False))
        self.assertFalse(route.matches("example.com", "/a", "http", True))

    def test_path_rewriting(self) -> None:
        """path_rem strips characters from the front; replace_beg swaps the path_beg part."""
        self.assertEqual(parse_route_line("*,path_rem=4 h:1", 1).rewrite_path("/api/x"), "/x")
        self.assertEqual(parse_route_line("*,path_rem=9 h:1", 1).rewrite_path("/api"), "/")
        replaced = parse_route_line("*,path_beg=/old/,replace_beg=/new/ h:1", 1)
        self.assertEqual(replaced.rewrite_path("/old/x?q=1"), "/new/x?q=1")


class TargetTests(SynchronousTestCase):
    def test_every_target_option(self) -> None:
        route = parse_route_line(
            "* origin.local:443,ssl,insecure,host=api.example.com,over_http,sub=a,sub=b,"
            "one_event [::1]:8080,ssl=false test", 1)
        self.assertEqual(route.targets, (
            RouteTarget("origin.local", 443, ssl=True, insecure=True, host_header="api.example.com",
                   over_http=True, subscriptions=("a", "b"), one_event=True),
            RouteTarget("::1", 8080),
            RouteTarget(kind="test"),
        ))


class SpecificityTests(SynchronousTestCase):
    LINES = [
        "* 10.0.0.1:1",
        "*,path_beg=/a 10.0.0.2:1",
        "*,path_beg=/a/b 10.0.0.3:1",
        "*,proto=ws 10.0.0.4:1",
        "*,path_beg=/a/b,ssl=yes 10.0.0.5:1",
        "example.com 10.0.0.6:1",
    ]

    def target(self, text: str, host: str, path: str, proto: str = "http",
               ssl: bool = False) -> str:
        route = parse_routes(text).match(host, path, proto, ssl)
        assert route is not None
        return route.targets[0].host

    def test_most_specific_wins_whatever_the_line_order(self) -> None:
        """Host before *, proto set before longer path_beg before ssl set; every order of
        the lines gives the same answers."""
        for lines in itertools.permutations(self.LINES):
            text = "\n".join(lines)
            self.assertEqual(self.target(text, "x", "/z"), "10.0.0.1")
            self.assertEqual(self.target(text, "x", "/a"), "10.0.0.2")
            self.assertEqual(self.target(text, "x", "/a/b/c"), "10.0.0.3")
            self.assertEqual(self.target(text, "x", "/a/b/c", ssl=True), "10.0.0.5")
            self.assertEqual(self.target(text, "x", "/a/b", "ws"), "10.0.0.4")
            self.assertEqual(self.target(text, "example.com:8080", "/a/b", "ws"), "10.0.0.6")

    def test_no_match(self) -> None:
        table = parse_routes("example.com h:1")
        self.assertIsNone(table.match("other", "/"))
        self.assertEqual(len(table), 1)

    def test_same_specificity_first_line_wins(self) -> None:
        self.assertEqual(self.target("* 10.0.0.1:1\n* 10.0.0.2:1", "x", "/"), "10.0.0.1")


class ErrorTests(SynchronousTestCase):
    def assert_error(self, text: str, line: int, reason: str) -> None:
        error = self.assertRaises(ConfigError, parse_routes, text, "/etc/routes")
        self.assertEqual((error.path, error.line), ("/etc/routes", line))
        self.assertIn(reason, str(error))

    def test_errors_name_the_line(self) -> None:
        good = "# comment\n\n* h:1  # trailing comment\n"
        self.assert_error(good + "*\n", 4, "needs a condition and at least one target")
        self.assert_error(good + "*,bogus h:1\n", 4, "unknown route option 'bogus'")
        self.assert_error(good + "*,proto=ftp h:1\n", 4, "proto must be http or ws")
        self.assert_error(good + "*,path_beg= h:1\n", 4, "option path_beg needs a value")
        self.assert_error(good + "*,header=NoColon h:1\n", 4, "Name:Value")
        self.assert_error(good + "*,path_rem=x h:1\n", 4, "whole number")
        self.assert_error(good + "*,path_rem=-1 h:1\n", 4, "path_rem must be >= 0")
        self.assert_error(good + "*,ssl=maybe h:1\n", 4, "true or false")
        self.assert_error(good + "* nohost\n", 4, "host:port")
        self.assert_error(good + "* h:0\n", 4, "port out of range")
        self.assert_error(good + "* h:1,warp\n", 4, "unknown target option 'warp'")
        self.assert_error(good + "* h:1,sub=\n", 4, "option sub needs a value")

    def test_pushpin_only_options_load_with_a_notice(self) -> None:
        """A Pushpin routes file with options this server lacks still loads (Pushpin ignores
        what it does not know); each is named once per line. ZeroMQ targets cannot work."""
        table = parse_routes(
            "*,session,jsonp_mode=basic,jsonp_cb=cb h:1,untrusted,trust_connect_host\n"
            "api.example,orig_headers,sockjs=/s,session h:2,ipc_file_mode=600\n", "/etc/routes")
        self.assertEqual(len(table), 2)
        self.assertEqual(table.notices, (
            "/etc/routes:1: Pushpin route option 'session' is not supported here; ignored",
            "/etc/routes:1: Pushpin route option 'untrusted' is not supported here; ignored",
            "/etc/routes:1: Pushpin route option 'trust_connect_host' is not supported here; "
            "ignored",
            "/etc/routes:2: Pushpin route option 'orig_headers' is not supported here; ignored",
            "/etc/routes:2: Pushpin route option 'sockjs' is not supported here; ignored",
            "/etc/routes:2: Pushpin route option 'session' is not supported here; ignored",
            "/etc/routes:2: Pushpin route option 'ipc_file_mode' is not supported here; "
            "ignored",
        ))
        self.assert_error("* zhttp/tcp://127.0.0.1:5000\n", 1, "ZeroMQ targets (zhttp/...)")

    def test_no_routes_is_noted(self) -> None:
        """An empty (or all-comment) routes file loads, with a notice that nothing routes."""
        table = parse_routes("# nothing yet\n\n", "/etc/routes")
        self.assertEqual(len(table), 0)
        self.assertEqual(table.notices,
                         ("/etc/routes: no routes: every request gets 502 No route for host",))

    def test_jsonp_options(self) -> None:
        route = parse_route_line("*,aco,jsonp_mode=basic,jsonp_cb=cb,jsonp_body=b,"
                                 "jsonp_defcb=f,jsonp_defmethod=PUT h:1", 1)
        self.assertEqual(route.jsonp, JsonpConfig("basic", "cb", "b", "f", "PUT"))
        self.assertEqual(parse_route_line("* h:1", 1).jsonp, JsonpConfig())
        self.assert_error("*,jsonp_mode=fancy h:1\n", 1, "jsonp_mode must be basic or extended")
        # held to the rules a client's own _method and callback meet
        self.assert_error("*,aco,jsonp_defmethod=GE@T h:1\n", 1, "jsonp_defmethod must be")
        self.assert_error("*,aco,jsonp_defcb=alert(1) h:1\n", 1, "jsonp_defcb must be")

    def test_unreadable_file(self) -> None:
        error = self.assertRaises(ConfigError, load_routes, Path(self.mktemp()))
        self.assertIsNone(error.line)
        self.assertIn("cannot read routes", str(error))


class OverrideTests(SynchronousTestCase):
    def test_route_lines_replace_the_file(self) -> None:
        """--route lines replace the routes file entirely (it need not even exist), and
        their errors name --route and the line."""
        table = load_routes(Path(self.mktemp()), ("* 10.0.0.9:1", "a.com 10.0.0.8:1"))
        self.assertEqual([r.targets[0].host for r in table.routes], ["10.0.0.8", "10.0.0.9"])
        error = self.assertRaises(ConfigError, load_routes, Path("x"), ("* h:1", "* "))
        self.assertEqual((error.path, error.line), ("--route", 2))

    def test_file(self) -> None:
        path = Path(self.mktemp())
        path.write_text("* 127.0.0.1:8080\n")
        self.assertEqual(load_routes(path).routes[0].targets, (RouteTarget("127.0.0.1", 8080),))


class PropertyTests(SynchronousTestCase):
    @given(st.lists(st.sampled_from([
        "*", "example.com", ",path_beg=/a", ",proto=ws", ",ssl=yes", ",sig_key=base64:",
        ",path_rem=", ",header=A:b", ",no_grip", " ", "127.0.0.1:80", "[::1]:1", ",sub=c",
        ",over_http", "test", "\"", "'", "#", "\n", "=", ",", ":", "99999",
    ]) | st.text(max_size=6), max_size=20).map("".join))
    def test_any_text_gives_routes_or_config_error(self, text: str) -> None:
        with contextlib.suppress(ConfigError):
            parse_routes(text)
