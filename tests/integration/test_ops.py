"""Operations: SIGTERM drains a real ``ari-bridge serve`` process, health probes, Prometheus
metrics after real calls, and the REST API's access log.

The drain test holds one ``completed`` event in the test's event server while the bridge
drains, so the drain lasts exactly as long as the test needs (no sleeping, no timing): the
bridge must wait for that event, say 503 on ``/readyz``, turn a new call away with SIP 503,
and exit 0 once the event is answered, leaving the live call in Asterisk.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from bridge.app import BridgeService
from bridge.lab import LabInfo
from bridge.lab.sipp import free_port
from tests.integration.conftest import _hang_up_leftovers, bridge_config
from tests.integration.harness import WebhookApp, new_number
from tests.keys import new_keypair

pytestmark = pytest.mark.integration

APP_ID = "ops-app"
ROOT = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------------------ helpers
def _token(private: str) -> str:
    now = int(time.time())
    return jwt.encode({"application_id": APP_ID, "iat": now, "exp": now + 900,
                       "jti": str(uuid.uuid4())}, private, algorithm="RS256")


async def _until(predicate: Callable[[], Any], what: str, timeout: float = 60.0) -> None:
    """Poll ``predicate`` (sync or async) until true; fail naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        assert time.monotonic() < deadline, f"{what}: not within {timeout:g} s"
        await asyncio.sleep(0.1)


class EventServer:
    """The application's event_url. Records every event; an event matching ``hold_when`` is
    answered only once :meth:`release` is called."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.answered: list[dict[str, Any]] = []
        self.hold_when: Callable[[dict[str, Any]], bool] = lambda event: False
        self.released = asyncio.Event()
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/event", self._event)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        port = free_port(socket.SOCK_STREAM)
        await web.TCPSite(self._runner, "127.0.0.1", port).start()
        self.url = f"http://127.0.0.1:{port}/event"

    async def stop(self) -> None:
        self.released.set()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _event(self, request: web.Request) -> web.Response:
        event = await request.json()
        self.events.append(event)
        if self.hold_when(event):
            await self.released.wait()
        self.answered.append(event)
        return web.Response(status=204)

    def release(self) -> None:
        self.released.set()

    def statuses(self, number: str, events: list[dict[str, Any]] | None = None) -> list[str]:
        return [e["status"] for e in (self.events if events is None else events)
                if e.get("to") == number and "status" in e]


class ServeProcess:
    """``ari-bridge serve`` in its own process, its output (JSON log lines) in a file."""

    def __init__(self, tmp: Path, lab: LabInfo, webhooks: WebhookApp, events: EventServer,
                 public_key: str) -> None:
        self.port = free_port(socket.SOCK_STREAM)
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = tmp / "bridge.log"
        self.config_path = tmp / "config.yaml"
        config = {
            "ari": {"url": lab.ari_url, "username": lab.ari_username,
                    "password": lab.ari_password, "app": lab.app_name,
                    "reconnect_min_s": 0.2, "reconnect_max_s": 1.0, "ping_interval_s": 1.0},
            "http": {"host": "127.0.0.1", "port": self.port},
            "store": {"path": str(tmp / "calls.sqlite3")},
            "media": {"path": str(tmp / "media")},
            "recordings": {"path": str(tmp / "recordings")},
            "log": {"level": "info", "json": True},
            "service": {"drain_timeout_s": 60},
            "applications": [{
                "id": APP_ID, "answer_url": f"{webhooks.url}/answer", "event_url": events.url,
                "public_key": public_key,
                # The longest read Vonage allows: a held event is waited for, not retried.
                "timeouts": {"connect_ms": 1000, "answer_read_ms": 2000,
                             "event_read_ms": 10000},
            }],
            "numbers": {"*": APP_ID},
        }
        # JSON is YAML: the file is what an operator would write.
        self.config_path.write_text(json.dumps(config, indent=2))
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "bridge.cli", "serve", "--config", str(self.config_path)],
                cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_lines(self) -> list[dict[str, Any]]:
        lines = []
        for line in self.log().splitlines():
            with contextlib.suppress(ValueError):
                item = json.loads(line)
                if isinstance(item, dict):
                    lines.append(item)
        return lines

    def exited(self) -> bool:
        return self.proc is not None and self.proc.poll() is not None

    async def get(self, path: str, headers: dict[str, str] | None = None
                  ) -> tuple[int, str]:
        async with aiohttp.ClientSession() as http, \
                http.get(self.url + path, headers=headers or {}) as resp:
            return resp.status, await resp.text()

    async def wait_ready(self) -> None:
        async def ready() -> bool:
            assert not self.exited(), f"the bridge exited early:\n{self.log()[-3000:]}"
            with contextlib.suppress(aiohttp.ClientError):
                return (await self.get("/readyz"))[0] == 200
            return False

        await _until(ready, "the bridge became ready")

    def terminate(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)

    async def wait_exit(self, timeout: float = 90.0) -> int:
        await _until(self.exited, "the bridge exited after SIGTERM", timeout)
        assert self.proc is not None and self.proc.returncode is not None
        return self.proc.returncode

    def kill(self) -> None:
        """Cleanup after a failed test: stop exactly this process."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)


@pytest.fixture
async def events() -> AsyncIterator[EventServer]:
    server = EventServer()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def serve(lab: LabInfo, webhooks: WebhookApp, events: EventServer, tmp_path: Path
                ) -> AsyncIterator[tuple[ServeProcess, str]]:
    """A started ``ari-bridge serve`` and the private key of its application."""
    private, public = new_keypair()
    process = ServeProcess(tmp_path, lab, webhooks, events, public)
    process.start()
    try:
        await process.wait_ready()
        yield process, private
    finally:
        process.kill()
        await _hang_up_leftovers(lab)


async def _ari(lab: LabInfo, method: str, path: str) -> tuple[int, Any]:
    token = base64.b64encode(f"{lab.ari_username}:{lab.ari_password}".encode()).decode()
    async with aiohttp.ClientSession(headers={"Authorization": f"Basic {token}"}) as http, \
            http.request(method, f"{lab.ari_url}/ari{path}") as resp:
        text = await resp.text()
        return resp.status, json.loads(text) if text else None


def _metric(families: dict[str, Any], name: str, **labels: str) -> float:
    """One sample's value (0 when the series does not exist yet)."""
    for family in families.values():
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


async def _metrics(process: ServeProcess) -> dict[str, Any]:
    status, text = await process.get("/metrics")
    assert status == 200, text
    return {family.name: family for family in text_string_to_metric_families(text)}


# -------------------------------------------------------------------------------- tests
async def test_sigterm_drains_rejects_new_calls_with_503_and_leaves_live_calls_up(
        serve: tuple[ServeProcess, str], lab: LabInfo, webhooks: WebhookApp,
        events: EventServer, dial: Callable[..., Any]) -> None:
    process, private = serve
    live, ending, rejected = new_number(), new_number(), new_number()
    webhooks.answer(live, [{"action": "talk", "text": "Please hold."},
                           {"action": "wait", "timeout": 120}])
    webhooks.answer(ending, [{"action": "talk", "text": "Goodbye."}])
    webhooks.answer(rejected, [{"action": "talk", "text": "This call must not be taken."}])
    events.hold_when = lambda e: e.get("to") == ending and e.get("status") == "completed"

    live_call = asyncio.ensure_future(dial(live, timeout_s=180))
    try:
        await _until(lambda: "answered" in events.statuses(live), "the live call answered")
        ending_call = await dial(ending)
        assert ending_call.sip.ok, ending_call.sip.errors
        # The bridge is now delivering this call's completed event, and the server holds it.
        await _until(lambda: "completed" in events.statuses(ending), "completed was sent")

        process.terminate()

        async def draining() -> bool:
            status, text = await process.get("/readyz")
            return status == 503 and json.loads(text)["failed"] == ["draining"]

        await _until(draining, "/readyz said draining")
        status, _ = await process.get("/livez")
        assert status == 200  # alive while draining: no restart wanted
        async with aiohttp.ClientSession() as http, http.post(
                f"{process.url}/v1/calls", headers={"Authorization": f"Bearer {_token(private)}"},
                json={"to": [{"type": "phone", "number": new_number()}],
                      "from": {"type": "phone", "number": "15550001111"},
                      "ncco": [{"action": "talk", "text": "no"}]}) as resp:
            assert resp.status == 503, await resp.text()

        turned_away = await dial(rejected, expect_status=503)
        assert turned_away.sip.ok, turned_away.sip.errors
        assert 503 in turned_away.sip.statuses
        assert "cause=34" in turned_away.sip.messages  # the dialplan's own fallback said it
        assert not process.exited()  # still waiting for the held event

        events.release()
        assert await process.wait_exit() == 0, process.log()[-3000:]

        # The held event was delivered, once, and not given up.
        assert events.statuses(ending, events.answered).count("completed") == 1
        lines = process.log_lines()
        flushed = [line for line in lines if line.get("event") == "drain.events_flushed"]
        assert len(flushed) == 1 and flushed[0]["left_for_next_start"] == 0, flushed
        assert [line["to"] for line in lines
                if line.get("event") == "call.rejected_draining"] == [rejected]
        # The rejected call never became a call: no answer_url request, no event.
        assert not [r for r in webhooks.of("/answer") if r.query.get("to") == rejected]
        assert events.statuses(rejected) == []

        # The live call is still up in Asterisk, in our application, for the next bridge.
        status, channels = await _ari(lab, "GET", "/channels")
        assert status == 200
        kept = [c for c in channels if c["dialplan"]["exten"] == live]
        assert len(kept) == 1 and kept[0]["state"] == "Up", channels
        assert events.statuses(live) == ["started", "ringing", "answered"]
        assert not live_call.done()

        # Over to the next bridge: here the test just ends the call.
        status, _ = await _ari(lab, "DELETE", f"/channels/{kept[0]['id']}")
        assert status == 204
        call = await live_call
        assert call.sip.ok, call.sip.errors
    finally:
        events.release()
        if not live_call.done():
            await _hang_up_leftovers(lab)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(live_call, 60)


async def test_metrics_access_log_and_probes_of_a_serving_bridge(
        serve: tuple[ServeProcess, str], webhooks: WebhookApp, events: EventServer,
        dial: Callable[..., Any]) -> None:
    process, private = serve
    status, text = await process.get("/livez")
    assert (status, json.loads(text)) == (200, {"status": "ok"})
    for path in ("/readyz", "/healthz"):
        status, text = await process.get(path)
        body = json.loads(text)
        assert status == 200, body
        assert body["failed"] == [] and body["status"] == "ok"
        assert body["checks"] == {name: {"ok": True} for name in
                                  ("ari", "call_store", "agent_store", "draining")}

    # REST requests: one authorised, two refused. The tokens must never be logged.
    token = _token(private)
    forged = "forged-token-" + uuid.uuid4().hex
    assert (await process.get("/v1/calls", {"Authorization": f"Bearer {token}"}))[0] == 200
    assert (await process.get("/v1/calls?page_size=5",
                              {"Authorization": f"Bearer {forged}"}))[0] == 401
    assert (await process.get("/v1/calls/no-such-call"))[0] == 401

    number = new_number()
    webhooks.answer(number, [{"action": "talk", "text": "Counted."},
                             {"action": "wait", "timeout": 0.5}])
    call = await dial(number)
    assert call.sip.ok, call.sip.errors
    await _until(lambda: "completed" in events.statuses(number), "completed arrived")

    families = await _metrics(process)
    assert _metric(families, "ari_bridge_calls_ended_total", status="completed") == 1
    assert _metric(families, "ari_bridge_ncco_actions_total", action="talk") == 1
    assert _metric(families, "ari_bridge_ncco_actions_total", action="wait") == 1
    assert _metric(families, "ari_bridge_calls_active") == 0
    assert _metric(families, "ari_bridge_rest_requests_total", status="200") == 1
    assert _metric(families, "ari_bridge_rest_requests_total", status="401") == 2
    # answer, ring, play, hangup...: every ARI request is timed, by method.
    assert _metric(families, "ari_bridge_ari_request_duration_seconds_count",
                   method="POST") >= 2
    assert _metric(families, "ari_bridge_ari_request_duration_seconds_count",
                   method="DELETE") >= 1
    # No busy mark is left behind (this bridge has no applets, so none was even written).
    assert _metric(families, "ari_bridge_agent_leases_held") == 0
    assert _metric(families, "ari_bridge_webhook_duration_seconds_count", kind="answer") == 1

    process.terminate()
    assert await process.wait_exit() == 0, process.log()[-3000:]

    access = [line for line in process.log_lines() if line.get("event") == "api.request"]
    assert [(a["method"], a["path"], a["status"], a["application_id"]) for a in access] == [
        ("GET", "/v1/calls", 200, APP_ID),
        ("GET", "/v1/calls", 401, None),
        ("GET", "/v1/calls/no-such-call", 401, None),
    ]
    assert all(isinstance(a["duration_ms"], int | float) and a["duration_ms"] >= 0
               for a in access)
    output = process.log()
    assert token not in output and forged not in output


async def test_readyz_names_each_failed_check(lab: LabInfo, webhooks: WebhookApp,
                                              tmp_path: Path) -> None:
    closed = free_port(socket.SOCK_STREAM)  # nothing listens here: ARI is unreachable
    down = BridgeService(bridge_config(lab, webhooks, tmp_path / "down",
                                       url=f"http://127.0.0.1:{closed}"))
    await down.start()
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{down.base_url}/livez") as resp:
                assert resp.status == 200
            await _until(lambda: down.gateway.last_error, "the connection attempt failed")
            for path in ("/readyz", "/healthz"):
                async with http.get(f"{down.base_url}{path}") as resp:
                    body = await resp.json()
                    assert resp.status == 503, body
                    assert body["failed"] == ["ari"] and body["status"] == "unavailable"
                    assert body["checks"]["ari"]["ok"] is False
                    assert body["checks"]["ari"]["error"]
                    assert body["checks"]["call_store"] == {"ok": True}
    finally:
        await down.stop()

    up = BridgeService(bridge_config(lab, webhooks, tmp_path / "up"))
    await up.start()
    try:
        assert await up.gateway.wait_connected(20), up.gateway.last_error
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{up.base_url}/readyz") as resp:
                assert resp.status == 200, await resp.text()
            # Stores that cannot be written: each is named with its error.
            up.engine.store.close()
            await up.engine.agents.close()
            async with http.get(f"{up.base_url}/readyz") as resp:
                body = await resp.json()
            assert resp.status == 503
            assert body["failed"] == ["call_store", "agent_store"]
            assert "closed database" in body["checks"]["call_store"]["error"]
            assert "closed database" in body["checks"]["agent_store"]["error"]
            up.engine.start_draining()
            async with http.get(f"{up.base_url}/healthz") as resp:
                body = await resp.json()
            assert body["failed"] == ["call_store", "agent_store", "draining"]
            assert body["draining"] is True
    finally:
        await up.stop()
