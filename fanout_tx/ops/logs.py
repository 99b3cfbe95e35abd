"""``[runner] log_level``: 0 error, 1 warn, 2 info, 3 debug, applied to twistd's own log.

twistd picks its observers (stdout with ``-n``, ``--logfile``, ``--syslog``) after the
plugin's ``makeService`` and hands them to ``globalLogBeginner.beginLoggingTo``; wrapping
that call once puts a level filter in front of whatever twistd chose, so its options keep
working.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogBeginner,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogBeginner,
)

from fanout_tx._twisted import HTTP_CLIENT_FACTORY_NAMESPACE

LEVELS = (LogLevel.error, LogLevel.warn, LogLevel.info, LogLevel.debug)


def level_of(log_level: int) -> LogLevel:
    """The config's number as the lowest LogLevel that is shown."""
    return LEVELS[max(0, min(log_level, len(LEVELS) - 1))]


# Twisted logs "Starting factory"/"Stopping factory" at info for every connection an HTTP
# client pool opens to an origin, backend or webhook endpoint: per-request noise, shown at
# debug only.
CONNECTION_NOISE = (HTTP_CLIENT_FACTORY_NAMESPACE,)


def filtered(observer: ILogObserver, log_level: int) -> FilteringLogObserver:
    level = level_of(log_level)
    predicate = LogLevelFilterPredicate(defaultLogLevel=level)
    if level is not LogLevel.debug:
        quiet = LEVELS[min(LEVELS.index(level), LEVELS.index(LogLevel.warn))]
        for namespace in CONNECTION_NOISE:
            predicate.setLogLevelForNamespace(namespace, quiet)
    return FilteringLogObserver(observer, [predicate])


def filter_twistd_logging(log_level: int, beginner: LogBeginner = globalLogBeginner) -> None:
    """Show only events at ``log_level`` or above in the observers twistd is about to set."""
    begin = type(beginner).beginLoggingTo

    def begin_filtered(observers: Iterable[ILogObserver], *args: Any, **kwargs: Any) -> None:
        begin(beginner, [filtered(o, log_level) for o in observers], *args, **kwargs)

    beginner.beginLoggingTo = begin_filtered  # type: ignore[method-assign]


def url_for_log(url: str | bytes, path: bool = True) -> str:
    """A URL (or request target) as the logs show it: without user info, query or fragment,
    which carry credentials (``?access_token=...``). ``path=False`` keeps only
    ``scheme://host:port``: a webhook's path is often its secret (``/services/T0/B0/XXX``)."""
    text = url.decode("latin-1") if isinstance(url, bytes) else url
    text = text.partition("?")[0].partition("#")[0]
    scheme, sep, rest = text.partition("://")
    if not sep:
        return text if path else ""
    authority, slash, rest_path = rest.partition("/")
    host = authority.rpartition("@")[2]
    return f"{scheme}://{host}" + (slash + rest_path if path else "")
