"""answer_url failures: Vonage's retry rule, fallback_answer_url, and a clean end of the call."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from bridge.app import BridgeService
from bridge.config import Config
from tests.integration.conftest import _hang_up_leftovers, bridge_config
from tests.integration.harness import UNREACHABLE_NUMBER, Reply, new_number
from tests.rawhttp import RawServer

pytestmark = pytest.mark.integration

TALK = [{"action": "talk", "text": "From the fallback."}]
NESTED_70: list[object] = []
for _ in range(69):
    NESTED_70 = [NESTED_70]

# (case id, what answer_url replies, requests expected at answer_url, words the reason holds)
CASES = [
    ("404", Reply(status=404), 1, ["http 404"]),
    ("500", Reply(status=500), 1, ["http 500"]),
    ("503 is retried", Reply(status=503), 2, ["http 503"]),
    ("slow is retried", Reply(json=TALK, delay_s=1.6), 2, ["read timeout"]),
    ("html content type", Reply(body=b"<html>hello</html>", content_type="text/html"), 1,
     ["answer_url returned content type text/html, expected application/json"]),
    ("json body, text/html content type", Reply(json=TALK, content_type="text/html"), 1,
     ["answer_url returned content type text/html, expected application/json"]),
    ("not json", Reply(body=b"<html>hello</html>"), 1, ["not valid JSON"]),
    ("nested 100,000 deep", Reply(body=b"[" * 100_000), 1, ["nested too deeply"]),
    ("nested 70 deep", Reply(json=[{"action": "notify", "eventUrl": ["http://127.0.0.1:9/n"],
                                    "payload": {"deep": NESTED_70}}]), 1,
     ["nest arrays and objects at most 64 levels"]),
    ("not an array", Reply(json={"action": "talk", "text": "hi"}), 1, ["JSON array"]),
    ("unknown action", Reply(json=[{"action": "dance"}]), 1, ["[0].action", "dance"]),
    ("wrong type", Reply(json=[{"action": "talk", "text": "hi", "loop": "often"}]), 1,
     ["[0].loop"]),
    ("out of range", Reply(json=[{"action": "wait", "timeout": 0}]), 1, ["[0].timeout"]),
    ("missing field", Reply(json=[{"action": "stream"}]), 1, ["[0].streamUrl"]),
    ("2 MB body", Reply(body=b"[" + b" " * (2 << 20) + b"]"), 1, ["body exceeds"]),
]


@pytest.mark.parametrize(("reply", "attempts", "words"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
async def test_failing_answer_url_uses_fallback_then_ends_the_call(bridge, webhooks, dial,
                                                                  reply, attempts, words):
    number = new_number()
    webhooks.answer(number, reply)
    webhooks.fallback(number, Reply(status=500))

    call = await dial(number, expect_status=503)

    assert call.sip.statuses[-1] == 503  # a trunk can route the call elsewhere
    await webhooks.wait_completed(number)
    asked = [r for r in webhooks.of("/answer") if r.query.get("to") == number]
    assert len(asked) == attempts
    [fallback] = [r for r in webhooks.of("/fallback") if r.query.get("to") == number]
    for word in words:
        assert word in fallback.query["reason"]
    assert json.loads(fallback.query["original_request"]) == {
        "url": f"{webhooks.url}/answer", "method": "GET"}
    assert fallback.query["uuid"] == asked[0].query["uuid"]
    [error] = webhooks.errors(number)
    for word in [*words, "http 500"]:
        assert word in error
    [event] = [e for e in webhooks.events(number) if e.get("reason") == error]
    assert event["status"] == "error"  # applications switch on status
    assert event["uuid"] == asked[0].query["uuid"]
    assert event["conversation_uuid"] == asked[0].query["conversation_uuid"]
    assert webhooks.statuses(number) == ["started", "ringing", "completed"]


async def test_unreachable_answer_url_is_retried_then_fallback_answers(bridge, webhooks, dial):
    webhooks.fallback(UNREACHABLE_NUMBER, TALK)

    call = await dial(UNREACHABLE_NUMBER)

    assert call.sip.ok, call.sip.errors
    await webhooks.wait_completed(UNREACHABLE_NUMBER)
    [fallback] = [r for r in webhooks.of("/fallback") if r.query.get("to") == UNREACHABLE_NUMBER]
    assert "connection refused" in fallback.query["reason"]
    assert webhooks.statuses(UNREACHABLE_NUMBER) == [
        "started", "ringing", "answered", "completed"]
    assert any("fallback_answer_url" in e for e in webhooks.errors(UNREACHABLE_NUMBER))
    assert call.audio.voiced_seconds() > 0.3


async def test_seed_sample_with_string_numbers_is_accepted(bridge, webhooks, dial):
    """The 2017 reference writes booleans and numbers as strings; they run as written."""
    number = new_number()
    webhooks.answer(number, [{"action": "talk", "text": "Welcome", "voiceName": "Amy",
                              "bargeIn": "false", "loop": "1"}])

    call = await dial(number)

    assert call.sip.ok
    await webhooks.wait_completed(number)
    assert webhooks.errors(number) == []


async def test_every_webhook_that_hangs_up_is_asked_exactly_twice(lab, webhooks, dial, tmp_path):
    """answer_url, fallback_answer_url and event_url all read the request and close the
    connection without answering: each request is sent twice (one retry), never more.

    Events are tried again later by the outbox, each attempt with that same rule; a retention
    of two seconds gives each event a few attempts, then drops it and goes on with the next."""
    async with RawServer() as app:
        base = bridge_config(lab, webhooks, tmp_path)
        data = base.model_dump(by_alias=True)
        data["ari"]["password"] = base.ari.password.get_secret_value()
        data["applications"][0].update(answer_url=app.url("/answer"),
                                       fallback_answer_url=app.url("/fallback"),
                                       event_url=app.url("/event"))
        data["events"] = {"retention_hours": 2 / 3600, "retry_base_s": 0.1, "retry_cap_s": 0.5}
        service = BridgeService(Config.model_validate(data))
        await service.start()
        try:
            assert await service.gateway.wait_connected(20), service.gateway.last_error
            number = new_number()

            call = await dial(number, expect_status=503)

            assert call.sip.statuses[-1] == 503

            def every_event_given_up() -> bool:
                statuses = [r.data().get("status") for r in app.requests if r.method == "POST"]
                return "completed" in statuses and service.engine.events.backlog() == 0

            deadline = time.monotonic() + 60
            while not every_event_given_up():
                assert time.monotonic() < deadline, [(r.path, r.data()) for r in app.requests]
                await asyncio.sleep(0.05)
        finally:
            await service.stop()
            await _hang_up_leftovers(lab)

    answers = app.of("/answer")
    assert len(answers) == 2 and all(r.method == "GET" for r in answers)
    assert all(r.query["to"] == number for r in answers)
    answer_fallbacks = [r for r in app.of("/fallback") if r.method == "GET"]
    assert len(answer_fallbacks) == 2
    assert answer_fallbacks[0].query["reason"] == "connection reset"
    # Every attempt of an event: event_url twice, then its fallback twice; the events in order.
    posts = [(r.path, r.data()["status"]) for r in app.requests if r.method == "POST"]
    assert len(posts) % 4 == 0, posts
    for i in range(0, len(posts), 4):
        status = posts[i][1]
        assert posts[i:i + 4] == [("/event", status), ("/event", status),
                                  ("/fallback", status), ("/fallback", status)], posts
    assert list(dict.fromkeys(status for _, status in posts)) == [
        "started", "ringing", "error", "completed"]
    assert {r.data()["reason"] for r in app.of("/fallback") if r.method == "POST"} == {
        "connection reset"}
