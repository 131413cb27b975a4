"""Drain and health logic: what a draining engine does with a new call, the bounded event
flush (against real local HTTP servers), the second signal, store writability checks, and the
metrics the engine, sessions and agent leases record."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from prometheus_client import REGISTRY

from bridge.agents import RedisAgentStore, SqliteAgentStore
from bridge.agents.leases import HeldAgents
from bridge.agents.redis_server import RedisServer
from bridge.ari.errors import AriError, ChannelGone
from bridge.calls.engine import UNAVAILABLE_LABEL, CallEngine
from bridge.calls.outbound import Draining, OutboundCall
from bridge.calls.session import CallState
from bridge.calls.store import CallStore
from bridge.cli import _serve_until_signal
from bridge.config import load_config
from bridge.lab.sipp import free_port
from bridge.ncco.models import PhoneEndpoint
from bridge.webhooks import EventOutbox, WebhookClient
from tests.unit.test_session import Harness

CHANNEL = "chan-new"
INBOUND = {"type": "StasisStart", "args": ["inbound", "15551230000", "15550001111"],
           "channel": {"id": CHANNEL, "dialplan": {"context": "ari-bridge-inbound",
                                                   "exten": "15551230000", "priority": 4}}}


def _value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


class DialplanGateway:
    """Records what the engine asks of Asterisk for a call it turns away."""

    def __init__(self, continue_error: AriError | None = None) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.continue_error = continue_error
        self.done = asyncio.Event()

    async def continue_in_dialplan(self, channel_id: str, context: str, extension: str = "s",
                                   label: str | None = None) -> None:
        self.calls.append(("continue", channel_id, context, extension, label))
        if self.continue_error is not None:
            raise self.continue_error
        self.done.set()

    async def hangup(self, channel_id: str, reason: str = "normal") -> None:
        self.calls.append(("hangup", channel_id, reason))
        self.done.set()

    def route(self, key: str, handler: Any) -> None:
        raise AssertionError("a draining engine must not take the call")


def _engine(tmp_path: Path, gateway: Any) -> CallEngine:
    config = load_config(None, environ={}, overrides={
        "store": {"path": str(tmp_path / "calls.sqlite3")},
        "applications": [{"id": "app", "answer_url": "http://hooks/answer"}],
        "numbers": {"*": "app"},
    })
    engine = CallEngine(config, None, None,  # type: ignore[arg-type]
                        CallStore(tmp_path / "calls.sqlite3"), lambda: "http://bridge")
    engine.attach(gateway)
    return engine


async def test_a_draining_engine_sends_a_new_call_to_the_dialplans_503_fallback(
        tmp_path: Path) -> None:
    gateway = DialplanGateway()
    engine = _engine(tmp_path, gateway)
    engine.start_draining()
    engine.on_stasis_start(engine.primary, INBOUND)
    await asyncio.wait_for(gateway.done.wait(), 10)
    assert gateway.calls == [("continue", CHANNEL, "ari-bridge-inbound", "15551230000",
                              UNAVAILABLE_LABEL)]
    assert engine.sessions == {} and engine.store.all() == []
    assert engine.calls_rejected == 1 and engine.calls_started == 0
    await engine.agents.close()


async def test_without_the_fallback_label_a_draining_engine_hangs_up_with_congestion(
        tmp_path: Path) -> None:
    gateway = DialplanGateway(AriError("POST", "/channels/x/continue", 404, "no such label"))
    engine = _engine(tmp_path, gateway)
    engine.start_draining()
    engine.on_stasis_start(engine.primary, INBOUND)
    await asyncio.wait_for(gateway.done.wait(), 10)
    # Congestion is cause 34, which PJSIP answers as SIP 503 too.
    assert gateway.calls[-1] == ("hangup", CHANNEL, "congestion")
    await engine.agents.close()


async def test_a_caller_gone_before_the_rejection_is_left_alone(tmp_path: Path) -> None:
    gateway = DialplanGateway(ChannelGone("POST", "/channels/x/continue", 404, "gone"))
    engine = _engine(tmp_path, gateway)
    engine.start_draining()
    engine.on_stasis_start(engine.primary, INBOUND)
    while not gateway.calls:  # noqa: ASYNC110 - the engine's task runs on this loop
        await asyncio.sleep(0.01)
    for _ in range(5):
        await asyncio.sleep(0)
    assert [c[0] for c in gateway.calls] == ["continue"]
    await engine.agents.close()


async def test_a_draining_engine_places_no_outbound_call(tmp_path: Path) -> None:
    engine = _engine(tmp_path, DialplanGateway())
    engine.start_draining()
    with pytest.raises(Draining):
        await engine.place_call(OutboundCall(
            application_id="app", to=PhoneEndpoint(type="phone", number="15551230000"),
            from_number="15550001111"))
    assert engine.sessions == {}
    await engine.agents.close()


# ------------------------------------------------------------------------- event flush
class HoldingServer:
    """An event_url that answers only when released (or never)."""

    def __init__(self) -> None:
        self.received = 0
        self.release = asyncio.Event()
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def __aenter__(self) -> HoldingServer:
        async def event(request: web.Request) -> web.Response:
            await request.read()
            self.received += 1
            await self.release.wait()
            return web.Response(status=204)

        app = web.Application()
        app.router.add_post("/event", event)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        port = free_port(socket.SOCK_STREAM)
        await web.TCPSite(self._runner, "127.0.0.1", port).start()
        self.url = f"http://127.0.0.1:{port}/event"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.release.set()
        assert self._runner is not None
        await self._runner.cleanup()


@pytest.fixture
async def flushing_engine(tmp_path: Path) -> AsyncIterator[CallEngine]:
    webhooks = WebhookClient()
    await webhooks.start()
    engine = _engine(tmp_path, DialplanGateway())
    engine.webhooks = webhooks
    engine.events = EventOutbox(engine.store, webhooks, engine.config.application)
    await engine.events.start()
    yield engine
    await engine.events.stop()
    await engine.agents.close()
    await webhooks.close()


async def test_flush_waits_for_a_pending_event_to_be_delivered(
        flushing_engine: CallEngine) -> None:
    engine = flushing_engine
    app = engine.application("app")
    async with HoldingServer() as server:
        engine.events.post("call-1", app, server.url, "POST", {"status": "completed"})
        flush = asyncio.ensure_future(engine.flush_events(60))
        while server.received == 0:  # noqa: ASYNC110 - the request comes over loopback
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        assert not flush.done()  # the event is still in flight: the flush waits for it
        server.release.set()
        assert await asyncio.wait_for(flush, 30) == 0
    assert engine.events.delivered == 1
    assert engine.events.backlog() == 0


async def test_flush_gives_up_after_its_timeout_and_keeps_the_events(
        flushing_engine: CallEngine) -> None:
    engine = flushing_engine
    app = engine.application("app")
    async with HoldingServer() as server:  # never released while the flush runs
        engine.events.post("call-1", app, server.url, "POST", {"status": "answered"})
        engine.events.post("call-1", app, server.url, "POST", {"status": "completed"})
        left = await asyncio.wait_for(engine.flush_events(0.5), 30)
        # Both stay on disk for the next bridge: the one in flight and the one behind it.
        assert left == 2
        assert engine.events.delivered == 0
        assert engine.store.outbox_count() == 2


async def test_flush_with_nothing_queued_returns(flushing_engine: CallEngine) -> None:
    assert await asyncio.wait_for(flushing_engine.flush_events(10), 30) == 0


# ------------------------------------------------------------------------ the signals
class FakeService:
    def __init__(self) -> None:
        self.started = False
        self.stopped = False
        self.draining = asyncio.Event()
        self.drain_timeout_s: float | None = None

    async def start(self) -> None:
        self.started = True

    async def drain(self, timeout_s: float) -> None:
        self.drain_timeout_s = timeout_s
        self.draining.set()
        await asyncio.Event().wait()  # an event_url that never answers

    async def stop(self) -> None:
        self.stopped = True


async def test_sigterm_drains_and_a_second_signal_cuts_the_drain_short() -> None:
    service = FakeService()
    serving = asyncio.ensure_future(_serve_until_signal(service, 42.0))
    while not service.started:  # noqa: ASYNC110 - started by the task above
        await asyncio.sleep(0.01)
    os.kill(os.getpid(), signal.SIGTERM)
    await asyncio.wait_for(service.draining.wait(), 10)
    assert service.drain_timeout_s == 42.0 and not service.stopped
    os.kill(os.getpid(), signal.SIGINT)
    await asyncio.wait_for(serving, 10)
    assert service.stopped


# ---------------------------------------------------------------- store writability
def test_call_store_check_writes_and_fails_when_it_cannot(tmp_path: Path) -> None:
    store = CallStore(tmp_path / "calls.sqlite3")
    store.check_writable()
    store.check_writable()  # the same row again
    store.close()
    with pytest.raises(sqlite3.ProgrammingError):
        store.check_writable()


async def test_sqlite_agent_store_check(tmp_path: Path) -> None:
    store = SqliteAgentStore(tmp_path / "agents.sqlite3")
    await store.check_writable()
    await store.close()
    with pytest.raises(sqlite3.ProgrammingError):
        await store.check_writable()


async def test_redis_agent_store_check_fails_once_the_server_is_gone() -> None:
    with RedisServer() as server:
        store = RedisAgentStore(server.url, prefix="health-test:")
        await store.check_writable()
    try:
        with pytest.raises(Exception, match=r"(?i)connect"):
            await store.check_writable()
    finally:
        await store.close()


# ----------------------------------------------------------------------------- metrics
async def test_a_call_counts_its_actions_and_its_end_and_is_active_meanwhile(
        tmp_path: Path) -> None:
    active = _value("ari_bridge_calls_active")
    ended = _value("ari_bridge_calls_ended_total", status="completed")
    talks = _value("ari_bridge_ncco_actions_total", action="talk")
    waits = _value("ari_bridge_ncco_actions_total", action="wait")
    h = Harness(tmp_path, [{"action": "talk", "text": "hello"},
                           {"action": "wait", "timeout": 30}])
    session = h.start_call()
    await h.until(lambda: _value("ari_bridge_ncco_actions_total", action="wait") == waits + 1)
    assert _value("ari_bridge_calls_active") == active + 1
    h.gateway.emit({"type": "StasisEnd", "channel": {"id": session.channel_id}})
    await h.until(lambda: session.state is CallState.ENDED)
    assert _value("ari_bridge_calls_active") == active
    assert _value("ari_bridge_calls_ended_total", status="completed") == ended + 1
    assert _value("ari_bridge_ncco_actions_total", action="talk") == talks + 1
    await h.engine.agents.close()


async def test_calls_left_to_the_next_bridge_are_no_longer_active(tmp_path: Path) -> None:
    active = _value("ari_bridge_calls_active")
    ended = _value("ari_bridge_calls_ended_total", status="completed")
    h = Harness(tmp_path, [{"action": "wait", "timeout": 30}])
    h.start_call()
    await h.until(lambda: _value("ari_bridge_calls_active") == active + 1)
    await h.engine.shutdown()
    assert _value("ari_bridge_calls_active") == active
    # Not ended: it goes on in Asterisk.
    assert _value("ari_bridge_calls_ended_total", status="completed") == ended


async def test_agent_leases_held_follow_acquire_hold_and_release(tmp_path: Path) -> None:
    store = SqliteAgentStore(tmp_path / "agents.sqlite3")
    before = _value("ari_bridge_agent_leases_held")
    held = HeldAgents(store, "call:1", 30)
    other = HeldAgents(store, "call:2", 30)
    assert await held.acquire("agent-a")
    assert await held.acquire("agent-a")  # already held: not counted twice
    await held.hold("agent-b")
    assert not await other.acquire("agent-a")  # busy: nothing held
    assert _value("ari_bridge_agent_leases_held") == before + 2
    await held.release("agent-a")
    assert _value("ari_bridge_agent_leases_held") == before + 1
    await held.release_all()
    await held.release("agent-b")  # released already: no change
    assert _value("ari_bridge_agent_leases_held") == before
    await store.close()
