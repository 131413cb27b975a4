"""The durable event outbox against real HTTP servers on 127.0.0.1 and a real call store (an
SQLite file, and a real redis-server): order per call, backoff bounds, retention, final 4xx
answers, restarts, and the atomic ``completed``."""

from __future__ import annotations

import asyncio
import json
import socket
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
import pytest
import structlog
from aiohttp import web
from prometheus_client import REGISTRY

from bridge.agents.redis_server import RedisServer
from bridge.calls.redis_store import RedisCallStore
from bridge.calls.store import CallRecord, CallStorage, CallStore
from bridge.config import ApplicationConfig
from bridge.webhooks import WebhookClient, WebhookRequest, WebhookResponse
from bridge.webhooks.outbox import EventOutbox, backoff_delay, classify
from tests.polling import until

SECRET = "a-very-secret-signature-key-0123456789"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Hit:
    path: str
    method: str
    query: dict[str, str]
    body: Any
    headers: dict[str, str]
    status: int


@dataclass
class Receiver:
    """A real application: answers each path with a status chosen by the test (default 200)
    or waits on a gate; records every request with the status it got."""

    base: str = ""
    hits: list[Hit] = field(default_factory=list)
    statuses: dict[str, int] = field(default_factory=dict)
    gates: dict[str, asyncio.Event] = field(default_factory=dict)

    def url(self, path: str) -> str:
        return self.base + path

    def delivered(self, path: str) -> list[Any]:
        """Bodies (POST) or queries (GET) of the requests answered 2xx, in arrival order."""
        return [h.body if h.method == "POST" else h.query for h in self.hits
                if h.path == path and 200 <= h.status < 300]

    def tried(self, path: str) -> int:
        return len([h for h in self.hits if h.path == path])

    async def handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        gate = self.gates.get(request.path)
        if gate is not None:
            await gate.wait()
        status = self.statuses.get(request.path, 200)
        self.hits.append(Hit(request.path, request.method, dict(request.query),
                             json.loads(raw) if raw else None, dict(request.headers), status))
        return web.json_response({}, status=status)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    state = Receiver()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", state.handle)
    runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    state.base = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield state
    for gate in state.gates.values():
        gate.set()
    await runner.cleanup()


@pytest.fixture
async def client() -> AsyncIterator[WebhookClient]:
    async with WebhookClient() as c:
        yield c


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


_prefixes = iter(range(10**6))


@pytest.fixture(params=["sqlite", "redis"])
def open_store(request: pytest.FixtureRequest,
               tmp_path: Path) -> Iterator[Callable[[], CallStorage]]:
    """Opens the same store again each time it is called, as a restarted bridge does."""
    opened: list[CallStorage] = []
    if request.param == "sqlite":
        def make() -> CallStorage:
            opened.append(CallStore(tmp_path / "calls.sqlite3"))
            return opened[-1]
    else:
        server = request.getfixturevalue("redis_server")
        prefix = f"t{next(_prefixes)}:"

        def make() -> CallStorage:
            opened.append(RedisCallStore(server.url, prefix))
            return opened[-1]
    yield make
    for s in opened:
        s.close()


@pytest.fixture
def store(open_store: Callable[[], CallStorage]) -> CallStorage:
    return open_store()


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[CallStore]:
    s = CallStore(tmp_path / "calls.sqlite3")
    yield s
    s.close()


def refused_url(path: str = "/event") -> str:
    """A URL whose port refuses connections (bound a moment ago, then closed)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}{path}"


def application(receiver: Receiver, **extra: Any) -> ApplicationConfig:
    return ApplicationConfig.model_validate({
        "id": "app", "answer_url": receiver.url("/answer"), "event_url": receiver.url("/event"),
        "timeouts": {"connect_ms": 300, "event_read_ms": 2000}, **extra})


def outbox(store: CallStorage, client: WebhookClient, app: ApplicationConfig,
           **options: Any) -> EventOutbox:
    settings: dict[str, Any] = {"retry_base_s": 0.02, "retry_cap_s": 0.1, **options}
    return EventOutbox(store, client, lambda app_id: app if app_id == app.id else None,
                       **settings)


def record(uuid: str) -> CallRecord:
    return CallRecord(uuid=uuid, conversation_uuid="CON-1", channel_id=f"chan-{uuid}",
                      application_id="app", direction="inbound", from_number="1",
                      to_number="2", started_at="2024-01-01T00:00:00.000Z", answered_at=None,
                      ncco=[], position=0)


# ------------------------------------------------------------------------------ order
async def test_events_of_a_call_go_out_in_order_and_calls_in_parallel(
        receiver: Receiver, client: WebhookClient, store: CallStorage) -> None:
    app = application(receiver)
    receiver.gates["/slow"] = gate = asyncio.Event()
    events = outbox(store, client, app)
    await events.start()
    try:
        for seq in (1, 2, 3):
            path = "/slow" if seq == 1 else "/event"
            assert events.post("call-a", app, receiver.url(path), "POST", {"seq": seq})
        events.post("call-b", app, receiver.url("/event"), "GET", {"seq": 10})
        # call-b is not held up by call-a's first event, which hangs at the application
        await until(lambda: receiver.delivered("/event") == [{"seq": "10"}], "call-b sent")
        assert receiver.tried("/slow") == 0 and events.backlog() == 3
        gate.set()
        await until(lambda: events.backlog() == 0, "all delivered")
        assert receiver.delivered("/slow") == [{"seq": 1}]
        assert receiver.delivered("/event") == [{"seq": "10"}, {"seq": 2}, {"seq": 3}]
        assert store.outbox_events() == []
    finally:
        await events.stop()


async def test_a_failing_event_holds_back_the_next_of_its_call_until_delivered(
        receiver: Receiver, client: WebhookClient, store: CallStorage) -> None:
    app = application(receiver)
    receiver.statuses["/event"] = 503
    events = outbox(store, client, app)
    await events.start()
    try:
        events.post("call-a", app, receiver.url("/event"), "POST", {"status": "started"})
        events.post("call-a", app, receiver.url("/event"), "POST", {"status": "completed"})
        # several attempts, each with the client's one retry, all on the first event
        await until(lambda: receiver.tried("/event") >= 6, "retried")
        assert {h.body["status"] for h in receiver.hits} == {"started"}
        receiver.statuses["/event"] = 200
        await until(lambda: events.backlog() == 0, "delivered once the application is back")
        assert receiver.delivered("/event") == [{"status": "started"}, {"status": "completed"}]
        assert events.delivered == 2 and events.dropped == 0
    finally:
        await events.stop()


# ---------------------------------------------------------------------------- backoff
def test_backoff_is_exponential_with_full_jitter_and_capped() -> None:
    def highest(low: float, high: float) -> float:
        return high

    def lowest(low: float, high: float) -> float:
        return low

    assert [backoff_delay(n, 0.5, 30.0, highest) for n in range(1, 9)] == [
        0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert backoff_delay(10_000, 0.5, 30.0, highest) == 30.0  # no overflow
    assert backoff_delay(3, 0.5, 30.0, lowest) == 0.0
    samples = [backoff_delay(4, 0.5, 30.0) for _ in range(500)]
    assert all(0.0 <= s <= 4.0 for s in samples)
    assert max(samples) > 2.0 and min(samples) < 2.0  # spread over the whole range


async def test_failed_attempts_are_rescheduled_within_the_backoff_bounds(
        client: WebhookClient, store: CallStorage, receiver: Receiver) -> None:
    app = application(receiver)
    bounds: list[tuple[float, float]] = []

    def rng(low: float, high: float) -> float:
        bounds.append((low, high))
        return high / 2

    events = outbox(store, client, app, retry_base_s=0.05, retry_cap_s=0.2, rng=rng)
    await events.start()
    try:
        events.post("call-a", app, refused_url(), "POST", {"status": "started"})
        await until(lambda: len(bounds) >= 5, "five failed attempts")
        assert bounds[:5] == [(0.0, 0.05), (0.0, 0.1), (0.0, 0.2), (0.0, 0.2), (0.0, 0.2)]
        [row] = store.outbox_events()
        assert row.attempts >= 5 and row.next_attempt_at >= row.created_at
    finally:
        await events.stop()


# -------------------------------------------------------------------------- retention
async def test_an_event_past_its_retention_is_dropped_with_an_error_and_the_metric(
        receiver: Receiver, client: WebhookClient, store: CallStorage) -> None:
    app = application(receiver)
    dropped_before = REGISTRY.get_sample_value("ari_bridge_outbox_dropped_total") or 0.0
    events = outbox(store, client, app, retention_s=0.5)
    await events.start()
    try:
        with structlog.testing.capture_logs() as logs:
            events.post("call-a", app, refused_url(), "POST", {"status": "started"})
            events.post("call-a", app, receiver.url("/event"), "POST", {"status": "completed"})
            await until(lambda: events.backlog() == 0, "dropped, then the next delivered")
        assert receiver.delivered("/event") == [{"status": "completed"}]
        assert events.dropped == 1
        assert REGISTRY.get_sample_value("ari_bridge_outbox_dropped_total") == dropped_before + 1
        [line] = [e for e in logs if e["event"] == "event.dropped"]
        assert line["log_level"] == "error" and line["call_uuid"] == "call-a"
        assert line["status"] == "started" and line["attempts"] >= 1
        assert store.outbox_events() == []
    finally:
        await events.stop()


# ------------------------------------------------------------------ final 4xx answers
async def test_a_4xx_is_final_but_429_is_tried_again(
        receiver: Receiver, client: WebhookClient, store: CallStorage) -> None:
    app = application(receiver)
    receiver.statuses["/gone"] = 404
    receiver.statuses["/busy"] = 429
    events = outbox(store, client, app)
    await events.start()
    try:
        with structlog.testing.capture_logs() as logs:
            events.post("call-a", app, receiver.url("/gone"), "POST", {"seq": 1})
            events.post("call-a", app, receiver.url("/event"), "POST", {"seq": 2})
            await until(lambda: events.backlog() == 0, "404 dropped, next delivered")
        assert receiver.tried("/gone") == 1  # neither the client's retry nor a later one
        assert receiver.delivered("/event") == [{"seq": 2}]
        assert events.rejected == 1 and events.dropped == 0
        assert [e["url"] for e in logs if e["event"] == "event.rejected"] == [
            receiver.url("/gone")]

        events.post("call-b", app, receiver.url("/busy"), "POST", {"seq": 3})
        await until(lambda: receiver.tried("/busy") >= 4, "429 tried again later")
        receiver.statuses["/busy"] = 200
        await until(lambda: events.backlog() == 0, "delivered after the 429s")
        assert receiver.delivered("/busy") == [{"seq": 3}]
    finally:
        await events.stop()


def test_classify_outcomes() -> None:
    request = WebhookRequest(url="http://x/e", method="POST", data={})

    def resp(status: int | None, error: str | None = None) -> WebhookResponse:
        return WebhookResponse(request, status, b"", None, 1, 1.0, error)

    assert classify(resp(204), None) == "delivered"
    assert classify(resp(404, "http 404"), None) == "rejected"
    assert classify(resp(429, "http 429"), None) == "failed"
    assert classify(resp(500, "http 500"), None) == "failed"
    assert classify(resp(None, "connection refused"), None) == "failed"
    assert classify(resp(None, "invalid url"), None) == "rejected"
    # the fallback: any 2xx delivers; a reachable fallback keeps a 404 primary retried
    assert classify(resp(None, "read timeout"), resp(200)) == "delivered"
    assert classify(resp(404, "http 404"), resp(None, "connection refused")) == "failed"
    assert classify(resp(404, "http 404"), resp(410, "http 410")) == "rejected"


# --------------------------------------------------------- fallback, signing, passthru
async def test_the_fallback_url_signing_and_plain_events(
        receiver: Receiver, client: WebhookClient, store: CallStorage) -> None:
    app = application(receiver, fallback_answer_url=receiver.url("/fallback"),
                      signature_secret=SECRET)
    events = outbox(store, client, app)
    await events.start()
    try:
        events.post("call-a", app, refused_url(), "POST", {"status": "started"})
        events.post("call-a/passthru", app, receiver.url("/crm"), "POST", {"event": "dial"},
                    plain=True)
        await until(lambda: events.backlog() == 0, "delivered")
        [fallback] = [h for h in receiver.hits if h.path == "/fallback"]
        assert fallback.body["status"] == "started"
        assert fallback.body["reason"] == "connection refused"
        claims = jwt.decode(fallback.headers["Authorization"].removeprefix("Bearer "), SECRET,
                            algorithms=["HS256"])
        assert claims["application_id"] == "app"
        [crm] = [h for h in receiver.hits if h.path == "/crm"]
        assert "Authorization" not in crm.headers and crm.body == {"event": "dial"}
    finally:
        await events.stop()


async def test_post_never_raises_and_stores_a_copy(
        receiver: Receiver, client: WebhookClient, store: CallStorage) -> None:
    app = application(receiver)
    events = outbox(store, client, app)
    with structlog.testing.capture_logs() as logs:
        assert events.post("call-a", app, receiver.url("/event"), "DELETE", {}) is False
    assert [e["event"] for e in logs] == ["event.not_written"]
    payload: dict[str, Any] = {"seq": 1, "at": time}  # not JSON: written as its text
    assert events.post("call-a", app, receiver.url("/event"), "post", payload) is True
    payload["seq"] = 99
    [row] = store.outbox_events()
    assert row.payload["seq"] == 1 and row.method == "POST" and isinstance(row.payload["at"], str)
    assert events.backlog() == 1  # written before start: sent once started
    await events.start()
    try:
        await until(lambda: events.backlog() == 0, "delivered after start")
        assert [b["seq"] for b in receiver.delivered("/event")] == [1]
    finally:
        await events.stop()


# ------------------------------------------------------------------------- restarts
async def test_a_restarted_outbox_delivers_what_the_previous_process_left_in_order(
        receiver: Receiver, client: WebhookClient,
        open_store: Callable[[], CallStorage]) -> None:
    app = application(receiver)
    receiver.statuses["/event"] = 503
    first_store = open_store()
    first = outbox(first_store, client, app, retry_base_s=5.0, retry_cap_s=5.0)
    await first.start()
    for call in ("call-a", "call-b"):
        for status in ("started", "ringing", "answered", "completed"):
            first.post(call, app, receiver.url("/event"), "POST", {"uuid": call, "status": status})
    await until(lambda: receiver.tried("/event") >= 4, "first attempts failed")
    await first.stop()
    first_store.close()

    receiver.statuses["/event"] = 200
    second_store = open_store()  # the same store, as a restarted bridge opens it
    second = outbox(second_store, client, app)
    assert second.backlog() == 8
    try:
        await second.start()
        # the first attempts' backoff (5 s) was written with the rows; flush does not wait
        assert await second.flush(20.0) == 0
        for call in ("call-a", "call-b"):
            assert [e["status"] for e in receiver.delivered("/event") if e["uuid"] == call] == [
                "started", "ringing", "answered", "completed"]
        assert second_store.outbox_events() == []
    finally:
        await second.stop()
        second_store.close()


async def test_flush_is_bounded_and_returns_what_remains(
        client: WebhookClient, store: CallStorage, receiver: Receiver) -> None:
    app = application(receiver)
    events = outbox(store, client, app)
    assert await events.flush(0.1) == 0  # not started, nothing pending
    await events.start()
    try:
        events.post("call-a", app, refused_url(), "POST", {"status": "started"})
        events.post("call-b", app, refused_url(), "POST", {"status": "started"})
        assert await events.flush(0.3) == 2
        assert len(store.outbox_events()) == 2  # kept for the next start
    finally:
        await events.stop()


# ---------------------------------------------------------------------------- metrics
async def test_backlog_and_oldest_age_metrics(
        client: WebhookClient, store: CallStorage, receiver: Receiver) -> None:
    app = application(receiver)
    now = [1000.0]
    events = outbox(store, client, app, clock=lambda: now[0], retry_base_s=60.0,
                    retry_cap_s=60.0)
    # Other bridges of this process count too: compare with the value before.
    backlog_before = REGISTRY.get_sample_value("ari_bridge_outbox_backlog") or 0.0
    await events.start()
    try:
        events.post("call-a", app, refused_url(), "POST", {"status": "started"})
        events.post("call-a", app, refused_url(), "POST", {"status": "completed"})
        now[0] += 42.0
        assert events.backlog() == 2 and events.oldest_age_s() == 42.0
        assert REGISTRY.get_sample_value("ari_bridge_outbox_backlog") == backlog_before + 2
        oldest = REGISTRY.get_sample_value("ari_bridge_outbox_oldest_age_seconds") or 0.0
        assert oldest >= 42.0
    finally:
        await events.stop()
    # a stopped outbox is not counted: its rows wait for the next start
    assert REGISTRY.get_sample_value("ari_bridge_outbox_backlog") == backlog_before


# --------------------------------------------------------- completed, atomically
def test_completed_is_written_with_the_deletion_of_the_live_call(
        store: CallStorage, receiver: Receiver) -> None:
    app = application(receiver)
    events = EventOutbox(store, WebhookClient(), lambda _: app)
    store.save(record("call-a"))
    store.save(record("call-b"))
    assert events.post("call-a", app, receiver.url("/event"), "POST",
                       {"status": "completed"}, ends_call=True)
    assert [r.uuid for r in store.all()] == ["call-b"]
    assert [(e.call_uuid, e.payload) for e in store.outbox_events()] == [
        ("call-a", {"status": "completed"})]


def test_a_completed_whose_deletion_fails_waits_in_memory_and_is_written_later(
        sqlite_store: CallStore, receiver: Receiver) -> None:
    store = sqlite_store
    app = application(receiver)
    events = EventOutbox(store, WebhookClient(), lambda _: app)
    store.save(record("call-a"))
    store.save(record("call-b"))
    assert events.post("call-a", app, receiver.url("/event"), "POST",
                       {"status": "completed"}, ends_call=True)

    # When the deletion fails, the event is not written either (one transaction): it waits
    # in memory, and so does every later event (their order is the order of posts).
    raw = sqlite3.connect(store.path)
    raw.execute("CREATE TRIGGER keep BEFORE DELETE ON live_calls "
                "BEGIN SELECT RAISE(ABORT, 'disk trouble'); END")
    raw.commit()
    with structlog.testing.capture_logs() as logs:
        assert not events.post("call-b", app, receiver.url("/event"), "POST",
                               {"status": "completed"}, ends_call=True)
        assert not events.post("call-c", app, receiver.url("/event"), "POST",
                               {"status": "started"})
    assert [r.uuid for r in store.all()] == ["call-b"]
    assert len(store.outbox_events()) == 1 and events.backlog() == 1
    assert events.unwritten == 2
    assert [(e["event"], e.get("error")) for e in logs] == [
        ("event.write_deferred", "disk trouble")]  # once, not per event

    raw.execute("DROP TRIGGER keep")
    raw.commit()
    raw.close()
    with structlog.testing.capture_logs() as logs:
        events.write_unwritten()
    assert [(e["event"], e.get("written")) for e in logs] == [("event.writes_resumed", 2)]
    assert store.all() == [] and events.unwritten == 0
    assert [(e.call_uuid, e.payload["status"]) for e in store.outbox_events()] == [
        ("call-a", "completed"), ("call-b", "completed"), ("call-c", "started")]


# ------------------------------------------------------------ events kept in memory
class CountingHeads:
    """A store that counts the outbox's reads of a call's next event."""

    def __init__(self, inner: CallStorage) -> None:
        self.inner = inner
        self.heads = 0

    def outbox_head(self, call_uuid: str) -> Any:
        self.heads += 1
        return self.inner.outbox_head(call_uuid)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


async def test_events_written_here_are_delivered_from_memory_not_read_back(
        receiver: Receiver, client: WebhookClient, store: CallStorage) -> None:
    app = application(receiver)
    counting = CountingHeads(store)
    events = outbox(counting, client, app)  # type: ignore[arg-type]
    await events.start()
    try:
        payload: dict[str, Any] = {"status": "started", "nested": {"n": 1}}
        for seq in range(5):
            assert events.post("call-a", app, receiver.url("/event"), "POST",
                               {**payload, "seq": seq})
        payload["nested"]["n"] = 2  # the caller's dict changes after the post: not sent
        await until(lambda: events.backlog() == 0, "all delivered")
        assert [b["seq"] for b in receiver.delivered("/event")] == [0, 1, 2, 3, 4]
        assert {b["nested"]["n"] for b in receiver.delivered("/event")} == {1}
        assert counting.heads == 0
        assert store.outbox_events() == []
    finally:
        await events.stop()


async def test_a_retried_event_kept_in_memory_carries_its_attempts(
        receiver: Receiver, client: WebhookClient, store: CallStorage) -> None:
    app = application(receiver)
    receiver.statuses["/event"] = 503
    events = outbox(store, client, app, retry_base_s=0.02, retry_cap_s=0.05)
    await events.start()
    try:
        events.post("call-a", app, receiver.url("/event"), "POST", {"seq": 1})
        await until(lambda: receiver.tried("/event") >= 6, "three failed attempts")

        def agreed() -> bool:
            # Retries go on meanwhile: compare between an answer and its write, not during.
            rows = store.outbox_events()
            return len(rows) == 1 and events._head("call-a") == rows[0]

        await until(agreed, "memory and storage agree")
        [row] = store.outbox_events()
        assert row.attempts >= 3
        receiver.statuses["/event"] = 200
        await until(lambda: events.backlog() == 0, "delivered once it answers")
        assert receiver.delivered("/event") == [{"seq": 1}]
    finally:
        await events.stop()


async def test_beyond_the_memory_bound_events_are_read_from_the_storage_in_order(
        receiver: Receiver, client: WebhookClient, store: CallStorage,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from bridge.webhooks import outbox as outbox_module
    monkeypatch.setattr(outbox_module, "MAX_CACHED", 3)
    app = application(receiver)
    receiver.gates["/event"] = gate = asyncio.Event()
    counting = CountingHeads(store)
    events = outbox(counting, client, app)  # type: ignore[arg-type]
    await events.start()
    try:
        for seq in range(3):  # fills the memory: call-a's first event is held at the gate
            events.post("call-a", app, receiver.url("/event"), "POST", {"call": "a", "seq": seq})
        events.post("call-b", app, receiver.url("/event"), "POST", {"call": "b", "seq": 0})
        events.post("call-a", app, receiver.url("/event"), "POST", {"call": "a", "seq": 3})
        gate.set()
        await until(lambda: events.backlog() == 0, "all delivered")
        delivered = receiver.delivered("/event")
        assert [b["seq"] for b in delivered if b["call"] == "a"] == [0, 1, 2, 3]
        assert [b["seq"] for b in delivered if b["call"] == "b"] == [0]
        assert counting.heads >= 4  # call-a (no longer in memory) and call-b were read back
        assert events._cached_count == 0 and store.outbox_events() == []
    finally:
        await events.stop()


# ------------------------------------------------------------ the store's own URLs
def test_a_store_file_from_before_gets_the_new_columns(tmp_path: Path) -> None:
    path = tmp_path / "calls.sqlite3"
    old = sqlite3.connect(path)
    old.execute(
        "CREATE TABLE live_calls (uuid TEXT PRIMARY KEY, conversation_uuid TEXT NOT NULL,"
        " channel_id TEXT NOT NULL UNIQUE, application_id TEXT NOT NULL, direction TEXT NOT NULL,"
        " from_number TEXT NOT NULL, to_number TEXT NOT NULL, started_at TEXT NOT NULL,"
        " answered_at TEXT, ncco TEXT NOT NULL, position INTEGER NOT NULL,"
        " replacements INTEGER NOT NULL DEFAULT 0)")
    old.execute("INSERT INTO live_calls VALUES ('u1','CON-1','c1','app','inbound','1','2',"
                "'2024-01-01T00:00:00.000Z',NULL,'[]',0,0)")
    old.commit()
    old.close()

    store = CallStore(path)
    try:
        [legacy] = store.all()
        assert legacy.uuid == "u1" and legacy.event_url is None and legacy.url_overrides() == {}
        assert (legacy.node, legacy.slot) == ("", 0)
        own = record("u2")
        own.node, own.slot = "ast-b", 3
        own.event_url, own.event_method = "http://own.example/ev", "GET"
        own.answer_url, own.answer_method = "http://own.example/an", "POST"
        store.save(own)
    finally:
        store.close()
    reopened = CallStore(path)  # opening again migrates nothing twice
    try:
        [kept] = reopened.all(slot=3)
        assert (kept.uuid, kept.node) == ("u2", "ast-b")
        assert kept.url_overrides() == {
            "event_url": "http://own.example/ev", "event_method": "GET",
            "answer_url": "http://own.example/an", "answer_method": "POST"}
    finally:
        reopened.close()
