"""Prometheus metrics: every metric the bridge exports, defined in one place.

They live in prometheus_client's default registry, because one process runs one bridge in
production and ``GET /metrics`` serves that registry. Code records into them directly (``
metrics.CALLS_ENDED.labels(status="completed").inc()``); nothing here knows about calls.

Tests that start several bridges in one process share these series, so they compare values
before and after, never absolute values.

Units follow Prometheus' conventions: seconds, and ``_total`` for counters. The README lists
every metric with its labels.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    Counter,
    Gauge,
    generate_latest,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import CollectorRegistry
from prometheus_client.utils import INF, floatToGoString

__all__ = [
    "AGENTS_SKIPPED",
    "AGENT_LEASES_HELD",
    "ARI_EVENTS",
    "ARI_RECONNECTS",
    "ARI_REQUEST_SECONDS",
    "CALLS_ACTIVE",
    "CALLS_ENDED",
    "CONTENT_TYPE",
    "NCCO_ACTIONS",
    "OUTBOX_BACKLOG",
    "OUTBOX_DROPPED",
    "OUTBOX_OLDEST_AGE",
    "REST_REQUESTS",
    "WEBHOOK_FAILURES",
    "WEBHOOK_SECONDS",
    "child",
    "render",
]

_PREFIX = "ari_bridge_"


# ----------------------------------------------------------- metrics of the call path
# The metrics recorded several times per call (every ARI event and request, every webhook,
# every call's start and end) are kept in plain numbers: prometheus_client's own classes take
# a lock and check their arguments in Python on every update, about 2 % of a call's work
# (bench/instructions.py). These are updated from the event loop's thread only, and exported
# through the same registry, with the same samples (_total, _created, _bucket, ...).


class _CounterSeries:
    __slots__ = ("created", "value")

    def __init__(self) -> None:
        self.value = 0.0
        self.created = time.time()

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount

    def samples(self) -> Iterator[tuple[str, dict[str, str], float]]:
        yield "_total", {}, self.value
        yield "_created", {}, self.created


class _GaugeSeries:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount

    def dec(self, amount: float = 1.0) -> None:
        self.value -= amount

    def set(self, value: float) -> None:
        self.value = float(value)

    def samples(self) -> Iterator[tuple[str, dict[str, str], float]]:
        yield "", {}, self.value


class _HistogramSeries:
    __slots__ = ("bounds", "counts", "created", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds  # ascending, the last one +Inf
        self.counts = [0] * len(bounds)  # per bucket, not cumulative
        self.sum = 0.0
        self.created = time.time()

    def observe(self, amount: float) -> None:
        self.sum += amount
        # The first bucket whose upper bound is >= amount: Prometheus' "le".
        self.counts[bisect.bisect_left(self.bounds, amount)] += 1

    def samples(self) -> Iterator[tuple[str, dict[str, str], float]]:
        total = 0
        for bound, count in zip(self.bounds, self.counts, strict=True):
            total += count
            yield "_bucket", {"le": floatToGoString(bound)}, total
        yield "_count", {}, total
        yield "_sum", {}, self.sum
        yield "_created", {}, self.created


class LoopMetric:
    """A counter, gauge or histogram of the call path: ``labels()`` / ``inc()`` /
    ``dec()`` / ``observe()`` as in prometheus_client, without its lock. A collector of the
    registry, which reads the numbers when ``GET /metrics`` is served."""

    _type = "untyped"

    def __init__(self, name: str, documentation: str, labelnames: tuple[str, ...] = (),
                 registry: CollectorRegistry = REGISTRY) -> None:
        self._name = name
        self._documentation = documentation
        self._labelnames = tuple(labelnames)
        self._series: dict[tuple[str, ...], Any] = {}
        # A metric without labels has its one series from the start, as in prometheus_client.
        self._only = self.labels() if not self._labelnames else None
        registry.register(self)

    def _new_series(self) -> Any:
        raise NotImplementedError

    def labels(self, *values: str, **by_name: str) -> Any:
        """The series of these label values, made on first use."""
        key = (tuple(str(by_name[n]) for n in self._labelnames) if by_name
               else tuple(str(v) for v in values))
        if len(key) != len(self._labelnames):
            raise ValueError(f"{self._name}: labels {self._labelnames}, got {key}")
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = self._new_series()
        return series

    def describe(self) -> list[Metric]:
        return [Metric(self._name, self._documentation, self._type)]

    def collect(self) -> list[Metric]:
        metric = Metric(self._name, self._documentation, self._type)
        for key, series in list(self._series.items()):
            labels = dict(zip(self._labelnames, key, strict=True))
            for suffix, extra, value in series.samples():
                metric.add_sample(self._name + suffix, {**labels, **extra}, value)
        return [metric]

    def _unlabelled(self) -> Any:
        if self._only is None:
            raise ValueError(f"{self._name} has labels {self._labelnames}: use labels()")
        return self._only


class LoopCounter(LoopMetric):
    _type = "counter"

    def _new_series(self) -> _CounterSeries:
        return _CounterSeries()

    def inc(self, amount: float = 1.0) -> None:
        self._unlabelled().inc(amount)


class LoopGauge(LoopMetric):
    _type = "gauge"

    def _new_series(self) -> _GaugeSeries:
        return _GaugeSeries()

    def inc(self, amount: float = 1.0) -> None:
        self._unlabelled().inc(amount)

    def dec(self, amount: float = 1.0) -> None:
        self._unlabelled().dec(amount)

    def set(self, value: float) -> None:
        self._unlabelled().set(value)


class LoopHistogram(LoopMetric):
    _type = "histogram"

    def __init__(self, name: str, documentation: str, labelnames: tuple[str, ...] = (),
                 buckets: tuple[float, ...] = (), registry: CollectorRegistry = REGISTRY
                 ) -> None:
        bounds = tuple(sorted(float(b) for b in buckets))
        self._bounds = bounds if bounds and bounds[-1] == INF else (*bounds, INF)
        super().__init__(name, documentation, labelnames, registry)

    def _new_series(self) -> _HistogramSeries:
        return _HistogramSeries(self._bounds)

    def observe(self, amount: float) -> None:
        self._unlabelled().observe(amount)


# Webhook and ARI latencies: a loopback application answers in about a millisecond, a remote one
# in tens to hundreds; the top buckets cover Vonage's longest read timeout (10 s).
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

CALLS_ACTIVE = LoopGauge(_PREFIX + "calls_active", "Calls (inbound and outbound legs) now live.")
CALLS_ENDED = LoopCounter(
    _PREFIX + "calls_ended", "Calls ended, by final status (completed, busy, failed, ...).",
    ("status",),
)
NCCO_ACTIONS = LoopCounter(
    _PREFIX + "ncco_actions", "NCCO actions started, by action.", ("action",)
)
WEBHOOK_SECONDS = LoopHistogram(
    _PREFIX + "webhook_duration_seconds",
    "Time from the first attempt of a webhook request to its final outcome, retries included,"
    " by kind (answer, event, fallback, exotel).",
    ("kind",),
    buckets=_LATENCY_BUCKETS,
)
WEBHOOK_FAILURES = Counter(
    _PREFIX + "webhook_failures",
    "Webhook requests that failed, by kind and reason (timeout, reset, status, invalid_ncco).",
    ["kind", "reason"],
)
ARI_REQUEST_SECONDS = LoopHistogram(
    _PREFIX + "ari_request_duration_seconds",
    "ARI REST request latency, by HTTP method and transport (http or websocket).",
    ("method", "transport"),
    buckets=_LATENCY_BUCKETS,
)
ARI_RECONNECTS = Counter(
    _PREFIX + "ari_reconnects", "ARI connections made again after the first one was lost."
)
ARI_EVENTS = LoopCounter(
    _PREFIX + "ari_events", "ARI events received on the event WebSocket (REST answers excluded)."
)
OUTBOX_BACKLOG = Gauge(
    _PREFIX + "outbox_backlog", "Status events written to the durable outbox and not delivered."
)
OUTBOX_OLDEST_AGE = Gauge(
    _PREFIX + "outbox_oldest_age_seconds",
    "Age of the oldest undelivered event in the outbox (0 when it is empty).",
)
OUTBOX_DROPPED = Counter(
    _PREFIX + "outbox_dropped",
    "Status events given up after the outbox retention expired without a delivery.",
)
AGENT_LEASES_HELD = LoopGauge(
    _PREFIX + "agent_leases_held", "Agents this bridge holds busy (Exotel Connect leases)."
)
AGENTS_SKIPPED = Counter(
    _PREFIX + "agents_skipped",
    "Connect destinations skipped, by reason (busy, invalid, device_offline, ...).",
    ["reason"],
)
REST_REQUESTS = Counter(
    _PREFIX + "rest_requests", "REST API requests answered, by HTTP status.", ["status"]
)

CONTENT_TYPE = CONTENT_TYPE_LATEST


def render() -> bytes:
    """The text exposition of every metric, for ``GET /metrics``."""
    return generate_latest()


# The labelled series used on the call path, by (metric, label values): prometheus_client's
# ``labels()`` checks its arguments and takes a lock on every call, a measurable share of a
# call's CPU when it runs several times per call. The label values are few and fixed.
_children: dict[tuple[int, tuple[str, ...]], Any] = {}


def child(metric: Any, *values: str) -> Any:
    """``metric.labels(*values)``, looked up once per label combination."""
    key = (id(metric), values)
    found = _children.get(key)
    if found is None:
        found = _children[key] = metric.labels(*values)
    return found
