"""connect to a WebSocket endpoint: Vonage's first message, then 20 ms L16 frames both ways."""

from __future__ import annotations

import json
import math
import struct

import pytest
from aiohttp import WSMsgType, web

from bridge.lab.pcap import tone_samples, write_rtp_pcap
from bridge.lab.sipp import Audio, HangUp, Pause, free_port
from tests.integration.harness import new_number

pytestmark = pytest.mark.integration


class EchoServer:
    """The application's WebSocket: records what arrives and sends every frame back."""

    def __init__(self) -> None:
        self.texts: list[str] = []
        self.frames: list[bytes] = []
        self.port = free_port(1)

    async def handler(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            if msg.type is WSMsgType.TEXT:
                self.texts.append(msg.data)
            elif msg.type is WSMsgType.BINARY:
                self.frames.append(msg.data)
                await ws.send_bytes(msg.data)
        return ws

    def loud_frames(self) -> int:
        loud = 0
        for frame in self.frames:
            samples = struct.unpack(f"<{len(frame) // 2}h", frame)
            if math.sqrt(sum(s * s for s in samples) / len(samples)) > 500:
                loud += 1
        return loud


@pytest.fixture
async def echo():
    server = EchoServer()
    app = web.Application()
    app.router.add_get("/socket", server.handler)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", server.port).start()
    yield server
    await runner.cleanup()


@pytest.mark.parametrize("rate", [8000, 16000])
async def test_websocket_gets_first_message_then_audio_both_ways(bridge, webhooks, dial, echo,
                                                                 tmp_path, rate):
    tone = write_rtp_pcap(tmp_path / "tone.pcap", tone_samples(3, 600))
    number = new_number()
    webhooks.answer(number, [
        {"action": "talk", "text": "Please wait while we connect you"},  # the seed's sample
        {"action": "connect", "eventUrl": [f"{webhooks.url}/event"], "from": "441632960960",
         "endpoint": [{"type": "websocket", "uri": f"ws://127.0.0.1:{echo.port}/socket",
                       "content-type": f"audio/l16;rate={rate}",
                       "headers": {"whatever": "metadata_you_want"}}]},
    ])

    call = await dial(number, steps=[Pause(3500), Audio(tone), Pause(4000), HangUp()])

    assert call.sip.ok, call.sip.errors
    first = json.loads(echo.texts[0])
    assert first == {"event": "websocket:connected",
                     "content-type": f"audio/l16;rate={rate}", "whatever": "metadata_you_want"}
    assert {len(f) for f in echo.frames} == {rate * 2 // 50}  # 20 ms of 16-bit samples
    assert echo.loud_frames() > 100  # about 3 s of the caller's tone reached the application
    # ... and came back: the caller heard its own tone through the application.
    greeting_and_echo = call.audio.voiced_seconds()
    assert greeting_and_echo > 2.5 + 1.0
    await webhooks.wait_completed(number)
    leg = [e.json for e in webhooks.of("/event")
           if e.json.get("to") == f"ws://127.0.0.1:{echo.port}/socket"]
    assert [e["status"] for e in leg] == ["started", "answered", "completed"]


async def test_unreachable_websocket_fails_the_leg_and_the_flow_goes_on(bridge, webhooks, dial):
    number = new_number()
    url = f"ws://127.0.0.1:{free_port(1)}/socket"
    webhooks.answer(number, [
        {"action": "connect", "endpoint": [{"type": "websocket", "uri": url}]},
        {"action": "talk", "text": "The socket is down."},
    ])

    call = await dial(number)

    assert call.sip.ok
    await webhooks.wait_completed(number)
    await webhooks.wait_completed(url)
    assert [e.json["status"] for e in webhooks.of("/event") if e.json.get("to") == url] == [
        "started", "failed", "completed"]
    assert any("unreachable" in e for e in webhooks.errors(number))
