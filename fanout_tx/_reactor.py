"""The faces of the reactor a module is handed, as types (DESIGN.md §1 (c), (d)): each names
the reactor interfaces its holder calls. Only ``tap.py`` holds the global reactor; it hands
it (typed here once) to everything it builds; tests hand in ``Clock`` or ``MemoryReactor``.

Zope interfaces cannot be intersected in a type, so each combination in use is named here
(nothing declares these; they are read by mypy only)."""

from __future__ import annotations

from twisted.internet.interfaces import (
    IReactorCore,
    IReactorFDSet,
    IReactorFromThreads,
    IReactorPluggableNameResolver,
    IReactorProcess,
    IReactorSocket,
    IReactorSSL,
    IReactorTCP,
    IReactorThreads,
    IReactorTime,
    IReactorUNIX,
)


class IConnectingReactor(IReactorTime, IReactorTCP, IReactorUNIX,
                         IReactorPluggableNameResolver):
    """Connects by name, address or unix path, with timeouts: origins, Redis, XMPP."""


class IResolvingReactor(IConnectingReactor, IReactorThreads, IReactorFromThreads):
    """Also resolves names itself, in the reactor's thread pool (the webhooks' vetting)."""


class IListeningReactor(IConnectingReactor, IReactorSSL):
    """Also listens (``serverFromString`` descriptions: tcp, unix, ssl)."""


class IReaderReactor(IReactorTime, IReactorFDSet):
    """Watches descriptors it did not open (the ZeroMQ sockets), with timers."""


class ISignalledReactor(IReactorCore, IReactorFromThreads):
    """Stopped, or called into, from a signal handler."""


class IWorkersReactor(IReactorProcess, IReactorSocket, IReactorTime):
    """Starts worker processes and adopts the sockets they inherit (ops/workers.py)."""


class IServerReactor(IListeningReactor, IResolvingReactor, IReaderReactor, ISignalledReactor,
                     IWorkersReactor):
    """Everything the service tree uses: what tap.py types the global reactor as."""
