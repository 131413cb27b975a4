"""Exotel Connect ``recording`` with real SIP callers and agents (sipp).

The caller sends a 600 Hz tone and the agent a 1000 Hz tone; the stored file is checked as in
test_record.py: ``dual`` holds each party on its own channel (caller 1, agent 2), ``single`` is
one mono mix of both. The URL reaches the application as ``RecordingUrl`` (after-conversation
request) and in a ``record`` event; the file stays in the store when the webhooks fail.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bridge.app import BridgeService
from bridge.config import Config
from bridge.lab.pcap import tone_samples, write_rtp_pcap
from bridge.lab.sipp import Agent, Audio, HangUp, Pause, free_port
from tests.integration import test_exotel
from tests.integration.conftest import bridge_config
from tests.integration.harness import Reply, WebhookApp
from tests.integration.test_exotel import AppletApp, call, dest, new_applet
from tests.integration.test_record import band_power, decode, duration, file_type, rms

pytestmark = pytest.mark.integration

#: The applet's web application (Primary URL, transitions, passthru), shared with test_exotel.
applet_app = test_exotel.applet_app
hold_audio = test_exotel.hold_audio  # applet_app's dependency

#: The agent's number prefix routed to the sipp agent of each test.
AGENT = "+4440001"


@pytest.fixture(scope="module")
def tones(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("exotel-recording-tones")
    return {"caller": write_rtp_pcap(folder / "caller.pcap", tone_samples(4, 600)),
            "agent": write_rtp_pcap(folder / "agent.pcap", tone_samples(4, 1000))}


@pytest.fixture
async def exotel(lab, webhooks: WebhookApp, tmp_path: Path) -> AsyncIterator[Any]:
    """Like test_exotel's bridge, plus an application ``deaf`` whose event_url is closed."""
    services: list[BridgeService] = []

    async def start(agent_port: int, applets: dict[str, dict[str, Any]]) -> BridgeService:
        base = bridge_config(lab, webhooks, tmp_path, routes={AGENT.lstrip("+"): agent_port})
        data = base.model_dump(by_alias=True)
        data["ari"]["password"] = base.ari.password.get_secret_value()
        main = next(a for a in data["applications"] if a["id"] == "main")
        closed = f"http://127.0.0.1:{free_port(socket.SOCK_STREAM)}/events"
        data["applications"].append({**main, "id": "deaf", "event_url": closed})
        data["connect_applets"] = applets
        data["agents"] = {"lease_s": 5}
        service = BridgeService(Config.model_validate(data))
        await service.start()
        assert await service.gateway.wait_connected(20)
        services.append(service)
        return service

    yield start
    for service in services:
        await service.stop()


def stored(service: BridgeService, url: str) -> Path:
    assert url.startswith(f"{service.base_url}/v1/files/"), url
    path = service.engine.recordings.files.path_for(url.rsplit("/", 1)[1])
    assert path is not None, f"{url} is not in the FileStore"
    return path


def record_events(webhooks: WebhookApp, number: str) -> list[dict[str, Any]]:
    return [e for e in webhooks.events(number) if "recording_url" in e]


# -------------------------------------------------------------------------------- tests
async def test_dual_recording_has_each_party_on_its_own_channel(
        exotel, applet_app: AppletApp, lab, webhooks: WebhookApp, tones):
    applet = new_applet(applet_app)
    applet_app.script(f"/passthru/{applet.key}", Reply(status=200))
    async with Agent(200, hangup_after_ms=6000, audio=tones["agent"]) as agent:
        applet_app.script(applet.primary, dest(
            AGENT, recording={"record": True, "channels": "dual"},
            call_event_passthru_url=applet.passthru))
        service = await exotel(agent.port, {applet.number: applet.config()})

        result = await call(lab, applet.number, steps=[Pause(1000), Audio(tones["caller"])])

        assert result.sip.ok, result.sip.errors
        await applet_app.wait_for(lambda: applet.outcomes() == ["after_conversation"])
        # The primary URL was asked before anything was recorded.
        assert "RecordingUrl" not in applet_app.of(applet.primary)[0].query
        after = applet_app.of(applet.transition("after_conversation"))[0].query
        url = after["RecordingUrl"]
        await webhooks.wait_for(lambda: len(record_events(webhooks, applet.number)) == 1)
        event = record_events(webhooks, applet.number)[0]
        assert event["recording_url"] == url and event["size"] > 0
        # The passthru JSON has no recording field: its terminal event is unchanged.
        await applet_app.wait_for(lambda: len(applet_app.of(f"/passthru/{applet.key}")) >= 4)
        terminal = applet_app.of(f"/passthru/{applet.key}")[-1].json
        assert terminal["event_details"]["event_type"] == "terminal"
        assert set(terminal["call_details"]) == {
            "call_sid", "direction", "from", "to", "virtual_number", "created_time",
            "current_time", "status"}

        path = stored(service, url)
        assert file_type(path) == "mp3"
        channels, rate, (caller, other) = decode(path)
        assert (channels, rate) == (2, 8000)
        # From the join to the agent's BYE (6 s after answering).
        assert 4.0 < duration(path) < 9.0, duration(path)
        # Channel 1 is what the caller said (600 Hz), channel 2 the agent (1000 Hz).
        assert band_power(caller, 600) > 20 * band_power(caller, 1000)
        assert band_power(other, 1000) > 20 * band_power(other, 600)
        assert rms(caller) > 300 and rms(other) > 300


async def test_single_recording_is_one_mono_mix_kept_when_webhooks_fail(
        exotel, applet_app: AppletApp, lab, webhooks: WebhookApp, tones):
    applet = new_applet(applet_app)
    async with Agent(200, hangup_after_ms=6000, audio=tones["agent"]) as agent:
        applet_app.script(applet.primary, dest(
            AGENT, recording={"record": True, "channels": "single"}))
        config = applet.config(application="deaf")  # event_url refuses connections
        applet_app.script(applet.transition("after_conversation"), Reply(status=500))
        service = await exotel(agent.port, {applet.number: config})

        result = await call(lab, applet.number, steps=[Pause(1000), Audio(tones["caller"])])

        assert result.sip.ok, result.sip.errors
        await applet_app.wait_for(lambda: applet.outcomes() == ["after_conversation"])
        url = applet_app.of(applet.transition("after_conversation"))[0].query["RecordingUrl"]
        # Neither the after-conversation URL (500) nor event_url (closed) took anything;
        # the file is still stored and within retention.
        assert service.engine.recordings.sweep() == 0
        path = stored(service, url)
        assert file_type(path) == "mp3"
        channels, rate, (mono,) = decode(path)
        assert (channels, rate) == (1, 8000)
        assert 4.0 < duration(path) < 9.0, duration(path)
        assert rms(mono) > 300
        # Both parties are in the mix.
        quiet = band_power(mono, 2500)
        assert band_power(mono, 600) > 20 * quiet and band_power(mono, 1000) > 20 * quiet


async def test_recording_survives_the_caller_hanging_up(
        exotel, applet_app: AppletApp, lab, webhooks: WebhookApp, tones):
    applet = new_applet(applet_app)
    async with Agent(200, audio=tones["agent"]) as agent:  # waits for BYE
        applet_app.script(applet.primary, dest(
            AGENT, recording={"record": True, "channels": "dual"}))
        service = await exotel(agent.port, {applet.number: applet.config()})

        result = await call(lab, applet.number, steps=[
            Pause(1000), Audio(tones["caller"]), Pause(4500), HangUp()])

        assert result.sip.ok, result.sip.errors
        # No transition is asked for a caller who left; the record event brings the URL.
        await webhooks.wait_for(lambda: len(record_events(webhooks, applet.number)) == 1,
                                timeout=30)
        assert applet.outcomes() == []
        path = stored(service, record_events(webhooks, applet.number)[0]["recording_url"])
        channels, _, (caller, other) = decode(path)
        assert channels == 2
        assert 3.0 < duration(path) < 9.0, duration(path)
        assert band_power(caller, 600) > 20 * band_power(caller, 1000)
        assert band_power(other, 1000) > 20 * band_power(other, 600)
