"""JSON-P on ``aco`` routes: the pure parser/wrapper, and calls through the real proxy.

Expected answers follow what Debian's pushpin 1.36 sent for the same calls (checked on this
machine), except where docs/proxy.rst lists a difference.
"""

from __future__ import annotations

import json
from io import BytesIO
from urllib.parse import quote

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import task
from twisted.internet.defer import ensureDeferred
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import FileBodyProducer
from twisted.web.http_headers import Headers
from twisted.web.server import Request

from fanout_tx.config.routes import JsonpConfig
from fanout_tx.transports.http.jsonp import JsonpAnswer, JsonpError, parse_jsonp, wrap
from tests.support.helpers import wait_until
from tests.support.proxy_fixtures import ProxyHarness, grip

EXTENDED = JsonpConfig()
BASIC = JsonpConfig(mode="basic")


def unwrap(body: bytes, callback: bytes = b"cb") -> dict:
    """The object an extended JSON-P answer passes to ``callback``."""
    prefix, suffix = b"/**/" + callback + b"(", b");\n"
    assert body.startswith(prefix) and body.endswith(suffix), body
    return json.loads(body[len(prefix):-len(suffix)])


class ParseTests(SynchronousTestCase):
    def test_not_a_call(self) -> None:
        """Without the callback parameter the GET is an ordinary request."""
        self.assertIsNone(parse_jsonp(b"/x?a=1", EXTENDED))
        self.assertIsNone(parse_jsonp(b"/x", EXTENDED))

    def test_extended_call(self) -> None:
        """JSON-P parameters are taken out; the rest of the query keeps its encoding."""
        call = parse_jsonp(b"/x?a=1&callback=cb&_method=PUT&b=%20z"
                           b"&_headers=%7B%22X-A%22%3A%221%22%2C%22Host%22%3A%22h%22%7D"
                           b"&_body=hello%20there", EXTENDED)
        assert call is not None
        self.assertEqual((call.callback, call.extended, call.method, call.uri),
                         (b"cb", True, b"PUT", b"/x?a=1&b=%20z"))
        self.assertEqual(call.headers, ((b"X-A", b"1"),))  # Host is the proxy's to set
        self.assertEqual((call.body, call.json_body), (b"hello there", False))

    def test_defaults_per_mode(self) -> None:
        """GET in extended mode, POST in basic mode, unless jsonp_defmethod says otherwise."""
        self.assertEqual(parse_jsonp(b"/?callback=f", EXTENDED).method, b"GET")
        self.assertEqual(parse_jsonp(b"/?callback=f", BASIC).method, b"POST")
        self.assertEqual(parse_jsonp(b"/?callback=f", JsonpConfig(default_method="PATCH"))
                         .method, b"PATCH")

    def test_route_parameters(self) -> None:
        """jsonp_cb renames the callback; jsonp_body sends JSON; jsonp_defcb fills in."""
        config = JsonpConfig(callback_param="fn", body_param="data", default_callback="dflt")
        call = parse_jsonp(b"/p?fn=go&data=%7B%22k%22%3A1%7D", config)
        assert call is not None
        self.assertEqual((call.callback, call.body, call.json_body, call.uri),
                         (b"go", b'{"k":1}', True, b"/p"))
        self.assertEqual(parse_jsonp(b"/p?data=1", config).callback, b"dflt")
        self.assertIsNone(parse_jsonp(b"/p?callback=x", config))

    def test_malformed(self) -> None:
        """Each malformed parameter is refused with a text the client can act on."""
        for uri, text in [
            (b"/?callback=", "Invalid callback parameter."),
            (b"/?callback=alert(1)", "Invalid callback parameter."),
            (b"/?callback=f&_method=GE%20T", "Invalid _method parameter."),
            (b"/?callback=f&_headers=nope", "Invalid _headers parameter."),
            (b"/?callback=f&_headers=" + b"%5B" * 5000, "Invalid _headers parameter."),
            (b"/?callback=f&_headers=%7B%22A%22%3A%22%5Cud800%22%7D",  # a lone surrogate
             "Invalid _headers parameter."),
            (b"/?callback=f&_headers=%7B%22%5Cud800%22%3A%22x%22%7D",
             "Invalid _headers parameter."),
            (b"/?callback=f&_headers=%5B1%5D", "Invalid _headers parameter."),
            (b"/?callback=f&_headers=%7B%22A%22%3A%22x%5Cny%22%7D", "Invalid _headers parameter."),
        ]:
            error = self.assertRaises(JsonpError, parse_jsonp, uri, EXTENDED)
            self.assertEqual(str(error), text, uri)

    @settings(max_examples=300, deadline=None)
    @given(st.lists(st.sampled_from([b"callback=", b"_method=", b"_headers=", b"_body=", b"&",
                                     b"=", b"%", b"%7B", b"%22", b"%0A", b"+", b"cb", b"\xff",
                                     b"%5Cud800", b"%3A", b"%7D", b"?", b"/", b"x"]),
                    max_size=12).map(b"".join),
           st.sampled_from([EXTENDED, BASIC, JsonpConfig(body_param="d",
                                                         default_callback="f")]))
    def test_any_query_parses_or_is_refused(self, query: bytes, config: JsonpConfig) -> None:
        """Whatever the query, a call, None, or a JsonpError for the client; the call's
        uri keeps the path."""
        try:
            call = parse_jsonp(b"/p?" + query, config)
        except JsonpError:
            return
        if call is not None:
            self.assertTrue(call.uri.startswith(b"/p"))
            self.assertRegex(call.callback, rb"\A[A-Za-z0-9_$.]+\Z")


class WrapTests(SynchronousTestCase):
    def test_extended(self) -> None:
        """Code, reason, first value of each header (sorted), body as a JSON string."""
        body = wrap(b"cb", True, 404, b"Not Found",
                    [("X-B", "1"), ("X-A", "2"), ("X-B", "3")], "é\n".encode())
        self.assertEqual(body, b'/**/cb({"code": 404, "reason": "Not Found", '
                               b'"headers": {"X-A":"2","X-B":"1"}, "body": "\xc3\xa9\\n"});\n')

    @settings(max_examples=200, deadline=None)
    @given(st.integers(100, 599), st.binary(max_size=20),
           st.lists(st.tuples(st.text(min_size=1, max_size=8), st.text(max_size=8)),
                    max_size=4), st.text(max_size=40) | st.just("a\u2028b\u2029"))
    def test_extended_is_always_one_call_with_json(self, code: int, reason: bytes,
                                                   headers: list, body: str) -> None:
        """Any answer wraps into ``/**/cb(JSON);`` whose JSON round-trips the body."""
        wrapped = wrap(b"cb", True, code, reason, headers, body.encode("utf-8"))
        answer = unwrap(wrapped)
        self.assertEqual((answer["code"], answer["body"]), (code, body))
        self.assertNotIn("\u2028".encode(), wrapped)  # a line end to older JavaScript

    def test_basic(self) -> None:
        """The body itself, one trailing newline dropped."""
        self.assertEqual(wrap(b"cb", False, 200, b"OK", [], b'{"a": 1}\r\n'),
                         b'/**/cb({"a": 1});\n')

    def test_answer_limits(self) -> None:
        """Binary or oversized answers cannot be wrapped: 500 with the reason."""
        answer = JsonpAnswer(b"cb", True)
        answer.add(b"\xff")
        self.assertEqual(answer.wrapped(200, b"OK", []),
                         (500, b"Upstream response could not be JSON-P encoded.\n"))
        answer.discard()
        answer.add(b"x" * 1_000_001)
        status, text = answer.wrapped(200, b"OK", [])
        self.assertEqual(status, 500)
        self.assertIn(b"too large", text)


def echo(request: Request) -> bytes:
    """The origin tells what it got."""
    request.setHeader("Content-Type", "application/json")
    return json.dumps({
        "method": request.method.decode(), "uri": request.uri.decode(),
        "x-a": request.getHeader("x-a"), "accept": request.getHeader("accept"),
        "content-type": request.getHeader("content-type"),
        "body": request.content.getvalue().decode(),
    }).encode()


class ProxiedJsonpTests(TestCase):
    def setUp(self) -> None:
        self.clock = task.Clock()
        self.proxy = ProxyHarness(self, route="*,aco", clock=self.clock)
        self.proxy.handle(b"/echo", echo)

    async def test_relayed_answer_is_wrapped(self) -> None:
        """The origin's answer reaches the client as one JavaScript call, status 200."""
        self.proxy.handle(b"/gone", lambda r: (r.setResponseCode(410), b"bye\n")[1])
        response, body = await self.proxy.fetch(b"/gone?callback=cb")
        self.assertEqual(response.code, 200)
        self.assertEqual(response.headers.getRawHeaders(b"content-type"),
                         [b"application/javascript"])
        self.assertIsNone(response.headers.getRawHeaders(b"access-control-allow-origin"))
        answer = unwrap(body)
        self.assertEqual((answer["code"], answer["reason"], answer["body"]),
                         (410, "Gone", "bye\n"))
        self.assertEqual(answer["headers"]["Content-Length"], "4")
        self.assertNotIn("Connection", answer["headers"])  # the origin's headers, not ours

    async def test_method_headers_and_body_reach_origin(self) -> None:
        """_method, _headers and _body become the origin request; Accept is */*."""
        headers = quote(json.dumps({"X-A": "yes"})).encode()
        path = b"/echo?q=1&callback=cb&_method=POST&_headers=" + headers + b"&_body=hi"
        _response, body = await self.proxy.fetch(path, headers=Headers({
            "Accept": ["text/html"]}))
        seen = json.loads(unwrap(body)["body"])
        self.assertEqual(seen, {"method": "POST", "uri": "/echo?q=1", "x-a": "yes",
                                "accept": "*/*", "content-type": None, "body": "hi"})

    async def test_basic_mode_with_json_body(self) -> None:
        """Basic mode: POST by default, jsonp_body sent as application/json, bare body."""
        self.proxy.set_routes(f"*,aco,jsonp_mode=basic,jsonp_body=d,jsonp_defcb=handle "
                              f"{self.proxy.origin_address}")
        _response, body = await self.proxy.fetch(b"/echo?d=%7B%7D")
        self.assertTrue(body.startswith(b"/**/handle({") and body.endswith(b"});\n"), body)
        seen = json.loads(body[len(b"/**/handle("):-len(b");\n")])
        self.assertEqual((seen["method"], seen["content-type"], seen["body"]),
                         ("POST", "application/json", "{}"))

    async def test_long_poll_publish_and_timeout(self) -> None:
        """A held JSON-P call: the published response, or at timeout the origin's, wrapped."""
        self.proxy.handle(b"/lp", lambda r: grip(r, b"timed out\n", Grip_Hold="response",
                                                 Grip_Channel="news"))
        pending = ensureDeferred(self.proxy.fetch(b"/lp?callback=cb"))
        await wait_until(lambda: self.proxy.router.has_subscribers("news"))
        self.proxy.publish("news", http_response={"code": 201, "body": "news!\n"})
        response, body = await pending
        answer = unwrap(body)
        self.assertEqual((response.code, answer["code"], answer["body"]), (200, 201, "news!\n"))
        self.assertNotIn("Grip-Hold", answer["headers"])

        pending = ensureDeferred(self.proxy.fetch(b"/lp?callback=cb"))
        await wait_until(lambda: self.proxy.router.has_subscribers("news"))
        self.clock.advance(56)
        _response, body = await pending
        self.assertEqual(unwrap(body)["body"], "timed out\n")

    async def test_origin_failure_is_wrapped(self) -> None:
        """The proxy's own 502 is wrapped too, so the page's callback learns of it."""
        self.proxy.handle(b"/bad", lambda r: grip(r, b"", Grip_Hold="sideways"))
        response, body = await self.proxy.fetch(b"/bad?callback=cb")
        answer = unwrap(body)
        self.assertEqual((response.code, answer["code"]), (200, 502))

    async def test_stream_hold_refused(self) -> None:
        """JSON-P cannot carry a stream: 502, wrapped."""
        self.proxy.handle(b"/s", lambda r: grip(r, b"start\n", Grip_Hold="stream",
                                                Grip_Channel="news"))
        _response, body = await self.proxy.fetch(b"/s?callback=cb")
        self.assertEqual(unwrap(body)["code"], 502)
        self.assertFalse(self.proxy.router.has_subscribers("news"))

    async def test_call_with_a_large_body_refused(self) -> None:
        """A JSON-P GET whose own body streams (over 100 kB) cannot become the call: 400,
        and the origin sees nothing."""
        response, body = await self.proxy.fetch(
            b"/echo?callback=cb", body=FileBodyProducer(BytesIO(b"x" * 200_000)))
        self.assertEqual((response.code, body),
                         (400, b"Request body too large for a JSON-P call.\n"))
        self.assertEqual(self.proxy.origin.requests, [])

    async def test_bad_call_and_plain_routes(self) -> None:
        """A bad callback is a 400 with CORS headers; without aco nothing is JSON-P."""
        response, body = await self.proxy.fetch(b"/echo?callback=")
        self.assertEqual((response.code, body), (400, b"Invalid callback parameter.\n"))
        self.assertEqual(response.headers.getRawHeaders(b"access-control-allow-origin"),
                         [b"*"])
        self.assertEqual(self.proxy.origin.requests, [])
        self.proxy.set_routes(f"* {self.proxy.origin_address}")
        _response, body = await self.proxy.fetch(b"/echo?callback=cb")
        self.assertEqual(json.loads(body)["uri"], "/echo?callback=cb")
