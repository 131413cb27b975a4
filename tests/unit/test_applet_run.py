"""The Connect applet's dialling logic against a fake call: whom it dials, in which groups,
when it asks its URL again and when it stops.

Asterisk is not involved: the dialler answers from a script and the conversation with the
agent who answers is only recorded. The agent store is the real embedded one. The same
flows run end to end against a real Asterisk in tests/integration/test_exotel.py.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import structlog

from bridge.agents import SqliteAgentStore, agent_key
from bridge.config import load_config
from bridge.dial.dialer import DialTarget, Leg
from bridge.dial.outcome import LegOutcome
from bridge.exotel.applet import AppletRun
from bridge.exotel.candidates import Candidate
from bridge.exotel.params import AppletParams
from bridge.ncco.dtmf import DtmfBuffer
from bridge.webhooks import WebhookRequest, WebhookResponse

NUMBER = "+4420000001"
CALLER = "+4477000001"
PRIMARY = "http://crm/whom"


def dest(*contacts: str, **extra: Any) -> dict[str, Any]:
    return {"destination": [{"contact_uri": c} for c in contacts], **extra}


class ScriptedUrl:
    """The applet's Primary URL: one JSON reply per request, in order; records requests."""

    def __init__(self, replies: list[dict[str, Any]]) -> None:
        self.replies = list(replies)
        self.requests: list[dict[str, str]] = []

    async def send(self, request: WebhookRequest, timeouts: Any,
                   kind: str = "event") -> WebhookResponse:
        assert request.url == PRIMARY
        self.requests.append(dict(request.data or {}))  # type: ignore[arg-type]
        body = json.dumps(self.replies.pop(0)).encode()
        return WebhookResponse(request, 200, body, "application/json", 1, 0.01, None)


class ScriptedDialer:
    """Rings a group of agents; those in ``answering`` answer (the first one wins), the rest
    are busy."""

    def __init__(self, answering: set[str] = frozenset()) -> None:  # type: ignore[assignment]
        self.answering = answering
        self.groups: list[list[str]] = []

    def phone_endpoint(self, number: str) -> str:
        return f"PJSIP/trunk-out/sip:{number}@trunk"

    def sip_endpoint(self, uri: str) -> str:
        return f"PJSIP/trunk-out/{uri}"

    async def dial(self, targets: list[DialTarget], ring_timeout_s: int,
                   on_status: Any) -> tuple[Leg | None, list[Leg]]:
        self.groups.append([t.to for t in targets])
        legs = [Leg(t, channel_id=f"chan-{t.to}") for t in targets]
        winner = next((leg for leg in legs if leg.target.to in self.answering), None)
        for leg in legs:
            leg.outcome = LegOutcome.ANSWERED if leg is winner else LegOutcome.BUSY
        return winner, legs

    def release(self, leg: Leg) -> None:
        pass


class SilentGateway:
    """Hold music requests succeed and do nothing."""

    async def play(self, channel_id: str, media: list[str], playback_id: str) -> None:
        pass

    async def stop_playback(self, playback_id: str) -> bool:
        return True

    async def start_moh(self, channel_id: str, moh_class: str) -> None:
        pass

    async def stop_moh(self, channel_id: str) -> None:
        pass


class FakeCall:
    """A CallContext with only what the applet's dialling uses."""

    def __init__(self, tmp_path: Path, dialer: ScriptedDialer, url: ScriptedUrl) -> None:
        config = load_config(None, environ={}, overrides={
            "store": {"path": str(tmp_path / "calls.sqlite3")},
            "applications": [{"id": "app", "answer_url": "http://hooks/answer"}],
            "connect_applets": {NUMBER: {"application": "app", "primary_url": PRIMARY}},
        })
        self.uuid = "0b6f3d2e-52a4-4c1f-9d0e-6a1c2b3d4e5f"
        self.conversation_uuid = "CON-1"
        self.channel_id = "chan-caller"
        self.app = config.application("app")
        self.started = datetime.now(UTC)
        self.answered: datetime | None = None
        self.gone = asyncio.Event()
        self.dtmf = DtmfBuffer()
        self.gateway = SilentGateway()
        self.from_number = CALLER
        self.to_number = NUMBER
        self.log = structlog.get_logger("test")
        self.errors: list[str] = []
        self.agents = SqliteAgentStore(tmp_path / "agents.sqlite3")
        self.services = SimpleNamespace(
            config=config, dialer=dialer, webhooks=url, agents=self.agents,
            events=SimpleNamespace(post=lambda *a, **k: True),
        )
        self.applet = config.applet_for_number(NUMBER)
        self._tasks: list[asyncio.Task[Any]] = []

    def run_beside(self, coro: Any, name: str) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.append(task)
        return task

    async def ensure_answered(self) -> None:
        self.answered = self.answered or datetime.now(UTC)

    def error(self, reason: str) -> None:
        self.errors.append(reason)

    def post_event(self, url: str, method: str, payload: dict[str, Any]) -> bool:
        return True


class RecordedRun(AppletRun):
    """The applet with the agent conversation recorded instead of bridged."""

    joined: str | None = None

    async def _converse(self, leg: Leg, cand: Candidate, params: AppletParams) -> None:
        self.joined = cand.contact


async def run_applet(tmp_path: Path, replies: list[dict[str, Any]],
                     answering: set[str] = frozenset(),  # type: ignore[assignment]
                     sticky: str | None = None) -> tuple[str, RecordedRun, FakeCall]:
    url = ScriptedUrl(replies)
    call = FakeCall(tmp_path, ScriptedDialer(answering), url)
    if sticky is not None:
        await call.agents.set_sticky(agent_key(CALLER), agent_key(sticky), 60)
    assert call.applet is not None
    run = RecordedRun(call, call.applet)  # type: ignore[arg-type]
    try:
        outcome = await run.execute()
    finally:
        await call.agents.close()
    return outcome, run, call


async def test_fetch_after_attempt_asks_again_with_the_attempts_status(tmp_path: Path) -> None:
    outcome, _, call = await run_applet(tmp_path, [
        dest("+4411", fetch_after_attempt=True),
        dest("+4412"),
        dest("+4413"),
        dest("+4413"),  # the same agent as the answer before: the dialling ends
    ])
    assert outcome == "nobody_answered"
    assert call.services.dialer.groups == [["+4411"], ["+4412"], ["+4413"]]
    requests = call.services.webhooks.requests
    assert len(requests) == 4
    assert "DialCallStatus" not in requests[0]
    assert [r["DialCallStatus"] for r in requests[1:]] == ["busy", "busy", "busy"]
    assert [r["DialWhomNumber"] for r in requests[1:]] == ["+4411", "+4412", "+4413"]


async def test_the_same_set_of_destinations_twice_stops_the_dialling(tmp_path: Path) -> None:
    outcome, _, call = await run_applet(tmp_path, [
        dest("+4421", "+4422", fetch_after_attempt=True),
        dest("+4422", "+4421", fetch_after_attempt=True),  # the same set, reordered
    ])
    assert outcome == "nobody_answered"
    # One attempt, then the second answer names the same agents: no second attempt.
    assert call.services.dialer.groups == [["+4421"]]
    assert len(call.services.webhooks.requests) == 2


async def test_the_sticky_agent_is_dialled_first_and_alone(tmp_path: Path) -> None:
    outcome, run, call = await run_applet(
        tmp_path, [dest("+4431", "+4432", "+4433", sticky_agent=True)],
        answering={"+4432"}, sticky="+4432")
    assert outcome == "after_conversation"
    assert call.services.dialer.groups == [["+4432"]]
    assert run.joined == "+4432"


async def test_without_sticky_agent_the_order_is_the_applications(tmp_path: Path) -> None:
    outcome, run, call = await run_applet(
        tmp_path, [dest("+4431", "+4432", "+4433")], answering={"+4432"}, sticky="+4432")
    assert outcome == "after_conversation"
    assert call.services.dialer.groups == [["+4431"], ["+4432"]]
    assert run.joined == "+4432"


async def test_parallel_ringing_dials_groups_of_max_parallel_attempts(tmp_path: Path) -> None:
    parallel = {"parallel_ringing": {"activate": True, "max_parallel_attempts": 2}}
    outcome, _, call = await run_applet(
        tmp_path, [dest("+4441", "+4442", "+4443", "+4444", "+4445", **parallel)])
    assert outcome == "nobody_answered"
    assert call.services.dialer.groups == [["+4441", "+4442"], ["+4443", "+4444"], ["+4445"]]


async def test_parallel_ringing_stops_at_the_group_that_answers(tmp_path: Path) -> None:
    parallel = {"parallel_ringing": {"activate": True, "max_parallel_attempts": 2}}
    outcome, run, call = await run_applet(
        tmp_path, [dest("+4451", "+4452", "+4453", "+4454", "+4455", **parallel)],
        answering={"+4454"})
    assert outcome == "after_conversation"
    assert call.services.dialer.groups == [["+4451", "+4452"], ["+4453", "+4454"]]
    assert run.joined == "+4454"


async def test_nobody_dialled_when_every_agent_is_skipped(tmp_path: Path) -> None:
    outcome, run, call = await run_applet(tmp_path, [dest("not a number", "+12")])
    assert outcome == "nobody_dialled"
    assert call.services.dialer.groups == []
    assert run.skips == [("not a number", "invalid format"), ("+12", "invalid format")]
