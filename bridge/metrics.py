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

from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest

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

# Webhook and ARI latencies: a loopback application answers in about a millisecond, a remote one
# in tens to hundreds; the top buckets cover Vonage's longest read timeout (10 s).
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

CALLS_ACTIVE = Gauge(_PREFIX + "calls_active", "Calls (inbound and outbound legs) now live.")
CALLS_ENDED = Counter(
    _PREFIX + "calls_ended", "Calls ended, by final status (completed, busy, failed, ...).",
    ["status"],
)
NCCO_ACTIONS = Counter(
    _PREFIX + "ncco_actions", "NCCO actions started, by action.", ["action"]
)
WEBHOOK_SECONDS = Histogram(
    _PREFIX + "webhook_duration_seconds",
    "Time from the first attempt of a webhook request to its final outcome, retries included,"
    " by kind (answer, event, fallback, exotel).",
    ["kind"],
    buckets=_LATENCY_BUCKETS,
)
WEBHOOK_FAILURES = Counter(
    _PREFIX + "webhook_failures",
    "Webhook requests that failed, by kind and reason (timeout, reset, status, invalid_ncco).",
    ["kind", "reason"],
)
ARI_REQUEST_SECONDS = Histogram(
    _PREFIX + "ari_request_duration_seconds",
    "ARI REST request latency, by HTTP method and transport (http or websocket).",
    ["method", "transport"],
    buckets=_LATENCY_BUCKETS,
)
ARI_RECONNECTS = Counter(
    _PREFIX + "ari_reconnects", "ARI connections made again after the first one was lost."
)
# No labels: one increment per event is the cheapest count the reader can keep.
ARI_EVENTS = Counter(
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
AGENT_LEASES_HELD = Gauge(
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
