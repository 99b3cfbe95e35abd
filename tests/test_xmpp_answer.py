"""The backend's answer (Grip-Channel headers, grip-instruct JSON) is parsed before use."""

from __future__ import annotations

import json

from twisted.trial.unittest import SynchronousTestCase

from fanout_tx.grip.instruct import Channel
from fanout_tx.transports.xmpp.answer import AnswerError, parse_answer, parse_grip_channels

INSTRUCT = "application/grip-instruct; charset=utf-8"


class AnswerTests(SynchronousTestCase):
    def test_grip_channel_headers(self) -> None:
        """Repeated and comma-separated values; filters kept, prev-id ignored."""
        self.assertEqual(parse_grip_channels(["a, b; prev-id=3; filter=skip-self", "c"]),
                         [Channel("a"), Channel("b", None, ("skip-self",)), Channel("c")])
        with self.assertRaises(AnswerError):
            parse_grip_channels(["; filter=x"])

    def test_headers_only_when_not_instruct(self) -> None:
        answer = parse_answer(["news"], "text/plain", b"ignored")
        self.assertEqual((answer.subscribe, answer.replies), ((Channel("news"),), ()))

    def test_instruct_body(self) -> None:
        body = json.dumps({
            "subscribe": ["a", {"channel": "b", "filters": ["skip-self"]}],
            "unsubscribe": ["old"],
            "reply": ["<message><body>hi</body></message>", "<iq><q xmlns='urn:q'/></iq>"],
            "set-meta": {"user": "ann", "Role_1": ""},
        }).encode()
        answer = parse_answer(["h"], INSTRUCT, body)
        self.assertEqual(answer.subscribe,
                         (Channel("h"), Channel("a"), Channel("b", None, ("skip-self",))))
        self.assertEqual(answer.unsubscribe, ("old",))
        self.assertEqual([r.name for r in answer.replies], ["message", "iq"])
        self.assertEqual(dict(answer.set_meta), {"user": "ann", "Role_1": ""})
        self.assertEqual(parse_answer([], INSTRUCT, b"").subscribe, ())

    def test_invalid_instruct(self) -> None:
        """Every malformed answer is one AnswerError naming the problem."""
        for document, words in (
            (b"{", "JSON"),
            (b"[" * 100_000, "JSON"),  # nested too deep: not a RecursionError
            (b"[]", "object"),
            (b'{"hold": {}}', "unknown"),
            (b'{"subscribe": "a"}', "list"),
            (b'{"subscribe": [""]}', "channel"),
            (b'{"subscribe": [{"channel": "a", "filters": "x"}]}', "filters"),
            (b'{"unsubscribe": [1]}', "unsubscribe"),
            (b'{"reply": ["<message>"]}', "well-formed"),
            (b'{"reply": ["<stream/>"]}', "message or presence or iq"),
            (b'{"reply": [1]}', "XML"),
            (b'{"set-meta": {"a b": "x"}}', "key"),
            (b'{"set-meta": {"a": "x\\ny"}}', "one-line"),
            (b'{"set-meta": {"a": "\\u0001"}}', "XML"),
            (b'{"set-meta": []}', "object"),
        ):
            with self.assertRaises(AnswerError) as caught:
                parse_answer([], INSTRUCT, document)
            self.assertIn(words, str(caught.exception))
