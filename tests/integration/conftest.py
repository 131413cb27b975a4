"""The integration harness: one lab Asterisk per test session, a bridge per test, a scripted
webhook application, and real callers (sipp) whose audio is received and measured here.

Each test dials its own number; the webhook application decides what to answer by the number
dialled (``to``), so tests are independent without restarting anything.
"""

from __future__ import annotations

import base64
import importlib
import json
import os
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from bridge.app import BridgeService
from bridge.config import load_config
from bridge.lab import LabInfo, LabOptions, lab_down, lab_up
from bridge.lab.dockerd import PrivateDockerd, reachable_engine
from bridge.lab.sipp import RtpReceiver, SippResult, Step, free_port, place_call
from tests.integration.harness import (
    LEGACY_NUMBER,
    MAIN_NUMBER,
    POST_NUMBER,
    UNREACHABLE_NUMBER,
    Recorded,
    Reply,
    WebhookApp,
    _pick,
    _respond,
)

pytestmark = pytest.mark.integration

# ---------------------------------------------------------------------------- the lab
@pytest.fixture(scope="session")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabInfo]:
    if os.geteuid() != 0:
        pytest.fail("integration tests need root (the lab runs Asterisk in a chroot)")
    rtp = free_port()
    opts = LabOptions(
        state_dir=tmp_path_factory.mktemp("lab"),
        ari_port=free_port(), sip_port=free_port(),
        # Below the ephemeral range (and away from sipp's media ports), so the RTP ports
        # Asterisk picks never collide with sockets bound to port 0.
        rtp_start=12000 + (rtp % 7000), rtp_end=12000 + (rtp % 7000) + 600,
    )
    info = lab_up(opts)
    yield info
    lab_down(opts)


# --------------------------------------------------------------------- a Docker engine
@pytest.fixture(scope="session")
def docker_engine() -> Iterator[str]:
    """The URL of a Docker engine for the session, also set as $DOCKER_HOST: the one already
    running, else a private dockerd of ours (its data root persists, so images built once are
    reused), stopped by PID at the end."""
    if os.geteuid() != 0:
        pytest.fail("the docker tests need root (they may start dockerd)")
    previous = os.environ.get("DOCKER_HOST")
    url = reachable_engine()
    private = None if url is not None else PrivateDockerd().start()
    url = url or private.url  # type: ignore[union-attr]
    os.environ["DOCKER_HOST"] = url
    try:
        yield url
    finally:
        if previous is None:
            os.environ.pop("DOCKER_HOST", None)
        else:
            os.environ["DOCKER_HOST"] = previous
        if private is not None:
            _prune_old_dangling_images(url)  # so the kept data root does not grow
            private.stop()


def _prune_old_dangling_images(url: str) -> None:
    """Remove untagged images older than three days: builds replaced since. Recent ones stay,
    since they include the bridge image's build stage, the cache of its slowest step."""
    try:
        importlib.import_module("docker").DockerClient(base_url=url, timeout=120).images.prune(
            filters={"dangling": True, "until": "72h"})
    except Exception as exc:  # only housekeeping
        print(f"docker: pruning old untagged images failed: {exc}")


# ------------------------------------------------------------------ webhook application
@pytest.fixture(scope="session")
async def webhooks(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[WebhookApp]:
    state = WebhookApp()
    audio_dir = tmp_path_factory.mktemp("audio")
    state.files = _make_audio(audio_dir)

    async def record(request: web.Request) -> Recorded:
        raw = await request.read()
        try:
            parsed = json.loads(raw) if raw else None
        except ValueError:
            parsed = raw.decode(errors="replace")
        item = Recorded(request.path, request.method, dict(request.query), parsed,
                        dict(request.headers), time.monotonic())
        state.requests.append(item)
        return item

    def number_of(item: Recorded) -> str:
        if item.method == "GET":
            return item.query.get("to", "")
        return str((item.json or {}).get("to", ""))

    async def answer(request: web.Request) -> web.Response:
        item = await record(request)
        number = number_of(item)
        replies = state.answers.get(number) or [Reply(status=404)]
        count = len([r for r in state.of("/answer") if number_of(r) == number]) - 1
        return await _respond(_pick(replies, count))

    async def fallback(request: web.Request) -> web.Response:
        item = await record(request)
        number = number_of(item)
        replies = state.fallbacks.get(number) or [Reply(status=500)]
        count = len([r for r in state.of("/fallback") if number_of(r) == number]) - 1
        return await _respond(_pick(replies, count))

    async def event(request: web.Request) -> web.Response:
        await record(request)
        return web.Response(status=204)

    async def hook(request: web.Request) -> web.Response:
        await record(request)
        name = request.match_info["name"]
        replies = state.hooks.get(name) or [Reply(status=204)]
        return await _respond(_pick(replies, len(state.of(request.path)) - 1))

    async def audio(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in state.files:
            raise web.HTTPNotFound()
        kind = "audio/mpeg" if name.endswith(".mp3") else "audio/wav"
        return web.Response(body=state.files[name], content_type=kind)

    app = web.Application(client_max_size=8 << 20)
    app.router.add_route("*", "/answer", answer)
    app.router.add_route("*", "/fallback", fallback)
    app.router.add_route("*", "/event", event)
    app.router.add_route("*", "/hook/{name}", hook)
    app.router.add_get("/audio/{name}", audio)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port(socket.SOCK_STREAM)
    await web.TCPSite(runner, "127.0.0.1", port).start()
    state.url = f"http://127.0.0.1:{port}"
    yield state
    await runner.cleanup()


def _make_audio(folder: Path) -> dict[str, bytes]:
    """A 2-second 440 Hz tone as wav and mp3, and a file that is not audio."""
    wav = folder / "tone.wav"
    mp3 = folder / "tone.mp3"
    subprocess.run(["sox", "-n", "-r", "16000", "-b", "16", "-c", "1", str(wav),
                    "synth", "2", "sine", "440", "gain", "-6"], check=True)
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-i", str(wav), str(mp3)], check=True)
    return {"tone.wav": wav.read_bytes(), "tone.mp3": mp3.read_bytes(),
            "notaudio.mp3": b"<html>this is not audio</html>" * 50}


# ------------------------------------------------------------------------- the bridge
def bridge_config(lab: LabInfo, webhooks: WebhookApp, tmp: Path,
                  routes: dict[str, int] | None = None, **ari: Any) -> Any:
    """The bridge's configuration; ``routes`` maps number prefixes to local agents' ports."""
    app_defaults = {
        "event_url": f"{webhooks.url}/event",
        "fallback_answer_url": f"{webhooks.url}/fallback",
        "timeouts": {"connect_ms": 300, "answer_read_ms": 1000, "event_read_ms": 2000},
        "max_ncco_replacements": 5,
    }
    return load_config(None, environ={}, overrides={
        "ari": {"url": lab.ari_url, "username": lab.ari_username,
                "password": lab.ari_password, "app": lab.app_name,
                "reconnect_min_s": 0.2, "reconnect_max_s": 1.0, "ping_interval_s": 1.0,
                **ari},
        "http": {"host": "127.0.0.1", "port": 0},
        "store": {"path": str(tmp / "calls.sqlite3")},
        "media": {"path": str(tmp / "media")},
        "applications": [
            {"id": "main", "answer_url": f"{webhooks.url}/answer", **app_defaults},
            {"id": "post", "answer_url": f"{webhooks.url}/answer", "answer_method": "POST",
             **app_defaults},
            {"id": "unreachable", "answer_url": f"http://127.0.0.1:{free_port(socket.SOCK_STREAM)}/x",
             **app_defaults},
            {"id": "legacy", "answer_url": f"{webhooks.url}/answer",
             "legacy_input_payload": True, **app_defaults},
        ],
        "numbers": {"*": "main", POST_NUMBER: "post", UNREACHABLE_NUMBER: "unreachable",
                    LEGACY_NUMBER: "legacy", MAIN_NUMBER: "main"},
        "trunks": [{"name": f"agent-{port}", "host": "127.0.0.1", "port": port}
                   for port in (routes or {}).values()],
        "routes": [{"prefix": prefix, "trunk": f"agent-{port}"}
                   for prefix, port in (routes or {}).items()],
    })


@pytest.fixture
async def bridge(request: pytest.FixtureRequest, lab: LabInfo, webhooks: WebhookApp,
                 tmp_path: Path) -> AsyncIterator[BridgeService]:
    """A started bridge; parametrized indirectly, the parameter is its ari.rest_transport."""
    ari = {"rest_transport": request.param} if hasattr(request, "param") else {}
    service = BridgeService(bridge_config(lab, webhooks, tmp_path, **ari))
    await service.start()
    assert await service.gateway.wait_connected(20), service.gateway.last_error
    yield service
    await service.stop()
    await _hang_up_leftovers(lab)


async def _hang_up_leftovers(lab: LabInfo) -> None:
    """Reset ARI state between tests: no channel may outlive its test."""
    token = base64.b64encode(f"{lab.ari_username}:{lab.ari_password}".encode()).decode()
    async with aiohttp.ClientSession(headers={"Authorization": f"Basic {token}"}) as http:
        async with http.get(f"{lab.ari_url}/ari/channels") as resp:
            channels = await resp.json()
        for channel in channels:
            async with http.delete(f"{lab.ari_url}/ari/channels/{channel['id']}"):
                pass


# ------------------------------------------------------------------------ the caller
@dataclass
class Call:
    sip: SippResult
    audio: RtpReceiver


@pytest.fixture
def dial(lab: LabInfo) -> Callable[..., Any]:
    async def dial(number: str, steps: list[Step] | None = None, expect_status: int = 200,
                   timeout_s: float = 60.0) -> Call:
        receiver = await RtpReceiver.open()
        try:
            result = await place_call(lab.sip_host, lab.sip_port, number,
                                      rtp_port=receiver.port, steps=steps,
                                      expect_status=expect_status, timeout_s=timeout_s)
        finally:
            receiver.close()
        return Call(result, receiver)

    return dial
