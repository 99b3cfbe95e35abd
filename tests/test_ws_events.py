"""The application/websocket-events codec and the c: control message parser."""

from __future__ import annotations

import contextlib
import json

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from fanout_tx.transports.ws import events as ev

names = st.sampled_from(sorted(ev.EVENT_NAMES))
event_values = st.builds(ev.Event, names, st.one_of(st.none(), st.binary(max_size=300)))


class EventsCodecTests(SynchronousTestCase):

    def test_wire_form(self) -> None:
        """Events without content are NAME CRLF; with content, a lowercase hex length."""
        body = ev.encode_events([ev.Event("OPEN"), ev.Event("TEXT", b"x" * 26),
                                 ev.Event("CLOSE", ev.close_content(1000, "ok"))])
        self.assertEqual(
            body, b"OPEN\r\nTEXT 1a\r\n" + b"x" * 26 + b"\r\nCLOSE 4\r\n\x03\xe8ok\r\n")

    def test_batch_decodes(self) -> None:
        """Several events in one body come back in order; uppercase hex is accepted."""
        self.assertEqual(
            ev.decode_events(b"OPEN\r\nTEXT 2\r\nhi\r\nBINARY A\r\n0123456789\r\nPING\r\n"),
            [ev.Event("OPEN"), ev.Event("TEXT", b"hi"), ev.Event("BINARY", b"0123456789"),
             ev.Event("PING")])

    @given(st.lists(event_values, max_size=8))
    def test_round_trip(self, events: list[ev.Event]) -> None:
        self.assertEqual(ev.decode_events(ev.encode_events(events)), events)

    @given(st.binary(max_size=200))
    def test_arbitrary_input_only_raises_events_error(self, data: bytes) -> None:
        with contextlib.suppress(ev.EventsError):
            ev.decode_events(data)

    def test_malformed(self) -> None:
        """Each malformation gets an EventsError that says what is wrong."""
        for body, words in [
            (b"OPEN", "no CRLF"),
            (b"TEXT zz\r\nab\r\n", "invalid hex length"),
            (b"TEXT 5\r\nab\r\n", "shorter than its length"),
            (b"TEXT 2\r\nabXX", "shorter than its length"),
            (b"open\r\n", "invalid event name"),
        ]:
            with self.assertRaises(ev.EventsError) as caught:
                ev.decode_events(body)
            self.assertIn(words, str(caught.exception))

    def test_close_content(self) -> None:
        self.assertEqual(ev.parse_close(ev.close_content(4001, "bye")), (4001, "bye"))
        self.assertEqual(ev.parse_close(None), (None, ""))
        self.assertIsNone(ev.close_content(None))


class GripExtensionTests(SynchronousTestCase):
    def test_prefix(self) -> None:
        """grip alone means the m: prefix; message-prefix overrides it; "" disables it;
        no grip extension means None."""
        self.assertEqual(ev.grip_message_prefix(["grip"]), "m:")
        self.assertEqual(ev.grip_message_prefix(['deflate, grip; message-prefix="x-"']), "x-")
        self.assertEqual(ev.grip_message_prefix(['grip; message-prefix=""']), "")
        self.assertIsNone(ev.grip_message_prefix(["permessage-deflate"]))
        self.assertIsNone(ev.grip_message_prefix([]))


    def test_history_id_prefix(self) -> None:
        """``history-id-prefix`` among the grip parameters; None without it or grip."""
        self.assertEqual(ev.grip_history_id_prefix(['grip; history-id-prefix="id:"']), "id:")
        self.assertIsNone(ev.grip_history_id_prefix(["grip"]))
        self.assertIsNone(ev.grip_history_id_prefix(['x; history-id-prefix="id:"']))


class ControlMessageTests(SynchronousTestCase):
    def test_subscribe_history(self) -> None:
        """A subscribe may carry ``since`` or ``rewind`` (the history extension); a bad
        rewind is refused like any bad control message."""
        self.assertEqual(ev.parse_control(b'{"type":"subscribe","channel":"a","since":"i3"}'),
                         ev.Subscribe("a", (), "i3"))
        self.assertEqual(ev.parse_control(b'{"type":"subscribe","channel":"a","rewind":4}'),
                         ev.Subscribe("a", (), None, 4))
        for bad in (b'"4"', b"-1", b"true", b"100001"):
            with self.assertRaises(ev.ControlError):
                ev.parse_control(b'{"type":"subscribe","channel":"a","rewind":' + bad + b"}")

    def test_types(self) -> None:
        cases = {
            b'{"type":"subscribe","channel":"a","filters":["skip-self"]}':
                ev.Subscribe("a", ("skip-self",)),
            b'{"type":"unsubscribe","channel":"a"}': ev.Unsubscribe("a"),
            b'{"type":"detach"}': ev.Detach(),
            b'{"type":"session","id":"s1"}': ev.Session("s1"),
            b'{"type":"set-meta","name":"user","value":"bob"}': ev.SetMeta("user", "bob"),
            b'{"type":"set-meta","name":"user"}': ev.SetMeta("user", ""),
            b'{"type":"keep-alive","content":"ka","timeout":30}':
                ev.KeepAlive(b"ka", "text", 30, "idle"),
            b'{"type":"keep-alive","content-bin":"AAE=","timeout":5,"mode":"interval"}':
                ev.KeepAlive(b"\x00\x01", "binary", 5, "interval"),
            b'{"type":"keep-alive"}': ev.KeepAlive(None, "text", 0, "idle"),
            b'{"type":"send-delayed","content":"later","message-type":"ping","timeout":2}':
                ev.SendDelayed(b"later", "ping", 2),
            b'{"type":"flush-delayed"}': ev.FlushDelayed(),
        }
        for raw, expected in cases.items():
            self.assertEqual(ev.parse_control(raw), expected)

    def test_errors(self) -> None:
        """Bad JSON, unknown types and bad fields raise ControlError naming the problem."""
        for raw, words in [
            (b"{nope", "not valid JSON"),
            (b"[1]", "JSON object"),
            (b'{"type":"explode"}', "unknown control message type"),
            (b'{"channel":"a"}', "'type' is required"),
            (b'{"type":"subscribe","channel":""}', "'channel' must not be empty"),
            (b'{"type":"subscribe","channel":"a","filters":"x"}', "'filters'"),
            (b'{"type":"keep-alive","content":"x","timeout":-1}', "'timeout'"),
            (b'{"type":"keep-alive","content":"x","mode":"often"}', "'mode'"),
            (b'{"type":"send-delayed"}', "needs 'content'"),
            (b'{"type":"send-delayed","content-bin":"!!"}', "base64"),
            (b'{"type":"keep-alive","content":"x","message-type":"blob"}', "message-type"),
        ]:
            with self.assertRaises(ev.ControlError) as caught:
                ev.parse_control(raw)
            self.assertIn(words, str(caught.exception))

    @given(st.one_of(st.binary(max_size=100),
                     st.dictionaries(st.sampled_from(["type", "channel", "content", "timeout",
                                                      "filters", "name", "mode"]),
                                     st.one_of(st.text(max_size=5), st.integers(), st.none(),
                                               st.lists(st.integers(), max_size=2)))
                     .map(lambda d: json.dumps(d).encode())))
    def test_arbitrary_input_only_raises_control_error(self, data: bytes) -> None:
        with contextlib.suppress(ev.ControlError):
            ev.parse_control(data)
