"""Prometheus metrics (SPEC B4), read from each component's own state at scrape time.

Nothing here runs on the publish path per subscriber: the router already counts deliveries
per format in bulk, the webhook engine counts attempts, the XMPP link and the Redis bus keep
their state. The only per-publish work is ``MeteredBus`` adding the batch size to a counter.
A scrape walks the router's subscribers once to count connections by transport.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.twisted import MetricsResource
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from twisted.web.wsgi import WSGIResource
from typing_extensions import override
from zope.interface import implementer

from fanout_tx.core.interfaces import IBus
from fanout_tx.core.items import Item
from fanout_tx.core.router import Router

# Format name -> the transport it belongs to, as SPEC B4 names transports.
TRANSPORT_OF_FORMAT = {
    "http-response": "http-response",
    "http-stream": "http-stream",
    "ws-message": "ws",
    "xmpp-message": "xmpp",
    "xmpp-stanza": "xmpp",
    "http-request": "webhook",
}
TRANSPORTS = ("http-response", "http-stream", "ws", "xmpp", "webhook")
INPUTS = ("http", "zmq-pull", "zmq-sub", "zmq-command", "redis")


@dataclass
class InputCounters:
    """Items taken and publishes failed, by input name; filled by ``MeteredBus``."""

    received: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)


@implementer(IBus)
class MeteredBus:
    """The bus the inputs publish through: counts items per input, and failed publishes
    (e.g. Redis unreachable), then hands everything to the real bus."""

    def __init__(self, bus: IBus, counters: InputCounters) -> None:
        self.bus = bus
        self.counters = counters

    def publish(self, items: Sequence[Item], input_name: str) -> Deferred[None]:
        self.counters.received[input_name] += len(items)
        try:
            done: Deferred[None] = self.bus.publish(items, input_name)
        except Exception:
            self.counters.errors[input_name] += 1
            raise
        if done.called and not isinstance(done.result, Failure):
            return done  # the common case (LocalBus): no callback to run, per publish
        return done.addErrback(self._failed, input_name)

    def _failed(self, failure: Failure, input_name: str) -> Failure:
        self.counters.errors[input_name] += 1
        return failure


class Rejecting(Protocol):
    """An input that counts the messages it refused (bad JSON, invalid items)."""

    rejected: int


class LinkStateLike(Protocol):
    up: bool
    oversized: int

    @property
    def errors(self) -> Mapping[str, int]: ...

    @property
    def unsent(self) -> Mapping[str, int]: ...


@dataclass
class MetricSources:
    """Where each metric is read from; None for a transport that is not configured."""

    router: Router
    inputs: InputCounters
    rejecting: Mapping[str, Rejecting] = field(default_factory=dict)
    ws_sessions: Callable[[], int] | None = None
    webhooks: Any = None  # WebhookService: .engine.attempts, .engine.dead_letters
    xmpp_link: LinkStateLike | None = None
    redis: Any = None  # RedisBus: .up, .received_items
    client_connections: Any = None  # http/conn_limit.ConnectionLimit: .open, .paused
    write_budget: Any = None  # write_budget.WriteBudget: .total, .dropped


# Why a client connection is dropped (ops/deadlines.py, transports/http/conn_limit.py; and
# ``max_buffered``, transports/write_budget.py): every reason is reported, 0 until it happens.
DROP_REASONS = ("header_timeout", "body_rate", "maxconn_per_ip")


def connection_counts(router: Router) -> Counter[str]:
    """Router subscribers by transport (each counted once, by its first format)."""
    counts: Counter[str] = Counter()
    for subscriber in router.subscribers():
        formats = subscriber.formats
        if formats:
            counts[TRANSPORT_OF_FORMAT.get(formats[0], formats[0])] += 1
    return counts


class FanoutCollector(Collector):
    """Builds every metric family from ``sources`` when Prometheus scrapes."""

    def __init__(self, sources: MetricSources) -> None:
        self.sources = sources

    @override
    def collect(self) -> Iterator[Metric]:
        s = self.sources
        connections = connection_counts(s.router)
        if s.ws_sessions is not None:
            connections["ws"] = s.ws_sessions()  # also those not subscribed to anything yet
        gauge = GaugeMetricFamily("fanout_connections", "Open client connections and "
                                  "subscriptions, by transport.", labels=["transport"])
        for transport in TRANSPORTS:
            gauge.add_metric([transport], connections[transport])
        yield gauge
        yield GaugeMetricFamily("fanout_subscriptions", "Channel subscriptions, all transports.",
                                value=s.router.subscription_count())
        yield from self._inputs()
        deliveries = CounterMetricFamily("fanout_deliveries", "Items delivered to subscribers, "
                                         "by transport.", labels=["transport"])
        by_transport: Counter[str] = Counter()
        for format_name, count in s.router.deliveries.items():
            by_transport[TRANSPORT_OF_FORMAT.get(format_name, format_name)] += count
        for transport in TRANSPORTS:
            deliveries.add_metric([transport], by_transport[transport])
        yield deliveries
        yield from self._webhooks()
        yield from self._xmpp()
        yield from self._redis()
        yield from self._client_connections()

    def _client_connections(self) -> Iterator[Metric]:
        limit = self.sources.client_connections
        if limit is None:
            return
        yield GaugeMetricFamily("fanout_client_connections", "Open client connections on the "
                                "client ports (HTTP, TLS, WebSocket).", value=limit.open)
        yield GaugeMetricFamily("fanout_client_accept_paused", "1 while client_maxconn is "
                                "reached and the client ports do not accept.",
                                value=int(limit.paused))
        dropped = CounterMetricFamily("fanout_client_dropped", "Client connections closed or "
                                      "refused by a limit, by reason.", labels=["reason"])
        for reason in DROP_REASONS:
            dropped.add_metric([reason], getattr(limit, "dropped", {}).get(reason, 0))
        budget = self.sources.write_budget
        if budget is not None:
            dropped.add_metric(["max_buffered"], budget.dropped)
            yield GaugeMetricFamily("fanout_slow_client_buffered_bytes", "Bytes queued for "
                                    "push clients that do not read, all connections.",
                                    value=budget.total)
        yield dropped

    def _inputs(self) -> Iterator[Metric]:
        s = self.sources
        received = CounterMetricFamily("fanout_items_received", "Items taken for publishing, "
                                       "by input.", labels=["input"])
        errors = CounterMetricFamily("fanout_publish_errors", "Publish messages refused or "
                                     "failed, by input.", labels=["input"])
        for name in INPUTS:
            count = s.inputs.received[name]
            if name == "redis" and s.redis is not None:
                count = s.redis.received_items
            received.add_metric([name], count)
            rejecting = s.rejecting.get(name)
            errors.add_metric([name], s.inputs.errors[name]
                              + (rejecting.rejected if rejecting is not None else 0))
        yield received
        yield errors

    def _webhooks(self) -> Iterator[Metric]:
        engine = self.sources.webhooks.engine if self.sources.webhooks is not None else None
        attempts = CounterMetricFamily("fanout_webhook_attempts", "Webhook HTTP attempts, by "
                                       "outcome.", labels=["outcome"])
        for outcome in ("success", "failure"):
            attempts.add_metric([outcome], engine.attempts[outcome] if engine else 0)
        yield attempts
        yield CounterMetricFamily("fanout_webhook_dead_letters", "Webhook deliveries given up.",
                                  value=engine.dead_letters if engine else 0)
        evicted = CounterMetricFamily("fanout_webhook_evicted", "Webhook deliveries made "
                                      "dead letters by a [webhooks] cap on pending ones (of "
                                      "the dead letters), by cap.", labels=["reason"])
        for reason in ("max_pending", "max_pending_bytes", "max_pending_bytes_total"):
            evicted.add_metric([reason], engine.evicted[reason] if engine else 0)
        yield evicted
        dropped = CounterMetricFamily("fanout_webhook_dead_letters_dropped", "Older webhook "
                                      "dead letters dropped to keep newer ones, by limit.",
                                      labels=["reason"])
        for reason in ("max_dead_letters", "max_dead_letter_bytes"):
            dropped.add_metric([reason], engine.dead_letters_dropped[reason] if engine else 0)
        yield dropped
        yield GaugeMetricFamily("fanout_webhook_pending_bytes", "Bytes held by pending webhook "
                                "deliveries.", value=engine.pending_bytes() if engine else 0)

    def _xmpp(self) -> Iterator[Metric]:
        link = self.sources.xmpp_link
        yield GaugeMetricFamily("fanout_xmpp_link_up", "1 while the XMPP component link is "
                                "up.", value=1 if link is not None and link.up else 0)
        errors = CounterMetricFamily("fanout_xmpp_link_errors", "XMPP link failures, by "
                                     "reason.", labels=["reason"])
        for reason, count in sorted((link.errors if link is not None else {}).items()):
            errors.add_metric([reason], count)
        yield errors
        yield CounterMetricFamily("fanout_xmpp_oversized", "Inbound XMPP stanzas "
                                  "over [xmpp] max_stanza_size, dropped.",
                                  value=link.oversized if link is not None else 0)
        unsent = CounterMetricFamily("fanout_xmpp_unsent", "Outbound XMPP stanzas dropped, "
                                     "by reason: link_down (no link to the XMPP server), "
                                     "max_buffered_bytes (the XMPP server did not read).",
                                     labels=["reason"])
        for reason in ("link_down", "max_buffered_bytes"):
            unsent.add_metric([reason], link.unsent.get(reason, 0) if link is not None else 0)
        yield unsent

    def _redis(self) -> Iterator[Metric]:
        redis = self.sources.redis
        yield GaugeMetricFamily("fanout_redis_up", "1 while items are shared through Redis "
                                "(0 when Redis is not configured).",
                                value=1 if redis is not None and redis.up else 0)


# Gauges a sum over the workers would misstate: reported once per worker, labelled.
PER_WORKER = frozenset({"fanout_client_accept_paused"})

# (worker index, its last /metrics text), for each worker that has reported.
WorkerReports = Callable[[], Sequence[tuple[int, bytes]]]


class MachineCollector(Collector):
    """A supervisor's /metrics (``[runner] workers`` > 1): its own families (inputs, XMPP,
    webhooks, Redis) and each worker's last report (ops/workers.py), every sample summed
    over the processes, except the PER_WORKER gauges, which get a ``worker`` label."""

    def __init__(self, local: Collector, workers: WorkerReports) -> None:
        self._local = local
        self._workers = workers

    @override
    def collect(self) -> Iterator[Metric]:
        families: dict[str, Metric] = {}
        sums: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
        reports: list[tuple[int | None, Iterable[Metric]]] = [(None, self._local.collect())]
        reports += [(index, text_string_to_metric_families(text.decode("utf-8", "replace")))
                    for index, text in self._workers()]
        for index, report in reports:
            for family in report:
                families.setdefault(family.name, family)
                samples = sums.setdefault(family.name, {})
                for sample in family.samples:
                    labels = dict(sample.labels)
                    if family.name in PER_WORKER and index is not None:
                        labels["worker"] = str(index)
                    key = (sample.name, tuple(sorted(labels.items())))
                    samples[key] = samples.get(key, 0.0) + sample.value
        for name, first in families.items():
            merged = Metric(name, first.documentation, first.type)
            for (sample_name, pairs), value in sums[name].items():
                merged.add_sample(sample_name, dict(pairs), value)
            yield merged


def metrics_text(sources: MetricSources) -> Callable[[], bytes]:
    """A worker's metrics as exposition text, for its supervisor to sum."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FanoutCollector(sources))
    return lambda: generate_latest(registry)


def metrics_resource(sources: MetricSources, workers: WorkerReports | None = None
                     ) -> WSGIResource:
    """``GET /metrics`` (prometheus_client's WSGI app): a registry of its own (not the
    process-global one), so several servers in one process (tests) do not collide. With
    ``workers``, the whole machine's (MachineCollector)."""
    registry = CollectorRegistry(auto_describe=False)
    local = FanoutCollector(sources)
    registry.register(local if workers is None else MachineCollector(local, workers))
    return MetricsResource(registry=registry)
