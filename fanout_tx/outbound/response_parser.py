"""Origin answers parsed by llhttp (``httptools.HttpResponseParser``), cut at their exact ends.

llhttp does the parsing and its checks (strict: bare CR or LF, control characters, bad tokens,
chunk-size overflow, differing framing headers are refused). httptools does not say where in
the bytes a message ended, and the origin pool may keep a connection only when its answer
ended exactly at its framing with nothing after it (llhttp skips CR/LF between messages
unseen). So the bytes are fed in steps that end where an answer can end:

- a head up to its first CRLFCRLF (a head llhttp takes has no earlier one: no bare CR or LF,
  no obsolete line folding), and never more than ``MAX_HEAD`` of it;
- a ``Content-Length`` body up to its length;
- a chunked body up to its last byte that is not CR or LF, then the first four bytes of such a
  run (the body can only end exactly there: the CRLF CRLF after ``0`` or a trailer), then the
  rest of the run at once (inside chunk data, which cannot end the body);
- a body that ends with the connection, as it comes.

Bytes past an answer's end inside a step always include a byte that is neither CR nor LF:
llhttp then begins another message or refuses the data, and either shows them (``overrun``).

Checks kept around llhttp, where it takes what the hand-written parser refused: a version
other than HTTP/1.0 or 1.1, a status below 100 or an unasked ``101``, a reason phrase outside
RFC 9112's grammar (llhttp takes DEL), an empty line before a status line, a head over
``MAX_HEAD`` (llhttp has no limit), a chunk line or trailer section over it (httptools buffers
a trailer whole), ``Transfer-Encoding`` other than exactly ``chunked`` (llhttp reads
``xchunked`` or ``chunked, gzip`` until the close) or in an HTTP/1.0 answer, and a
``Connection: close`` in an HTTP/1.0 answer that also says ``keep-alive`` (llhttp keeps it).

Where llhttp is stricter than the hand-written parser was, its refusal stands (a 502):
obsolete line folding (RFC 9112 5.2 lets a proxy refuse it), whitespace before a header's
colon (which the old parser stripped: a bug, RFC 9112 5.1), ``Content-Length`` twice even
with the same value or as a list, whitespace after a chunk size or an empty chunk extension,
HTTP/1.2 to 1.9. Where it is looser and harmless, it is followed: a chunk size with more than
16 digits (leading zeros; llhttp still refuses one that overflows 64 bits).
"""

from __future__ import annotations

from typing import Final, Protocol

from httptools import (
    HttpParserCallbackError,
    HttpParserError,
    HttpParserUpgrade,
    HttpResponseParser,
)
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH

from fanout_tx._twisted import checked_headers
from fanout_tx.core.headers import is_reason_phrase

MAX_HEAD = 64 * 1024  # a response head (or a chunk line, or a trailer section) over this: refused
_CONNECTION_CONTROL = frozenset({
    b"connection", b"content-length", b"keep-alive", b"proxy-connection", b"te", b"trailers",
    b"transfer-encoding", b"upgrade",
})
_NO_BODY_CODES = frozenset({204, 304})
_VERSIONS = {"1.1": b"HTTP/1.1", "1.0": b"HTTP/1.0"}
_HEAD_END = b"\r\n\r\n"
_CR_LF = b"\r\n"

# Where the answer is: its framing decides how far the next step may feed.
IDLE: Final = "idle"  # no answer expected
HEAD: Final = "head"  # a head (an interim 1xx one, or the final one) is coming
LENGTH: Final = "length"  # a Content-Length body
CHUNKED: Final = "chunked"
CLOSE: Final = "close"  # a body that ends with the connection
DONE: Final = "done"  # the answer ended
STOPPED: Final = "stopped"  # its reader wanted no more


class BadResponseError(Exception):
    """The origin's answer is not valid HTTP/1.x."""


class _StopError(Exception):
    """Raised in a callback to stop llhttp at once (the answer is over or its reader left)."""


class AnswerSink(Protocol):
    """Who hears of an answer: its head once, then its body in pieces."""

    @property
    def paused(self) -> bool:
        """Reading is paused: stop feeding at the end of the current step."""

    def answer_head(self, version: bytes, code: int, phrase: bytes, headers: Headers,
                    length: int | object) -> None: ...

    def answer_body(self, data: bytes) -> None: ...


class ResponseParser:
    """One connection's answers, one exchange at a time (``begin`` for each)."""

    def __init__(self, sink: AnswerSink) -> None:
        self._sink = sink
        self._parser = HttpResponseParser(self)
        # Both Transfer-Encoding and Content-Length: read as chunked (RFC 9112 6.3, and as
        # before llhttp), the connection closed after it (``reusable``). llhttp's other
        # leniencies stay off, as by default.
        self._parser.set_dangerous_leniencies(lenient_chunked_length=True)
        self.framing: str = IDLE
        self.reusable = False  # the answer's framing and headers allow another on this connection
        self.overrun = False  # bytes came past the answer's end within a step
        self._head_only = False
        self._remaining = 0  # of a Content-Length body
        self._run = 0  # CR/LF bytes fed since the chunked body's last other byte
        self._quiet = 0  # chunked-body bytes fed with no llhttp callback (a chunk line, trailers)
        self._events = 0  # llhttp callbacks during the body, to tell whether a step was quiet
        self._head_size = 0
        self._head_tail = b""  # the head's last bytes so far: its CRLFCRLF may span two reads
        self._at_start = True  # the next byte is a status line's first
        self._phrase = b""
        self._fields: list[tuple[bytes, bytes]] = []

    def begin(self, method: bytes) -> None:
        """An answer to ``method`` is expected next."""
        self._head_only = method == b"HEAD"
        self.reusable = False
        self.overrun = False
        self._next_head()

    def stop(self) -> None:
        """The body's reader wants no more: no further byte is parsed."""
        self.framing = STOPPED

    @property
    def done(self) -> bool:
        return self.framing == DONE

    def feed(self, data: bytes) -> int:
        """Parse what of ``data`` is this answer's; return how much that was: less than all
        when the answer ended before (the rest is not its own) or the sink paused reading."""
        size = len(data)
        view = memoryview(data)
        pos = 0
        last_other = -1  # after data's last byte that is neither CR nor LF, once needed
        while pos < size and not self._sink.paused:
            framing = self.framing
            if framing == HEAD:
                stop = self._head_stop(data, pos)
            elif framing == LENGTH:
                stop = min(size, pos + max(self._remaining, 1))
            elif framing == CHUNKED:
                if last_other < 0:
                    last_other = _last_other(data)
                stop = self._chunked_stop(data, pos, last_other)
            elif framing == CLOSE:
                stop = size
            else:
                break
            self._execute(view[pos:stop], framing == CHUNKED)
            pos = stop
        return pos

    # -- steps --------------------------------------------------------------------------------

    def _head_stop(self, data: bytes, pos: int) -> int:
        if self._at_start:
            if data[pos] in _CR_LF:  # llhttp skips empty lines before a status line
                raise BadResponseError("empty line before the status line")
            self._at_start = False
        tail = self._head_tail
        found = (tail + data[pos:pos + 3]).find(_HEAD_END) if tail else -1
        if found >= 0:
            stop = pos + found + 4 - len(tail)
        else:
            found = data.find(_HEAD_END, pos)
            stop = len(data) if found < 0 else found + 4
            self._head_tail = (tail + data[max(pos, stop - 3):stop])[-3:] if found < 0 else b""
        self._head_size += stop - pos
        if self._head_size > MAX_HEAD:
            raise BadResponseError("response head too large")
        return stop

    def _chunked_stop(self, data: bytes, pos: int, last_other: int) -> int:
        run = self._run
        if last_other > pos and (run >= 4 or data[pos] not in _CR_LF):
            self._run = 0
            return last_other
        if run >= 4:  # inside chunk data: the rest of the run cannot end the body
            return len(data)
        # The body can end only at the 4th CR/LF byte after its last other byte (CRLF ends
        # the "0" line or a trailer, CRLF the trailers): feed up to there, and no further.
        stop = pos
        while stop < pos + 4 - run and stop < len(data) and data[stop] in _CR_LF:
            stop += 1
        self._run = run + stop - pos
        return stop

    def _execute(self, piece: memoryview, chunked: bool) -> None:
        events = self._events
        try:
            self._parser.feed_data(piece)
        except HttpParserCallbackError as error:
            cause = error.__context__
            if isinstance(cause, _StopError):
                return
            if cause is not None:  # one of our refusals, or the body reader's own error
                raise cause from None
            raise BadResponseError(str(error)) from None
        except (HttpParserError, HttpParserUpgrade) as error:
            if self.framing == DONE:  # data after a Connection: close answer, and the like
                self.overrun = True
                return
            raise BadResponseError(f"{error} (llhttp)") from None
        if chunked:  # a chunk line or a trailer has no callback until it ends
            self._quiet = 0 if self._events != events else self._quiet + len(piece)
            if self._quiet > MAX_HEAD:
                raise BadResponseError("chunk line or trailers too large")

    def _next_head(self) -> None:
        self.framing = HEAD
        self._head_size = 0
        self._head_tail = b""
        self._at_start = True
        self._phrase = b""
        self._fields = []

    # -- llhttp's callbacks ---------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.framing == DONE:  # the start of another answer: bytes nobody asked for
            self.overrun = True
            raise _StopError

    def on_status(self, data: bytes) -> None:
        self._phrase += data

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.framing == HEAD:  # trailers are dropped
            self._fields.append((name, value.rstrip(b" \t")))
        else:
            self._events += 1

    def on_headers_complete(self) -> None:
        parser = self._parser
        version, code = parser.get_http_version(), parser.get_status_code()
        status_version = _VERSIONS.get(version)
        if status_version is None:  # llhttp takes 0.9 and 2.0 too
            raise BadResponseError(f"HTTP version {version} in a status line")
        if code < 100 or code == 101:  # 101: another protocol follows, and nobody asked for it
            raise BadResponseError(f"status {code} in a status line")
        if not is_reason_phrase(self._phrase.decode("latin-1")):
            raise BadResponseError(f"bad reason phrase {self._phrase[:80]!r}")
        if code < 200:
            return  # 100 Continue and friends: the real answer follows (on_message_complete)
        fields: list[tuple[bytes, bytes]] = []
        control: dict[bytes, list[bytes]] = {}
        for name, value in self._fields:
            lowered = name.lower()
            if lowered in _CONNECTION_CONTROL:
                control.setdefault(lowered, []).append(value)
            else:
                fields.append((name, value))
        headers = checked_headers(fields)  # llhttp checked names and values
        self.reusable = parser.should_keep_alive()
        if b"connection" in control:  # llhttp keeps HTTP/1.0 "keep-alive, close": close wins
            tokens = b",".join(control[b"connection"]).lower().split(b",")
            self.reusable = self.reusable and b"close" not in {t.strip() for t in tokens}
        length: int | object = UNKNOWN_LENGTH
        if code in _NO_BODY_CODES or self._head_only:
            # No body by definition, yet buggy origins write one after it, where the next
            # exchange would read it as its answer: such a connection is not reused. llhttp
            # ends 204 and 304 answers itself, not answers to HEAD (it is not told the method).
            length = 0
            self.reusable = False
            self.framing = DONE
        elif b"transfer-encoding" in control:
            _check_chunked(version, control[b"transfer-encoding"])
            if b"content-length" in control:
                self.reusable = False  # TE overrides; a smuggling sign (RFC 9112 6.3)
            self.framing = CHUNKED
            self._run = self._quiet = 0
        elif b"content-length" in control:  # one value of digits: llhttp checked it
            length = self._remaining = int(control[b"content-length"][0])
            self.framing = LENGTH
        else:
            self.framing = CLOSE
            self.reusable = False
        self._sink.answer_head(status_version, code, self._phrase, headers, length)

    def on_body(self, data: bytes) -> None:
        if self.framing == STOPPED:
            raise _StopError
        self._remaining -= len(data)
        self._events += 1
        self._sink.answer_body(data)

    def on_chunk_header(self) -> None:
        self._events += 1

    def on_chunk_complete(self) -> None:
        self._events += 1

    def on_message_complete(self) -> None:
        if self.framing == HEAD:  # an interim answer ended: the next one is due
            self._next_head()
        elif self.framing != STOPPED:
            self.framing = DONE


def _last_other(data: bytes) -> int:
    """The index after ``data``'s last byte that is neither CR nor LF (0 if none)."""
    end = len(data)
    for _ in range(8):
        if end == 0 or data[end - 1] not in _CR_LF:
            return end
        end -= 1
    return len(data.rstrip(_CR_LF))


def _check_chunked(version: str, values: list[bytes]) -> None:
    """Transfer-Encoding must be exactly ``chunked`` (the one coding we can take off), and
    not in an HTTP/1.0 answer, whose framing is then faulty (RFC 9112 6.1)."""
    if version == "1.0":
        raise BadResponseError("Transfer-Encoding in an HTTP/1.0 answer")
    codings = [c.strip().lower() for c in b",".join(values).split(b",") if c.strip()]
    if codings != [b"chunked"]:
        raise BadResponseError(f"unsupported transfer-encoding {b','.join(values)[:80]!r}")
