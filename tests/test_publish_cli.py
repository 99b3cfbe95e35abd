"""``fanout-publish`` against a real publish API on 127.0.0.1 port 0."""

from __future__ import annotations

import io
import os
import sys
import time

from twisted.internet import reactor
from twisted.internet.threads import deferToThread
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SynchronousTestCase
from typing_extensions import override

from fanout_tx.cli.publish import _parser, build_item, main
from fanout_tx.core.items import parse_item
from tests.support.helpers import RecordingSubscriber
from tests.support.publish import KEY, PublishApiCase
from tests.support.services import free_port


class BuildItemTests(SynchronousTestCase):
    def item(self, *argv: str, content: str | None = None) -> dict:
        args = _parser().parse_args(list(argv))
        return build_item(args, content if content is not None else args.content)

    def test_content_item_is_what_pushpin_publish_sends(self) -> None:
        """Content goes to all three formats, with a newline for the HTTP ones."""
        self.assertEqual(self.item("c", "hello"), {"channel": "c", "formats": {
            "http-response": {"body": "hello\n", "code": 200},
            "http-stream": {"content": "hello\n"},
            "ws-message": {"content": "hello"},
        }})

    def test_options(self) -> None:
        """id, prev-id, sender/meta, code, headers, no-seq and no-eol land where
        pushpin-publish puts them, and the item is valid for the server's parser."""
        item = self.item("c", "hi", "--id", "2", "--prev-id", "1", "--sender", "me",
                         "-M", "k=v", "--code", "201", "-H", "X-A: 1", "--no-seq", "--no-eol")
        self.assertEqual(item, {
            "channel": "c", "id": "2", "prev-id": "1", "no-seq": True,
            "meta": {"k": "v", "sender": "me"},
            "formats": {
                "http-response": {"body": "hi", "code": 201, "headers": [["X-A", "1"]]},
                "http-stream": {"content": "hi"},
                "ws-message": {"content": "hi"},
            },
        })
        parsed = parse_item(item)
        self.assertEqual((parsed.id, parsed.prev_id, parsed.no_seq), ("2", "1", True))

    def test_hint_and_close(self) -> None:
        """--hint and --close build action-only items the server accepts."""
        hint = self.item("c", "--hint")
        self.assertEqual(hint["formats"], {"http-response": {"action": "hint"},
                                           "http-stream": {"action": "hint"},
                                           "ws-message": {"action": "hint"}})
        close = self.item("c", "--close")
        self.assertEqual(close["formats"], {"http-stream": {"action": "close"},
                                            "ws-message": {"action": "close"}})
        for item in (hint, close):
            parse_item(item)


class UsageTests(SynchronousTestCase):
    def run_main(self, *argv: str) -> tuple[int, str]:
        stderr = io.StringIO()
        code = main(list(argv), stdout=io.StringIO(), stderr=stderr)
        return code, stderr.getvalue()

    def test_usage_errors(self) -> None:
        """Missing content, content with --close, a bad header, --iss without --key and a
        non-HTTP spec are usage errors (exit 2) with a message."""
        for argv, message in [
            (("c",), "content is required"),
            (("c", "x", "--close"), "no content with --hint or --close"),
            (("c", "x", "-H", "nocolon"), "expected NAME:VALUE"),
            (("c", "x", "--iss", "me"), "--iss needs --key"),
            (("c", "x", "--spec", "tcp://127.0.0.1:5560"), "--spec must be an http"),
        ]:
            code, stderr = self.run_main(*argv)
            self.assertEqual(code, 2, argv)
            self.assertIn(message, stderr)
            self.assertTrue(stderr.startswith("usage: fanout-publish"), stderr)


class PublishCommandTests(PublishApiCase):
    @override
    def now(self) -> float:
        return time.time()  # the command signs its tokens with the real time

    async def run_main(self, *argv: str, stdin: str = "") -> tuple[int, str, str]:
        """main() in a thread (it blocks on urllib) against the server on self.port."""
        stdout, stderr = io.StringIO(), io.StringIO()
        code = await deferToThread(main, ["--spec", f"http://127.0.0.1:{self.port}/", *argv],
                                   io.StringIO(stdin), stdout, stderr)
        return code, stdout.getvalue(), stderr.getvalue()

    async def test_publishes_content(self) -> None:
        """The item reaches subscribers; the server's answer is printed; exit 0."""
        await self.serve(self.root())
        code, stdout, stderr = await self.run_main("c", "hello")
        self.assertEqual((code, stdout, stderr), (0, "Published\n", ""))
        self.assertEqual(self.subscriber.contents, [b"hello\n"])

    async def test_content_from_stdin(self) -> None:
        """``-`` reads the content from stdin, without its final newline."""
        await self.serve(self.root())
        code, _stdout, _stderr = await self.run_main("c", "-", stdin="line one\nline two\n")
        self.assertEqual(code, 0)
        self.assertEqual(self.subscriber.contents, [b"line one\nline two\n"])

    async def test_server_error_text_and_exit_status(self) -> None:
        """A refused publish exits 1 with the server's status and one-line reason."""
        await self.serve(self.root())
        code, stdout, stderr = await self.run_main("c", "x", "--code", "5")
        self.assertEqual((code, stdout), (1, ""))
        self.assertEqual(stderr, "fanout-publish: 400 Bad Request: item 0: Invalid format: "
                                 "http-response: code must be a whole number from 200 to 599\n")
        self.assertEqual(self.subscriber.received, [])

    async def test_key_and_iss_sign_a_token(self) -> None:
        """--key/--iss authenticate against an API with auth; without them it is a 401."""
        await self.serve(self.root(KEY, "publisher"))
        code, _stdout, stderr = await self.run_main("c", "x")
        self.assertEqual(code, 1)
        self.assertIn("401 Unauthorized: Authorization required", stderr)
        code, _stdout, _stderr = await self.run_main("c", "x", "--key", KEY.decode(),
                                                     "--iss", "publisher")
        self.assertEqual(code, 0)
        self.assertEqual(self.subscriber.contents, [b"x\n"])

    async def test_unreachable_server(self) -> None:
        """Nothing listening: exit 1 with a message naming the spec."""
        self.port = free_port()
        code, _stdout, stderr = await self.run_main("c", "x")
        self.assertEqual(code, 1)
        self.assertIn(f"cannot reach http://127.0.0.1:{self.port}/", stderr)

    async def test_runs_as_a_command(self) -> None:
        """The module runs as a program (as the fanout-publish console script does)."""
        await self.serve(self.root())
        subscriber = RecordingSubscriber(formats=("ws-message",))
        self.router.subscribe("c", subscriber)
        out, err, code = await getProcessOutputAndValue(
            sys.executable,
            ["-m", "fanout_tx.cli.publish", "--spec", f"http://127.0.0.1:{self.port}", "c", "hi"],
            env=os.environ, reactor=reactor)
        self.assertEqual((code, out, err), (0, b"Published\n", b""))
        self.assertEqual(subscriber.contents, [b"hi"])
