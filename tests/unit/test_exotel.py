"""Exotel Connect applet: response validation per dialect, request parameters, config."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from bridge.config import ConfigError, load_config
from bridge.dial.outcome import LegOutcome
from bridge.exotel.applet import dial_call_status, skip_label
from bridge.exotel.params import (
    contact_kind,
    parse_dial_whom,
    parse_json,
    request_params,
)
from bridge.webhooks import ParseError, WebhookRequest, WebhookResponse

SEED_SAMPLE = {
    "fetch_after_attempt": False,
    "destination": [{"contact_uri": "+9198765xxxxx".replace("x", "1")},
                    {"contact_uri": "sip:gauravjfb55d386"},
                    {"contact_uri": "+919786400000"}],
    "state_management": True, "outgoing_phone_number": "9087600000", "sticky_agent": False,
    "recording": {"record": True, "channels": "single"}, "max_ringing_duration": 30,
    "max_conversation_duration": 900, "music_on_hold": {"type": "default_tone"},
    "parallel_ringing": {"activate": True, "max_parallel_attempts": 5},
    "call_event_passthru_url": "http://dial_passthru_event_url.com",
    "start_call_playback": {"type": "text", "value": "hello, this is a sample text"},
}


# Copied verbatim from Exotel's documentation of the Connect applet (JSON 1.1) sample response.
SEED_SAMPLE_VERBATIM = """{ "fetch_after_attempt": false, "destination": [ { "contact_uri": "+9198765xxxxx" }, { "contact_uri": "sip:gauravjfb55d386" }, { "contact_uri": "+9197864xxxxx" } ], "state_management": true, "outgoing_phone_number": "90876xxxxx", "sticky_agent": false, "recording": { "record": true, "channels": "single" }, "max_ringing_duration": 30, "max_conversation_duration": 900, "music_on_hold": { "type": "default_tone" }, "parallel_ringing": { "activate": true, "max_parallel_attempts": 5 }, "call_event_passthru_url": "http://dial_passthru_event_url.com", "start_call_playback": { "type": "text", "value": "hello, this is a sample text" } }"""  # noqa: E501


def response(body: Any, content_type: str = "application/json",
             status: int = 200) -> WebhookResponse:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return WebhookResponse(WebhookRequest("http://x/", "GET", {}), status, raw, content_type,
                           1, 1.0, None)


def test_the_seed_sample_is_accepted_verbatim() -> None:
    params = parse_json(response(SEED_SAMPLE))
    assert params.destinations[1] == "sip:gauravjfb55d386"
    assert params.parallel and params.max_parallel_attempts == 5
    assert params.max_ringing_s == 30 and params.max_conversation_s == 900
    assert params.moh_type == "default_tone" and params.state_management
    assert params.playback_type == "text"
    assert params.passthru_url == "http://dial_passthru_event_url.com"


@pytest.mark.parametrize(("change", "message"), [
    ({"destination": None}, "destination"),
    ({"max_ringing_duration": 61}, "max_ringing_duration: must be between 1 and 60"),
    ({"max_conversation_duration": 4501}, "max_conversation_duration: must be between 1 and 4500"),
    ({"start_call_playback": {"type": "audio_url", "value": "ftp://x/a.wav"}},
     "start_call_playback.value: must be an http(s) URL"),
    ({"start_call_playback": {"type": "text", "value": " "}}, "must not be empty"),
    ({"music_on_hold": {"type": "jazz"}}, "music_on_hold.type"),
    ({"music_on_hold": {"type": "custom_tone"}}, "music_on_hold.value"),
    ({"parallel_ringing": {"activate": True, "max_parallel_attempts": 0}},
     "max_parallel_attempts"),
    ({"recording": {"record": True, "channels": "quad"}}, "recording.channels"),
    ({"fetch_after_attempt": "yes"}, "fetch_after_attempt: must be true or false"),
])
def test_invalid_json_responses_name_the_field(change: dict[str, Any], message: str) -> None:
    body = {**SEED_SAMPLE, **change}
    if change.get("destination", 0) is None:
        del body["destination"]
    with pytest.raises(ParseError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_json(response(body))


def test_the_seed_sample_verbatim_is_used_not_thrown_away() -> None:
    """Its outgoing_phone_number fails validation: Exotel dials with the number the call came
    in on instead; the response stays valid (no Fallback URL) and each destination is checked
    when dialled."""
    params = parse_json(response(SEED_SAMPLE_VERBATIM.encode()))
    assert params.destinations == ["+9198765xxxxx", "sip:gauravjfb55d386", "+9197864xxxxx"]
    assert params.invalid_outgoing_number == "'90876xxxxx'"
    assert [contact_kind(d) for d in params.destinations] == [None, "sip", None]


@pytest.mark.parametrize("number", ["90876xxxxx", "", "+1", {"n": 1}, ["+919000000000"], 12])
def test_an_invalid_outgoing_phone_number_is_no_reason_for_the_fallback(number: Any) -> None:
    params = parse_json(response({**SEED_SAMPLE, "outgoing_phone_number": number}))
    assert params.invalid_outgoing_number is not None
    assert params.destinations == [d["contact_uri"] for d in SEED_SAMPLE["destination"]]


def test_a_valid_outgoing_phone_number_is_kept() -> None:
    params = parse_json(response({**SEED_SAMPLE, "outgoing_phone_number": 918044009999}))
    assert params.outgoing_phone_number == "918044009999"
    assert params.invalid_outgoing_number is None


def test_deeply_nested_response_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="nested too deeply"):
        parse_json(response(b"[" * 100_000))


@pytest.mark.parametrize(("reason", "label"), [
    ("busy", "busy"), ("invalid format", "invalid"), ("no outbound route", "no_route"),
    ("device off (not registered)", "device_offline"), ("device in use", "device_in_use"),
    ("no such device", "no_such_device"),
    ("device state unknown (Asterisk said 500)", "device_state_unknown"),
    ("something new", "other"),
])
def test_skip_reasons_map_to_a_fixed_set_of_metric_labels(reason: str, label: str) -> None:
    assert skip_label(reason) == label


def test_json_dialect_requires_application_json() -> None:
    with pytest.raises(ParseError, match="Content-Type must be application/json"):
        parse_json(response(SEED_SAMPLE, content_type="text/plain"))
    with pytest.raises(ValueError, match="not valid JSON"):
        parse_json(response(b"{nope", content_type="application/json"))


def test_empty_destination_is_valid_but_dials_nobody() -> None:
    assert parse_json(response({"destination": []})).destinations == []


def test_dial_whom_takes_numbers_and_never_raises() -> None:
    params = parse_dial_whom(response(b"+919900000001, +919800000002", "text/plain"))
    assert params.destinations == ["+919900000001", "+919800000002"]
    bad = parse_dial_whom(response(b"call me maybe", "text/plain"))
    assert bad.destinations == [] and bad.invalid == ["call", "me", "maybe"]
    assert parse_dial_whom(response(b"", "text/plain")).destinations == []


def test_contact_kinds() -> None:
    assert contact_kind("+919876543210") == "phone"
    assert contact_kind("sip:agent7") == "sip"
    assert contact_kind("sip:agent7@10.0.0.1:5070") == "sip"
    assert contact_kind("agent7") is None
    assert contact_kind("+1") is None
    assert contact_kind("12ab34") is None


def test_request_parameters_use_exotels_names_and_quote_digits() -> None:
    created = datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
    params = request_params(
        call_sid="abc", caller="0999", called="0111", status="in-progress", created=created,
        now=created, dial_call_duration=0, call_type="call-attempt", dial_whom_number="",
        dial_call_status=None, digits="42", custom_field="cf", recording_url=None)
    assert params["digits"] == '"42"'
    assert params["CustomField"] == "cf"
    assert "DialCallStatus" not in params and "RecordingUrl" not in params
    assert params["EndTime"] == "1970-01-01 05:30:00"
    for name in ("CallSid", "CallFrom", "CallTo", "CallStatus", "Direction", "Created",
                 "DialCallDuration", "StartTime", "EndTime", "CallType", "DialWhomNumber",
                 "From", "To", "CurrentTime"):
        assert name in params
    assert len(params["CurrentTime"]) == len("2024-01-02 03:04:05")
    later = request_params(
        call_sid="abc", caller="0999", called="0111", status="in-progress", created=created,
        now=created, dial_call_duration=12, call_type="incomplete", dial_whom_number="+91",
        dial_call_status="busy", digits=None, custom_field=None, recording_url="http://r/1")
    assert later["DialCallStatus"] == "busy" and "digits" not in later
    assert later["RecordingUrl"] == "http://r/1"


@pytest.mark.parametrize(("outcomes", "status"), [
    ([LegOutcome.BUSY], "busy"),
    ([LegOutcome.REJECTED], "busy"),
    ([LegOutcome.TIMEOUT], "no-answer"),
    ([LegOutcome.BUSY, LegOutcome.UNANSWERED], "no-answer"),
    ([LegOutcome.FAILED], "failed"),
    ([LegOutcome.CANCELLED], "canceled"),
])
def test_dial_call_status(outcomes: list[LegOutcome], status: str) -> None:
    assert dial_call_status(outcomes) == status


def base(**extra: Any) -> dict[str, Any]:
    return {"applications": [{"id": "main", "answer_url": "http://127.0.0.1:1/a"}], **extra}


def test_applet_config_and_defaults() -> None:
    config = load_config(None, environ={}, overrides=base(connect_applets={
        "+4420": {"application": "main", "primary_url": "http://127.0.0.1:1/p"},
        "4421": {"application": "main", "primary_url": "http://127.0.0.1:1/p",
                 "dialect": "dial_whom"}}))
    applet = config.applet_for_number("4420")
    assert applet is not None and applet.timeout_s == 5.0
    other = config.applet_for_number("+4421")
    assert other is not None and other.timeout_s == 10.0
    assert config.agents.backend == "sqlite"
    assert config.agents_path() == config.store.path.with_name("agents.sqlite3")


def test_applet_config_errors_name_the_key() -> None:
    with pytest.raises(ConfigError, match=r"connect_applets\.4420\.application: unknown"):
        load_config(None, environ={}, overrides=base(connect_applets={
            "4420": {"application": "nope", "primary_url": "http://127.0.0.1:1/p"}}))
    with pytest.raises(ConfigError, match=r"agents\.redis_url"):
        load_config(None, environ={}, overrides=base(agents={"redis_url": "http://x"}))
    with pytest.raises(ConfigError, match="ring_timeout_s"):
        load_config(None, environ={}, overrides=base(connect_applets={
            "4420": {"application": "main", "primary_url": "http://127.0.0.1:1/p",
                     "ring_timeout_s": 90}}))
