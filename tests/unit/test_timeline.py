"""The console's recorder: bounded per call and overall, secrets masked, bodies cut, and a
live fan-out in which a slow page can neither block nor grow memory."""

from __future__ import annotations

import asyncio
import contextvars
import json
from dataclasses import dataclass, field
from typing import Any

import pytest

from bridge.masking import MASK, MAX_BODY_CHARS, mask
from bridge.timeline import RESYNC, Timeline, current_call

JWT = ("eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJhcHBsaWNhdGlvbl9pZCI6ImFiYyJ9."
       "c2lnbmF0dXJlLWJ5dGVz")


@dataclass
class Request:
    url: str
    method: str = "GET"
    data: dict[str, Any] = field(default_factory=dict)
    headers: dict[str, str] | None = None


@dataclass
class Response:
    status: int | None = 200
    body: bytes = b""
    content_type: str | None = "application/json"
    attempts: int = 1
    elapsed_ms: float = 12.5
    error: str | None = None


def recorder(**limits: Any) -> Timeline:
    timeline = Timeline()
    timeline.configure(**limits)
    timeline.enable()
    return timeline


def start(timeline: Timeline, uuid: str, channel: str | None = None) -> None:
    """A call starts in its own context, as a session's task does (the test's stays clean)."""
    contextvars.copy_context().run(
        timeline.call_started, uuid, channel or f"chan-{uuid}", "15550001111", "15550002222",
        "main", "inbound")


def test_entries_per_call_are_capped_and_the_drop_is_counted():
    timeline = recorder(max_entries_per_call=10)
    start(timeline, "a")
    for i in range(25):
        timeline.note("a", "info", f"note {i}")

    call = timeline.call("a")
    assert call is not None
    detail = call.detail()
    assert len(detail["timeline"]) == 10
    assert detail["entries_dropped"] == 15
    assert detail["timeline"][-1]["text"] == "note 24"
    assert detail["seq"] == 25


def test_ended_calls_are_kept_up_to_the_count_and_their_aliases_go_with_them():
    timeline = recorder(keep_ended=3)
    for i in range(5):
        start(timeline, f"c{i}")
        timeline.call_state(f"c{i}", "ended", "completed", "completed", "Normal Clearing")

    assert [c["uuid"] for c in timeline.ended_calls()] == ["c4", "c3", "c2"]
    assert timeline.live_calls() == []
    assert "chan-c0" not in timeline.aliases
    assert timeline.aliases["chan-c4"] == "c4"
    assert timeline.ended_calls()[0]["final_status"] == "completed"
    assert timeline.ended_calls()[0]["hangup_cause"] == "Normal Clearing"


def test_ended_calls_older_than_the_age_limit_are_dropped():
    timeline = recorder(keep_ended_s=60.0)
    start(timeline, "old")
    timeline.call_state("old", "ended", "completed", "completed")
    timeline.ended["old"].ended = 0.0  # ended long ago

    assert timeline.ended_calls() == []
    assert timeline.call("old") is None


def test_live_calls_beyond_the_cap_are_counted_not_kept():
    timeline = recorder(max_live_calls=2)
    for uuid in ("a", "b", "c"):
        start(timeline, uuid)

    assert sorted(c["uuid"] for c in timeline.live_calls()) == ["a", "b"]
    assert timeline.untracked_calls == 1


def test_webhook_secrets_are_masked_and_the_body_is_cut_at_4_kb():
    timeline = recorder()
    start(timeline, "a")
    body = json.dumps({"ncco": [{"action": "talk", "text": "x" * 10_000}],
                       "api_token": "tok-123", "nested": {"password": "hunter2"}}).encode()
    timeline.webhook(
        Request("http://app.example/answer?uuid=a&token=qs-secret", "GET",
                {"uuid": "a", "secret": "s3", "jwt_here": JWT, "text": f"Bearer {JWT}"},
                {"X-Api-Key": "k", "Authorization": "Basic dXNlcjpwYXNz", "X-Trace": "t1"}),
        Response(body=body), "answer", signed=True)

    entry = timeline.call("a").detail()["timeline"][-1]  # type: ignore[union-attr]
    dumped = json.dumps(entry)
    for secret in ("tok-123", "hunter2", "qs-secret", "s3\"", JWT, "dXNlcjpwYXNz", '"k"'):
        assert secret not in dumped, secret
    assert entry["request"]["headers"]["Authorization"] == f"Bearer {MASK}"
    assert entry["request"]["headers"]["X-Trace"] == "t1"
    assert entry["request"]["data"]["uuid"] == "a"
    assert entry["url"].startswith("http://app.example/answer?uuid=a&token=")
    assert len(entry["response"]["body"]) <= MAX_BODY_CHARS + 60
    assert entry["response"]["body"].endswith("characters cut)")
    assert entry["response"]["status"] == 200


def test_a_non_json_body_is_cut_and_jwts_in_it_masked():
    timeline = recorder()
    start(timeline, "a")
    timeline.webhook(Request("http://app.example/x", data={"uuid": "a"}),
                     Response(status=500, body=(JWT + " " + "y" * 9000).encode(),
                              content_type="text/plain", error="http 500"), "event", False)

    entry = timeline.call("a").detail()["timeline"][-1]  # type: ignore[union-attr]
    assert JWT not in entry["response"]["body"]
    assert entry["response"]["body"].startswith(MASK)
    assert "characters cut" in entry["response"]["body"]


def test_mask_keeps_ordinary_values_and_masks_secret_keys_at_any_depth():
    assert mask({"to": "1555", "list": [{"Signature_Secret": "x"}], "token": ""}) == {
        "to": "1555", "list": [{"Signature_Secret": MASK}], "token": ""}


def test_webhook_health_counts_requests_failures_and_latency_per_url():
    timeline = recorder()
    url = "http://app.example/event"
    timeline.webhook(Request(url + "?a=1"), Response(elapsed_ms=10.0), "event", False)
    timeline.webhook(Request(url + "?a=2"), Response(status=None, error="read timeout",
                                                     elapsed_ms=30.0), "event", False)

    (health,) = timeline.webhook_health()
    assert health["url"] == url
    assert health["requests"] == 2
    assert health["failures"] == 1
    assert health["last_status"] is None
    assert health["last_error"] == "read timeout"
    assert health["last_latency_ms"] == 30.0
    assert health["avg_latency_ms"] == 20.0


def test_a_webhook_sent_from_a_call_task_belongs_to_that_call():
    timeline = recorder()

    async def session() -> None:
        timeline.call_started("call-1", "chan-1", "1", "2", "main", "inbound")  # the task's

        async def action() -> None:  # a child task inherits it
            timeline.webhook(Request("http://app.example/hook", data={"x": 1}),
                             Response(), "event", False)
        await asyncio.create_task(action())

    asyncio.run(session())
    assert current_call.get() is None
    kinds = [e["kind"] for e in timeline.call("call-1").detail()["timeline"]]  # type: ignore
    assert kinds == ["webhook"]


def test_the_inbound_stasis_start_arrives_before_the_call_and_is_its_first_entry():
    timeline = recorder()
    timeline.ari_event({"type": "StasisStart", "channel": {"id": "ch1", "state": "Ring"}})
    start(timeline, "a", "ch1")
    timeline.ari_event({"type": "ChannelHangupRequest", "channel": {"id": "ch1"}, "cause": 16})
    timeline.ari_event({"type": "ChannelDestroyed", "channel": {"id": "unknown"}})
    timeline.ari_event({"type": "PlaybackFinished",
                        "playback": {"id": "pb1", "target_uri": "channel:ch1"}})

    call = timeline.call("a")
    assert call is not None
    entries = call.detail()["timeline"]
    assert call.started == entries[0]["t"]  # the call began when Asterisk handed it over
    assert [(e["kind"], e["type"]) for e in entries] == [
        ("ari", "StasisStart"), ("ari", "ChannelHangupRequest"), ("ari", "PlaybackFinished")]
    assert entries[1]["cause"] == 16
    assert entries[2]["playback"] == "pb1"


def test_legs_and_their_events_join_the_call_that_dialled_them():
    timeline = recorder()
    start(timeline, "a")
    token = current_call.set("a")
    try:
        timeline.leg_started("leg-1", "leg-chan", "sip:agent1")
    finally:
        current_call.reset(token)
    timeline.leg_status("leg-chan", "ringing")
    timeline.ari_event({"type": "Dial", "peer": {"id": "leg-chan"}, "dialstatus": "ANSWER"})
    timeline.leg_status("leg-chan", "answered")
    timeline.agent("sip:agent1", "leg:leg-1", busy=True)

    detail = timeline.call("a").detail()  # type: ignore[union-attr]
    assert detail["legs"] == [{"uuid": "leg-1", "to": "sip:agent1", "status": "answered",
                               "channel_id": "leg-chan"}]
    assert [e.get("status") or e.get("dialstatus") for e in detail["timeline"]] == [
        "dialling", "ringing", "ANSWER", "answered"]
    rows = timeline.agent_rows()
    assert rows["sip:agent1"]["busy"] is True
    assert rows["sip:agent1"]["calls"] == ["a"]
    timeline.agent("sip:agent1", "leg:leg-1", busy=False)
    assert timeline.agent_rows()["sip:agent1"]["busy"] is False


def test_actions_and_states_are_recorded_in_order_with_the_current_action():
    timeline = recorder()
    start(timeline, "a")
    timeline.call_state("a", "running", "ncco")
    timeline.action_started("a", "talk", 0, None)
    assert timeline.live_calls()[0]["action"] == "talk"
    timeline.action_ended("a", "talk", 0, gone=False, replaced=False)
    timeline.call_state("a", "ending", "ncco_done")
    timeline.call_state("a", "ended", "completed", "completed", "Normal Clearing")

    entries = timeline.call("a").detail()["timeline"]  # type: ignore[union-attr]
    assert [(e["kind"], e.get("to") or e.get("phase")) for e in entries] == [
        ("state", "running"), ("action", "start"), ("action", "end"), ("state", "ending"),
        ("state", "ended")]
    assert entries[2]["outcome"] == "finished"
    assert timeline.ended_calls()[0]["end_reason"] == "ncco_done"
    assert [e["seq"] for e in entries] == sorted(e["seq"] for e in entries)


def test_a_recorder_bug_never_reaches_the_caller():
    timeline = recorder()
    start(timeline, "a")
    timeline.webhook(object(), object(), "event", False)  # no attributes at all
    timeline.ari_event({"type": "StasisStart", "channel": "not a mapping"})


def test_off_records_nothing_and_hooks_check_one_attribute():
    timeline = Timeline()
    assert timeline.on is False
    timeline.enable()
    start(timeline, "a")
    timeline.disable()
    assert timeline.on is False
    assert timeline.live_calls() == []


async def test_a_slow_subscriber_is_told_to_resync_and_never_holds_more_than_its_queue():
    timeline = recorder(queue_size=4)
    slow = timeline.subscribe()
    fast = timeline.subscribe()
    received: list[str] = []

    for i in range(50):
        timeline.publish(f"m{i}")
        while (message := await fast.next(0.01)) is not None:
            received.append(message)

    assert received == [f"m{i}" for i in range(50)]
    assert slow.queue.qsize() <= 4
    drained = []
    while (message := await slow.next(0.01)) is not None:
        drained.append(message)
    assert RESYNC in drained
    assert slow.resyncs >= 1
    assert fast.resyncs == 0


async def test_changes_are_collected_only_while_someone_watches():
    timeline = recorder()
    start(timeline, "a")
    assert timeline.take_dirty()["calls"] == []  # nobody subscribed: nothing gathered

    sub = timeline.subscribe()
    timeline.note("a", "info", "x")
    timeline.webhook(Request("http://app.example/e"), Response(), "event", False)
    dirty = timeline.take_dirty()
    assert [c["uuid"] for c in dirty["calls"]] == ["a"]
    assert [w["url"] for w in dirty["webhooks"]] == ["http://app.example/e"]
    assert timeline.take_dirty()["calls"] == []
    timeline.unsubscribe(sub)


@pytest.mark.parametrize("owner", ["call:a", "applet:a"])
def test_an_agent_held_by_a_call_names_the_call(owner):
    timeline = recorder()
    timeline.agent("15550003333", owner, busy=True)
    timeline.sticky("15550001111", "15550003333")
    row = timeline.agent_rows()["15550003333"]
    assert row["calls"] == ["a"]
    assert row["sticky_callers"] == ["15550001111"]


def test_a_body_too_long_to_parse_still_has_its_secret_values_masked():
    timeline = recorder()
    start(timeline, "a")
    body = b'{"password": "hunter2", "text": "' + b"x" * 40_000 + b'"}'
    timeline.webhook(Request("http://app.example/x", data={"uuid": "a"}),
                     Response(body=body), "answer", False)

    entry = timeline.call("a").detail()["timeline"][-1]  # type: ignore[union-attr]
    assert "hunter2" not in entry["response"]["body"]
    assert entry["response"]["body"].startswith('{"password": "***"')


def test_reading_a_timeline_twice_gives_the_same_masked_entries():
    timeline = recorder()
    start(timeline, "a")
    timeline.webhook(Request("http://app.example/x", data={"uuid": "a", "token": "t0k"}),
                     Response(), "event", False)
    call = timeline.call("a")
    assert call is not None
    first, second = call.detail()["timeline"], call.detail()["timeline"]
    assert first == second
    assert first[0]["request"]["data"]["token"] == MASK
    assert "_raw" not in first[0]
