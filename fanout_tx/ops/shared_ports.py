"""The client ports of a machine with workers: bound once by the supervisor, served by every
worker.

Each worker gets a listening socket of its own on each address, all bound with
``SO_REUSEPORT``, so the kernel spreads new connections over the workers by a hash of the
connection's addresses. Measured on this 2-core box (2 workers, a loaded machine) against one
socket inherited by every worker, each accepting from it: under ``wrk -t2 -c64`` through the
proxy the per-worker sockets split the 64 connections 28/36 at worst in six runs, the shared
one 32/32, 38/26 and 45/19 (whichever worker is awake takes the next connection); under a
burst of 10,000 connects, 5,060/4,940 and 5,076/4,924 against 4,652/5,348 and 5,992/4,008.
Throughput was within the noise of each other.

The supervisor binds them (before twistd drops privileges, and so that a port in use stops
start-up with the reason, as with one process) and keeps them open: a worker that dies
leaves its socket's queued connections to the worker that replaces it, not to a reset.
"""

from __future__ import annotations

import socket
from typing import cast

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import (
    IListeningPort,
    IProtocolFactory,
    IReactorSocket,
    IStreamServerEndpoint,
)
from twisted.internet.protocol import ServerFactory
from twisted.protocols.tls import TLSMemoryBIOFactory
from typing_extensions import override
from zope.interface import implementer

from fanout_tx.config.settings import ListenAddress
from fanout_tx.transports.http.tls import ServerIdentities


def family_of(address: ListenAddress) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in address.host else socket.AF_INET


def bind_shared(address: ListenAddress, count: int, backlog: int) -> list[socket.socket]:
    """``count`` listening sockets on ``address`` with ``SO_REUSEPORT``; port 0 is resolved
    by the first, the others take the same port. Raises CannotListenError."""
    sockets: list[socket.socket] = []
    port = address.port
    try:
        for _ in range(count):
            sock = socket.socket(family_of(address), socket.SOCK_STREAM)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((address.host, port))
            sock.listen(backlog)
            sock.setblocking(False)
            port = sock.getsockname()[1]
    except OSError as e:
        for sock in sockets:
            sock.close()
        raise CannotListenError(address.host, address.port, e) from None
    return sockets


class ClientPorts(Service):
    """Every client address (``http_port`` then ``https_ports``), ``count`` sockets each,
    bound in ``privilegedStartService``; ``for_worker(i)`` is what worker ``i`` inherits."""

    def __init__(self, addresses: tuple[ListenAddress, ...], count: int, backlog: int) -> None:
        self.addresses = addresses
        self.count = count
        self.backlog = backlog
        self.sockets: list[list[socket.socket]] = []

    @override
    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        if not self.sockets:
            bound: list[list[socket.socket]] = []
            try:
                for address in self.addresses:
                    bound.append(bind_shared(address, self.count, self.backlog))
            except CannotListenError:
                for group in bound:
                    for sock in group:
                        sock.close()
                raise
            self.sockets = bound

    @override
    def startService(self) -> None:
        self.privilegedStartService()  # no-op when twistd called it already
        super().startService()

    @override
    def stopService(self) -> None:
        super().stopService()
        for group in self.sockets:
            for sock in group:
                sock.close()
        self.sockets = []

    def for_worker(self, index: int) -> list[int]:
        """The descriptors worker ``index`` serves, one per address, in address order."""
        return [group[index].fileno() for group in self.sockets]

    def bound(self) -> list[str]:
        """Each address as bound (port 0 resolved), for the start-up line and /health."""
        texts = []
        for group in self.sockets:
            host, port = group[0].getsockname()[:2]
            texts.append(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
        return texts


@implementer(IStreamServerEndpoint)
class AdoptedEndpoint:
    """A server endpoint on a listening socket this process inherited (a worker's); with
    ``tls``, connections speak TLS (an ``https_ports`` address)."""

    def __init__(self, reactor: IReactorSocket, fd: int, address: ListenAddress,
                 tls: ServerIdentities | None = None) -> None:
        self._reactor = reactor
        self._fd = fd
        self._family = family_of(address)
        self._tls = tls

    def listen(self, factory: IProtocolFactory) -> Deferred[IListeningPort]:
        if self._tls is not None:
            factory = TLSMemoryBIOFactory(self._tls, False, factory)
        # adoptStreamPort is typed for a ServerFactory; any protocol factory serves
        return succeed(self._reactor.adoptStreamPort(self._fd, self._family,
                                                     cast(ServerFactory, factory)))
