"""record: real callers and agents; the stored file is checked (format, length, content, and
for split recordings that each channel holds only its own party)."""

from __future__ import annotations

import math
import subprocess
import tempfile
import wave
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bridge.app import BridgeService
from bridge.lab.pcap import tone_samples, write_rtp_pcap
from bridge.lab.sipp import _ULAW, Agent, Audio, Dtmf, Pause, RtpReceiver
from tests.integration.conftest import bridge_config
from tests.integration.harness import WebhookApp, new_number

pytestmark = pytest.mark.integration


# ------------------------------------------------------------------------ audio checks
def band_power(samples: list[int], frequency: float, rate: int = 8000) -> float:
    """Mean Goertzel power at ``frequency`` over 20 ms blocks."""
    block = rate // 50
    coeff = 2 * math.cos(2 * math.pi * frequency / rate)
    total = 0.0
    blocks = 0
    for start in range(0, len(samples) - block + 1, block):
        s1 = s2 = 0.0
        for x in samples[start:start + block]:
            s1, s2 = x + coeff * s1 - s2, s1
        total += s1 * s1 + s2 * s2 - coeff * s1 * s2
        blocks += 1
    return total / max(blocks, 1)


def received_samples(receiver: RtpReceiver) -> list[int]:
    return [_ULAW[b] for p in receiver.audio_packets() for b in p.payload]


def decode(path: Path) -> tuple[int, int, list[list[int]]]:
    """(channels, rate, samples per channel) of any file sox reads."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "decoded.wav"
        subprocess.run(["sox", str(path), "-e", "signed-integer", "-b", "16", str(out)],
                       check=True)
        with wave.open(str(out), "rb") as wav:
            channels, rate = wav.getnchannels(), wav.getframerate()
            frames = wav.readframes(wav.getnframes())
    data = [int.from_bytes(frames[i:i + 2], "little", signed=True)
            for i in range(0, len(frames), 2)]
    return channels, rate, [data[c::channels] for c in range(channels)]


def file_type(path: Path) -> str:
    return subprocess.run(["soxi", "-t", str(path)], capture_output=True, text=True,
                          check=True).stdout.strip()


def duration(path: Path) -> float:
    return float(subprocess.run(["soxi", "-D", str(path)], capture_output=True, text=True,
                                check=True).stdout)


def rms(samples: list[int]) -> float:
    return math.sqrt(sum(s * s for s in samples) / max(len(samples), 1))


def stored_file(service: BridgeService, event: dict[str, Any]) -> Path:
    url = event["recording_url"]
    assert url.startswith(f"{service.base_url}/v1/files/"), url
    path = service.engine.recordings.files.path_for(url.rsplit("/", 1)[1])
    assert path is not None, f"{url} is not in the FileStore"
    return path


def check_record_event(event: dict[str, Any], call_events: list[dict[str, Any]]) -> None:
    for key in ("start_time", "end_time", "recording_url", "size", "recording_uuid",
                "conversation_uuid", "timestamp"):
        assert key in event, f"record event without {key}: {event}"
    assert event["start_time"] <= event["end_time"]
    assert event["size"] > 0
    assert event["conversation_uuid"] == call_events[0]["conversation_uuid"]


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def pcaps(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("record-tones")
    return {
        "caller": write_rtp_pcap(folder / "caller.pcap", tone_samples(4, 600)),
        "agent": write_rtp_pcap(folder / "agent.pcap", tone_samples(4, 1000)),
        # Phones keep sending RTP when nobody speaks: 2 s of tone, then 8 s of silence.
        "then_silence": write_rtp_pcap(folder / "silence.pcap",
                                       tone_samples(2, 600) + [0] * 8 * 8000),
    }


@pytest.fixture
async def routed_bridge(lab, webhooks, tmp_path) -> AsyncIterator[Any]:
    services: list[BridgeService] = []

    async def make(routes: dict[str, int]) -> BridgeService:
        service = BridgeService(bridge_config(lab, webhooks, tmp_path, routes=routes))
        await service.start()
        assert await service.gateway.wait_connected(20)
        services.append(service)
        return service

    yield make
    for service in services:
        await service.stop()


async def record_event(webhooks: WebhookApp, hook_path: str) -> dict[str, Any]:
    await webhooks.wait_for(lambda: len(webhooks.of(hook_path)) >= 1, timeout=30)
    event = webhooks.of(hook_path)[0].json
    assert isinstance(event, dict)
    return event


# -------------------------------------------------------------------------------- tests
async def test_split_conversation_records_each_party_on_its_own_channel(
        routed_bridge, webhooks, dial, pcaps):
    async with Agent(200, hangup_after_ms=5000, audio=pcaps["agent"]) as agent:
        service = await routed_bridge({"4420": agent.port})
        number = new_number()
        hook = webhooks.hook(f"rec-split-{number}", {})
        webhooks.answer(number, [
            {"action": "record", "split": "conversation", "channels": 2, "format": "wav",
             "eventUrl": [hook]},
            {"action": "connect", "endpoint": [{"type": "phone", "number": "442000000001"}]},
        ])

        call = await dial(number, steps=[Pause(800), Audio(pcaps["caller"])], timeout_s=30)

        assert call.sip.ok, call.sip.errors
        assert agent.receiver is not None and agent.receiver.voiced_seconds() > 1.0
        event = await record_event(webhooks, f"/hook/rec-split-{number}")
        await webhooks.wait_completed(number)
        check_record_event(event, webhooks.events(number))
        path = stored_file(service, event)
        assert file_type(path) == "wav"
        channels, rate, sides = decode(path)
        assert (channels, rate) == (2, 8000)
        assert 3.0 < duration(path) < 15.0
        caller, other = sides
        # Channel 1 is what the caller said (600 Hz), channel 2 the agent (1000 Hz).
        assert band_power(caller, 600) > 20 * band_power(caller, 1000)
        assert band_power(other, 1000) > 20 * band_power(other, 600)
        assert rms(caller) > 300 and rms(other) > 300


async def test_voicemail_end_on_key_with_beep_in_mp3(bridge, webhooks, dial, pcaps):
    number = new_number()
    webhooks.answer(number, [
        {"action": "talk", "text": "Please leave a message after the tone."},
        {"action": "record", "endOnKey": "#", "beepStart": True, "format": "mp3"},
        {"action": "talk", "text": "Thank you for your message. Goodbye."},
    ])

    call = await dial(number, steps=[Pause(3000), Audio(pcaps["caller"]), Pause(4500),
                                     Dtmf("#")], timeout_s=30)

    assert call.sip.ok, call.sip.errors  # the NCCO went on after '#' and hung up
    await webhooks.wait_completed(number)
    await webhooks.wait_for(
        lambda: any("recording_url" in e for e in webhooks.events(number)), timeout=30)
    event = next(e for e in webhooks.events(number) if "recording_url" in e)
    assert event["uuid"] == webhooks.events(number)[0]["uuid"]
    check_record_event(event, webhooks.events(number))
    path = stored_file(bridge, event)
    assert file_type(path) == "mp3"
    length = duration(path)
    assert 3.0 < length < 12.0, length
    channels, _, (mono,) = decode(path)
    assert channels == 1
    assert band_power(mono, 600) > 10 * band_power(mono, 1000)
    assert rms(mono) > 300


async def test_end_on_silence_ends_the_recording_and_the_ncco_goes_on(
        bridge, webhooks, dial, pcaps):
    number = new_number()
    after = webhooks.hook(f"after-silence-{number}", {})
    webhooks.answer(number, [
        {"action": "record", "endOnSilence": 3, "format": "ogg"},
        {"action": "notify", "payload": {"recorded": True}, "eventUrl": [after]},
    ])

    call = await dial(number, steps=[Pause(300), Audio(pcaps["then_silence"])], timeout_s=30)

    assert call.sip.ok, call.sip.errors
    assert len(webhooks.of(f"/hook/after-silence-{number}")) == 1
    await webhooks.wait_for(
        lambda: any("recording_url" in e for e in webhooks.events(number)), timeout=30)
    event = next(e for e in webhooks.events(number) if "recording_url" in e)
    path = stored_file(bridge, event)
    assert file_type(path) in ("vorbis", "ogg")
    length = duration(path)
    assert 1.5 < length < 9.0, length  # 2 s of tone, then at most the silence limit
    _, _, (mono,) = decode(path)
    assert rms(mono) > 300
