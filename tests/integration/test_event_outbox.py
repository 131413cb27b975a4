"""Events are never lost: event_url down for 60 s (connection refused, then 503) while 20 real
calls end, with the bridge in this process or as an ``ari-bridge serve`` process killed with
SIGKILL during the outage; and a REST call's own event_url across a restart.

The application counts what it answered 2xx and nothing else: every event of every call must
arrive exactly once, in order, with no deduplication on the test's side. In test 2 the bridge is
killed while the application refuses connections, so no request can be in flight with the
application holding it; a kill while a request is being answered could send that one event twice
(the at-least-once window described in bridge/webhooks/outbox.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sqlite3
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web
from vonage_voice.models.ncco import Talk
from vonage_voice.models.requests import CreateCallRequest

from bridge.app import BridgeService
from bridge.config import EventsConfig
from bridge.lab import LabInfo
from bridge.lab.sipp import Agent, free_port
from tests.integration.conftest import Call, _hang_up_leftovers, bridge_config
from tests.integration.harness import WebhookApp, new_number
from tests.integration.test_rest_api import (
    API_APP,
    OTHER_APP,
    _start_bridge,
    in_thread,
    sdk,
)
from tests.keys import new_keypair
from tests.polling import until

pytestmark = pytest.mark.integration

CALLS = 20
REFUSED_S = 30.0  # the first half of the outage: nothing listens
UNAVAILABLE_S = 30.0  # the second half: 503 to everything
EXPECTED = ["started", "ringing", "answered", "completed"]
NCCO = [{"action": "talk", "text": "Goodbye."}]
# A short cap keeps the wait after the outage short; the base is the default.
EVENTS = {"retry_base_s": 0.5, "retry_cap_s": 5.0}


@dataclass
class Received:
    uuid: str
    status: str
    to: str
    answered: int


@dataclass
class FlakyApplication:
    """An event_url that refuses connections, then answers 503, then works.

    While refusing, its port is bound but not listening (the kernel answers RST), so nobody
    else can take the port during the outage."""

    sock: socket.socket
    mode: str = "refused"
    seen: list[Received] = field(default_factory=list)
    runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}/event"

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        answer = 503 if self.mode == "unavailable" else 200
        self.seen.append(Received(str(body.get("uuid")), str(body.get("status")),
                                  str(body.get("to")), answer))
        return web.Response(status=answer)

    async def listen(self, mode: str) -> None:
        """Start answering (``unavailable``: 503; ``up``: 200)."""
        self.mode = mode
        if self.runner is None:
            app = web.Application()
            app.router.add_post("/event", self.handle)
            self.runner = web.AppRunner(app, access_log=None)
            await self.runner.setup()
            await web.SockSite(self.runner, self.sock).start()

    def delivered(self) -> list[Received]:
        return [r for r in self.seen if r.answered == 200]

    async def close(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
        self.sock.close()


@pytest.fixture
async def flaky() -> AsyncIterator[FlakyApplication]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    application = FlakyApplication(sock)
    yield application
    await application.close()


async def place_calls(dial: Callable[..., Any], webhooks: WebhookApp) -> list[str]:
    """Place CALLS real calls (a few at a time, the machine is small); returns the numbers."""
    numbers = [new_number() for _ in range(CALLS)]
    for number in numbers:
        webhooks.answer(number, NCCO)
    gate = asyncio.Semaphore(5)

    async def one(number: str) -> Call:
        async with gate:
            return await dial(number)

    calls = await asyncio.gather(*(one(n) for n in numbers))
    for call in calls:
        assert call.sip.ok, call.sip.errors
    return numbers


async def ride_out_the_outage(flaky: FlakyApplication, outage_started: float) -> None:
    """Refused until REFUSED_S after the start (and at least until now), then 503 for
    UNAVAILABLE_S, then up."""
    await asyncio.sleep(max(outage_started + REFUSED_S - time.monotonic(), 0.0))
    assert flaky.seen == []  # refused: nothing reached the application
    await flaky.listen("unavailable")
    await asyncio.sleep(UNAVAILABLE_S)
    # retried through the outage, and none of those attempts counted as delivered
    assert flaky.seen and not flaky.delivered()
    await flaky.listen("up")


def assert_every_event_once_in_order(flaky: FlakyApplication, numbers: list[str]) -> None:
    by_uuid: dict[str, list[str]] = {}
    to_of: dict[str, str] = {}
    for received in flaky.delivered():
        by_uuid.setdefault(received.uuid, []).append(received.status)
        to_of[received.uuid] = received.to
    assert sorted(to_of.values()) == sorted(numbers)  # one call (uuid) per number dialled
    for uuid, statuses in by_uuid.items():
        assert statuses == EXPECTED, (uuid, statuses)
    assert len(flaky.delivered()) == CALLS * len(EXPECTED)


# ---------------------------------------------------------------- test 1: in process
async def test_events_survive_a_60_s_event_url_outage_exactly_once_in_order(
        lab: LabInfo, webhooks: WebhookApp, tmp_path: Path, dial: Callable[..., Any],
        flaky: FlakyApplication) -> None:
    base = bridge_config(lab, webhooks, tmp_path)
    apps = [a.model_copy(update={"event_url": flaky.url, "fallback_answer_url": None})
            if a.id == "main" else a for a in base.applications]
    config = base.model_copy(update={"applications": apps, "events": EventsConfig(**EVENTS)})
    service = BridgeService(config)
    await service.start()
    try:
        assert await service.gateway.wait_connected(20), service.gateway.last_error
        outage_started = time.monotonic()
        numbers = await place_calls(dial, webhooks)
        await until(lambda: not service.engine.sessions, "every call ended", 60)
        # every event is on disk, none delivered; the calls are gone from the live store
        assert service.engine.events.backlog() == CALLS * len(EXPECTED)
        assert service.engine.store.all() == []
        await ride_out_the_outage(flaky, outage_started)
        await until(lambda: service.engine.events.backlog() == 0, "all delivered", 60)
        assert_every_event_once_in_order(flaky, numbers)
        assert service.engine.store.outbox_events() == []
    finally:
        await service.stop()
        await _hang_up_leftovers(lab)


# -------------------------------------------------- test 2: a process killed with SIGKILL
class BridgeProcess:
    """``ari-bridge serve`` in its own process, with a configuration file written here."""

    def __init__(self, lab: LabInfo, tmp: Path, answer_url: str, event_url: str) -> None:
        self.port = free_port(socket.SOCK_STREAM)
        self.store = tmp / "calls.sqlite3"
        self.config = tmp / "config.yaml"
        self.log = tmp / "bridge.log"
        self.config.write_text(yaml.safe_dump({
            "ari": {"url": lab.ari_url, "username": lab.ari_username, "app": lab.app_name,
                    "reconnect_min_s": 0.2, "reconnect_max_s": 1.0},
            "http": {"host": "127.0.0.1", "port": self.port},
            "store": {"path": str(self.store)},
            "media": {"path": str(tmp / "media")},
            "recordings": {"path": str(tmp / "recordings")},
            "events": EVENTS,
            "applications": [{
                "id": "main", "answer_url": answer_url, "event_url": event_url,
                "timeouts": {"connect_ms": 300, "answer_read_ms": 1000, "event_read_ms": 2000},
            }],
            "numbers": {"*": "main"},
            "agents": {"path": str(tmp / "agents.sqlite3")},
        }))
        # The ARI password comes from the environment, as the README advises for secrets.
        self.env = {**os.environ, "ARI_BRIDGE_ARI__PASSWORD": lab.ari_password}
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        executable = Path(sys.executable).with_name("ari-bridge")
        with self.log.open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                str(executable), "serve", "--config", str(self.config),
                stdout=log, stderr=log, env=self.env)
        deadline = time.monotonic() + 60
        async with aiohttp.ClientSession() as http:
            while True:
                assert self.proc.returncode is None, f"the bridge exited:\n{self.tail()}"
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(f"http://127.0.0.1:{self.port}/healthz") as resp:
                        if resp.status == 200:
                            return
                assert time.monotonic() < deadline, f"the bridge never got ready:\n{self.tail()}"
                await asyncio.sleep(0.2)

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""

    async def kill(self) -> int:
        """SIGKILL, by the PID of the process this test started."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        return await self.proc.wait()

    async def stop(self) -> None:
        if self.proc is None or self.proc.returncode is not None:
            return
        os.kill(self.proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(self.proc.wait(), 30)
        except TimeoutError:
            await self.kill()

    def table(self, sql: str) -> list[tuple[Any, ...]]:
        """Read the bridge's store file as another process would."""
        with contextlib.closing(sqlite3.connect(self.store)) as db:
            return db.execute(sql).fetchall()


async def test_events_survive_an_outage_and_a_sigkill_of_the_bridge(
        lab: LabInfo, webhooks: WebhookApp, tmp_path: Path, dial: Callable[..., Any],
        flaky: FlakyApplication) -> None:
    bridge = BridgeProcess(lab, tmp_path, f"{webhooks.url}/answer", flaky.url)
    try:
        await bridge.start()
        outage_started = time.monotonic()
        numbers = await place_calls(dial, webhooks)

        def all_written() -> bool:
            return (bridge.table("SELECT COUNT(*) FROM live_calls") == [(0,)]
                    and bridge.table("SELECT COUNT(*) FROM event_outbox")
                    == [(CALLS * len(EXPECTED),)])

        await until(all_written, "every call ended and its events written", 60)
        assert flaky.mode == "refused" and flaky.seen == []
        assert await bridge.kill() == -signal.SIGKILL
        await bridge.start()  # the same configuration and store file
        await ride_out_the_outage(flaky, outage_started)
        await until(lambda: len(flaky.delivered()) >= CALLS * len(EXPECTED), "all delivered",
                    60)
        await until(lambda: bridge.table("SELECT COUNT(*) FROM event_outbox") == [(0,)],
                    "the outbox emptied", 20)
        assert_every_event_once_in_order(flaky, numbers)
    finally:
        await bridge.stop()
        await _hang_up_leftovers(lab)


# ------------------------------------------------ bug 8: a REST call's own event_url
async def test_a_rest_calls_own_event_url_is_kept_across_a_restart(
        lab: LabInfo, webhooks: WebhookApp, tmp_path: Path) -> None:
    keys = {API_APP: new_keypair(), OTHER_APP: new_keypair()}
    async with Agent(200) as agent:
        first = await _start_bridge(lab, webhooks, tmp_path, keys, API_APP,
                                    routes={"44": agent.port})
        second: BridgeService | None = None
        try:
            number = "44" + new_number()
            own = webhooks.hook(f"own-events-{number}")
            created = await in_thread(sdk(first, API_APP, keys[API_APP][0]).voice.create_call,
                                      CreateCallRequest(
                to=[{"type": "phone", "number": number}], from_={"number": "15550001111"},
                # long enough (some seconds) to restart the bridge while it plays
                ncco=[Talk(text="This call goes on while the bridge restarts, and then it "
                               "ends.", loop=2)],
                event_url=[own], event_method="POST",
            ))

            def own_statuses() -> list[str]:
                return [r.json["status"] for r in webhooks.of(f"/hook/own-events-{number}")]

            await until(lambda: "answered" in own_statuses(), "answered at its own URL", 30)
            await first.stop()  # the call stays up in Asterisk
            second = await _start_bridge(lab, webhooks, tmp_path, keys, API_APP,
                                         routes={"44": agent.port})
            await until(lambda: "completed" in own_statuses(), "completed at its own URL", 60)
            assert own_statuses() == EXPECTED
            assert [e for e in webhooks.of("/event")
                    if isinstance(e.json, dict) and e.json.get("uuid") == created.uuid] == []
            assert agent.receiver is not None and agent.receiver.voiced_seconds() > 0.5
        finally:
            if second is not None:
                await second.stop()
            await first.stop()
            await _hang_up_leftovers(lab)
