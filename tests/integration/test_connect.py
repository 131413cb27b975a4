"""connect: real SIP agents answer, are busy, reject, never answer; the seed's failover."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from vonage_voice.models.ncco import Notify
from vonage_voice.models.ncco import Talk as SdkTalk
from vonage_voice.models.requests import CreateCallRequest

from bridge.app import BridgeService
from bridge.lab.pcap import tone_samples, write_rtp_pcap
from bridge.lab.sipp import Agent, Audio, HangUp, Pause
from tests.integration.conftest import bridge_config
from tests.integration.harness import new_number
from tests.integration.test_rest_api import (
    API_APP,
    OTHER_APP,
    _start_bridge,
    in_thread,
    sdk,
)
from tests.keys import new_keypair

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tones(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """What the caller says (a 600 Hz tone) and what the agent says (1000 Hz), 3 s each."""
    folder = tmp_path_factory.mktemp("tones")
    return (write_rtp_pcap(folder / "caller.pcap", tone_samples(3, 600)),
            write_rtp_pcap(folder / "agent.pcap", tone_samples(3, 1000)))


async def start_bridge(lab, webhooks, tmp_path, routes, **ari) -> BridgeService:
    service = BridgeService(bridge_config(lab, webhooks, tmp_path, routes=routes, **ari))
    await service.start()
    assert await service.gateway.wait_connected(20)
    return service


@pytest.fixture
async def agents_bridge(request, lab, webhooks, tmp_path) -> AsyncIterator:
    """Starts bridges; parametrized indirectly, the parameter is their ari.rest_transport."""
    services: list[BridgeService] = []
    ari = {"rest_transport": request.param} if hasattr(request, "param") else {}

    async def make(routes: dict[str, int]) -> BridgeService:
        services.append(await start_bridge(lab, webhooks, tmp_path, routes, **ari))
        return services[-1]

    yield make
    for service in services:
        await service.stop()


def connect(number: str, hook: str, **extra) -> dict:
    return {"action": "connect", "from": "4155550123", "eventType": "synchronous",
            "eventUrl": [hook], "endpoint": [{"type": "phone", "number": number}], **extra}


@pytest.mark.parametrize("agents_bridge", ["http", "websocket"], indirect=True)
async def test_seed_000_busy_agent_fails_over_to_the_next_agent(
        agents_bridge, webhooks, dial, tones):
    caller_tone, agent_tone = tones
    async with Agent(486) as busy, Agent(200, hangup_after_ms=3000, audio=agent_tone) as free:
        await agents_bridge({"4155550123": busy.port, "442079354442": free.port})
        number = new_number()
        # The seed's two NCCOs, verbatim: the first connect, and the eventUrl's answer.
        hook = webhooks.hook(f"fallback-{number}", [{
            "action": "connect", "from": "442038973494",
            "endpoint": [{"type": "phone", "number": "442079354442"}]}])
        webhooks.answer(number, [{
            "action": "connect", "from": "4155550123", "timeout": "10",
            "eventType": "synchronous", "eventUrl": [hook],
            "endpoint": [{"type": "phone", "number": "4155550123"}]}])

        call = await dial(number, steps=[Pause(500), Audio(caller_tone)], timeout_s=12)

        assert call.sip.ok, call.sip.errors
        assert busy.invites() == 1 and free.invites() == 1
        # The eventUrl gets the leg's events; the busy one is answered with the next NCCO.
        await webhooks.wait_for(lambda: len(webhooks.of(f"/hook/fallback-{number}")) == 3)
        leg_events = [r.json for r in webhooks.of(f"/hook/fallback-{number}")]
        assert [e["status"] for e in leg_events] == ["started", "busy", "completed"]
        failed = leg_events[1]
        assert failed["to"] == "4155550123"
        assert failed["conversation_uuid"] == webhooks.events(number)[0][
            "conversation_uuid"]
        # Audio both ways through the Asterisk bridge.
        assert call.audio.voiced_seconds() > 1.5, "the caller did not hear the agent"
        assert free.receiver.voiced_seconds() > 1.0, "the agent did not hear the caller"
        await webhooks.wait_completed(number)


@pytest.mark.parametrize(("agent", "status"), [
    (Agent(603), "rejected"),
    (Agent(180), "timeout"),
    (Agent(480), "unanswered"),
    (Agent(404), "failed"),
])
async def test_failed_attempt_reports_its_status_to_a_synchronous_event_url(
        agents_bridge, webhooks, dial, agent, status):
    async with agent:
        await agents_bridge({"4420": agent.port})
        number = new_number()
        hook = webhooks.hook(f"fail-{status}-{number}", [
            {"action": "talk", "text": "Sorry, nobody could take your call."}])
        webhooks.answer(number, [connect("442000000001", hook, timeout=3)])

        call = await dial(number)

        assert call.sip.ok, call.sip.errors
        await webhooks.wait_for(lambda: "completed" in [
            r.json["status"] for r in webhooks.of(f"/hook/fail-{status}-{number}")])
        statuses = [r.json["status"] for r in webhooks.of(f"/hook/fail-{status}-{number}")]
        # Ringing is only seen when the agent rang before failing.
        assert [s for s in statuses if s != "ringing"] == ["started", status, "completed"]
        assert call.audio.voiced_seconds() > 1.0  # the replacement NCCO's talk


async def test_number_without_route_fails_and_the_flow_continues(agents_bridge, webhooks,
                                                                 dial):
    await agents_bridge({})
    number = new_number()
    after = webhooks.hook(f"after-{number}", {})
    webhooks.answer(number, [
        {"action": "connect", "endpoint": [{"type": "phone", "number": "999000"}]},
        {"action": "notify", "payload": {"next": True}, "eventUrl": [after]},
    ])

    await dial(number, expect_status=603)

    await webhooks.wait_completed(number)
    await webhooks.wait_completed("999000")
    leg = [e for e in webhooks.of("/event") if e.json.get("to") == "999000"]
    assert [e.json["status"] for e in leg] == ["started", "failed", "completed"]
    assert leg[-1].json["duration"] == "0"
    assert any("no outbound route" in e for e in webhooks.errors(number))
    assert len(webhooks.of(f"/hook/after-{number}")) == 1


async def test_callee_leg_events_are_sent_once_in_order(agents_bridge, webhooks, dial):
    async with Agent(200, ring_ms=300, hangup_after_ms=1000) as agent:
        await agents_bridge({"44": agent.port})
        number = new_number()
        webhooks.answer(number, [
            {"action": "connect", "endpoint": [{"type": "phone", "number": "447700900001"}]},
            {"action": "talk", "text": "The agent hung up; back to the NCCO."},
        ])

        call = await dial(number)

        assert call.sip.ok, call.sip.errors
        await webhooks.wait_completed(number)
        leg = [e.json for e in webhooks.of("/event") if e.json.get("to") == "447700900001"]
        assert [e["status"] for e in leg] == [
            "started", "ringing", "answered", "completed"]
        assert len({e["uuid"] for e in leg}) == 1
        assert leg[0]["uuid"] != webhooks.events(number)[0]["uuid"]
        assert {e["conversation_uuid"] for e in leg} == {
            webhooks.events(number)[0]["conversation_uuid"]}
        assert leg[0]["direction"] == "outbound"
        assert call.audio.voiced_seconds() > 0.5  # the talk after the connect was heard


async def test_sip_endpoint_dials_the_uri_with_headers(agents_bridge, webhooks, dial):
    async with Agent(200, hangup_after_ms=500) as agent:
        await agents_bridge({})
        number = new_number()
        webhooks.answer(number, [{"action": "connect", "endpoint": [{
            "type": "sip", "uri": f"sip:agent@127.0.0.1:{agent.port}",
            "headers": {"Customer": "42"}}]}])

        call = await dial(number)

        assert call.sip.ok, call.sip.errors
        assert agent.invites() == 1
        assert "X-Customer: 42" in agent.messages


@pytest.mark.parametrize(("greeting", "verdict"), [
    ([*tone_samples(4, 440)], "machine"),  # a long recorded greeting
    ([*tone_samples(0.4, 440), *[0] * 16000], "human"),  # "hello?" then silence
])
async def test_machine_detection_reports_machine_or_human(agents_bridge, webhooks, dial,
                                                          tmp_path, greeting, verdict):
    pcap = write_rtp_pcap(tmp_path / "greeting.pcap", greeting)
    async with Agent(200, hangup_after_ms=6000, audio=pcap) as agent:
        await agents_bridge({"44": agent.port})
        number = new_number()
        callee = "44" + new_number()
        webhooks.answer(number, [
            {"action": "connect", "machineDetection": "hangup",
             "endpoint": [{"type": "phone", "number": callee}]},
            {"action": "talk", "text": "After the connect."},
        ])

        call = await dial(number)

        assert call.sip.ok, call.sip.errors
        await webhooks.wait_completed(number)
        leg = [e.json["status"] for e in webhooks.of("/event") if e.json.get("to") == callee]
        assert leg[:3] == ["started", "ringing", "answered"]
        assert verdict in leg
        assert ("machine" if verdict == "human" else "human") not in leg


async def test_on_answer_ncco_is_heard_by_the_callee_before_the_join(agents_bridge, webhooks,
                                                                     dial, tones):
    caller_tone, _ = tones
    async with Agent(200, hangup_after_ms=6000) as agent:
        await agents_bridge({"44": agent.port})
        number = new_number()
        whisper = webhooks.hook(f"whisper-{number}", [
            {"action": "talk", "text": "A customer is waiting for you."}])
        webhooks.answer(number, [{"action": "connect", "endpoint": [{
            "type": "phone", "number": "447700900003", "dtmfAnswer": "1p2",
            "onAnswer": {"url": whisper}}]}])

        call = await dial(number, steps=[Pause(300), Audio(caller_tone)])

        assert call.sip.ok, call.sip.errors
        [asked] = webhooks.of(f"/hook/whisper-{number}")
        assert asked.method == "GET" and asked.query["to"] == "447700900003"
        heard = agent.receiver.audio_packets()
        assert agent.receiver.voiced_seconds() > 1.5 + 1.0  # the whisper, then the caller
        # dtmfAnswer: the digits reached the agent as RFC 4733 events after the whisper.
        events = {p.payload[0] for p in agent.receiver.packets if p.payload_type == 101}
        assert events == {1, 2}
        assert heard  # sanity: audio packets were recorded


async def test_ringback_tone_url_is_heard_while_the_agent_rings(agents_bridge, webhooks, dial):
    async with Agent(200, ring_ms=3000, hangup_after_ms=500) as agent:
        await agents_bridge({"44": agent.port})
        number = new_number()
        webhooks.answer(number, [{"action": "connect",
                                  "ringbackTone": f"{webhooks.url}/audio/tone.wav",
                                  "endpoint": [{"type": "phone", "number": "447700900004"}]}])

        call = await dial(number)

        assert call.sip.ok, call.sip.errors
        assert call.audio.voiced_seconds() > 2.0  # the tone, while the agent rang for 3 s


async def test_random_from_number_uses_one_of_the_applications_numbers(agents_bridge,
                                                                       webhooks, dial):
    from tests.integration.harness import MAIN_NUMBER

    async with Agent(200, hangup_after_ms=300) as agent:
        await agents_bridge({"44": agent.port})
        number = new_number()
        webhooks.answer(number, [{"action": "connect", "randomFromNumber": True,
                                  "endpoint": [{"type": "phone", "number": "447700900005"}]}])

        call = await dial(number)

        assert call.sip.ok, call.sip.errors
        invite = agent.messages.split("INVITE sip:", 1)[1]
        from_line = next(line for line in invite.splitlines() if line.startswith("From:"))
        assert MAIN_NUMBER in from_line


async def test_ivr_caller_presses_4_mid_prompt_and_the_reply_connects_to_sales(
        agents_bridge, webhooks, dial):
    """The reference's IVR: talk with bargeIn, input; the eventUrl answers 4 with sales."""
    from bridge.lab.sipp import Dtmf

    async with Agent(200, hangup_after_ms=1000) as sales:
        await agents_bridge({"4420": sales.port})
        number = new_number()
        ivr = webhooks.hook(f"ivr-{number}", [{
            "action": "connect", "endpoint": [{"type": "phone", "number": "442079460099"}]}])
        webhooks.answer(number, [
            {"action": "talk", "text": "For sales press 4. For support press 5. " * 3,
             "bargeIn": True},
            {"action": "input", "maxDigits": 1, "eventUrl": [ivr]},
        ])

        call = await dial(number, steps=[Pause(1500), Dtmf("4")])

        assert call.sip.ok, call.sip.errors
        [pressed] = webhooks.of(f"/hook/ivr-{number}")
        assert pressed.json["dtmf"] == {"digits": "4", "timed_out": False}
        assert sales.invites() == 1
        await webhooks.wait_completed(number)
        leg = [e.json["status"] for e in webhooks.of("/event")
               if e.json.get("to") == "442079460099"]
        assert leg == ["started", "ringing", "answered", "completed"]


# ------------------------------------------- the callee leg ends, whichever side ends it
def leg_statuses(webhooks, callee: str) -> list[str]:
    """The status events of the callee leg dialled at ``callee`` (event_url), in order."""
    return [e.json["status"] for e in webhooks.of("/event")
            if isinstance(e.json, dict) and e.json.get("to") == callee]


def saw_cancel(agent: Agent) -> bool:
    """The agent's phone received a CANCEL: it stopped ringing."""
    return bool(re.search(r"message received[^\n]*\n+\s*CANCEL ", agent.messages))


async def test_caller_hanging_up_while_the_callee_rings_cancels_and_completes_the_leg(
        agents_bridge, webhooks, dial):
    async with Agent(180) as agent:  # rings until it is cancelled
        await agents_bridge({"44": agent.port})
        number, callee = new_number(), "44" + new_number()
        webhooks.answer(number, [
            {"action": "talk", "text": "Please hold."},
            {"action": "connect", "timeout": 60,
             "endpoint": [{"type": "phone", "number": callee}]},
        ])

        # The prompt lasts about a second; the agent rings from then until the caller leaves.
        call = await dial(number, steps=[Pause(6000), HangUp()])

        assert call.sip.ok, call.sip.errors
        await webhooks.wait_completed(callee)
        assert leg_statuses(webhooks, callee) == ["started", "ringing", "cancelled", "completed"]
        leg = [e.json for e in webhooks.of("/event") if e.json.get("to") == callee]
        assert leg[-1]["duration"] == "0" and leg[-1]["disconnected_by"] == "platform"
        await webhooks.wait_completed(number)
        assert webhooks.events(number)[-1]["disconnected_by"] == "user"
        await webhooks.wait_for(lambda: saw_cancel(agent))


async def test_connect_timeout_ends_the_leg_and_the_ncco_moves_on(agents_bridge, webhooks,
                                                                  dial):
    async with Agent(180) as agent:
        await agents_bridge({"44": agent.port})
        number, callee = new_number(), "44" + new_number()
        webhooks.answer(number, [
            {"action": "connect", "timeout": 3,
             "endpoint": [{"type": "phone", "number": callee}]},
            {"action": "talk", "text": "Nobody answered. Goodbye."},
        ])

        call = await dial(number)

        assert call.sip.ok, call.sip.errors
        await webhooks.wait_completed(callee)
        assert leg_statuses(webhooks, callee) == ["started", "ringing", "timeout", "completed"]
        assert call.audio.voiced_seconds() > 1.0  # the talk after the connect was heard
        await webhooks.wait_completed(number)
        assert webhooks.statuses(number) == ["started", "ringing", "answered", "completed"]


@pytest.fixture(scope="module")
def api_keys() -> dict[str, tuple[str, str]]:
    return {API_APP: new_keypair(), OTHER_APP: new_keypair()}


@pytest.fixture
async def api_agents_bridge(lab, webhooks, tmp_path, api_keys) -> AsyncIterator:
    """A bridge whose default application takes REST requests, with routes to agents."""
    services: list[BridgeService] = []

    async def make(routes: dict[str, int]) -> BridgeService:
        services.append(await _start_bridge(lab, webhooks, tmp_path, api_keys, API_APP,
                                            routes=routes))
        return services[-1]

    yield make
    for service in services:
        await service.stop()


def rest_client(service: BridgeService, api_keys: dict[str, tuple[str, str]]):
    return sdk(service, API_APP, api_keys[API_APP][0])


async def test_rest_hangup_of_the_caller_while_the_callee_rings_cancels_the_leg(
        api_agents_bridge, api_keys, webhooks, dial):
    async with Agent(180) as agent:
        service = await api_agents_bridge({"44": agent.port})
        number, callee = new_number(), "44" + new_number()
        webhooks.answer(number, [{"action": "connect", "timeout": 60,
                                  "endpoint": [{"type": "phone", "number": callee}]}])
        # Nothing needs media: the caller hears ringing (SIP 180) too, and is turned down
        # when the call is hung up.
        call_task = asyncio.ensure_future(dial(number, expect_status=603))
        try:
            await webhooks.wait_for(lambda: "ringing" in leg_statuses(webhooks, callee))
            caller_uuid = webhooks.events(number)[0]["uuid"]

            await in_thread(rest_client(service, api_keys).voice.hangup, caller_uuid)

            call = await call_task
        finally:
            if not call_task.done():
                call_task.cancel()
        assert call.sip.ok, call.sip.errors
        await webhooks.wait_completed(callee)
        assert leg_statuses(webhooks, callee) == ["started", "ringing", "cancelled", "completed"]
        await webhooks.wait_completed(number)
        assert webhooks.events(number)[-1]["disconnected_by"] == "platform"
        await webhooks.wait_for(lambda: saw_cancel(agent))


async def test_rest_transfer_while_the_callee_rings_cancels_the_leg_and_runs_the_new_ncco(
        api_agents_bridge, api_keys, webhooks, dial):
    async with Agent(180) as agent:
        service = await api_agents_bridge({"44": agent.port})
        number, callee = new_number(), "44" + new_number()
        moved = webhooks.hook(f"moved-{number}", {})
        webhooks.answer(number, [
            {"action": "talk", "text": "Please hold."},
            {"action": "connect", "timeout": 60,
             "endpoint": [{"type": "phone", "number": callee}]},
        ])
        call_task = asyncio.ensure_future(dial(number))
        try:
            await webhooks.wait_for(lambda: "ringing" in leg_statuses(webhooks, callee))
            caller_uuid = webhooks.events(number)[0]["uuid"]

            await in_thread(rest_client(service, api_keys).voice.transfer_call_ncco,
                            caller_uuid, [Notify(payload={"moved": True}, eventUrl=[moved]),
                                          SdkTalk(text="You were transferred. Goodbye.")])

            call = await call_task
        finally:
            if not call_task.done():
                call_task.cancel()
        assert call.sip.ok, call.sip.errors
        await webhooks.wait_completed(callee)
        assert leg_statuses(webhooks, callee) == ["started", "ringing", "cancelled", "completed"]
        await webhooks.wait_for(lambda: saw_cancel(agent))
        assert [r.json for r in webhooks.of(f"/hook/moved-{number}")] == [{"moved": True}]
        await webhooks.wait_completed(number)


async def test_rest_hangup_of_an_outbound_call_while_it_rings_is_cancelled_then_completed(
        api_agents_bridge, api_keys, webhooks):
    async with Agent(180) as agent:
        service = await api_agents_bridge({"44": agent.port})
        callee = "44" + new_number()
        client = rest_client(service, api_keys)
        created = await in_thread(client.voice.create_call, CreateCallRequest(
            to=[{"type": "phone", "number": callee}], from_={"number": "15550001111"},
            ncco=[SdkTalk(text="Never heard.")], ringing_timer=60))
        await webhooks.wait_for(lambda: "ringing" in webhooks.statuses(callee))

        await in_thread(client.voice.hangup, created.uuid)

        await webhooks.wait_completed(callee)
        assert webhooks.statuses(callee) == ["started", "ringing", "cancelled", "completed"]
        assert webhooks.events(callee)[-1]["duration"] == "0"
        await webhooks.wait_for(lambda: saw_cancel(agent))
