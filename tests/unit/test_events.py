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
