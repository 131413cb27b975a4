"""Agents' SIP devices provisioned by the bridge (agents.devices) and dialled by Connect.

Each device is a sipp phone (bridge.lab.sipp.Device) that registers with digest auth from
127.0.0.2 and answers INVITEs; the bridge created its PJSIP auth/aor/endpoint over ARI.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest

from bridge.app import BridgeService
from bridge.config import Config
from bridge.lab.pcap import tone_samples, write_rtp_pcap
from bridge.lab.sipp import Agent, Audio, Device, Pause
from tests.integration import test_exotel
from tests.integration.conftest import bridge_config
from tests.integration.harness import WebhookApp
from tests.integration.test_exotel import call, dest, new_applet
from tests.integration.test_resilience import TcpProxy

pytestmark = pytest.mark.integration

applet_app = test_exotel.applet_app
hold_audio = test_exotel.hold_audio  # applet_app's dependency

AGENT = "+4450001"  # a phone number routed to a trunk agent (sipp)


def new_device() -> tuple[str, str]:
    """A device name no other test uses (Asterisk keeps provisioned devices) and a password."""
    return f"agent{uuid.uuid4().hex[:10]}", f"pw-{uuid.uuid4().hex}"


@pytest.fixture(scope="module")
def caller_tone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_rtp_pcap(tmp_path_factory.mktemp("device-tones") / "caller.pcap",
                          tone_samples(3, 600))


@pytest.fixture
async def start(lab, webhooks: WebhookApp, tmp_path: Path) -> AsyncIterator[Any]:
    services: list[BridgeService] = []

    async def start(devices: list[dict[str, Any]], applets: dict[str, dict[str, Any]],
                    agent_port: int | None = None, **ari: Any) -> BridgeService:
        routes = {AGENT.lstrip("+"): agent_port} if agent_port else None
        base = bridge_config(lab, webhooks, tmp_path, routes=routes, **ari)
        data = base.model_dump(by_alias=True)
        data["ari"]["password"] = base.ari.password.get_secret_value()
        data["connect_applets"] = applets
        data["agents"] = {"lease_s": 5, "devices": devices}
        service = BridgeService(Config.model_validate(data))
        await service.start()
        assert await service.gateway.wait_connected(20), service.gateway.last_error
        await until(lambda: service.engine.devices.passes >= 1)
        report = service.engine.devices.last_report
        assert report is not None and report.failed == {}, report
        services.append(service)
        return service

    yield start
    for service in services:
        await service.stop()


async def until(predicate: Callable[[], Any], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def state_of(service: BridgeService, name: str) -> dict[str, Any] | None:
    return await service.gateway.endpoint_state("PJSIP", name)


async def wait_state(service: BridgeService, name: str, want: str) -> None:
    deadline = time.monotonic() + 20
    while True:
        state = await state_of(service, name)
        if state is not None and state.get("state") == want:
            return
        assert time.monotonic() < deadline, f"{name} is {state}, not {want}"
        await asyncio.sleep(0.05)


def skips(webhooks: WebhookApp, number: str) -> list[tuple[str, str]]:
    return [(e["agent"], e["reason"]) for e in webhooks.events(number)
            if e.get("status") == "agent_skipped"]


def registrar(lab) -> tuple[str, int]:
    return lab.sip_host, lab.sip_port


# ------------------------------------------------------------------------------ tests
async def test_registered_device_answers_a_connect_call_and_hears_the_caller(
        start, applet_app, lab, webhooks, caller_tone):
    name, password = new_device()
    applet = new_applet(applet_app)
    applet_app.script(applet.primary, dest(f"sip:{name}", max_ringing_duration=5))
    service = await start([{"name": name, "password": password}],
                          {applet.number: applet.config()})
    # Provisioned over ARI: Asterisk knows the endpoint, not registered yet.
    assert (await state_of(service, name) or {}).get("state") == "offline"
    endpoint = await service.gateway.request(
        "GET", f"/asterisk/config/dynamic/res_pjsip/endpoint/{name}")
    fields = {f["attribute"]: f["value"] for f in endpoint}
    assert fields["context"] == "from-trunk" and fields["aors"] == name
    assert fields["auth"] == name and fields["direct_media"] == "false"
    assert fields["dtmf_mode"] == "rfc4733" and fields["allow"] == "(ulaw|alaw)"
    aor = {f["attribute"]: f["value"] for f in await service.gateway.request(
        "GET", f"/asterisk/config/dynamic/res_pjsip/aor/{name}")}
    assert aor["max_contacts"] == "1" and aor["remove_existing"] == "true"

    async with Device(registrar(lab), name, password, hangup_after_ms=3000) as device:
        assert await device.wait_registration() == 200
        await wait_state(service, name, "online")

        result = await call(lab, applet.number, steps=[Pause(300), Audio(caller_tone)])

        assert result.sip.ok, result.sip.errors
        await applet_app.wait_for(lambda: applet.outcomes() == ["after_conversation"])
        assert device.invites() == 1
        assert device.receiver is not None
        assert device.receiver.voiced_seconds() > 1.0, "the device did not hear the caller"
        assert skips(webhooks, applet.number) == []


async def test_unregistered_device_is_skipped_and_the_next_destination_dialled(
        start, applet_app, lab, webhooks):
    name, password = new_device()
    applet = new_applet(applet_app)
    async with Agent(200, hangup_after_ms=1000) as agent:
        applet_app.script(applet.primary, dest(f"sip:{name}", AGENT, max_ringing_duration=5))
        service = await start([{"name": name, "password": password}],
                              {applet.number: applet.config()}, agent_port=agent.port)
        assert (await state_of(service, name) or {}).get("state") == "offline"

        result = await call(lab, applet.number)

        assert result.sip.ok, result.sip.errors
        await applet_app.wait_for(lambda: applet.outcomes() == ["after_conversation"])
        assert agent.invites() == 1
        await webhooks.wait_for(lambda: skips(webhooks, applet.number) != [])
        assert skips(webhooks, applet.number) == [(f"sip:{name}",
                                                   "device off (not registered)")]


async def test_device_busy_on_another_call_is_skipped(start, applet_app, lab, webhooks):
    name, password = new_device()
    first, second = new_applet(applet_app), new_applet(applet_app)
    async with Agent(200, hangup_after_ms=1000) as agent:
        applet_app.script(first.primary, dest(f"sip:{name}", max_ringing_duration=5))
        applet_app.script(second.primary, dest(f"sip:{name}", AGENT, max_ringing_duration=5))
        service = await start([{"name": name, "password": password}],
                              {first.number: first.config(), second.number: second.config()},
                              agent_port=agent.port)
        async with Device(registrar(lab), name, password) as device:
            await _busy_device_is_skipped(service, device, first, second, agent, lab, webhooks,
                                          applet_app)


async def _busy_device_is_skipped(service, device, first, second, agent, lab, webhooks,
                              applet_app) -> None:
    name = device.name
    assert await device.wait_registration() == 200
    await wait_state(service, name, "online")
    # The device answers a first call and stays on it (it waits for the BYE).
    first_call = asyncio.ensure_future(call(lab, first.number, timeout_s=60))
    deadline = time.monotonic() + 20
    while not (await state_of(service, name) or {}).get("channel_ids"):
        assert time.monotonic() < deadline, "the device never got the first call"
        await asyncio.sleep(0.05)
    await until(lambda: device.invites() == 1)

    result = await call(lab, second.number)

    assert result.sip.ok, result.sip.errors
    await applet_app.wait_for(lambda: second.outcomes() == ["after_conversation"])
    assert agent.invites() == 1 and device.invites() == 1
    await webhooks.wait_for(lambda: skips(webhooks, second.number) != [])
    assert skips(webhooks, second.number) == [(f"sip:{name}", "device in use")]
    # End the first call: hang up its caller's channel.
    for session in list(service.engine.sessions.values()):
        if session.record.to_number == first.number:
            await service.gateway.hangup(session.channel_id)
    first_result = await first_call
    assert first_result.sip.ok, first_result.sip.errors


async def test_wrong_password_cannot_register(start, applet_app, lab):
    name, password = new_device()
    service = await start([{"name": name, "password": password}], {})
    async with Device(registrar(lab), name, password + "-wrong") as device:
        assert await device.wait_registration() in (401, 403)
        assert device.register_statuses()[0] == 401  # the challenge, then the refusal
        await until(lambda: device.exited)
    assert (await state_of(service, name) or {}).get("state") == "offline"


async def test_devices_are_provisioned_again_after_an_ari_reconnect(start, lab):
    """A restarted Asterisk has forgotten the devices (memory wizard): every reconnect
    provisions them again. Here they are deleted, then the ARI connection is cut."""
    name, password = new_device()
    proxy = TcpProxy(urlparse(lab.ari_url).port or 0)
    await proxy.start()
    try:
        service = await start([{"name": name, "password": password}], {},
                              url=f"http://127.0.0.1:{proxy.port}")
        for kind in ("endpoint", "aor", "auth"):
            await service.gateway.delete_dynamic_config("res_pjsip", kind, name)
        assert await state_of(service, name) is None
        passes = service.engine.devices.passes
        proxy.cut()
        await until(lambda: service.engine.devices.passes > passes)
        assert (await state_of(service, name) or {}).get("state") == "offline"
        async with Device(registrar(lab), name, password) as device:
            assert await device.wait_registration() == 200
            await wait_state(service, name, "online")
    finally:
        await proxy.stop()
