"""Pushpin's ZeroMQ command socket (``[handler] command_spec``): a REP socket that answers
tnetstring requests ``{"id"?, "method", "args"?}`` with ``{"id"?, "success", "value"}`` or
``{"id"?, "success": false, "condition"}``, as Pushpin 1.36's handler does.

Methods: ``get-zmq-uris`` (how ``pubcontrol``'s ``control_zmq_uri`` finds the PUSH and PUB
inputs), ``recover`` (as ``POST /recover``); anything else gets ``method-not-found``. Every
request gets one reply, malformed ones ``bad-request``: a REP socket that skipped a reply
would never read the next request.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import zmq
from typing_extensions import override

from fanout_tx._reactor import IReaderReactor
from fanout_tx.core.codecs import tnetstring
from fanout_tx.inputs.zmq_bind import bind
from fanout_tx.inputs.zmq_ingest import ZmqReader


class ZmqCommand(ZmqReader):
    """The command REP socket; ``uris()`` gives the inputs' endpoints once they are bound."""

    input_name = "zmq-command"
    socket_type = zmq.REP

    def __init__(self, reactor: IReaderReactor, context: zmq.Context, spec: str,
                 uris: Callable[[], dict[str, str]], recover: Callable[[], int]) -> None:
        super().__init__(reactor, context)
        self._specs = (spec,)
        self._uris = uris
        self._recover = recover

    @override
    def _open(self, sock: zmq.Socket) -> list[str]:
        bind(sock, self._specs[0])
        return [sock.getsockopt_string(zmq.LAST_ENDPOINT)]

    @override
    def _handle(self, parts: list[bytes]) -> None:
        """Always one reply: a REP socket that skipped one could never read again."""
        try:
            reply = self.answer(parts)
        except Exception:
            self.rejected += 1
            self._log.failure("zmq-command: a request could not be handled")
            reply = {b"success": False, b"condition": b"internal-server-error"}
        if self._socket is not None:
            self._socket.send(tnetstring.dumps(reply))

    def answer(self, parts: list[bytes]) -> dict[bytes, Any]:
        """The reply to one request message."""
        try:
            request = tnetstring.loads(parts[0]) if len(parts) == 1 else None
        except (tnetstring.TnetstringError, RecursionError):
            request = None
        if not isinstance(request, dict) or not isinstance(request.get(b"method"), bytes):
            self.rejected += 1
            self._log.warn("zmq-command: malformed request")
            return {b"success": False, b"condition": b"bad-request"}
        reply: dict[bytes, Any] = {}
        if b"id" in request:
            reply[b"id"] = request[b"id"]
        method = request[b"method"]
        if method == b"get-zmq-uris":
            value: Any = {name.encode(): uri.encode() for name, uri in self._uris().items()}
        elif method == b"recover":
            self._log.info("zmq-command: recover ({count} sessions)", count=self._recover())
            value = {}
        else:
            return {**reply, b"success": False, b"condition": b"method-not-found"}
        return {**reply, b"success": True, b"value": value}
