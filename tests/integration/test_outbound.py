"""Outbound calls: the engine rings a real agent, runs the NCCO once answered."""

from __future__ import annotations

import pytest

from bridge.calls.outbound import OutboundCall
from bridge.lab.sipp import Agent
from bridge.ncco.models import PhoneEndpoint, SipEndpoint, parse_ncco
from tests.integration.harness import new_number
from tests.integration.test_connect import start_bridge

pytestmark = pytest.mark.integration


def to_phone(number: str) -> PhoneEndpoint:
    return PhoneEndpoint.model_validate({"type": "phone", "number": number})


async def test_outbound_call_runs_the_ncco_when_the_agent_answers(lab, webhooks, tmp_path):
    async with Agent(200) as agent:
        service = await start_bridge(lab, webhooks, tmp_path, {"44": agent.port})
        try:
            number = "44" + new_number()
            session = await service.engine.place_call(OutboundCall(
                application_id="main", to=to_phone(number), from_number="15550001111",
                ncco=parse_ncco([{"action": "talk", "text": "This is an outbound call."}]),
            ))
            await webhooks.wait_completed(number)
            assert webhooks.statuses(number) == ["started", "ringing", "answered", "completed"]
            assert {e["uuid"] for e in webhooks.events(number)} == {session.uuid}
            assert webhooks.events(number)[0]["direction"] == "outbound"
            assert agent.receiver.voiced_seconds() > 1.0  # the agent heard the talk
        finally:
            await service.stop()


async def test_outbound_call_fetches_answer_url_after_answer(lab, webhooks, tmp_path):
    async with Agent(200) as agent:
        service = await start_bridge(lab, webhooks, tmp_path, {})
        try:
            uri = f"sip:alice@127.0.0.1:{agent.port}"
            webhooks.answer(uri, [{"action": "talk", "text": "Fetched after answer."}])
            await service.engine.place_call(OutboundCall(
                application_id="main",
                to=SipEndpoint.model_validate({"type": "sip", "uri": uri}),
                from_number="15550001111",
            ))
            await webhooks.wait_completed(uri)
            [answer] = [r for r in webhooks.of("/answer") if r.query.get("to") == uri]
            assert webhooks.statuses(uri).index("answered") < len(webhooks.statuses(uri))
            assert answer.query["from"] == "15550001111"
            assert webhooks.errors(uri) == []
            assert agent.receiver.voiced_seconds() > 0.8
        finally:
            await service.stop()


async def test_busy_destination_ends_with_busy_then_completed(lab, webhooks, tmp_path):
    async with Agent(486) as agent:
        service = await start_bridge(lab, webhooks, tmp_path, {"44": agent.port})
        try:
            number = "44" + new_number()
            await service.engine.place_call(OutboundCall(
                application_id="main", to=to_phone(number), from_number="15550001111",
                ncco=parse_ncco([{"action": "talk", "text": "never heard"}]),
            ))
            await webhooks.wait_completed(number)
            await webhooks.wait_for(lambda: not service.engine.sessions)
            # Vonage: completed "is always received at the end of a call".
            assert webhooks.statuses(number) == ["started", "busy", "completed"]
            completed = webhooks.events(number)[-1]
            assert completed["duration"] == "0" and completed["disconnected_by"] == "user"
        finally:
            await service.stop()


async def test_outbound_call_to_a_websocket_streams_the_ncco_to_the_application(
        lab, webhooks, tmp_path):
    from aiohttp import web

    from bridge.ncco.models import WebsocketEndpoint
    from tests.integration.test_websocket import EchoServer

    echo = EchoServer()
    app = web.Application()
    app.router.add_get("/socket", echo.handler)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", echo.port).start()
    service = await start_bridge(lab, webhooks, tmp_path, {})
    try:
        uri = f"ws://127.0.0.1:{echo.port}/socket"
        await service.engine.place_call(OutboundCall(
            application_id="main",
            to=WebsocketEndpoint.model_validate({"type": "websocket", "uri": uri,
                                                 "content-type": "audio/l16;rate=16000"}),
            from_number="15550001111",
            ncco=parse_ncco([{"action": "talk", "text": "Hello, web socket."}]),
        ))
        await webhooks.wait_completed(uri)
        assert webhooks.statuses(uri) == ["started", "answered", "completed"]
        assert echo.texts and '"audio/l16;rate=16000"' in echo.texts[0]
        assert echo.loud_frames() > 25  # more than half a second of speech reached it
    finally:
        await service.stop()
        await runner.cleanup()
