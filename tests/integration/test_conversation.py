"""conversation: three real callers in one named room, each speaking its own tone; who hears
whom, hold music until the moderator joins, endOnExit, a full room, the room's recording."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from bridge.lab import LabInfo
from bridge.lab.pcap import tone_samples, write_rtp_pcap
from bridge.lab.sipp import Audio, HangUp, Pause, RtpReceiver, SippResult, Step, place_call
from bridge.ncco.actions.conversation import rooms
from tests.integration.harness import WebhookApp, new_number
from tests.integration.test_record import (
    band_power,
    decode,
    duration,
    file_type,
    received_samples,
    stored_file,
)
from tests.polling import until

pytestmark = pytest.mark.integration

FREQS = {"a": 600, "b": 1000, "c": 1400}


@pytest.fixture(scope="module")
def voices(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("room-tones")
    return {who: write_rtp_pcap(folder / f"{who}.pcap", tone_samples(4, hz))
            for who, hz in FREQS.items()}


class LiveCall:
    """A caller whose received audio can be inspected while the call is still up."""

    def __init__(self, lab: LabInfo, number: str, steps: list[Step], timeout_s: float = 40):
        self.lab, self.number, self.steps, self.timeout_s = lab, number, steps, timeout_s
        self.receiver: RtpReceiver | None = None
        self.task: asyncio.Task[SippResult] | None = None

    async def start(self) -> LiveCall:
        self.receiver = await RtpReceiver.open()
        self.task = asyncio.create_task(place_call(
            self.lab.sip_host, self.lab.sip_port, self.number, rtp_port=self.receiver.port,
            steps=self.steps, timeout_s=self.timeout_s))
        return self

    async def result(self) -> SippResult:
        assert self.task is not None and self.receiver is not None
        try:
            return await self.task
        finally:
            self.receiver.close()

    def hears(self, frequency: float, since: float = 0.0) -> float:
        """Power at ``frequency`` in what reached this caller (after ``since``)."""
        assert self.receiver is not None
        packets = [p for p in self.receiver.audio_packets() if p.arrived >= since]
        probe = RtpReceiver()
        probe.packets = packets
        return band_power(received_samples(probe), frequency)


def joined(webhooks: WebhookApp, number: str) -> list[dict[str, Any]]:
    """The transfer events of the call to ``number`` (to event_url or the action's eventUrl)."""
    uuids = {e.get("uuid") for e in webhooks.events(number)}
    return [r.json for r in webhooks.requests
            if isinstance(r.json, dict) and "conversation_uuid_to" in r.json
            and r.json.get("uuid") in uuids]


async def wait_joined(webhooks: WebhookApp, number: str) -> dict[str, Any]:
    await webhooks.wait_for(lambda: bool(joined(webhooks, number)), timeout=20)
    return joined(webhooks, number)[0]


def room_action(name: str, **extra: Any) -> dict[str, Any]:
    return {"action": "conversation", "name": name, **extra}


async def test_three_callers_hear_each_other_but_not_the_muted_one(
        bridge, webhooks, lab, voices):
    room = f"room-{new_number()}"
    numbers = {who: new_number() for who in FREQS}
    hook = webhooks.hook(f"room-rec-{room}", {})
    webhooks.answer(numbers["a"], [room_action(room, record=True, eventUrl=[hook])])
    webhooks.answer(numbers["b"], [room_action(room)])
    webhooks.answer(numbers["c"], [room_action(room, mute=True)])

    calls = {}
    for who in FREQS:  # each joins before the next dials, so all three overlap for sure
        calls[who] = await LiveCall(lab, numbers[who], [
            Pause(3000), Audio(voices[who]), Pause(5500), HangUp()]).start()
        await wait_joined(webhooks, numbers[who])
    results = {who: await call.result() for who, call in calls.items()}

    for who, result in results.items():
        assert result.ok, f"{who}: {result.errors}"
    a, b, c = calls["a"], calls["b"], calls["c"]
    # a and b hear each other; nobody hears c (muted); c hears both; nobody hears themselves.
    assert a.hears(1000) > 20 * a.hears(1400) and a.hears(1000) > 20 * a.hears(600)
    assert b.hears(600) > 20 * b.hears(1400) and b.hears(600) > 20 * b.hears(1000)
    assert c.hears(600) > 20 * c.hears(1400) and c.hears(1000) > 20 * c.hears(1400)
    # All three moved into the same conversation.
    targets = {joined(webhooks, n)[0]["conversation_uuid_to"] for n in numbers.values()}
    assert len(targets) == 1
    for who, number in numbers.items():
        await webhooks.wait_completed(number)
        first = joined(webhooks, number)[0]
        assert first["conversation_uuid_from"] != first["conversation_uuid_to"], who
    # The room's mix was recorded: a and b, not the muted c.
    await webhooks.wait_for(lambda: any("recording_url" in r.json for r in webhooks.of(
        f"/hook/room-rec-{room}")), timeout=30)
    event = next(r.json for r in webhooks.of(f"/hook/room-rec-{room}")
                 if "recording_url" in r.json)
    assert event["conversation_uuid"] in targets
    assert event["size"] > 0 and event["start_time"] <= event["end_time"]
    path = stored_file(bridge, event)
    assert file_type(path) == "mp3"
    assert duration(path) > 4.0
    _, _, (mix,) = decode(path)
    assert band_power(mix, 600) > 20 * band_power(mix, 1400)
    assert band_power(mix, 1000) > 20 * band_power(mix, 1400)


async def test_music_until_the_moderator_joins_and_end_on_exit_hangs_up_everybody(
        bridge, webhooks, lab, voices):
    room = f"room-{new_number()}"
    waiting, second, moderator = new_number(), new_number(), new_number()
    music = f"{webhooks.url}/audio/tone.wav"  # 440 Hz
    webhooks.answer(waiting, [room_action(room, startOnEnter=False, musicOnHoldUrl=[music])])
    webhooks.answer(second, [room_action(room, startOnEnter=False)])
    webhooks.answer(moderator, [room_action(room, startOnEnter=True, endOnExit=True)])

    # Nobody hangs up but the moderator: the others must be hung up by endOnExit.
    first = await LiveCall(lab, waiting, []).start()
    await wait_joined(webhooks, waiting)
    await until(lambda: first.hears(440) > 1e9, "the first caller never heard the music")
    other = await LiveCall(lab, second, []).start()
    await wait_joined(webhooks, second)
    await until(lambda: other.hears(440) > 1e9, "the second caller never heard the music")
    joined_at = time.monotonic()
    boss = await LiveCall(lab, moderator, [Pause(2000), Audio(voices["b"]), Pause(2000),
                                           HangUp()]).start()

    results = [await first.result(), await other.result(), await boss.result()]

    for result in results:
        assert result.ok, result.errors  # the first two received BYE from the bridge
    for number in (waiting, second, moderator):
        await webhooks.wait_completed(number)
    # Once the moderator was in, the music stopped and the moderator was heard instead.
    assert first.hears(1000, since=joined_at) > 20 * first.hears(440, since=joined_at + 2)
    assert not any("reason" in e for n in (waiting, second, moderator)
                   for e in webhooks.events(n))


async def test_a_full_room_sends_an_error_and_the_ncco_goes_on(
        bridge, webhooks, lab, monkeypatch):
    monkeypatch.setattr(rooms, "MAX_PARTICIPANTS", 1)
    room = f"room-{new_number()}"
    inside, late = new_number(), new_number()
    after = webhooks.hook(f"after-full-{late}", {})
    webhooks.answer(inside, [room_action(room)])
    webhooks.answer(late, [room_action(room),
                           {"action": "notify", "payload": {"full": True}, "eventUrl": [after]}])

    first = await LiveCall(lab, inside, [Pause(8000), HangUp()]).start()
    await wait_joined(webhooks, inside)
    second = await LiveCall(lab, late, []).start()

    assert (await second.result()).ok  # the NCCO went on (notify) and ended
    assert (await first.result()).ok
    await webhooks.wait_completed(late)
    assert any("participants" in reason for reason in webhooks.errors(late))
    assert len(webhooks.of(f"/hook/after-full-{late}")) == 1
    assert not joined(webhooks, late)


async def test_can_speak_and_can_hear_give_each_listener_its_own_mix(
        bridge, webhooks, lab, voices):
    """b has no lists; a canHear only b; c canSpeak only to a. Pair by pair (listener hears
    speaker when the speaker is in the listener's canHear and the listener in the speaker's
    canSpeak, an absent list allowing everyone):

    * a hears b (b is in a's canHear), not c (c is not in a's canHear, although c may speak
      to a);
    * b hears a, not c (b is not in c's canSpeak);
    * c hears a and b (c has no canHear; a and b have no canSpeak).

    So nobody hears c. The room is recorded (b's ``record``): everything said in it."""
    room = f"room-{new_number()}"
    numbers = {who: new_number() for who in FREQS}
    hook = webhooks.hook(f"room-rec-{room}", {})
    steps = {who: [Pause(4000), Audio(voices[who]), Pause(5500), HangUp()] for who in FREQS}

    # The lists name legs, so each caller's NCCO is written once the legs it names exist.
    webhooks.answer(numbers["b"], [room_action(room, record=True, eventUrl=[hook])])
    calls = {"b": await LiveCall(lab, numbers["b"], steps["b"]).start()}
    leg = {"b": (await wait_joined(webhooks, numbers["b"]))["uuid"]}
    webhooks.answer(numbers["a"], [room_action(room, canHear=[leg["b"]])])
    calls["a"] = await LiveCall(lab, numbers["a"], steps["a"]).start()
    leg["a"] = (await wait_joined(webhooks, numbers["a"]))["uuid"]
    webhooks.answer(numbers["c"], [room_action(room, canSpeak=[leg["a"]])])
    calls["c"] = await LiveCall(lab, numbers["c"], steps["c"]).start()
    leg["c"] = (await wait_joined(webhooks, numbers["c"]))["uuid"]
    results = {who: await call.result() for who, call in calls.items()}

    for who, result in results.items():
        assert result.ok, f"{who}: {result.errors}"
    a, b, c = calls["a"], calls["b"], calls["c"]
    heard = {(who, other): calls[who].hears(hz) for who in FREQS
             for other, hz in FREQS.items()}
    loud = max(heard.values())
    allowed = {("a", "b"), ("b", "a"), ("c", "a"), ("c", "b")}
    for pair, power in heard.items():
        if pair in allowed:
            assert power > loud / 20, f"{pair[0]} should hear {pair[1]}: {heard}"
        else:  # not allowed, or oneself: nothing of it
            assert power < loud / 400, f"{pair[0]} should not hear {pair[1]}: {heard}"
    assert a.hears(1000) > 20 * a.hears(1400) and b.hears(600) > 20 * b.hears(1400)
    assert c.hears(600) > 20 * c.hears(1400) and c.hears(1000) > 20 * c.hears(1400)
    for number in numbers.values():
        await webhooks.wait_completed(number)
        assert not webhooks.errors(number)
    # The recording has everything said in the room, c included.
    await webhooks.wait_for(lambda: any("recording_url" in r.json for r in webhooks.of(
        f"/hook/room-rec-{room}")), timeout=30)
    event = next(r.json for r in webhooks.of(f"/hook/room-rec-{room}")
                 if "recording_url" in r.json)
    _, _, (mix,) = decode(stored_file(bridge, event))
    powers = [band_power(mix, hz) for hz in FREQS.values()]
    assert min(powers) > max(powers) / 20, powers


async def test_a_matrix_room_is_capped(bridge, webhooks, lab, monkeypatch):
    monkeypatch.setattr(rooms, "MAX_MATRIX_PARTICIPANTS", 1)
    room = f"room-{new_number()}"
    inside, late = new_number(), new_number()
    webhooks.answer(inside, [room_action(room)])
    webhooks.answer(late, [room_action(room, canHear=[])])

    first = await LiveCall(lab, inside, [Pause(8000), HangUp()]).start()
    await wait_joined(webhooks, inside)
    second = await LiveCall(lab, late, []).start()

    assert (await second.result()).ok
    assert (await first.result()).ok
    await webhooks.wait_completed(late)
    assert any("canSpeak/canHear" in reason and "1 participants" in reason
               for reason in webhooks.errors(late))
    assert not joined(webhooks, late)


async def test_hold_music_and_end_on_exit_in_a_matrix_room(bridge, webhooks, lab, voices):
    """A waiting member who may hear nobody (canHear: []) still hears the hold music, on its
    listener bridge; the moderator's arrival stops it, the moderator is not heard, and the
    moderator's endOnExit hangs the member up."""
    room = f"room-{new_number()}"
    waiting, moderator = new_number(), new_number()
    music = f"{webhooks.url}/audio/tone.wav"  # 440 Hz
    webhooks.answer(waiting, [room_action(room, startOnEnter=False, canHear=[],
                                          musicOnHoldUrl=[music])])
    webhooks.answer(moderator, [room_action(room, startOnEnter=True, endOnExit=True)])

    first = await LiveCall(lab, waiting, []).start()
    await wait_joined(webhooks, waiting)
    await until(lambda: first.hears(440) > 1e9, "the waiting caller never heard the music")
    music_power = first.hears(440)
    boss = await LiveCall(lab, moderator, [Pause(2000), Audio(voices["b"]), Pause(2000),
                                           HangUp()]).start()
    await wait_joined(webhooks, moderator)  # the music was stopped before this event
    started_at = time.monotonic()

    results = [await first.result(), await boss.result()]

    for result in results:
        assert result.ok, result.errors
    for number in (waiting, moderator):
        await webhooks.wait_completed(number)
        assert not webhooks.errors(number)
    assert first.hears(440, since=started_at + 1) < music_power / 100
    assert first.hears(1000) < music_power / 100
