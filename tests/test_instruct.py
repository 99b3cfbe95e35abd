"""grip/instruct.py: GRIP headers and grip-instruct bodies -> Instruct, or GripError."""

from __future__ import annotations

import contextlib
import json

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from fanout_tx.grip.instruct import (
    Channel,
    GripError,
    GripKeepAlive,
    Link,
    decode_cstring,
    is_instruct,
    parse_instruct,
)


def headers(*pairs: tuple[str, str]) -> list[tuple[str, str]]:
    return list(pairs)


HOLD = ("Grip-Hold", "response")


class HeaderInstructTests(SynchronousTestCase):
    def test_plain_response_is_not_an_instruct(self) -> None:
        """Without Grip-Hold or the grip-instruct type the response is relayed as is."""
        self.assertFalse(is_instruct([("Content-Type", "text/plain"), ("Grip-Link", "<x>")]))
        self.assertTrue(is_instruct([HOLD]))
        self.assertTrue(is_instruct([("content-type", "application/grip-instruct; x=1")]))

    def test_defaults(self) -> None:
        """A bare response hold: 55 s, no keep-alive, origin status and body kept."""
        instruct = parse_instruct(200, "OK", [HOLD, ("Grip-Channel", "a")], b"body")
        self.assertEqual(instruct.hold, "response")
        self.assertEqual(instruct.channels, (Channel("a"),))
        self.assertEqual(instruct.timeout, 55)
        self.assertIsNone(instruct.keep_alive)
        self.assertEqual((instruct.response.code, instruct.response.body), (200, b"body"))

    def test_channels_comma_separated_repeated_with_params(self) -> None:
        """Grip-Channel values may repeat and hold several channels with prev-id/filters."""
        instruct = parse_instruct(200, None, [
            HOLD, ("Grip-Channel", 'a; prev-id=1; filter=skip-self, b; prev-id="x,y"'),
            ("Grip-Channel", "c; filter=skip-users; filter=var-subst"),
        ], b"")
        self.assertEqual(instruct.channels, (
            Channel("a", "1", ("skip-self",)), Channel("b", "x,y"),
            Channel("c", None, ("skip-users", "var-subst")),
        ))

    def test_history_parameters(self) -> None:
        """The history extension: ``history-since`` and ``history-rewind`` per channel; a
        rewind that is not a whole number in range is an error."""
        instruct = parse_instruct(200, None, [
            HOLD, ("Grip-Channel", "a; history-since=i7, b; history-rewind=3, c; prev-id=p"),
        ], b"")
        self.assertEqual(instruct.channels, (
            Channel("a", history_since="i7"), Channel("b", history_rewind=3), Channel("c", "p"),
        ))
        for bad in ("x", "-1", "100001"):
            with self.assertRaises(GripError):
                parse_instruct(200, None, [HOLD, ("Grip-Channel", f"a; history-rewind={bad}")],
                               b"")
        json_instruct = parse_instruct(200, None, INSTRUCT_TYPE, instruct_body({
            "hold": {"mode": "stream", "channels": [
                {"name": "a", "history-since": "i1"}, {"name": "b", "history-rewind": 2}]}}))
        self.assertEqual(json_instruct.channels, (
            Channel("a", history_since="i1"), Channel("b", history_rewind=2)))
        for bad_value in ("2", True, -1):
            with self.assertRaises(GripError):
                parse_instruct(200, None, INSTRUCT_TYPE, instruct_body({"hold": {
                    "mode": "stream", "channels": [{"name": "a", "history-rewind": bad_value}]}}))

    def test_too_many_channels(self) -> None:
        """More channels than connection_subscription_max is an error."""
        value = ", ".join(f"c{i}" for i in range(3))
        with self.assertRaises(GripError):
            parse_instruct(200, None, [HOLD, ("Grip-Channel", value)], b"", max_channels=2)

    def test_bad_hold_and_missing_channel(self) -> None:
        """Grip-Hold must be response or stream, and needs a channel."""
        with self.assertRaisesRegex(GripError, "Grip-Hold"):
            parse_instruct(200, None, [("Grip-Hold", "bogus"), ("Grip-Channel", "a")], b"")
        with self.assertRaisesRegex(GripError, "Grip-Channel"):
            parse_instruct(200, None, [HOLD], b"")

    def test_timeout_minimum_and_errors(self) -> None:
        """Grip-Timeout below 5 acts as 5; non-numbers are errors."""
        base = [HOLD, ("Grip-Channel", "a")]
        self.assertEqual(parse_instruct(200, None, [*base, ("Grip-Timeout", "2")], b"").timeout, 5)
        self.assertEqual(parse_instruct(200, None, [*base, ("Grip-Timeout", "90")], b"").timeout,
                         90)
        with self.assertRaises(GripError):
            parse_instruct(200, None, [*base, ("Grip-Timeout", "soon")], b"")

    def test_keep_alive_formats(self) -> None:
        """raw, cstring and base64 keep-alive data, timeout and mode."""
        base = [("Grip-Hold", "stream"), ("Grip-Channel", "a")]

        def keep_alive(value: str) -> GripKeepAlive | None:
            return parse_instruct(200, None, [*base, ("Grip-Keep-Alive", value)], b"").keep_alive

        self.assertEqual(keep_alive("ping"), GripKeepAlive(b"ping", 55, "idle"))
        self.assertEqual(keep_alive(r"a\n\x41; format=cstring; timeout=10; mode=interval"),
                         GripKeepAlive(b"a\nA", 10, "interval"))
        self.assertEqual(keep_alive("aGk=; format=base64"), GripKeepAlive(b"hi", 55, "idle"))
        for bad in ("x; format=hex", "x; mode=sometimes", "!!; format=base64",
                    r"\q; format=cstring", "x; timeout=0"):
            with self.assertRaises(GripError, msg=bad):
                keep_alive(bad)

    def test_cstring(self) -> None:
        self.assertEqual(decode_cstring(r"\\ \r\n\t\x7f"), b"\\ \r\n\t\x7f")

    def test_status_meta_link_expose(self) -> None:
        """Grip-Status, Grip-Set-Meta, Grip-Link and Grip-Expose-Headers."""
        instruct = parse_instruct(200, "OK", [
            HOLD, ("Grip-Channel", "a"), ("Grip-Status", "404 Not Here"),
            ("Grip-Set-Meta", "user=alice, role=admin"), ("Grip-Set-Meta", 'x="1"'),
            ("Grip-Link", "</prev>; rel=prev, </next?a=1>; rel=next; timeout=30"),
            ("Grip-Expose-Headers", "X-Keep"), ("X-Keep", "1"), ("X-Drop", "2"),
            ("Content-Length", "4"),
        ], b"body")
        self.assertEqual((instruct.response.code, instruct.response.reason), (404, "Not Here"))
        self.assertEqual(instruct.meta, {"user": "alice", "role": "admin", "x": "1"})
        self.assertEqual(instruct.next_link, Link("/next?a=1", 30))
        self.assertEqual(instruct.response.headers, (("X-Keep", "1"),))

    def test_grip_headers_never_reach_the_client(self) -> None:
        """Grip-*, hop-by-hop and Content-Length are not in the client headers."""
        instruct = parse_instruct(200, None, [
            HOLD, ("Grip-Channel", "a"), ("Connection", "close"), ("Set-Cookie", "a=1"),
            ("Set-Cookie", "b=2"), ("Content-Length", "0"), ("Grip-Other", "x"),
        ], b"")
        self.assertEqual(instruct.response.headers, (("Set-Cookie", "a=1"), ("Set-Cookie", "b=2")))

    def test_bad_status_and_link(self) -> None:
        base = [HOLD, ("Grip-Channel", "a")]
        for extra in (("Grip-Status", "abc"), ("Grip-Status", "42"),
                      ("Grip-Link", "/no-brackets; rel=next"),
                      ("Grip-Link", "<x>; rel=next; timeout=never"),
                      # links the proxy could never fetch: refused now, not at recovery
                      ("Grip-Link", "<ftp://a/b>; rel=next"),
                      ("Grip-Link", "<http://[::1>; rel=next"),
                      ("Grip-Link", "<http://h:port/x>; rel=next"),
                      ("Grip-Link", "<http://é€/>; rel=next"),
                      ("Grip-Link", "<http:///nohost>; rel=next"),
                      ("Grip-Set-Meta", "novalue")):
            with self.assertRaises(GripError, msg=str(extra)):
                parse_instruct(200, None, [*base, extra], b"")


INSTRUCT_TYPE = [("Content-Type", "application/grip-instruct")]


def instruct_body(document: object) -> bytes:
    return json.dumps(document).encode()


class JsonInstructTests(SynchronousTestCase):
    def test_full_hold(self) -> None:
        """Every field of the grip-instruct body."""
        instruct = parse_instruct(200, None, INSTRUCT_TYPE, instruct_body({
            "hold": {"mode": "stream", "timeout": 3, "meta": {"user": "u"},
                     "channels": [{"name": "a", "prev-id": "p", "filters": ["skip-self"]}],
                     "keep-alive": {"content-bin": "aGk=", "timeout": 20}},
            "response": {"code": 201, "reason": "Yes", "headers": [["X-A", "1"], ["X-A", "2"]],
                         "body": "start\n"},
        }))
        self.assertEqual(instruct.hold, "stream")
        self.assertEqual(instruct.timeout, 5)
        self.assertEqual(instruct.channels, (Channel("a", "p", ("skip-self",)),))
        self.assertEqual(instruct.keep_alive, GripKeepAlive(b"hi", 20, "idle"))
        self.assertEqual(instruct.meta, {"user": "u"})
        self.assertEqual(instruct.response.code, 201)
        self.assertEqual(instruct.response.headers, (("X-A", "1"), ("X-A", "2")))
        self.assertEqual(instruct.response.body, b"start\n")

    def test_no_hold_is_a_plain_response(self) -> None:
        instruct = parse_instruct(200, None, INSTRUCT_TYPE, instruct_body(
            {"response": {"headers": {"X-A": "1"}, "body-bin": "aGk="}}))
        self.assertIsNone(instruct.hold)
        self.assertEqual((instruct.response.code, instruct.response.body), (200, b"hi"))

    def test_errors(self) -> None:
        """Bad JSON, non-200 status and wrong types are GripErrors."""
        with self.assertRaisesRegex(GripError, "status 500"):
            parse_instruct(500, None, INSTRUCT_TYPE, b"{}")
        with self.assertRaisesRegex(GripError, "not valid JSON"):  # not a RecursionError
            parse_instruct(200, None, INSTRUCT_TYPE, b"[" * 100_000)
        for body in (b"{not json", b"[]", instruct_body({"hold": {"mode": "x"}}),
                     instruct_body({"hold": {"channels": []}}),
                     instruct_body({"hold": {"channels": [{"name": 1}]}}),
                     instruct_body({"hold": {"channels": [{"name": "a"}], "timeout": "5"}}),
                     instruct_body({"response": {"code": "200"}}),
                     instruct_body({"response": {"headers": [["X", 1]]}}),
                     instruct_body({"response": {"body-bin": "!!"}})):
            with self.assertRaises(GripError, msg=repr(body)):
                parse_instruct(200, None, INSTRUCT_TYPE, body)


_text = st.text(st.characters(codec="latin-1"), max_size=40)
_header_names = st.sampled_from([
    "Grip-Hold", "Grip-Channel", "Grip-Timeout", "Grip-Keep-Alive", "Grip-Set-Meta",
    "Grip-Status", "Grip-Link", "Grip-Expose-Headers", "Content-Type", "X-Other",
])
_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["hold", "response", "mode", "channels", "name", "timeout",
                         "keep-alive", "content", "body", "headers", "code", "meta"]),
        inner, max_size=5),
    max_leaves=20,
)


class PropertyTests(SynchronousTestCase):
    @given(st.integers(0, 1000), st.lists(st.tuples(_header_names, _text), max_size=8),
           st.binary(max_size=50))
    def test_headers_only_raise_grip_error(self, code: int, pairs: list, body: bytes) -> None:
        """Arbitrary header values never raise anything but GripError."""
        with contextlib.suppress(GripError):
            parse_instruct(code, None, pairs, body)

    @given(_json)
    def test_json_only_raises_grip_error(self, document: object) -> None:
        """Arbitrary JSON documents never raise anything but GripError."""
        with contextlib.suppress(GripError):
            parse_instruct(200, None, INSTRUCT_TYPE, json.dumps(document).encode())
