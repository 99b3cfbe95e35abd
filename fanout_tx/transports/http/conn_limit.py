"""``[runner] client_maxconn``: at most that many client connections at once, over every
client port (HTTP, TLS, WebSocket alike).

At the limit the listening sockets stop accepting, as Pushpin's connection manager does: new
clients wait in the kernel's accept queue (and are served as soon as a connection ends)
instead of being accepted and dropped. Held connections are the point of a push server, so
this is what bounds its memory and file descriptors.
"""

from __future__ import annotations

from collections import Counter
from typing import Protocol, cast

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IListeningPort, IProtocolFactory, IStreamServerEndpoint
from twisted.logger import Logger
from zope.interface import implementer


class _Port(Protocol):
    """A listening port as a file descriptor (``tcp.Port``): accepting pauses with its
    reading."""

    connected: bool

    def stopReading(self) -> None: ...  # noqa: N802 - Twisted's name

    def startReading(self) -> None: ...  # noqa: N802 - Twisted's name


class ConnectionLimit:
    """Counts open client connections; at ``maximum`` (0: never) pauses accepting on its
    ports, and resumes below it. ``per_address`` (``[runner] client_maxconn_per_ip``, 0:
    none) caps the connections from one peer address: past it ``take`` refuses. The counts,
    and the connections dropped by reason (``dropped``), are also what /metrics reports."""

    _log = Logger()

    def __init__(self, maximum: int, per_address: int = 0) -> None:
        self.maximum = maximum
        self.per_address = per_address
        self.open = 0
        self.paused = False
        self.dropped: Counter[str] = Counter()
        self._by_address: dict[str, int] = {}
        self._ports: list[_Port] = []

    def add_port(self, port: IListeningPort) -> None:
        reading = cast(_Port, port)  # what every Twisted stream server endpoint returns
        self._ports.append(reading)
        if self.paused:
            reading.stopReading()

    def take(self, address: str = "") -> Slot | None:
        """One more connection from ``address`` (a peer IP; "" is not capped); its Slot is
        released when it ends. None when that address is at ``per_address``."""
        if self.per_address and address:
            count = self._by_address.get(address, 0)
            if count >= self.per_address:
                self.dropped["maxconn_per_ip"] += 1
                return None
            self._by_address[address] = count + 1
        self.open += 1
        if self.maximum and self.open >= self.maximum and not self.paused:
            self.paused = True
            self._log.warn("{open} client connections ([runner] client_maxconn): not "
                           "accepting more until one ends", open=self.open)
            for port in self._ports:
                port.stopReading()
        return Slot(self, address if self.per_address else "")

    def _release(self, address: str) -> None:
        if address:
            count = self._by_address.pop(address) - 1
            if count:
                self._by_address[address] = count
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

    def __init__(self, limit: ConnectionLimit, address: str = "") -> None:
        self._limit: ConnectionLimit | None = limit
        self._address = address

    def release(self) -> None:
        limit, self._limit = self._limit, None
        if limit is not None:
            limit._release(self._address)


@implementer(IStreamServerEndpoint)
class LimitedEndpoint:
    """A server endpoint whose listening port obeys a ConnectionLimit."""

    def __init__(self, endpoint: IStreamServerEndpoint, limit: ConnectionLimit) -> None:
        self._endpoint = endpoint
        self._limit = limit

    def listen(self, factory: IProtocolFactory) -> Deferred[IListeningPort]:
        def bound(port: IListeningPort) -> IListeningPort:
            self._limit.add_port(port)
            return port

        return self._endpoint.listen(factory).addCallback(bound)
