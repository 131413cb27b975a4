"""Event payloads: the fields applications switch on."""

from __future__ import annotations

import re

from bridge.webhooks import payloads as ev


def test_error_event_is_named_an_error_and_keeps_its_fields() -> None:
    payload = ev.error_event(uuid="u-1", conversation_uuid="CON-1",
                             reason="answer_url failed (http 500)")

    assert payload["status"] == "error"
    assert payload["reason"] == "answer_url failed (http 500)"
    assert payload["uuid"] == "u-1" and payload["conversation_uuid"] == "CON-1"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", payload["timestamp"])
    assert set(payload) == {"status", "reason", "uuid", "conversation_uuid", "timestamp"}


def test_status_events_are_not_errors() -> None:
    payload = ev.status_event(uuid="u-1", conversation_uuid="CON-1", status="answered",
                              direction="inbound", from_="1555", to="1556")
    assert payload["status"] == "answered" and "reason" not in payload


def test_timestamps_are_vonages_format_to_the_millisecond() -> None:
    import random
    from datetime import UTC, datetime, timedelta

    from bridge.webhooks.payloads import timestamp

    rng = random.Random(8)
    start = datetime(1999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)
    moments = [start, start + timedelta(microseconds=1), datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)]
    moments += [start + timedelta(seconds=rng.uniform(0, 4e9)) for _ in range(500)]
    for moment in moments:
        expected = moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
        assert timestamp(moment) == expected
    now = timestamp()
    assert len(now) == 24 and now.endswith("Z") and now[10] == "T"
