"""The call path's lean metrics export exactly what prometheus_client's own classes export."""

from __future__ import annotations

import re

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from bridge.metrics import LoopCounter, LoopGauge, LoopHistogram

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def exposition(registry: CollectorRegistry) -> str:
    """The text format, with the _created timestamps (the only values that differ) masked."""
    text = generate_latest(registry).decode()
    return re.sub(r"(_created(?:\{[^}]*\})?) \S+", r"\1 T", text)


def test_counters_gauges_and_histograms_match_prometheus_client() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    counters = (LoopCounter("x_events", "Events.", registry=ours),
                Counter("x_events", "Events.", registry=theirs))
    labelled = (LoopCounter("x_ended", "Ended.", ("status",), registry=ours),
                Counter("x_ended", "Ended.", ["status"], registry=theirs))
    gauges = (LoopGauge("x_active", "Active.", registry=ours),
              Gauge("x_active", "Active.", registry=theirs))
    histograms = (LoopHistogram("x_seconds", "Latency.", ("method", "transport"),
                                buckets=BUCKETS, registry=ours),
                  Histogram("x_seconds", "Latency.", ["method", "transport"],
                            buckets=BUCKETS, registry=theirs))
    for counter in counters:
        counter.inc()
        counter.inc(2.5)
    for metric in labelled:
        metric.labels("completed").inc()
        metric.labels(status="busy").inc(3)
        metric.labels("completed").inc()
    for gauge in gauges:
        gauge.inc()
        gauge.inc(4)
        gauge.dec(2)
    # Values on bucket bounds, between them, below the first and above the last.
    for value in (0.0, 0.001, 0.0011, 0.0025, 0.7, 10.0, 10.5, 1e6):
        for histogram in histograms:
            histogram.labels("POST", "websocket").observe(value)
    for histogram in histograms:
        histogram.labels(method="GET", transport="http").observe(0.02)
    assert exposition(ours) == exposition(theirs)
    assert 'x_seconds_bucket{le="0.001",method="POST",transport="websocket"} 2.0' in \
        exposition(ours)


def test_a_metric_without_labels_is_exported_at_zero_and_labels_are_checked() -> None:
    registry = CollectorRegistry()
    LoopCounter("y_total_things", "Things.", registry=registry)
    assert "y_total_things_total 0.0" in exposition(registry)
    ended = LoopCounter("y_ended", "Ended.", ("status",), registry=registry)
    with pytest.raises(ValueError, match="labels"):
        ended.inc()
    with pytest.raises(ValueError, match="labels"):
        ended.labels("a", "b")
