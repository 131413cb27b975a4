"""Call engine logic against a fake gateway: ordering, cancellation, timeouts, bounded replies.

The real thing is tested end to end in tests/integration; these pin down the timing-sensitive
logic (an event that arrives before anyone waits, a hangup in the middle of an action) where a
real Asterisk cannot be made to misbehave on demand.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from bridge.calls.engine import CallEngine
from bridge.calls.session import CallState
from bridge.calls.store import CallRecord, CallStore
from bridge.config import load_config
from bridge.media import MediaItem
from bridge.webhooks import FallbackResult, ParseError, WebhookRequest, WebhookResponse

CHANNEL = "chan-1"


class FakeGateway:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.routes: dict[str, Any] = {}
        self.finish_playbacks = True
        self.playing: set[str] = set()  # playbacks Asterisk holds for the channel

    def emit(self, event: dict[str, Any]) -> None:
        self.routes[f"channel:{CHANNEL}"](event)

    def route(self, key: str, handler: Any) -> None:
        self.routes[key] = handler

    def unroute(self, key: str) -> None:
        self.routes.pop(key, None)

    async def ring(self, channel_id: str) -> None:
        self.calls.append(("ring",))

    async def answer(self, channel_id: str) -> None:
        self.calls.append(("answer",))

    async def hangup(self, channel_id: str, reason: str = "normal") -> None:
        self.calls.append(("hangup", reason))
        if f"channel:{CHANNEL}" in self.routes:
            self.emit({"type": "StasisEnd", "channel": {"id": CHANNEL}})

    async def play(self, channel_id: str, media: list[str], playback_id: str) -> None:
        self.calls.append(("play", playback_id, len(media)))
        self.playing.add(playback_id)
        if self.finish_playbacks:
            self.playing.discard(playback_id)
            # Finished before play() even returned: the waiter must already exist.
            self.emit({"type": "PlaybackFinished",
                       "playback": {"id": playback_id, "state": "done"}})

    async def stop_playback(self, playback_id: str) -> bool:
        self.calls.append(("stop", playback_id))
        if playback_id not in self.playing:
            return False
        self.playing.discard(playback_id)
        self.emit({"type": "PlaybackFinished",
                   "playback": {"id": playback_id, "state": "done"}})
        return True

    async def app_channel_ids(self) -> list[str]:
        return []  # no channel in Stasis: every stored call ended while no bridge ran


class FakeWebhooks:
    """Answers by URL from a script; records every request."""

    def __init__(self, script: dict[str, Any], delay_s: float = 0.0) -> None:
        self.script = script
        self.delay_s = delay_s  # how long every reply takes
        self.requests: list[WebhookRequest] = []

    async def send_with_fallback(self, req: WebhookRequest, fallback_url: Any, parse: Any,
                                 timeouts: Any, signer: Any = None,
                                 kind: str = "event") -> FallbackResult[Any]:
        self.requests.append(req)
        await asyncio.sleep(self.delay_s)
        body = json.dumps(self.script.get(req.url, {})).encode()
        response = WebhookResponse(req, 200, body, "application/json", 1, 1.0, None)
        try:
            value = parse(response)
        except ParseError as exc:
            return FallbackResult(None, None, response, None, str(exc), str(exc))
        return FallbackResult(value, "primary", response, None, None, None)


class FakeMedia:
    async def tts(self, text: str, voice: Any, level: float = 0.0) -> MediaItem:
        return MediaItem("a" * 64, Path("/dev/null"), 0.2)


class StoredEvents:
    """The events the engine wrote to its (real) outbox, which is never started here: they
    stay in the store, in order."""

    def __init__(self, store: CallStore) -> None:
        self.store = store

    @property
    def payloads(self) -> list[dict[str, Any]]:
        return [e.payload for e in self.store.outbox_events()]


class Harness:
    def __init__(self, tmp_path: Path, answer: list[dict[str, Any]],
                 hooks: dict[str, Any] | None = None, max_replacements: int = 25,
                 ring_after_ms: int = 5000, webhook_delay_s: float = 0.0,
                 playback_margin_s: float = 15.0) -> None:
        config = load_config(None, environ={}, overrides={
            # Everything the engine opens (the call store, the agent store beside it, the
            # recordings) under the test's own directory.
            "store": {"path": str(tmp_path / "calls.sqlite3")},
            "recordings": {"path": str(tmp_path / "recordings")},
            "media": {"playback_margin_s": playback_margin_s},
            "applications": [{"id": "app", "answer_url": "http://hooks/answer",
                              "event_url": "http://hooks/event",
                              "max_ncco_replacements": max_replacements,
                              "ring_after_ms": ring_after_ms}],
            "numbers": {"*": "app"},
        })
        self.gateway = FakeGateway()
        self.webhooks = FakeWebhooks({"http://hooks/answer": answer, **(hooks or {})},
                                     webhook_delay_s)
        store = CallStore(config.store.path)
        self.outbox = StoredEvents(store)
        self.engine = CallEngine(config, self.webhooks, FakeMedia(),  # type: ignore[arg-type]
                                 store, lambda: "http://bridge")
        self.engine.attach(self.gateway)  # type: ignore[arg-type]

    def start_call(self) -> Any:
        self.engine.on_stasis_start(self.engine.primary,
                                    {"type": "StasisStart", "channel": {"id": CHANNEL},
                                     "args": ["inbound", "15551230000", "15550001111"]})
        return self.engine.by_channel[("asterisk", CHANNEL)]

    def statuses(self) -> list[str]:
        """Call status events; error events (``status: "error"``) are in errors()."""
        return [p["status"] for p in self.outbox.payloads
                if "status" in p and p["status"] != "error"]

    def errors(self) -> list[str]:
        return [p["reason"] for p in self.outbox.payloads if p.get("status") == "error"]

    async def until(self, predicate: Any, timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():  # noqa: ASYNC110 - polling a plain predicate
                await asyncio.sleep(0.01)


async def test_playback_that_finishes_before_the_wait_is_not_missed(tmp_path: Path) -> None:
    h = Harness(tmp_path, [{"action": "talk", "text": "hello", "loop": 3}])
    session = h.start_call()
    await h.until(lambda: session.state is CallState.ENDED)
    assert h.statuses() == ["started", "ringing", "answered", "completed"]
    kinds = [c[0] for c in h.gateway.calls]
    # answer_url replied at once, well within ring_after_ms: answered without ringing.
    assert kinds == ["answer", "play", "hangup"]
    assert h.gateway.calls[1][2] == 3  # loop=3: one playback of three copies
    assert h.engine.store.all() == []  # nothing left to resume


@pytest.mark.parametrize(("ring_after_ms", "webhook_delay_s", "requests"), [
    (5000, 0.0, ["answer", "play", "hangup"]),  # answer_url replied in time: no ring
    (50, 0.3, ["ring", "answer", "play", "hangup"]),  # it kept the caller waiting
    (0, 0.0, ["ring", "answer", "play", "hangup"]),  # 0: ring at once
])
async def test_caller_rings_only_when_answer_url_takes_longer_than_ring_after_ms(
        tmp_path: Path, ring_after_ms: int, webhook_delay_s: float, requests: list[str]) -> None:
    h = Harness(tmp_path, [{"action": "talk", "text": "hello"}], ring_after_ms=ring_after_ms,
                webhook_delay_s=webhook_delay_s)
    session = h.start_call()
    await h.until(lambda: session.state is CallState.ENDED)
    assert [c[0] for c in h.gateway.calls] == requests
    assert h.statuses() == ["started", "ringing", "answered", "completed"]


async def test_caller_hanging_up_cancels_the_action_and_completed_is_sent_once(
        tmp_path: Path) -> None:
    h = Harness(tmp_path, [{"action": "wait", "timeout": 60}])
    session = h.start_call()
    await h.until(lambda: ("answer",) in h.gateway.calls)
    h.gateway.emit({"type": "ChannelHangupRequest", "channel": {"id": CHANNEL}, "cause": 16})
    h.gateway.emit({"type": "StasisEnd", "channel": {"id": CHANNEL}})
    await h.until(lambda: session.state is CallState.ENDED)
    assert h.statuses().count("completed") == 1
    assert h.outbox.payloads[-1]["disconnected_by"] == "user"
    assert h.errors() == []


async def test_key_press_stops_a_barge_in_prompt_and_counts_as_input(tmp_path: Path) -> None:
    h = Harness(tmp_path, [
        {"action": "talk", "text": "press a key", "bargeIn": True},
        {"action": "input", "maxDigits": 1, "timeOut": 5, "eventUrl": ["http://hooks/ivr"]},
    ], {"http://hooks/ivr": [{"action": "wait", "timeout": 0.2}]})
    h.gateway.finish_playbacks = False  # a long prompt, still playing
    session = h.start_call()
    await h.until(lambda: any(c[0] == "play" for c in h.gateway.calls))
    h.gateway.emit({"type": "ChannelDtmfReceived", "channel": {"id": CHANNEL}, "digit": "4"})
    await h.until(lambda: session.state is CallState.ENDED)
    playback_id = next(c[1] for c in h.gateway.calls if c[0] == "play")
    assert ("stop", playback_id) in h.gateway.calls
    [ivr] = [r for r in h.webhooks.requests if r.url == "http://hooks/ivr"]
    assert ivr.data["dtmf"] == {"digits": "4", "timed_out": False}


async def test_replies_that_keep_replacing_the_ncco_are_bounded(tmp_path: Path) -> None:
    again = [{"action": "notify", "payload": {}, "eventUrl": ["http://hooks/again"]}]
    h = Harness(tmp_path, again, {"http://hooks/again": again}, max_replacements=3)
    session = h.start_call()
    await h.until(lambda: session.state is CallState.ENDED)
    assert len([r for r in h.webhooks.requests if r.url == "http://hooks/again"]) == 4
    assert any("max_ncco_replacements" in e for e in h.errors())
    assert h.statuses()[-1] == "completed"


async def test_a_stuck_playback_times_out_is_stopped_and_reported(tmp_path: Path) -> None:
    h = Harness(tmp_path, [{"action": "talk", "text": "never ends"}], playback_margin_s=0.1)
    h.gateway.finish_playbacks = False
    session = h.start_call()
    await h.until(lambda: session.state is CallState.ENDED)
    assert any(c[0] == "stop" for c in h.gateway.calls)
    assert any("timeout" in e for e in h.errors())


async def test_invalid_answer_ncco_ends_the_unanswered_call_with_congestion(
        tmp_path: Path) -> None:
    h = Harness(tmp_path, [{"action": "talk"}])  # no text
    session = h.start_call()
    await h.until(lambda: session.state is CallState.ENDED)
    assert ("hangup", "congestion") in h.gateway.calls
    assert ("answer",) not in h.gateway.calls
    assert any("[0].text" in e for e in h.errors())
    assert h.statuses() == ["started", "ringing", "completed"]
    # The error event names itself in ``status`` and is tied to the call.
    [error] = [p for p in h.outbox.payloads if "reason" in p]
    assert error["status"] == "error"
    assert error["uuid"] == session.uuid
    assert error["conversation_uuid"] == session.conversation_uuid
    assert error["timestamp"].endswith("Z")


async def test_a_call_that_ended_while_away_completes_to_its_own_event_url(
        tmp_path: Path) -> None:
    """A REST-created call's own URLs are kept in the store: after a restart its completed
    goes to them, not to the application's; the live row goes with that same write."""
    from bridge.calls.store import CallRecord

    h = Harness(tmp_path, [])
    own = CallRecord(uuid="u-own", conversation_uuid="CON-1", channel_id="gone-1",
                     application_id="app", direction="outbound", from_number="1",
                     to_number="2", started_at="2024-01-01T00:00:00.000Z",
                     answered_at="2024-01-01T00:00:01.000Z", ncco=[], position=0,
                     event_url="http://own/events", event_method="GET")
    h.engine.store.save(own)
    await h.engine.reconcile(h.engine.primary)
    [completed] = h.engine.store.outbox_events()
    assert (completed.url, completed.method) == ("http://own/events", "GET")
    assert completed.payload["status"] == "completed" and completed.payload["uuid"] == "u-own"
    assert h.engine.store.all() == []
    assert h.engine.application_of(own).event_url == "http://own/events"
    assert h.engine.application("app").event_url == "http://hooks/event"


async def test_deadline_runs_from_playback_started_so_a_queued_prompt_is_not_stuck(
        tmp_path: Path) -> None:
    """The prompt (0.2 s, margin 2 s: 2.2 s to start, 2.2 s more to finish) waits 1.5 s
    behind another playback on the channel, then plays for 1.5 s: 3 s in all, more than one
    deadline, and still no timeout."""
    h = Harness(tmp_path, [{"action": "talk", "text": "queued"}], playback_margin_s=2.0)
    h.gateway.finish_playbacks = False
    session = h.start_call()
    await h.until(lambda: any(c[0] == "play" for c in h.gateway.calls))
    playback_id = next(c[1] for c in h.gateway.calls if c[0] == "play")
    await asyncio.sleep(1.5)
    h.gateway.emit({"type": "PlaybackStarted", "playback": {"id": playback_id}})
    await asyncio.sleep(1.5)
    h.gateway.emit({"type": "PlaybackFinished",
                    "playback": {"id": playback_id, "state": "done"}})
    await h.until(lambda: session.state is CallState.ENDED)
    assert h.errors() == []
    assert ("stop", playback_id) not in h.gateway.calls


async def test_a_prompt_that_never_starts_times_out(tmp_path: Path) -> None:
    h = Harness(tmp_path, [{"action": "talk", "text": "never starts"}], playback_margin_s=0.1)
    h.gateway.finish_playbacks = False
    session = h.start_call()
    await h.until(lambda: session.state is CallState.ENDED)
    assert any("talk: Asterisk could not play it (timeout)" in e for e in h.errors())


async def test_a_looping_prompt_alternates_between_its_two_derived_playback_ids(
        tmp_path: Path) -> None:
    h = Harness(tmp_path, [{"action": "talk", "text": "again", "loop": 0}])
    session = h.start_call()
    await h.until(lambda: len([c for c in h.gateway.calls if c[0] == "play"]) >= 3)
    ids = [c[1] for c in h.gateway.calls if c[0] == "play"][:3]
    expected = session.action_playback_ids()
    assert ids == [expected[0], expected[1], expected[0]]
    # Derived from the call and the action's place in the NCCO: the same for every bridge.
    assert len(set(expected)) == 2 and session.uuid not in expected
    h.gateway.emit({"type": "StasisEnd", "channel": {"id": CHANNEL}})
    await h.until(lambda: session.state is CallState.ENDED)


async def test_resumed_call_stops_the_previous_bridges_playback_before_playing_again(
        tmp_path: Path) -> None:
    h = Harness(tmp_path, [])
    h.gateway.finish_playbacks = False
    talk = [{"action": "talk", "text": "on hold", "loop": 0}]
    record = CallRecord(
        uuid="6d1f3f8e-1c51-4a3e-9a0a-3f3b1d6e2c11", conversation_uuid="CON-x",
        channel_id=CHANNEL, application_id="app", direction="inbound",
        from_number="15550001111", to_number="15551230000",
        started_at="2026-01-01T00:00:00.000Z", answered_at="2026-01-01T00:00:01.000Z",
        ncco=talk, position=0)
    h.engine.store.save(record)
    session = h.engine.new_session(h.engine.primary, record, h.engine.parse(talk),
                                   resumed=True)
    leftover = session.action_playback_ids()[0]
    h.gateway.playing.add(leftover)  # the dead bridge's chunk, still on the channel
    h.engine._start(h.engine.primary, session)

    await h.until(lambda: any(c[0] == "play" for c in h.gateway.calls))
    kinds = [c[:2] for c in h.gateway.calls]
    assert kinds.index(("stop", leftover)) < kinds.index(("play", leftover))
    h.gateway.emit({"type": "StasisEnd", "channel": {"id": CHANNEL}})
    await h.until(lambda: session.state is CallState.ENDED)
    assert h.errors() == []


async def test_after_our_hangup_the_call_ends_when_asterisk_confirms_it(tmp_path: Path) -> None:
    h = Harness(tmp_path, [{"action": "talk", "text": "bye"}])
    confirm = asyncio.Event()

    async def hangup_confirmed_later(channel_id: str, reason: str = "normal") -> None:
        h.gateway.calls.append(("hangup", reason))
        confirm.set()  # the StasisEnd comes later, as from a real Asterisk

    h.gateway.hangup = hangup_confirmed_later  # type: ignore[method-assign]
    session = h.start_call()
    await confirm.wait()
    await asyncio.sleep(0.2)
    assert session.state is not CallState.ENDED  # still waiting for the confirmation
    assert "completed" not in h.statuses()
    h.gateway.emit({"type": "StasisEnd", "channel": {"id": CHANNEL}})
    await h.until(lambda: session.state is CallState.ENDED)
    assert h.statuses() == ["started", "ringing", "answered", "completed"]
    completed = h.outbox.payloads[-1]
    assert completed["disconnected_by"] == "platform"
    assert int(completed["duration"]) >= 0
