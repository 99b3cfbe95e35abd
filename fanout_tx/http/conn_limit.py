"""``[runner] client_maxconn``: at most that many client connections at once, over every
client port (HTTP, TLS, WebSocket alike).

At the limit the listening sockets stop accepting, as Pushpin's connection manager does: new
clients wait in the kernel's accept queue (and are served as soon as a connection ends)
instead of being accepted and dropped. Held connections are the point of a push server, so
this is what bounds its memory and file descriptors.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint
from twisted.logger import Logger
from zope.interface import implementer


class ConnectionLimit:
    """Counts open client connections; at ``maximum`` (0: never) pauses accepting on its
    ports, and resumes below it. The count is also what /metrics reports."""

    _log = Logger()

    def __init__(self, maximum: int) -> None:
        self.maximum = maximum
        self.open = 0
        self.paused = False
        self._ports: list[Any] = []

    def add_port(self, port: IListeningPort) -> None:
        self._ports.append(port)
        if self.paused:
            port.stopReading()

    def take(self) -> Slot:
        """One more connection; its Slot is released when it ends."""
        self.open += 1
        if self.maximum and self.open >= self.maximum and not self.paused:
            self.paused = True
            self._log.warn("{open} client connections ([runner] client_maxconn): not "
                           "accepting more until one ends", open=self.open)
            for port in self._ports:
                port.stopReading()
        return Slot(self)

    def _release(self) -> None:
        self.open -= 1
        if self.paused and self.open < self.maximum:
            self.paused = False
            for port in self._ports:
                if port.connected:  # not stopped meanwhile
                    port.startReading()


class Slot:
    """One connection's place under the limit. It goes with the socket, not the protocol:
    a WebSocket upgrade hands it from the HTTP channel to the WebSocket protocol, and
    whichever sees the connection end releases it (once)."""

    def __init__(self, limit: ConnectionLimit) -> None:
        self._limit: ConnectionLimit | None = limit

    def release(self) -> None:
        limit, self._limit = self._limit, None
        if limit is not None:
            limit._release()


@implementer(IStreamServerEndpoint)
class LimitedEndpoint:
    """A server endpoint whose listening port obeys a ConnectionLimit."""

    def __init__(self, endpoint: IStreamServerEndpoint, limit: ConnectionLimit) -> None:
        self._endpoint = endpoint
        self._limit = limit

    def listen(self, factory: Any) -> Deferred[IListeningPort]:
        def bound(port: IListeningPort) -> IListeningPort:
            self._limit.add_port(port)
            return port

        return self._endpoint.listen(factory).addCallback(bound)
