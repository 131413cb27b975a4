"""ARI outages and bridge restarts: health says so, the bridge reconnects, calls survive."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from urllib.parse import urlparse

import aiohttp
import pytest
from prometheus_client import REGISTRY

from bridge.app import BridgeService
from bridge.lab.sipp import HangUp, Pause, RtpReceiver, SippResult, free_port, place_call
from tests.integration.conftest import bridge_config
from tests.integration.harness import new_number
from tests.integration.processes import (
    BridgeProcess,
    ari_channel_ids,
    ari_hangup,
    poll,
    process_config,
)

pytestmark = pytest.mark.integration


class TcpProxy:
    """A loopback TCP relay in front of ARI that a test can start late or cut."""

    def __init__(self, target_port: int) -> None:
        self.port = free_port(socket.SOCK_STREAM)
        self.target_port = target_port
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self.writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError, OSError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    def cut(self) -> None:
        """Drop every relayed connection at once, as a network failure would."""
        for writer in list(self.writers):
            writer.transport.abort()
        self.writers.clear()

    async def stop(self) -> None:
        self.cut()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


async def health(service: BridgeService) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as http, http.get(f"{service.base_url}/healthz") as resp:
        return resp.status, await resp.json()


@pytest.fixture
async def proxy(lab):
    relay = TcpProxy(urlparse(lab.ari_url).port)
    yield relay
    await relay.stop()


async def test_ari_down_at_start_health_says_so_and_bridge_connects_when_it_comes(
        lab, webhooks, tmp_path, proxy):
    service = BridgeService(bridge_config(lab, webhooks, tmp_path,
                                          url=f"http://127.0.0.1:{proxy.port}"))
    await service.start()
    try:
        status, body = await health(service)
        assert status == 503
        assert body["ari"] == "disconnected"
        await poll(lambda: _has_error(service))
        await proxy.start()  # Asterisk becomes reachable

        async def healthy() -> bool:
            return (await health(service))[0] == 200

        await poll(healthy)
    finally:
        await service.stop()


async def _has_error(service: BridgeService) -> bool:
    _, body = await health(service)
    return bool(body["ari_error"])


async def test_call_survives_a_dropped_ari_connection(lab, webhooks, tmp_path, proxy, dial):
    await proxy.start()
    service = BridgeService(bridge_config(lab, webhooks, tmp_path,
                                          url=f"http://127.0.0.1:{proxy.port}"))
    await service.start()
    try:
        assert await service.gateway.wait_connected(20)
        number = new_number()
        after = webhooks.hook(f"after-drop-{number}", {})
        webhooks.answer(number, [
            {"action": "wait", "timeout": 3},
            {"action": "notify", "payload": {"still": "here"}, "eventUrl": [after]},
            {"action": "talk", "text": "Still connected."},
        ])
        call_task = asyncio.ensure_future(dial(number))
        await webhooks.wait_for(lambda: "answered" in webhooks.statuses(number))
        connects = service.gateway.connects
        proxy.cut()
        await poll(lambda: _reconnected(service, connects))
        call = await call_task
        assert call.sip.ok, call.sip.errors
        await webhooks.wait_completed(number)
        assert [r.json for r in webhooks.of(f"/hook/after-drop-{number}")] == [{"still": "here"}]
        assert webhooks.statuses(number).count("completed") == 1
    finally:
        await service.stop()


async def _reconnected(service: BridgeService, before: int) -> bool:
    return service.gateway.connects > before and service.gateway.connected


async def test_bridge_reconnects_as_soon_as_ari_is_back_without_waiting_out_the_backoff(
        lab, webhooks, tmp_path, proxy, dial):
    """ARI goes away (the relay in front of it stops) and comes back. The backoff is at
    least 30 s here, so a reconnect within the poll's deadline can only come from the probe
    that runs every 0.5 s while the bridge is disconnected."""
    await proxy.start()
    service = BridgeService(bridge_config(
        lab, webhooks, tmp_path, url=f"http://127.0.0.1:{proxy.port}",
        reconnect_min_s=60.0, reconnect_max_s=60.0, probe_interval_s=0.5))
    await service.start()
    gateway = service.gateway
    try:
        assert await gateway.wait_connected(20)
        reconnects = REGISTRY.get_sample_value("ari_bridge_ari_reconnects_total") or 0.0
        await proxy.stop()  # Asterisk unreachable: connections refused

        async def down() -> bool:
            return not gateway.connected and (await health(service))[0] == 503

        await poll(down)
        attempts, probes = gateway.connect_attempts, gateway.probes

        async def probed_a_while() -> bool:
            return gateway.probes >= probes + 4

        await poll(probed_a_while)
        assert gateway.connect_attempts == attempts  # probes only, no full attempt meanwhile
        back_at = time.monotonic()
        await proxy.start()  # Asterisk answers again

        async def healthy() -> bool:
            return gateway.connected and (await health(service))[0] == 200

        await poll(healthy, timeout=20)
        print(f"reconnected {time.monotonic() - back_at:.2f} s after ARI was back "
              f"({gateway.probes - probes} probes during the outage)")
        assert gateway.connect_attempts == attempts + 1  # the first full attempt made it
        assert (REGISTRY.get_sample_value("ari_bridge_ari_reconnects_total") or 0.0) == (
            reconnects + 1)

        number = new_number()  # and it serves a new call
        webhooks.answer(number, [{"action": "talk", "text": "Back again."}])
        call = await dial(number)
        assert call.sip.ok, call.sip.errors
        await webhooks.wait_completed(number)
        assert webhooks.statuses(number) == ["started", "ringing", "answered", "completed"]
        assert call.audio.voiced_seconds() > 0.5
    finally:
        await service.stop()


async def test_restarted_bridge_resumes_a_call_left_in_stasis(lab, webhooks, tmp_path, dial):
    number = new_number()
    after = webhooks.hook(f"after-restart-{number}", {})
    webhooks.answer(number, [
        {"action": "wait", "timeout": 2},
        {"action": "notify", "payload": {"resumed": True}, "eventUrl": [after]},
        {"action": "talk", "text": "Resumed after a restart."},
    ])
    first = BridgeService(bridge_config(lab, webhooks, tmp_path))
    await first.start()
    assert await first.gateway.wait_connected(20)
    call_task = asyncio.ensure_future(dial(number))
    await webhooks.wait_for(lambda: "answered" in webhooks.statuses(number))
    await first.stop()  # a crash or upgrade: the call stays in Asterisk

    second = BridgeService(bridge_config(lab, webhooks, tmp_path))
    await second.start()
    try:
        call = await call_task
        assert call.sip.ok, call.sip.errors
        await webhooks.wait_completed(number)
        assert [r.json for r in webhooks.of(f"/hook/after-restart-{number}")] == [
            {"resumed": True}]
        assert webhooks.statuses(number) == ["started", "ringing", "answered", "completed"]
        assert call.audio.voiced_seconds() > 0.5  # the talk after the restart was heard
    finally:
        await second.stop()


async def test_call_that_ended_while_the_bridge_was_down_gets_its_completed_event(
        lab, webhooks, tmp_path, dial):
    number = new_number()
    webhooks.answer(number, [{"action": "wait", "timeout": 30}])
    first = BridgeService(bridge_config(lab, webhooks, tmp_path))
    await first.start()
    assert await first.gateway.wait_connected(20)
    call_task = asyncio.ensure_future(dial(number, steps=[Pause(1500), HangUp()]))
    await webhooks.wait_for(lambda: "answered" in webhooks.statuses(number))
    await first.stop()
    call = await call_task  # the caller hangs up while no bridge runs
    assert call.sip.ok

    second = BridgeService(bridge_config(lab, webhooks, tmp_path))
    await second.start()
    try:
        await webhooks.wait_completed(number)
        assert webhooks.statuses(number) == ["started", "ringing", "answered", "completed"]
        assert int(webhooks.events(number)[-1]["duration"]) >= 1
    finally:
        await second.stop()


#: Seconds a resumed call is watched after the restart (see the test).
WATCH_S = 25.0


async def test_resumed_endless_talk_goes_on_after_kill_9_and_restart(lab, webhooks, tmp_path):
    """A caller on hold (talk, loop 0) when the bridge dies with SIGKILL. The next bridge
    resumes the talk: the dead bridge's queued chunk of the prompt must not make the new
    playback miss its deadline (which hung the call up with an error), so the caller keeps
    hearing the prompt well past that deadline, until the caller hangs up."""
    margin_s = 1.0
    bridge = BridgeProcess(process_config(lab, webhooks, tmp_path, playback_margin_s=margin_s),
                           tmp_path)
    number = new_number()
    # About 1 s of speech: ten copies per playback, about 10 s.
    webhooks.answer(number, [{"action": "talk", "text": "Please hold.", "loop": 0}])
    receiver = await RtpReceiver.open()
    call_task: asyncio.Task[SippResult] | None = None
    try:
        await bridge.start()
        channels_before = set(await ari_channel_ids(lab))
        call_task = asyncio.ensure_future(place_call(
            lab.sip_host, lab.sip_port, number, rtp_port=receiver.port, timeout_s=120))
        await webhooks.wait_for(lambda: "answered" in webhooks.statuses(number))

        async def heard_the_prompt() -> bool:
            return receiver.voiced_seconds() > 1.0  # a copy or so played

        await poll(heard_the_prompt)

        await bridge.kill()
        await bridge.start()
        resumed_at = time.monotonic()

        # The resumed playback's deadline is its ten copies of about a second plus the margin
        # (about 11 s): the old bridge's chunk and the resumed one back to back ran past it.
        # Watch for more than twice that.
        watch_until = resumed_at + WATCH_S
        while time.monotonic() < watch_until:
            assert not call_task.done(), f"the call ended: {bridge.output()}"
            assert webhooks.errors(number) == [], webhooks.errors(number)
            assert "completed" not in webhooks.statuses(number)
            await asyncio.sleep(0.5)
        assert time.monotonic() - receiver.last_voiced() < 3.0, "the caller hears nothing"
        assert webhooks.errors(number) == []

        [channel] = set(await ari_channel_ids(lab)) - channels_before
        await ari_hangup(lab, channel)  # as the caller hanging up
        result = await asyncio.wait_for(call_task, 30)
        assert result.ok, result.errors
        await webhooks.wait_completed(number)
        assert webhooks.statuses(number) == ["started", "ringing", "answered", "completed"]
        assert "Asterisk could not play it" not in bridge.output()
    except BaseException:
        print(bridge.output())
        raise
    finally:
        if call_task is not None and not call_task.done():
            call_task.cancel()
        await bridge.stop()
        receiver.close()
