"""The supervisor's client sockets (ops/shared_ports.py), on loopback."""

from __future__ import annotations

import socket

from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import TestCase

from fanout_tx.config.settings import ListenAddress
from fanout_tx.ops.shared_ports import AdoptedEndpoint, ClientPorts, bind_shared
from tests.support.helpers import RawClient, with_deadline


class Greeter(Protocol):
    def connectionMade(self) -> None:  # noqa: N802
        self.transport.write(b"hello")
        self.transport.loseConnection()


class SharedPortsTests(TestCase):
    def test_port_zero_is_shared(self) -> None:
        """Port 0: the first socket picks the port, the others take the same one."""
        sockets = bind_shared(ListenAddress("127.0.0.1", 0), 3, 16)
        self.addCleanup(lambda: [s.close() for s in sockets])
        self.assertEqual(len({s.getsockname()[1] for s in sockets}), 1)

    def test_a_port_in_use_is_refused(self) -> None:
        """A port held without SO_REUSEPORT (another server) stops start-up."""
        taken = socket.socket()
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        self.addCleanup(taken.close)
        ports = ClientPorts((ListenAddress("127.0.0.1", 0),
                             ListenAddress("127.0.0.1", taken.getsockname()[1])), 2, 16)
        error = self.assertRaises(CannotListenError, ports.privilegedStartService)
        self.assertEqual(error.port, taken.getsockname()[1])
        self.assertEqual(ports.sockets, [])  # the first address's sockets were closed

    async def test_adopted_socket_serves(self) -> None:
        """A worker's inherited socket, adopted, accepts connections."""
        ports = ClientPorts((ListenAddress("127.0.0.1", 0),), 1, 16)
        ports.startService()
        self.addCleanup(ports.stopService)
        endpoint = AdoptedEndpoint(reactor, ports.for_worker(0)[0],
                                   ListenAddress("127.0.0.1", 0))
        port = await endpoint.listen(Factory.forProtocol(Greeter))
        self.addCleanup(port.stopListening)
        self.assertEqual(ports.bound(), [f"127.0.0.1:{port.getHost().port}"])
        client = RawClient()
        await TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port).connect(
            Factory.forProtocol(lambda: client))
        self.assertEqual(await with_deadline(client.closed, "no answer"), b"hello")
