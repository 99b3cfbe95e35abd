"""``fanout-publish``: publish one item from a shell, like Pushpin's ``pushpin-publish``.

The item is the one ``pushpin-publish`` 1.36 sends (observed on the wire): ``http-response``
(body = content + newline, code), ``http-stream`` (content + newline) and ``ws-message``
(content), or ``action: hint`` / ``action: close`` forms. Differences: ``-`` as content reads
stdin (pushpin-publish sends a literal ``-``), and ``--key``/``--iss`` sign a Bearer token for
an API with auth.
Standard library only, so it runs wherever the package is installed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.request
from typing import Any, NoReturn, TextIO

from typing_extensions import override

from fanout_tx.config.settings import parse_key
from fanout_tx.grip.signature import encode_hs256

DEFAULT_SPEC = "http://127.0.0.1:5561/"


def _header(value: str) -> tuple[str, str]:
    name, sep, header_value = value.partition(":")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"expected NAME:VALUE, got {value!r}")
    return name.strip(), header_value.strip()


def _meta(value: str) -> tuple[str, str]:
    name, sep, meta_value = value.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {value!r}")
    return name, meta_value


class _UsageError(Exception):
    """A bad command line; main() prints it to its stderr and exits 2, as argparse would."""


class _Parser(argparse.ArgumentParser):
    @override
    def error(self, message: str) -> NoReturn:
        raise _UsageError(message)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="fanout-publish",
        description="Publish an item to a fanout_tx (or Pushpin) HTTP publish API.",
    )
    parser.add_argument("channel", help="channel to publish to")
    parser.add_argument("content", nargs="?",
                        help="content for HTTP bodies and WebSocket messages; - reads stdin")
    parser.add_argument("--spec", default=DEFAULT_SPEC,
                        help=f"publish API base URL (default {DEFAULT_SPEC})")
    parser.add_argument("--id", help="item id")
    parser.add_argument("--prev-id", help="previous item id")
    parser.add_argument("--sender", help="sender meta value (for skip-self filters)")
    parser.add_argument("-M", "--meta", action="append", type=_meta, default=[],
                        metavar="NAME=VALUE", help="meta variable; repeatable")
    parser.add_argument("--code", type=int, default=200, help="HTTP response code (200)")
    parser.add_argument("-H", "--header", action="append", type=_header, default=[],
                        metavar="NAME:VALUE", help="HTTP response header; repeatable")
    parser.add_argument("--no-eol", action="store_true",
                        help="do not add a newline to HTTP payloads")
    parser.add_argument("--no-seq", action="store_true", help="bypass the sequencing buffer")
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--hint", action="store_true", help="send a hint instead of content")
    action.add_argument("--close", action="store_true",
                        help="close streaming and WebSocket connections")
    parser.add_argument("--key", help="publish API key (plain, base64:..., file:PATH)")
    parser.add_argument("--iss", help="issuer claim of the token signed with --key")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds (10)")
    return parser


def build_item(args: argparse.Namespace, content: str | None) -> dict[str, Any]:
    """The publish item for the parsed command line, as pushpin-publish builds it."""
    if args.hint:
        formats: dict[str, Any] = {
            "http-response": {"action": "hint"},
            "http-stream": {"action": "hint"},
            "ws-message": {"action": "hint"},
        }
    elif args.close:
        formats = {"http-stream": {"action": "close"}, "ws-message": {"action": "close"}}
    else:
        assert content is not None
        http_content = content if args.no_eol else content + "\n"
        response: dict[str, Any] = {"body": http_content, "code": args.code}
        if args.header:
            response["headers"] = [list(pair) for pair in args.header]
        formats = {
            "http-response": response,
            "http-stream": {"content": http_content},
            "ws-message": {"content": content},
        }
    item: dict[str, Any] = {"channel": args.channel, "formats": formats}
    meta = dict(args.meta)
    if args.sender is not None:
        meta["sender"] = args.sender
    for key, value in (("id", args.id), ("prev-id", args.prev_id), ("meta", meta)):
        if value:
            item[key] = value
    if args.no_seq:
        item["no-seq"] = True
    return item


def _request(args: argparse.Namespace, item: dict[str, Any]) -> urllib.request.Request:
    url = args.spec.rstrip("/") + "/publish/"
    headers = {"Content-Type": "application/json"}
    if args.key:
        claims: dict[str, Any] = {"exp": int(time.time()) + 3600}
        if args.iss:
            claims["iss"] = args.iss
        headers["Authorization"] = "Bearer " + encode_hs256(claims, parse_key(args.key))
    body = json.dumps({"items": [item]}).encode("utf-8")
    return urllib.request.Request(url, data=body, headers=headers, method="POST")


def _content(parser: argparse.ArgumentParser, args: argparse.Namespace,
             stdin: TextIO) -> str | None:
    """Check the option combination; the content, read from stdin for ``-``."""
    if not args.spec.startswith(("http://", "https://")):
        parser.error("--spec must be an http:// or https:// URL")
    if args.iss and not args.key:
        parser.error("--iss needs --key")
    if args.hint or args.close:
        if args.content is not None:
            parser.error("no content with --hint or --close")
        return None
    if args.content is None:
        parser.error("content is required (use - to read stdin)")
    if args.content == "-":
        return stdin.read().removesuffix("\n")
    return args.content


def main(argv: list[str] | None = None, stdin: TextIO | None = None,
         stdout: TextIO | None = None, stderr: TextIO | None = None) -> int:
    """Run the command; returns the exit status (0 published, 1 refused or unreachable,
    2 bad usage)."""
    stdin, stdout, stderr = stdin or sys.stdin, stdout or sys.stdout, stderr or sys.stderr
    parser = _parser()
    try:
        args = parser.parse_args(argv)
        content = _content(parser, args, stdin)
    except _UsageError as e:
        stderr.write(f"{parser.format_usage()}fanout-publish: error: {e}\n")
        return 2
    try:
        request = _request(args, build_item(args, content))
        with urllib.request.urlopen(request, timeout=args.timeout) as response:
            stdout.write(response.read().decode("utf-8", "replace"))
    except ValueError as e:  # a bad --key
        stderr.write(f"fanout-publish: {e}\n")
        return 1
    except urllib.error.HTTPError as e:
        text = e.read().decode("utf-8", "replace").strip()
        stderr.write(f"fanout-publish: {e.code} {e.reason}: {text}\n")
        return 1
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        stderr.write(f"fanout-publish: cannot reach {args.spec}: {reason}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
