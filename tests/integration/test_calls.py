"""Calls through the lab: talk, stream, wait, notify, events, and the caller's view of them."""

from __future__ import annotations

import pytest

from bridge.app import BridgeService
from bridge.config import Config
from bridge.lab.sipp import Dtmf, HangUp, Pause
from bridge.media import resolve_voice
from tests.integration.conftest import bridge_config
from tests.integration.harness import POST_NUMBER, Reply, new_number

pytestmark = pytest.mark.integration

GREETING = "Thank you for calling. This message is played by the bridge over A R I."


@pytest.mark.parametrize("bridge", ["http", "websocket"], indirect=True)
async def test_talk_is_heard_and_status_events_arrive_once_in_order(bridge, webhooks, dial):
    number = new_number()
    webhooks.answer(number, [{"action": "talk", "text": GREETING, "voiceName": "Amy"}])

    call = await dial(number)

    assert call.sip.ok, call.sip.errors
    assert 200 in call.sip.statuses
    await webhooks.wait_completed(number)
    assert webhooks.statuses(number) == ["started", "ringing", "answered", "completed"]
    answer = webhooks.of("/answer")[-1]
    assert answer.method == "GET"
    assert answer.query["to"] == number
    assert answer.query["from"] == "15550001111"
    assert answer.query["conversation_uuid"].startswith("CON-")
    events = webhooks.events(number)
    assert {e["uuid"] for e in events} == {answer.query["uuid"]}
    completed = events[-1]
    assert completed["direction"] == "inbound"
    assert completed["disconnected_by"] == "platform"
    assert int(completed["duration"]) >= 1
    # The caller heard the whole prompt: as many seconds of audio as the speech lasts.
    spoken = await bridge.media.tts(GREETING, resolve_voice("Amy", None, None))
    assert call.audio.audio_seconds() == pytest.approx(spoken.duration_s, abs=0.6)
    assert call.audio.voiced_seconds() > spoken.duration_s * 0.5


# (the application's ring_after_ms, None: the default of 200 ms; answer_url's delay; 180?)
RINGING_CASES = [
    ("answer_url replies within ring_after_ms: no 180", 5000, 0.0, False),
    ("ring_after_ms 0: 180 at once", 0, 0.0, True),
    ("answer_url slower than the default: 180 first", None, 0.6, True),
]


@pytest.mark.parametrize(("ring_after_ms", "delay_s", "rings"), [c[1:] for c in RINGING_CASES],
                         ids=[c[0] for c in RINGING_CASES])
async def test_caller_hears_ringing_only_while_answer_url_keeps_it_waiting(
        lab, webhooks, dial, tmp_path, ring_after_ms, delay_s, rings):
    data = bridge_config(lab, webhooks, tmp_path).model_dump(by_alias=True)
    data["ari"]["password"] = lab.ari_password
    if ring_after_ms is not None:
        data["applications"][0]["ring_after_ms"] = ring_after_ms
    service = BridgeService(Config.model_validate(data))
    await service.start()
    try:
        assert await service.gateway.wait_connected(20), service.gateway.last_error
        number = new_number()
        webhooks.answer(number, Reply(json=[{"action": "talk", "text": "Ring or not."}],
                                      delay_s=delay_s))

        call = await dial(number)

        assert call.sip.ok, call.sip.errors
        assert call.sip.statuses[-1] == 200
        if rings:
            assert call.sip.statuses.index(180) < call.sip.statuses.index(200)
        else:
            assert 180 not in call.sip.statuses, call.sip.statuses
        await webhooks.wait_completed(number)
        # The application sees the same events either way.
        assert webhooks.statuses(number) == ["started", "ringing", "answered", "completed"]
    finally:
        await service.stop()


async def test_answer_method_post_sends_json_body(bridge, webhooks, dial):
    webhooks.answer(POST_NUMBER, [{"action": "talk", "text": "Posted."}])

    call = await dial(POST_NUMBER)

    assert call.sip.ok, call.sip.errors
    request = [r for r in webhooks.of("/answer") if r.method == "POST"][-1]
    assert request.json["to"] == POST_NUMBER
    assert request.json["from"] == "15550001111"
    assert set(request.json) >= {"to", "from", "uuid", "conversation_uuid"}
    assert request.headers["Content-Type"].startswith("application/json")


@pytest.mark.parametrize("name", ["tone.wav", "tone.mp3"])
async def test_stream_plays_wav_and_mp3(bridge, webhooks, dial, name):
    number = new_number()
    webhooks.answer(number, [{"action": "stream", "streamUrl": [f"{webhooks.url}/audio/{name}"]}])

    call = await dial(number)

    assert call.sip.ok, call.sip.errors
    await webhooks.wait_completed(number)
    assert webhooks.errors(number) == []
    assert call.audio.voiced_seconds() == pytest.approx(2.0, abs=0.5)


async def test_stream_loop_plays_the_file_that_many_times(bridge, webhooks, dial):
    number = new_number()
    webhooks.answer(number, [
        {"action": "stream", "streamUrl": [f"{webhooks.url}/audio/tone.wav"], "loop": 2}])

    call = await dial(number)

    assert call.sip.ok
    assert call.audio.voiced_seconds() == pytest.approx(4.0, abs=0.6)


@pytest.mark.parametrize(("path", "cause"), [
    ("/audio/missing.mp3", "http 404"),
    ("/audio/notaudio.mp3", "not audio"),
])
async def test_bad_stream_gives_error_event_and_the_call_goes_on(bridge, webhooks, dial, path,
                                                                 cause):
    number = new_number()
    after = webhooks.hook(f"after-bad-stream-{number}", {})
    webhooks.answer(number, [
        {"action": "stream", "streamUrl": [f"{webhooks.url}{path}"]},
        {"action": "notify", "payload": {"reached": "next action"}, "eventUrl": [after]},
    ])

    call = await dial(number)

    assert call.sip.ok
    await webhooks.wait_completed(number)
    [error] = webhooks.errors(number)
    assert cause in error and path in error
    assert [r.json for r in webhooks.of(f"/hook/after-bad-stream-{number}")] == [
        {"reached": "next action"}]


async def test_unreachable_stream_url_is_reported(bridge, webhooks, dial):
    from bridge.lab.sipp import free_port

    number = new_number()
    url = f"http://127.0.0.1:{free_port(1)}/gone.mp3"
    webhooks.answer(number, [{"action": "stream", "streamUrl": [url]}])

    call = await dial(number)

    assert call.sip.ok
    await webhooks.wait_completed(number)
    [error] = webhooks.errors(number)
    assert "unreachable" in error and url in error


async def test_wait_holds_the_answered_call(bridge, webhooks, dial):
    number = new_number()
    webhooks.answer(number, [{"action": "wait", "timeout": 2}])

    call = await dial(number)

    assert call.sip.ok
    await webhooks.wait_completed(number)
    completed = webhooks.events(number)[-1]
    assert completed["status"] == "completed"
    assert int(completed["duration"]) >= 2


async def test_notify_posts_payload_and_reply_ncco_replaces_the_rest(bridge, webhooks, dial):
    number = new_number()
    never = webhooks.hook(f"never-{number}", {})
    notify = webhooks.hook(f"notify-{number}", [{"action": "talk", "text": "Replaced."}])
    webhooks.answer(number, [
        {"action": "notify", "payload": {"order": 42, "items": ["a"]}, "eventUrl": [notify]},
        {"action": "notify", "payload": {"must": "not run"}, "eventUrl": [never]},
    ])

    call = await dial(number)

    assert call.sip.ok
    await webhooks.wait_completed(number)
    [request] = webhooks.of(f"/hook/notify-{number}")
    assert request.method == "POST"
    assert request.json == {"order": 42, "items": ["a"]}
    assert webhooks.of(f"/hook/never-{number}") == []
    assert call.audio.voiced_seconds() > 0.3  # the replacement talk was heard


async def test_notify_reply_without_ncco_continues_the_flow(bridge, webhooks, dial):
    number = new_number()
    first = webhooks.hook(f"first-{number}", Reply(json={"ok": True}))
    second = webhooks.hook(f"second-{number}", Reply(status=204))
    webhooks.answer(number, [
        {"action": "notify", "payload": {"n": 1}, "eventUrl": [first]},
        {"action": "notify", "payload": {"n": 2}, "eventUrl": [second], "eventMethod": "GET"},
    ])

    call = await dial(number)

    # Notify never needs media, so the call was never answered: ending it rejects the INVITE.
    assert call.sip.statuses[-1] == 603
    await webhooks.wait_completed(number)
    assert [r.json for r in webhooks.of(f"/hook/first-{number}")] == [{"n": 1}]
    [get] = webhooks.of(f"/hook/second-{number}")
    assert get.method == "GET" and get.query == {"n": "2"}
    assert "answered" not in webhooks.statuses(number)


async def test_replies_that_keep_sending_nccos_are_bounded(bridge, webhooks, dial):
    number = new_number()
    loop_url = webhooks.hook(f"loop-{number}", None)
    webhooks.hooks[f"loop-{number}"] = [Reply(json=[
        {"action": "notify", "payload": {}, "eventUrl": [loop_url]}])]
    webhooks.answer(number, [{"action": "notify", "payload": {}, "eventUrl": [loop_url]}])

    await dial(number, expect_status=603)

    await webhooks.wait_completed(number)
    assert len(webhooks.of(f"/hook/loop-{number}")) == 6  # the first + 5 replacements allowed
    assert any("max_ncco_replacements" in e for e in webhooks.errors(number))


async def test_caller_hangs_up_mid_talk_completed_sent_once(bridge, webhooks, dial):
    number = new_number()
    webhooks.answer(number, [{"action": "talk", "text": GREETING * 4, "loop": 0}])

    call = await dial(number, steps=[Pause(1500), HangUp()])

    assert call.sip.ok, call.sip.errors
    await webhooks.wait_completed(number)
    assert webhooks.statuses(number) == ["started", "ringing", "answered", "completed"]
    assert webhooks.events(number)[-1]["disconnected_by"] == "user"
    assert webhooks.errors(number) == []
    assert not bridge.engine.sessions


async def test_barge_in_prompt_stops_on_key_press_and_input_gets_the_digit(bridge, webhooks,
                                                                           dial):
    number = new_number()
    ivr = webhooks.hook(f"ivr-{number}", [{"action": "talk", "text": "Sales."}])
    webhooks.answer(number, [
        {"action": "talk", "text": GREETING * 3, "bargeIn": True},
        {"action": "input", "maxDigits": 1, "timeOut": 10, "eventUrl": [ivr]},
    ])

    call = await dial(number, steps=[Pause(1500), Dtmf("4")])

    assert call.sip.ok, call.sip.errors
    await webhooks.wait_completed(number)
    [request] = webhooks.of(f"/hook/ivr-{number}")
    assert request.json["dtmf"] == {"digits": "4", "timed_out": False}
    assert request.json["uuid"] == webhooks.events(number)[0]["uuid"]
    prompt = await bridge.media.tts(GREETING * 3, resolve_voice(None, None, None))
    # The prompt stopped at the key press: far less than its length was heard.
    assert call.audio.voiced_seconds() < prompt.duration_s / 2


async def test_legacy_input_payload_for_applications_that_ask_for_it(bridge, webhooks, dial):
    from tests.integration.harness import LEGACY_NUMBER

    ivr = webhooks.hook("legacy-ivr", {})
    webhooks.answer(LEGACY_NUMBER, [
        {"action": "talk", "text": "Enter your code", "bargeIn": True},
        {"action": "input", "maxDigits": 2, "timeOut": "2", "eventUrl": [ivr]},
    ])

    call = await dial(LEGACY_NUMBER, steps=[Pause(800), Dtmf("3")])

    assert call.sip.ok, call.sip.errors
    [request] = webhooks.of("/hook/legacy-ivr")
    assert request.json["dtmf"] == "3"
    assert request.json["timed_out"] is True  # one digit of two, then the timeout
