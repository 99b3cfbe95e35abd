"""ZeroMQ publish inputs (SPEC A5): a PULL socket and SUB sockets inside the reactor.

Each socket's ``zmq.FD`` is registered as an ``IReadDescriptor``. That FD is edge-triggered:
it only says "the socket's events may have changed", and any operation on the socket
(``recv``, ``setsockopt``, reading ``zmq.EVENTS``) may consume the notification. So every
readiness drains until ``zmq.EVENTS`` has no ``POLLIN`` left, and a drain is scheduled after
every ``setsockopt`` and at start-up, or messages could sit unread until the next one.

Bad messages (wrong number of parts, unparsable payloads, invalid items) are logged with the
reason, counted and dropped; the socket keeps working. Any other exception while handling one
message is that message's error too: an exception escaping ``doRead`` would make the reactor
drop the reader for good, and nothing after it would ever be read. If the reader is lost all
the same, ``problem()`` says so and ``/health`` reports the input down.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Protocol, cast

import zmq
from twisted.application.service import Service
from twisted.internet.defer import maybeDeferred
from twisted.internet.interfaces import IDelayedCall, IReadDescriptor
from twisted.logger import Logger
from twisted.python.failure import Failure
from typing_extensions import override
from zope.interface import implementer

from fanout_tx._reactor import IReaderReactor
from fanout_tx.core.bus import BusUnavailableError
from fanout_tx.core.interfaces import IBus, IChannelListener
from fanout_tx.core.items import Item, PublishError, decode_message, parse_item
from fanout_tx.inputs.zmq_bind import bind
from fanout_tx.ops.startup import StartupError

# Messages handled per reactor turn before yielding, so a flood cannot starve other I/O.
DRAIN_BATCH = 500

# Channels the SUB input keeps subscribed after their last subscriber left, at most; past
# this the longest-lingering one is unsubscribed at once.
MAX_LINGERING = 10_000


@implementer(IReadDescriptor)
class ZmqReader(Service):
    """One ZeroMQ socket read inside the reactor; subclasses say how to open it and what
    to do with each message."""

    _log = Logger()
    input_name = ""
    socket_type = 0
    _specs: tuple[str, ...] = ()  # what the socket binds (or connects) to

    def __init__(self, reactor: IReaderReactor, context: zmq.Context) -> None:
        self._reactor = reactor
        self._context = context
        self._socket: zmq.Socket | None = None
        self._fd = -1
        self._again: IDelayedCall | None = None
        self._lost: str | None = None  # why the reactor dropped the reader, if it did
        self.endpoints: list[str] = []
        self.rejected = 0  # messages dropped, for fanout_publish_errors_total

    # -- Service --------------------------------------------------------------------------

    @override
    def startService(self) -> None:
        super().startService()
        sock = self._context.socket(self.socket_type)
        sock.setsockopt(zmq.LINGER, 0)
        try:
            self.endpoints = self._open(sock)
        except zmq.ZMQError as e:
            sock.close(linger=0)
            # ZMQError.errno is always set (zmq_errno() when none is given), typed Optional
            reason = f"cannot open {', '.join(self._specs)}: {zmq.strerror(e.errno)}"  # type: ignore[arg-type]
            raise StartupError(f"{self.input_name} {reason}") from None
        self._socket = sock
        self._fd = sock.getsockopt(zmq.FD)
        self._lost = None
        self._reactor.addReader(self)
        self._log.info("{input} listening on {endpoints}", input=self.input_name,
                       endpoints=", ".join(self.endpoints))
        self.schedule_drain()

    @override
    def stopService(self) -> None:
        if self._again is not None and self._again.active():
            self._again.cancel()
        self._again = None
        if self._socket is not None:
            self._reactor.removeReader(self)
            self._socket.close(linger=0)
            self._socket = None
            self._fd = -1
        super().stopService()

    def _open(self, sock: zmq.Socket) -> list[str]:
        """Bind or connect ``sock``; returns the endpoints in use (``LAST_ENDPOINT``)."""
        raise NotImplementedError

    def _handle(self, parts: list[bytes]) -> None:
        """One message, in the order they arrived."""
        raise NotImplementedError

    # -- IReadDescriptor ------------------------------------------------------------------

    def fileno(self) -> int:
        return self._fd

    def doRead(self) -> None:  # noqa: N802 - IReadDescriptor
        self._drain()

    def connectionLost(self, reason: Failure) -> None:  # noqa: N802 - IReadDescriptor
        """The reactor dropped the descriptor: at shutdown (stopService closes the socket),
        or after ``doRead`` raised, when nothing will be read any more."""
        if self.running and self._socket is not None:
            self._lost = reason.getErrorMessage()
            self._log.error("{input}: reader lost, nothing more will be read: {reason}",
                            input=self.input_name, reason=self._lost)

    def logPrefix(self) -> str:  # noqa: N802 - ILoggingContext
        return self.input_name

    # -- health ---------------------------------------------------------------------------

    def problem(self) -> str | None:
        """Why this input reads nothing right now, or None while it reads."""
        if not self.running:
            return "not running"
        if self._socket is None or self._socket.closed:
            return "socket closed"
        if self._lost is not None:
            return f"reader lost: {self._lost}"
        if self not in self._reactor.getReaders():
            return "reader removed from the reactor"
        return None

    # -- reading --------------------------------------------------------------------------

    def schedule_drain(self) -> None:
        """Read pending messages on the next reactor turn (the FD may not signal them)."""
        if self._again is None or not self._again.active():
            self._again = self._reactor.callLater(0, self._drain)

    def _drain(self) -> None:
        for _ in range(DRAIN_BATCH):
            sock = self._socket
            if sock is None:
                return
            try:
                # pyzmq types every option's value int | bytes; ZMQ_EVENTS is an int
                if not cast(int, sock.getsockopt(zmq.EVENTS)) & zmq.POLLIN:
                    return
                parts = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                self._handle(parts)
            except Exception:
                self.rejected += 1
                self._log.failure("{input}: dropped a message that could not be handled",
                                  input=self.input_name)
        self.schedule_drain()


class _ZmqInput(ZmqReader):
    """A ZeroMQ socket feeding the bus: each message is parsed into an item."""

    def __init__(self, reactor: IReaderReactor, context: zmq.Context, bus: IBus) -> None:
        super().__init__(reactor, context)
        self._bus = bus

    def _parse(self, parts: list[bytes]) -> Item:
        """One ZeroMQ message -> Item, or PublishError naming the problem."""
        raise NotImplementedError

    @override
    def _handle(self, parts: list[bytes]) -> None:
        try:
            item = self._parse(parts)
        except PublishError as e:
            self.rejected += 1
            self._log.warn("{input}: dropped a message: {reason}", input=self.input_name,
                           reason=str(e))
            return
        d = maybeDeferred(self._bus.publish, [item], self.input_name)
        d.addErrback(self._publish_failed, item)

    def _publish_failed(self, failure: Failure, item: Item) -> None:
        if failure.check(BusUnavailableError):
            # Expected while Redis is away; ZeroMQ has no one to answer, so one line.
            self._log.warn("{input}: item on {channel} reached local subscribers only: "
                           "{reason}", input=self.input_name, channel=item.channel,
                           reason=str(failure.value))
            return
        self._log.failure("{input}: publishing on {channel} failed", failure,
                          input=self.input_name, channel=item.channel)


class ZmqPullInput(_ZmqInput):
    """``[handler] push_in_spec``: a bound PULL socket, one item per single-part message."""

    input_name = "zmq-pull"
    socket_type = zmq.PULL

    def __init__(self, reactor: IReaderReactor, context: zmq.Context, bus: IBus, spec: str) -> None:
        super().__init__(reactor, context, bus)
        self._specs = (spec,)

    @override
    def _open(self, sock: zmq.Socket) -> list[str]:
        bind(sock, self._specs[0])
        return [sock.getsockopt_string(zmq.LAST_ENDPOINT)]

    @override
    def _parse(self, parts: list[bytes]) -> Item:
        if len(parts) != 1:
            raise PublishError(f"expected a single-part message, got {len(parts)} parts")
        return parse_item(decode_message(parts[0]))


class ChannelSource(Protocol):
    """Whose channels the SUB input subscribes to: a Router, or every router on the machine
    (cluster/machine_bus.ChannelUnion)."""

    def add_channel_listener(self, listener: IChannelListener) -> None: ...

    def channels(self) -> frozenset[str]: ...


@implementer(IChannelListener)
class ZmqSubInput(_ZmqInput):
    """``[handler] push_in_sub_specs``: one SUB socket, bound to (or connected to) every spec.

    Messages are ``[channel, payload]``. The socket subscribes to the channels that have
    local subscribers, so an XPUB publisher sees ``\\x01channel`` / ``\\x00channel`` and can
    skip channels nobody here wants. As Pushpin's ``subscription_linger``, a channel that
    loses its last subscriber stays subscribed ``linger`` seconds: a client polling again
    does not cost an unsubscribe/subscribe pair, and subscription churn does not flood the
    publisher (it deadlocked ``pubcontrol``'s ``close()``).
    """

    input_name = "zmq-sub"
    socket_type = zmq.SUB

    def __init__(self, reactor: IReaderReactor, context: zmq.Context, bus: IBus,
                 router: ChannelSource,
                 specs: Sequence[str], connect: bool = False, linger: float = 60.0,
                 max_lingering: int = MAX_LINGERING) -> None:
        super().__init__(reactor, context, bus)
        self._router = router
        self._specs = tuple(specs)
        self._connect = connect
        self._linger = linger
        self._max_lingering = max_lingering
        # channel -> its unsubscribe timer, oldest first
        self._lingering: OrderedDict[str, IDelayedCall] = OrderedDict()
        router.add_channel_listener(self)

    @override
    def _open(self, sock: zmq.Socket) -> list[str]:
        endpoints = []
        for spec in self._specs:
            if self._connect:
                sock.connect(spec)
            else:
                bind(sock, spec)
            endpoints.append(sock.getsockopt_string(zmq.LAST_ENDPOINT))
        for channel in self._router.channels():
            self._subscribe(sock, zmq.SUBSCRIBE, channel)
        return endpoints

    @override
    def _parse(self, parts: list[bytes]) -> Item:
        if len(parts) != 2:
            raise PublishError(f"expected [channel, payload], got {len(parts)} parts")
        try:
            channel = parts[0].decode("utf-8")
        except UnicodeDecodeError:
            raise PublishError("channel is not UTF-8") from None
        return parse_item(decode_message(parts[1]), channel=channel)

    def _subscribe(self, sock: zmq.Socket, option: int, channel: str) -> None:
        """(Un)subscribe ``sock`` to ``channel``. A name that is not Unicode text (a lone
        surrogate; the JSON inputs refuse them, this guards the rest) cannot be a ZeroMQ
        topic: it is skipped with a warning, never raised into the subscribing request."""
        try:
            topic = channel.encode("utf-8")
        except UnicodeEncodeError:
            self._log.warn("{input}: channel {channel!r} is not UTF-8 text; not subscribed",
                           input=self.input_name, channel=channel)
            return
        sock.setsockopt(option, topic)

    @override
    def stopService(self) -> None:
        for timer in self._lingering.values():
            timer.cancel()
        self._lingering.clear()
        super().stopService()

    def _set_subscription(self, option: int, channel: str) -> None:
        if self._socket is None:
            return  # startService subscribes to the router's channels then
        self._subscribe(self._socket, option, channel)
        self.schedule_drain()

    def channel_added(self, channel: str) -> None:
        timer = self._lingering.pop(channel, None)
        if timer is not None:
            timer.cancel()  # still subscribed
            return
        self._set_subscription(zmq.SUBSCRIBE, channel)

    def channel_removed(self, channel: str) -> None:
        if self._socket is None or self._linger <= 0:
            self._set_subscription(zmq.UNSUBSCRIBE, channel)
            return
        self._lingering[channel] = self._reactor.callLater(
            self._linger, self._linger_over, channel)
        while len(self._lingering) > self._max_lingering:
            oldest, timer = self._lingering.popitem(last=False)
            timer.cancel()
            self._set_subscription(zmq.UNSUBSCRIBE, oldest)

    def _linger_over(self, channel: str) -> None:
        del self._lingering[channel]
        self._set_subscription(zmq.UNSUBSCRIBE, channel)
