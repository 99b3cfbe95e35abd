"""The ``http-request`` publish format (SPEC B2) and the webhook value types."""

from __future__ import annotations

import contextlib
import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from fanout_tx.core.codecs.item_codec import decode_items, encode_items
from fanout_tx.core.formats import PARSERS, FormatError
from fanout_tx.core.formats.webhook import parse_http_request
from fanout_tx.core.items import PublishError, parse_items_json
from fanout_tx.transports.webhooks.model import (
    Delivery,
    RequestError,
    Subscription,
    parse_new_subscription,
)
from fanout_tx.transports.webhooks.signing import (
    SecretError,
    generate_secret,
    message_id,
    secret_key,
)
from fanout_tx.transports.webhooks.subscriber import render_request

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=12,
)
KEYS = st.sampled_from(["method", "path", "headers", "body", "body-bin", "url", "channels",
                        "secret", "verify"])


def _publish(fmt: dict) -> bytes:
    return json.dumps({"items": [{"channel": "c", "formats": {"http-request": fmt}}]}).encode()


class FormatTests(SynchronousTestCase):
    def test_registered(self) -> None:
        """The parser is in the PARSERS table, so items may carry http-request."""
        self.assertIs(PARSERS["http-request"], parse_http_request)
        item = parse_items_json(_publish({"body": "hi"}))[0]
        self.assertEqual(item.formats["http-request"].content, b"hi")

    def test_defaults(self) -> None:
        """Method POST, no path, text body with Content-Type text/plain; charset=utf-8."""
        fmt = parse_http_request({"body": "hi"})
        self.assertEqual(fmt.fields, {
            "method": "POST", "path": "", "query": "",
            "headers": (("Content-Type", "text/plain; charset=utf-8"),),
        })

    def test_binary_body_and_explicit_content_type(self) -> None:
        """body-bin defaults to application/octet-stream; a given Content-Type is kept."""
        fmt = parse_http_request({"body-bin": "AAE="})
        self.assertEqual(fmt.content, b"\x00\x01")
        self.assertEqual(fmt.fields["headers"], (("Content-Type", "application/octet-stream"),))
        fmt = parse_http_request({"body": "{}", "headers": {"content-type": "application/json"}})
        self.assertEqual(fmt.fields["headers"], (("content-type", "application/json"),))

    def test_shared_between_instances(self) -> None:
        """An http-request item survives the Redis bus's item codec unchanged."""
        item = parse_items_json(_publish({"method": "PUT", "path": "/p?q=1", "body-bin": "AAE=",
                                          "headers": [["X-A", "1"], ["X-A", "2"]]}))[0]
        self.assertEqual(decode_items(encode_items([item])), [item])

    def test_method_path_and_query(self) -> None:
        """The method is upper-cased; the path is split from its query."""
        fmt = parse_http_request({"method": "put", "path": "/a/b?x=1&y=%20", "body": ""})
        self.assertEqual((fmt.fields["method"], fmt.fields["path"], fmt.fields["query"]),
                         ("PUT", "/a/b", "x=1&y=%20"))

    def test_bad_fields_are_400s(self) -> None:
        """Forbidden headers, bad methods and paths make the publish fail with the reason."""
        cases = {
            "Host": {"headers": {"Host": "evil"}},
            "Content-Length": {"headers": {"Content-Length": "3"}},
            "Transfer-Encoding": {"headers": [["Transfer-Encoding", "chunked"]]},
            "Connection": {"headers": {"Connection": "close"}},
            "Upgrade": {"headers": {"Upgrade": "h2c"}},
            "Proxy-Authorization": {"headers": {"Proxy-Authorization": "Basic x"}},
            "X-Listed": {"headers": [["X-Listed", "1"], ["Connection", "x-listed"]]},
            "webhook-id": {"headers": {"Webhook-Id": "forged"}},
            "method": {"method": "GE T"},
            "path must start": {"path": "relative"},
            "path must": {"path": "/a b"},
            "not an HTTP method": {"method": "POST\n"},  # a final newline, too
            "path must start with / and hold no": {"path": "/x\n"},
            "only one of body and body-bin": {"body": "a", "body-bin": "YQ=="},
        }
        for expected, fmt in cases.items():
            with self.assertRaises(PublishError) as caught:
                parse_items_json(_publish(fmt))
            self.assertIn(expected.lower(), str(caught.exception).lower(), fmt)


class ValueTests(SynchronousTestCase):
    def test_render_once(self) -> None:
        """The renderer keeps the fields and the lower-cased header names for the merge."""
        rendered = render_request(parse_http_request({"body": "x", "headers": {"X-A": "1"}}))
        self.assertEqual(rendered.header_names, frozenset({"x-a", "content-type"}))
        self.assertEqual(rendered.body, b"x")

    def test_json_round_trips(self) -> None:
        """Subscriptions and deliveries survive the JSON the Redis store keeps."""
        sub = Subscription("sub_1", "https://h/x", ("a", "b"), generate_secret(), (("A", "1"),))
        self.assertEqual(Subscription.from_json(sub.to_json()), sub)
        delivery = Delivery("msg", "sub_1", "a", "POST", "https://h/x", (("A", "1"),),
                            b"\xff\x00", 3, 12.5, 500, "HTTP 500")
        self.assertEqual(Delivery.from_json(delivery.to_json()), delivery)

    def test_secrets(self) -> None:
        """Generated secrets are whsec_ + base64 of 32 bytes; malformed ones are refused."""
        self.assertEqual(len(secret_key(generate_secret())), 32)
        for bad in ("nope", "whsec_!!!", "whsec_YWJj"):
            self.assertRaises(SecretError, secret_key, bad)

    def test_message_ids(self) -> None:
        """An item id gives the same webhook-id for the same subscription and channel only;
        without one, every call is new."""
        self.assertEqual(message_id("s", "c", "1"), message_id("s", "c", "1"))
        self.assertNotEqual(message_id("s", "c", "1"), message_id("t", "c", "1"))
        self.assertNotEqual(message_id("s", "c", "1"), message_id("s", "d", "1"))
        self.assertNotEqual(message_id("s", "c", None), message_id("s", "c", None))

    def test_create_request_errors(self) -> None:
        """Each malformed create request gets a reason naming the problem."""
        good = {"url": "https://hooks.example/x", "channels": ["c"]}
        cases = [
            (b"{not json", "not valid JSON"),
            (b"[]", "JSON object"),
            ({**good, "url": "ftp://x/"}, "http or https"),
            ({**good, "url": "http://user:pw@x/"}, "user information"),
            ({**good, "url": "http:///nohost"}, "no host"),
            ({**good, "url": "http://x:99999/"}, "invalid url"),
            ({**good, "url": 5}, "url must be"),
            ({**good, "channels": []}, "channels"),
            ({**good, "channels": "c"}, "channels"),
            ({**good, "channels": [""]}, "channels"),
            ({**good, "channels": ["c"] * 101}, "at most"),
            ({**good, "secret": "plain"}, "whsec_"),
            ({**good, "headers": {"Host": "x"}}, "Host"),
            ({**good, "headers": ["a"]}, "headers"),
            ({**good, "verify": "yes"}, "verify"),
            ({**good, "extra": 1}, "unknown field"),
        ]
        for body, expected in cases:
            raw = body if isinstance(body, bytes) else json.dumps(body).encode()
            with self.assertRaises(RequestError) as caught:
                parse_new_subscription(raw)
            self.assertIn(expected, str(caught.exception), body)
        parsed = parse_new_subscription(json.dumps({**good, "channels": ["c", "c", "d"]}).encode())
        self.assertEqual(parsed.channels, ("c", "d"))


class PropertyTests(SynchronousTestCase):
    @given(st.dictionaries(KEYS, JSON, max_size=5))
    def test_format_parser_raises_only_format_error(self, obj: dict[str, Any]) -> None:
        """Any JSON object either parses or raises FormatError, nothing else."""
        with contextlib.suppress(FormatError):
            parse_http_request(obj)

    @given(st.dictionaries(KEYS, JSON, max_size=5) | JSON)
    def test_create_parser_raises_only_request_error(self, obj: Any) -> None:
        """Any JSON body either parses or raises RequestError, nothing else."""
        with contextlib.suppress(RequestError):
            parse_new_subscription(json.dumps(obj).encode())
