"""Exotel Connect applet with real SIP agents (sipp) that answer, are busy, never answer."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from prometheus_client import REGISTRY

from bridge.agents.redis_server import RedisServer
from bridge.app import BridgeService
from bridge.config import Config
from bridge.lab.pcap import tone_samples, write_rtp_pcap
from bridge.lab.sipp import Agent, Audio, HangUp, Pause, RtpReceiver, free_port, place_call
from tests.integration.conftest import Call, bridge_config
from tests.integration.harness import Recorded, Reply, _pick, _respond, new_number
from tests.rawhttp import RawServer

pytestmark = pytest.mark.integration

GOODBYE = [{"action": "talk", "text": "Goodbye."}]
# Exotel's sample response for the Connect applet (JSON 1.1), copied verbatim from its
# documentation: its numbers keep their "x" placeholders.
SEED_SAMPLE = """{ "fetch_after_attempt": false, "destination": [ { "contact_uri": "+9198765xxxxx" }, { "contact_uri": "sip:gauravjfb55d386" }, { "contact_uri": "+9197864xxxxx" } ], "state_management": true, "outgoing_phone_number": "90876xxxxx", "sticky_agent": false, "recording": { "record": true, "channels": "single" }, "max_ringing_duration": 30, "max_conversation_duration": 900, "music_on_hold": { "type": "default_tone" }, "parallel_ringing": { "activate": true, "max_parallel_attempts": 5 }, "call_event_passthru_url": "http://dial_passthru_event_url.com", "start_call_playback": { "type": "text", "value": "hello, this is a sample text" } }"""  # noqa: E501


# ------------------------------------------------------------------ the applet's app
@dataclass
class AppletApp:
    url: str = ""
    requests: list[Recorded] = field(default_factory=list)
    replies: dict[str, list[Reply]] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)

    def script(self, path: str, *replies: Reply | dict[str, Any] | str) -> str:
        """Replies for ``path`` (one per request, the last repeats); returns its URL."""
        made = []
        for r in replies:
            if isinstance(r, Reply):
                made.append(r)
            elif isinstance(r, str):
                made.append(Reply(body=r.encode(), content_type="text/plain"))
            else:
                made.append(Reply(json=r))
        self.replies[path] = made
        return f"{self.url}{path}"

    def of(self, path: str) -> list[Recorded]:
        return [r for r in self.requests if r.path == path]

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError("not in time; requests: " + "\n".join(
                    f"{r.path} {r.query} {json.dumps(r.json)[:200]}" for r in self.requests[-20:]))
            await asyncio.sleep(0.05)


@pytest.fixture(scope="module")
def hold_audio(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A 2-second 700 Hz tone: the custom music on hold."""
    wav = tmp_path_factory.mktemp("applet-audio") / "hold.wav"
    subprocess.run(["sox", "-n", "-r", "8000", "-b", "16", "-c", "1", str(wav),
                    "synth", "2", "sine", "700", "gain", "-6"], check=True)
    return wav.read_bytes()


@pytest.fixture(scope="module")
async def applet_app(hold_audio: bytes) -> AsyncIterator[AppletApp]:
    state = AppletApp()
    state.files["hold.wav"] = hold_audio

    async def handle(request: web.Request) -> web.Response:
        raw = await request.read()
        try:
            parsed = json.loads(raw) if raw else None
        except ValueError:
            parsed = None
        state.requests.append(Recorded(request.path, request.method, dict(request.query),
                                       parsed, dict(request.headers), time.monotonic()))
        if request.path.startswith("/audio/"):
            name = request.path.rsplit("/", 1)[1]
            if name in state.files:
                return web.Response(body=state.files[name], content_type="audio/wav")
            return web.Response(status=404)
        replies = state.replies.get(request.path) or [Reply(status=404)]
        return await _respond(_pick(replies, len(state.of(request.path)) - 1))

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port(socket.SOCK_STREAM)
    await web.TCPSite(runner, "127.0.0.1", port).start()
    state.url = f"http://127.0.0.1:{port}"
    yield state
    await runner.cleanup()


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture(scope="module")
def tones(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("exotel-tones")
    return (write_rtp_pcap(folder / "caller.pcap", tone_samples(3, 600)),
            write_rtp_pcap(folder / "agent.pcap", tone_samples(3, 1000)))


# ------------------------------------------------------------------------- the bridge
@dataclass
class Applet:
    number: str
    key: str
    app: AppletApp

    @property
    def primary(self) -> str:
        return f"/primary/{self.key}"

    @property
    def fallback(self) -> str:
        return f"/fallback/{self.key}"

    @property
    def passthru(self) -> str:
        return f"{self.app.url}/passthru/{self.key}"

    def transition(self, name: str) -> str:
        return f"/transition/{self.key}/{name}"

    def outcomes(self) -> list[str]:
        return [r.path.rsplit("/", 1)[1] for r in self.app.requests
                if r.path.startswith(f"/transition/{self.key}/")]

    def config(self, **extra: Any) -> dict[str, Any]:
        for name in ("after_conversation", "nobody_answered", "nobody_dialled"):
            self.app.script(self.transition(name), Reply(json=GOODBYE))
        return {"application": "main", "primary_url": f"{self.app.url}{self.primary}",
                "fallback_url": f"{self.app.url}{self.fallback}",
                **{name: {"url": f"{self.app.url}{self.transition(name)}"}
                   for name in ("after_conversation", "nobody_answered", "nobody_dialled")},
                **extra}


@pytest.fixture
async def exotel(lab, webhooks, applet_app, tmp_path) -> AsyncIterator[Any]:
    services: list[BridgeService] = []

    async def start(routes: dict[str, int], applets: dict[str, dict[str, Any]],
                    agents: dict[str, Any] | None = None) -> BridgeService:
        base = bridge_config(lab, webhooks, tmp_path, routes=routes)
        data = base.model_dump(by_alias=True)
        data["ari"]["password"] = base.ari.password.get_secret_value()
        data["connect_applets"] = applets
        data["agents"] = {"lease_s": 5, **(agents or {})}
        service = BridgeService(Config.model_validate(data))
        await service.start()
        assert await service.gateway.wait_connected(20)
        services.append(service)
        return service

    yield start
    for service in services:
        await service.stop()


def metric(name: str, **labels: str) -> float:
    """A sample of the bridge's metrics (the services run in this process)."""
    return REGISTRY.get_sample_value(name, labels) or 0.0


def new_applet(app: AppletApp) -> Applet:
    number = new_number()
    return Applet(number, number, app)


async def call(lab, number: str, caller: str = "15550001111", steps=None,
               expect_status: int = 200, timeout_s: float = 40) -> Call:
    receiver = await RtpReceiver.open()
    try:
        result = await place_call(lab.sip_host, lab.sip_port, number, rtp_port=receiver.port,
                                  caller=caller, steps=steps, expect_status=expect_status,
                                  timeout_s=timeout_s)
    finally:
        receiver.close()
    return Call(result, receiver)


def dest(*contacts: str, **extra: Any) -> dict[str, Any]:
    return {"destination": [{"contact_uri": c} for c in contacts], **extra}


def skipped(webhooks, number: str) -> list[tuple[str, str]]:
    """(agent, reason) of every agent_skipped event of calls to ``number``, in order."""
    return [(e["agent"], e["reason"]) for e in webhooks.events(number)
            if e.get("status") == "agent_skipped"]


def saw_cancel(agent: Agent) -> bool:
    return bool(re.search(r"message received[^\n]*\n+\s*CANCEL ", agent.messages))


def answered_invite(agent: Agent) -> bool:
    return bool(re.search(r"message sent[^\n]*\n+\s*SIP/2.0 200 OK[^\n]*\n(?:[^\n]+\n)*?"
                          r"CSeq: *\d+ INVITE", agent.messages))


# ------------------------------------------------------------------------------ tests
async def test_json_sequential_busy_then_answer_with_audio_and_parameters(
        exotel, applet_app, lab, webhooks, tones):
    caller_tone, agent_tone = tones
    applet = new_applet(applet_app)
    async with Agent(486) as busy, Agent(200, hangup_after_ms=3000, audio=agent_tone) as free:
        applet_app.script(applet.primary, dest("+4420001", "+4420002", max_ringing_duration=3))
        await exotel({"4420001": busy.port, "4420002": free.port},
                     {applet.number: applet.config()})

        result = await call(lab, applet.number, caller="919800001234",
                            steps=[Pause(500), Audio(caller_tone)])

        assert result.sip.ok, result.sip.errors
        assert busy.invites() == 1 and free.invites() == 1
        await applet_app.wait_for(lambda: applet.outcomes() == ["after_conversation"])
        first = applet_app.of(applet.primary)[0]
        assert first.headers.get("exotel-version") == "1.1"
        q = first.query
        assert q["CallFrom"] == q["From"] == "919800001234"
        assert q["CallTo"] == q["To"] == applet.number
        assert q["Direction"] == "incoming" and q["EndTime"] == "1970-01-01 05:30:00"
        assert q["CallType"] == "call-attempt" and "DialCallStatus" not in q
        assert len(q["CallSid"]) == 32
        for name in ("CallStatus", "Created", "DialCallDuration", "StartTime", "CurrentTime",
                     "DialWhomNumber"):
            assert name in q
        assert result.audio.voiced_seconds() > 1.5, "the caller did not hear the agent"
        assert free.receiver.voiced_seconds() > 1.0, "the agent did not hear the caller"
        skipped = [e for e in webhooks.of("/event")
                   if (e.json or {}).get("status") == "agent_skipped"
                   and e.json.get("to") == applet.number]
        assert skipped == []


async def test_dial_whom_each_unique_number_once_then_nobody_answered(
        exotel, applet_app, lab):
    applet = new_applet(applet_app)
    async with Agent(486) as a, Agent(603) as b:
        applet_app.script(applet.primary, "+4421001,+4421002")  # the same list every time
        await exotel({"4421001": a.port, "4421002": b.port},
                     {applet.number: applet.config(dialect="dial_whom")})

        result = await call(lab, applet.number)

        assert result.sip.ok, result.sip.errors
        await applet_app.wait_for(lambda: applet.outcomes() == ["nobody_answered"])
        assert a.invites() == 1 and b.invites() == 1
        requests = applet_app.of(applet.primary)
        assert len(requests) == 3
        assert "exotel-version" not in requests[0].headers
        assert [r.query.get("DialCallStatus") for r in requests] == [None, "busy", "busy"]
        assert requests[1].query["DialWhomNumber"] == "+4421001"
        assert requests[2].query["DialWhomNumber"] == "+4421002"


@pytest.mark.parametrize("case", ["http 500", "not json", "no destination", "limit",
                                  "bad audio_url", "timeout"])
async def test_json_fallback_cases(exotel, applet_app, lab, webhooks, case):
    applet = new_applet(applet_app)
    primary = {
        "http 500": Reply(status=500),
        "not json": Reply(body=b"+4422001", content_type="text/plain"),
        "no destination": Reply(json={"state_management": True}),
        "limit": Reply(json=dest("+4422001", max_ringing_duration=61)),
        "bad audio_url": Reply(json=dest("+4422001", start_call_playback={
            "type": "audio_url", "value": f"{applet_app.url}/audio/missing.wav"})),
        "timeout": Reply(json=dest("+4422001"), delay_s=6),
    }[case]
    async with Agent(200, hangup_after_ms=500) as agent:
        applet_app.script(applet.primary, primary)
        applet_app.script(applet.fallback, dest("+4422001", max_ringing_duration=3))
        await exotel({"4422001": agent.port}, {applet.number: applet.config()})

        result = await call(lab, applet.number)

        assert result.sip.ok, result.sip.errors
        await applet_app.wait_for(lambda: applet.outcomes() == ["after_conversation"])
        assert len(applet_app.of(applet.fallback)) == 1
        assert agent.invites() == 1  # only the fallback's agent, once
        await webhooks.wait_completed(applet.number)
        [error] = webhooks.errors(applet.number)
        assert error.startswith("connect applet: primary URL failed (")
        assert error.endswith("); used fallback URL")


async def test_both_urls_failing_means_nobody_was_dialled(exotel, applet_app, lab, webhooks):
    applet = new_applet(applet_app)
    async with Agent(200, hangup_after_ms=300) as agent:  # rung only if something was dialled
        applet_app.script(applet.primary, Reply(status=503))
        applet_app.script(applet.fallback, Reply(json={"no": "destination"}))
        await exotel({"44": agent.port}, {applet.number: applet.config()})

        result = await call(lab, applet.number)

        assert result.sip.ok, result.sip.errors
        await applet_app.wait_for(lambda: applet.outcomes() == ["nobody_dialled"])
        await webhooks.wait_completed(applet.number)
        assert agent.invites() == 0
        assert len(applet_app.of(applet.primary)) == 2  # 503 is retried once
        assert len(applet_app.of(applet.fallback)) == 1
        assert webhooks.errors(applet.number) == [
            "connect applet: primary URL failed (http 503); fallback URL failed (invalid "
            "response: destination: mandatory parameter missing)"]


async def test_nobody_dialled_falls_back_to_nobody_answered(exotel, applet_app, lab, webhooks):
    applet = new_applet(applet_app)
    async with Agent(200, hangup_after_ms=300) as agent:  # rung only if something was dialled
        applet_app.script(applet.primary, dest())  # an empty destination list
        config = applet.config()
        del config["nobody_dialled"]
        await exotel({"44": agent.port}, {applet.number: config})

        result = await call(lab, applet.number)

        assert result.sip.ok, result.sip.errors
        await applet_app.wait_for(lambda: applet.outcomes() == ["nobody_answered"])
        await webhooks.wait_completed(applet.number)
        assert agent.invites() == 0
        # An empty list is a valid answer: no fallback, no error, nobody skipped.
        assert applet_app.of(applet.fallback) == []
        assert webhooks.errors(applet.number) == []
        assert skipped(webhooks, applet.number) == []


async def test_primary_and_fallback_urls_that_hang_up_are_each_asked_twice(
        exotel, applet_app, lab, webhooks):
    """Both URLs read the request and close the connection without answering: one retry
    each (no hidden second retry), then nobody is dialled."""
    applet = new_applet(applet_app)
    async with RawServer() as raw, Agent(200, hangup_after_ms=300) as agent:
        config = applet.config(primary_url=raw.url("/primary"), fallback_url=raw.url("/fallback"))
        await exotel({"44": agent.port}, {applet.number: config})

        result = await call(lab, applet.number)

        assert result.sip.ok, result.sip.errors
        await applet_app.wait_for(lambda: applet.outcomes() == ["nobody_dialled"])
        await webhooks.wait_completed(applet.number)
        assert len(raw.of("/primary")) == 2 and len(raw.of("/fallback")) == 2
        assert all(r.method == "GET" and r.query["CallTo"] == applet.number
                   for r in raw.requests)
        assert agent.invites() == 0
        assert webhooks.errors(applet.number) == [
            "connect applet: primary URL failed (connection reset); "
            "fallback URL failed (connection reset)"]


async def test_seed_sample_verbatim_reports_every_invalid_destination(
        exotel, applet_app, lab, webhooks):
    """The seed's own sample: its outgoing_phone_number ("90876xxxxx") fails validation,
    which is no reason for the Fallback URL; each destination is checked and skipped with
    its reason, so nobody is dialled."""
    applet = new_applet(applet_app)
    # Rung if any of the sample's +91 "numbers" were dialled.
    async with Agent(200, hangup_after_ms=300) as agent:
        applet_app.script(applet.primary, Reply(body=SEED_SAMPLE.encode()))
        applet_app.script(applet.fallback, dest("+9190000001"))
        await exotel({"91": agent.port}, {applet.number: applet.config()})

        result = await call(lab, applet.number)

        assert result.sip.ok, result.sip.errors
        await applet_app.wait_for(lambda: applet.outcomes() == ["nobody_dialled"])
        await webhooks.wait_completed(applet.number)
        assert applet_app.of(applet.fallback) == []
        assert agent.invites() == 0
        assert skipped(webhooks, applet.number) == [
            ("+9198765xxxxx", "invalid format"),
            ("sip:gauravjfb55d386", "no such device"),
            ("+9197864xxxxx", "invalid format"),
        ]
        events = [e for e in webhooks.events(applet.number)
                  if e.get("status") == "agent_skipped"]
        uuids = {e["uuid"] for e in webhooks.events(applet.number)
                 if e.get("status") == "started"}
        assert {e["uuid"] for e in events} == uuids
        assert webhooks.errors(applet.number) == []


async def test_invalid_outgoing_phone_number_dials_with_the_inbound_number(
        exotel, applet_app, lab, webhooks):
    """The seed's sample with one reachable agent: the agent is dialled (not the Fallback
    URL's), with the number the call came in on as caller ID."""
    applet = new_applet(applet_app)
    sample = json.loads(SEED_SAMPLE)
    sample["destination"] = [{"contact_uri": "+4433001"}]
    for unreachable_here in ("call_event_passthru_url", "recording", "start_call_playback"):
        del sample[unreachable_here]
    async with Agent(200, hangup_after_ms=300) as agent, \
            Agent(200, hangup_after_ms=300) as fallback_agent:
        applet_app.script(applet.primary, sample)
        applet_app.script(applet.fallback, dest("+4433002"))
        await exotel({"4433001": agent.port, "4433002": fallback_agent.port},
                     {applet.number: applet.config()})

        result = await call(lab, applet.number)

        assert result.sip.ok, result.sip.errors
        await applet_app.wait_for(lambda: applet.outcomes() == ["after_conversation"])
        assert applet_app.of(applet.fallback) == []
        assert (agent.invites(), fallback_agent.invites()) == (1, 0)
        froms = re.findall(r"received[^\n]*\n+\s*INVITE [^\n]*\n(?:[^\n]+\n)*?\s*From: *"
                           r"[^\n]*?sip:\+?(\d+)@", agent.messages)
        assert froms == [applet.number]
        await webhooks.wait_completed(applet.number)
        assert webhooks.errors(applet.number) == []


@pytest.mark.parametrize("case", ["http 500", "timeout", "invalid numbers"])
async def test_dial_whom_fallback_rules(exotel, applet_app, lab, webhooks, case):
    applet = new_applet(applet_app)
    primary = {"http 500": Reply(status=500),
               "timeout": Reply(body=b"+4423001", content_type="text/plain", delay_s=3),
               "invalid numbers": Reply(body=b"nobody, here", content_type="text/plain")}[case]
    async with Agent(200, hangup_after_ms=500) as agent:
        applet_app.script(applet.primary, primary)
        applet_app.script(applet.fallback, "+4423001")
        await exotel({"4423001": agent.port}, {applet.number: applet.config(
            dialect="dial_whom", request_timeout_s=1.5, fetch_after_attempt=False,
            ring_timeout_s=3)})

        result = await call(lab, applet.number)

        assert result.sip.ok, result.sip.errors
        if case == "invalid numbers":  # a 200 never goes to the fallback
            await applet_app.wait_for(lambda: applet.outcomes() == ["nobody_dialled"])
            assert applet_app.of(applet.fallback) == [] and agent.invites() == 0
            await webhooks.wait_for(lambda: len(skipped(webhooks, applet.number)) == 2)
            assert skipped(webhooks, applet.number) == [("nobody", "invalid format"),
                                                         ("here", "invalid format")]
            await webhooks.wait_completed(applet.number)
            assert webhooks.errors(applet.number) == []  # skips are events, not errors
        else:
            await applet_app.wait_for(lambda: applet.outcomes() == ["after_conversation"])
            assert len(applet_app.of(applet.fallback)) == 1 and agent.invites() == 1
            await webhooks.wait_completed(applet.number)
            [error] = webhooks.errors(applet.number)
            assert error.startswith("connect applet: primary URL failed (")
            assert error.endswith("); used fallback URL")


async def test_dial_whom_invalid_numbers_are_reported_and_the_valid_one_dialled(
        exotel, applet_app, lab, webhooks):
    applet = new_applet(applet_app)
    async with Agent(200, hangup_after_ms=300) as agent:
        applet_app.script(applet.primary, "0800-CALL-ME, +4435001, 12ab34")
        await exotel({"4435001": agent.port}, {applet.number: applet.config(
            dialect="dial_whom", fetch_after_attempt=False, ring_timeout_s=3)})
        skips_before = metric("ari_bridge_agents_skipped_total", reason="invalid")

        result = await call(lab, applet.number)

        assert result.sip.ok, result.sip.errors
        await applet_app.wait_for(lambda: applet.outcomes() == ["after_conversation"])
        assert agent.invites() == 1
        await webhooks.wait_for(lambda: len(skipped(webhooks, applet.number)) == 2)
        assert skipped(webhooks, applet.number) == [("0800-CALL-ME", "invalid format"),
                                                     ("12ab34", "invalid format")]
        [event] = [e for e in webhooks.events(applet.number)
                   if e.get("status") == "agent_skipped" and e["agent"] == "12ab34"]
        assert event["from"] == "15550001111" and event["to"] == applet.number
        assert event["direction"] == "inbound" and event["conversation_uuid"]
        assert metric("ari_bridge_agents_skipped_total", reason="invalid") == skips_before + 2


async def test_parallel_first_answer_wins_and_losers_are_cancelled(exotel, applet_app, lab):
    applet = new_applet(applet_app)
    async with Agent(180) as slow1, Agent(180) as slow2, \
            Agent(200, ring_ms=800, hangup_after_ms=500) as winner:
        applet_app.script(applet.primary, dest(
            "+4424001", "+4424002", "+4424003", max_ringing_duration=10,
            parallel_ringing={"activate": True, "max_parallel_attempts": 3}))
        await exotel({"4424001": slow1.port, "4424002": slow2.port, "4424003": winner.port},
                     {applet.number: applet.config()})

        result = await call(lab, applet.number)

        assert result.sip.ok, result.sip.errors
        await applet_app.wait_for(lambda: applet.outcomes() == ["after_conversation"])
        for loser in (slow1, slow2):
            assert loser.invites() == 1
            assert saw_cancel(loser), "a loser kept ringing"
            assert not answered_invite(loser)
        assert winner.invites() == 1 and answered_invite(winner)


async def test_fetch_after_attempt_asks_again_and_stops_on_the_same_set(
        exotel, applet_app, lab):
    applet = new_applet(applet_app)
    async with Agent(486) as a, Agent(486) as b, Agent(486) as c:
        applet_app.script(
            applet.primary,
            dest("+4425001", "+4425003", fetch_after_attempt=True, max_ringing_duration=3),
            dest("+4425002", "+4425003", fetch_after_attempt=True, max_ringing_duration=3),
            dest("+4425003", "+4425002", fetch_after_attempt=True, max_ringing_duration=3))
        await exotel({"4425001": a.port, "4425002": b.port, "4425003": c.port},
                     {applet.number: applet.config()})

        result = await call(lab, applet.number)

        assert result.sip.ok, result.sip.errors
        await applet_app.wait_for(lambda: applet.outcomes() == ["nobody_answered"])
        requests = applet_app.of(applet.primary)
        # 1st list: +4425001 tried; 2nd (new set): +4425002 tried; 3rd = same set: stop.
        assert len(requests) == 3
        assert [r.query.get("DialCallStatus") for r in requests] == [None, "busy", "busy"]
        assert (a.invites(), b.invites(), c.invites()) == (1, 1, 0)


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
async def test_state_management_more_callers_than_agents(
        exotel, applet_app, lab, webhooks, backend, request):
    applet = new_applet(applet_app)
    agents_cfg: dict[str, Any] = {"backend": backend}
    if backend == "redis":
        server = request.getfixturevalue("redis_server")
        agents_cfg.update(redis_url=server.url, redis_prefix=f"{applet.number}:")
    async with Agent(200, hangup_after_ms=4000) as a, Agent(200, hangup_after_ms=4000) as b:
        applet_app.script(applet.primary, dest("+4426001", "+4426002", state_management=True,
                                               max_ringing_duration=3))
        await exotel({"4426001": a.port, "4426002": b.port},
                     {applet.number: applet.config()}, agents_cfg)

        results = await asyncio.gather(*(call(lab, applet.number, caller=f"9198000000{i}")
                                         for i in range(4)))

        assert all(r.sip.ok for r in results), [r.sip.errors for r in results]
        await applet_app.wait_for(lambda: len(applet.outcomes()) == 4)
        # Each agent took exactly one call; the two callers beyond them dialled nobody.
        assert (a.invites(), b.invites()) == (1, 1)
        assert sorted(applet.outcomes()) == ["after_conversation"] * 2 + ["nobody_dialled"] * 2
        skipped = [e.json for e in webhooks.of("/event")
                   if (e.json or {}).get("status") == "agent_skipped"
                   and e.json.get("to") == applet.number]
        assert len(skipped) >= 4 and {s["reason"] for s in skipped} == {"busy"}


async def test_sticky_agent_across_two_calls_and_a_bridge_restart(
        exotel, applet_app, lab):
    applet = new_applet(applet_app)
    async with Agent(200, hangup_after_ms=500) as a, Agent(200, hangup_after_ms=500) as b:
        applet_app.script(applet.primary,
                          dest("+4427002", "+4427001", sticky_agent=True),
                          dest("+4427001", "+4427002", sticky_agent=True))
        routes = {"4427001": a.port, "4427002": b.port}
        first = await exotel(routes, {applet.number: applet.config()})
        result = await call(lab, applet.number, caller="919811112222")
        assert result.sip.ok, result.sip.errors
        assert (a.invites(), b.invites()) == (0, 1)
        await applet_app.wait_for(lambda: applet.outcomes() == ["after_conversation"])
        await first.stop()  # the sticky mapping must survive a restart

        await exotel(routes, {applet.number: applet.config()})
        result = await call(lab, applet.number, caller="919811112222")

        assert result.sip.ok, result.sip.errors
        # The second list puts +4427001 first, but the sticky agent (+4427002) is tried first.
        assert (a.invites(), b.invites()) == (0, 2)


async def test_passthru_events_in_order(exotel, applet_app, lab):
    applet = new_applet(applet_app)
    applet_app.script(f"/passthru/{applet.key}", Reply(status=200))
    async with Agent(200, ring_ms=300, hangup_after_ms=500) as agent:
        applet_app.script(applet.primary, dest("+4428001", call_event_passthru_url=applet.passthru))
        await exotel({"4428001": agent.port}, {applet.number: applet.config()})

        result = await call(lab, applet.number, caller="919822223333")

        assert result.sip.ok, result.sip.errors
        await applet_app.wait_for(
            lambda: len(applet_app.of(f"/passthru/{applet.key}")) >= 4)
        events = [r.json for r in applet_app.of(f"/passthru/{applet.key}")]
        assert [e["event_details"]["event_type"] for e in events] == [
            "dial", "ringing", "answered", "terminal"]
        assert [e["call_details"]["status"] for e in events] == ["busy"] * 3 + ["free"]
        details = events[0]["call_details"]
        assert details["from"] == "919822223333" and details["to"] == "+4428001"
        assert details["virtual_number"] == applet.number
        assert details["direction"] == "incoming"
        assert details["call_sid"] == applet_app.of(applet.primary)[0].query["CallSid"]
        for key in ("created_time", "current_time"):
            assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d$", details[key])


async def test_caller_hanging_up_while_the_agent_rings_ends_its_passthru_events(
        exotel, applet_app, lab):
    applet = new_applet(applet_app)
    applet_app.script(f"/passthru/{applet.key}", Reply(status=200))
    async with Agent(180) as agent:  # rings until it is cancelled
        applet_app.script(applet.primary, dest("+4428002", max_ringing_duration=60,
                                               call_event_passthru_url=applet.passthru))
        await exotel({"4428002": agent.port}, {applet.number: applet.config()})

        # The caller is answered when the agent is dialled, and leaves while it rings.
        result = await call(lab, applet.number, steps=[Pause(4000), HangUp()])

        assert result.sip.ok, result.sip.errors
        await applet_app.wait_for(
            lambda: len(applet_app.of(f"/passthru/{applet.key}")) >= 3)
        events = [r.json for r in applet_app.of(f"/passthru/{applet.key}")]
        assert [e["event_details"]["event_type"] for e in events] == [
            "dial", "ringing", "terminal"]
        assert events[-1]["call_details"]["status"] == "free"
        await applet_app.wait_for(lambda: saw_cancel(agent))
        assert applet.outcomes() == []  # the caller is gone: no transition is asked


@pytest.mark.parametrize("moh", [{"type": "default_tone"}, {"type": "custom_tone"}])
async def test_music_on_hold_is_heard_while_the_agent_rings(exotel, applet_app, lab, moh):
    applet = new_applet(applet_app)
    if moh["type"] == "custom_tone":
        moh = {**moh, "value": f"{applet_app.url}/audio/hold.wav"}
    # The agent rings for 3 s, then answers and says nothing: what the caller hears is hold.
    async with Agent(200, ring_ms=3000, hangup_after_ms=300) as agent:
        applet_app.script(applet.primary, dest("+4429001", music_on_hold=moh))
        config = applet.config()
        config["after_conversation"] = {}  # hang up: nothing else is heard
        await exotel({"4429001": agent.port}, {applet.number: config})

        result = await call(lab, applet.number)

        assert result.sip.ok, result.sip.errors
        assert agent.invites() == 1
        # Hold music has quiet passages (the stock tracks fade in): count the audio that
        # arrived while the agent rang, and that some of it was loud.
        assert result.audio.audio_seconds() > 2.0, "no music while the agent rang"
        assert result.audio.voiced_seconds() > 0.5, "only silence while the agent rang"


async def test_start_call_playback_is_heard_by_the_agent_first(exotel, applet_app, lab):
    applet = new_applet(applet_app)
    async with Agent(200, hangup_after_ms=4000) as agent:
        applet_app.script(applet.primary, dest("+4430001", start_call_playback={
            "type": "text", "value": "Incoming customer call."}))
        await exotel({"4430001": agent.port}, {applet.number: applet.config()})

        result = await call(lab, applet.number)

        assert result.sip.ok, result.sip.errors
        assert agent.receiver is not None and agent.receiver.voiced_seconds() > 0.5


async def test_max_conversation_duration_ends_the_conversation(exotel, applet_app, lab):
    applet = new_applet(applet_app)
    async with Agent(200) as agent:  # never hangs up by itself
        applet_app.script(applet.primary, dest("+4431001", max_conversation_duration=2))
        await exotel({"4431001": agent.port}, {applet.number: applet.config()})

        result = await call(lab, applet.number)

        assert result.sip.ok, result.sip.errors
        await applet_app.wait_for(lambda: applet.outcomes() == ["after_conversation"])
        assert re.search(r"message received[^\n]*\n+\s*BYE ", agent.messages), \
            "the agent leg was not hung up at the limit"


async def test_outgoing_phone_number_must_be_ours(exotel, applet_app, lab):
    applet = new_applet(applet_app)
    async with Agent(200, hangup_after_ms=300) as agent:
        applet_app.script(applet.primary,
                          dest("+4432001", outgoing_phone_number="+15559990000"),
                          dest("+4432001", outgoing_phone_number="+15557770000"))
        await exotel({"4432001": agent.port}, {applet.number: applet.config()},
                     {"caller_ids": ["+15557770000"]})

        for _ in range(2):
            result = await call(lab, applet.number)
            assert result.sip.ok, result.sip.errors

        froms = re.findall(r"received[^\n]*\n+\s*INVITE [^\n]*\n(?:[^\n]+\n)*?\s*From: *[^\n]*?"
                           r"sip:\+?(\d+)@", agent.messages)
        assert len(froms) == 2
        assert froms[0] == applet.number  # not one of ours: the number the call came in on
        assert froms[-1] == "15557770000"


async def test_agent_on_an_ncco_connect_call_is_busy_for_the_applet(
        exotel, applet_app, lab, webhooks):
    """An agent is busy while on any call through the bridge, NCCO connect legs included."""
    applet = new_applet(applet_app)
    async with Agent(200, hangup_after_ms=6000) as agent:
        applet_app.script(applet.primary, dest("+4432001", state_management=True,
                                               max_ringing_duration=3))
        await exotel({"4432001": agent.port}, {applet.number: applet.config()})
        vonage_number = new_number()
        webhooks.answer(vonage_number, [{"action": "connect", "endpoint": [
            {"type": "phone", "number": "+4432001"}]}])
        first = asyncio.ensure_future(call(lab, vonage_number))
        await webhooks.wait_for(lambda: any(
            (e.json or {}).get("status") == "answered" and e.json.get("to") == "+4432001"
            for e in webhooks.of("/event")))

        second = await call(lab, applet.number)

        assert second.sip.ok, second.sip.errors
        await applet_app.wait_for(lambda: applet.outcomes() == ["nobody_dialled"])
        assert agent.invites() == 1  # only the NCCO call reached the agent
        assert (await first).sip.ok
