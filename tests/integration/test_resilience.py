"""ARI outages and bridge restarts: health says so, the bridge reconnects, calls survive."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from urllib.parse import urlparse

import aiohttp
import pytest

from bridge.app import BridgeService
from bridge.lab.sipp import HangUp, Pause, free_port
from tests.integration.conftest import bridge_config
from tests.integration.harness import new_number

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


async def poll(predicate, timeout: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.1)


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
