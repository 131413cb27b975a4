"""The call store on a real redis-server (and, where the meaning must match, on SQLite too):
records with their place, slots, the outbox's order, the atomic ``completed``, the slots a
bridge owns, and writes made while Redis is away."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import structlog

from bridge.agents.redis_server import RedisServer
from bridge.calls.redis_store import RedisCallStore, StoreUnavailable
from bridge.calls.store import CallRecord, CallStorage, CallStore
from bridge.calls.stores import open_call_store
from bridge.config import ApplicationConfig, Config
from bridge.webhooks import WebhookClient
from bridge.webhooks.outbox import EventOutbox, NewOutboxEvent


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


_prefixes = iter(range(10**6))


def new_prefix() -> str:
    return f"s{next(_prefixes)}:"


@pytest.fixture
def rstore(redis_server: RedisServer) -> Iterator[RedisCallStore]:
    s = RedisCallStore(redis_server.url, new_prefix())
    yield s
    s.close()


@pytest.fixture(params=["sqlite", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[CallStorage]:
    made: CallStorage
    if request.param == "sqlite":
        made = CallStore(tmp_path / "calls.sqlite3")
    else:
        made = RedisCallStore(request.getfixturevalue("redis_server").url, new_prefix())
    yield made
    made.close()


def record(uuid: str, slot: int = 0, node: str = "") -> CallRecord:
    return CallRecord(uuid=uuid, conversation_uuid="CON-1", channel_id=f"chan-{uuid}",
                      application_id="app", direction="inbound", from_number="1",
                      to_number="2", started_at="2024-01-01T00:00:00.000Z", answered_at=None,
                      ncco=[], position=0, node=node, slot=slot)


def event(call_uuid: str, seq: int, next_attempt_at: float = 100.0) -> NewOutboxEvent:
    return NewOutboxEvent(call_uuid=call_uuid, application_id="app",
                          url="http://127.0.0.1:9/event", method="POST",
                          payload={"seq": seq, "empty": [], "nested": {"a": [1.5]}},
                          fallback_url=None, signed=True, created_at=float(seq),
                          next_attempt_at=next_attempt_at)


def by_uuid(records: list[CallRecord]) -> dict[str, CallRecord]:
    return {r.uuid: r for r in records}


# ------------------------------------------------------------------- live calls
def test_records_keep_every_field_through_their_changes(store: CallStorage) -> None:
    own = record("u1", slot=3, node="ast-b")
    own.event_url, own.event_method = "http://own.example/ev", "GET"
    own.fallback_url = "http://own.example/fb"
    store.save(own)
    store.save(record("u2", slot=1, node="ast-a"))
    ncco = [{"action": "talk", "text": "hi"}, {"action": "input", "dtmf": {}}]
    store.update_progress("u1", ncco, 1, 2)
    store.mark_answered("u1", "2024-01-01T00:00:01.000Z")
    store.update_progress("absent", ncco, 1, 2)  # a call that is gone: nothing happens

    got = by_uuid(store.all())
    assert set(got) == {"u1", "u2"}
    expected = dataclasses.replace(own, ncco=ncco, position=1, replacements=2,
                                   answered_at="2024-01-01T00:00:01.000Z")
    assert got["u1"] == expected
    assert got["u1"].url_overrides() == {"event_url": "http://own.example/ev",
                                         "event_method": "GET",
                                         "fallback_answer_url": "http://own.example/fb"}
    assert (got["u2"].node, got["u2"].slot) == ("ast-a", 1)
    assert [r.uuid for r in store.all(slot=3)] == ["u1"]
    assert [r.uuid for r in store.all(slot=1)] == ["u2"]
    assert store.all(slot=2) == []

    store.delete("u1")
    store.delete("absent")
    assert [r.uuid for r in store.all()] == ["u2"]


def test_a_call_saved_again_in_another_slot_moves(rstore: RedisCallStore) -> None:
    rstore.save(record("u1", slot=1))
    rstore.save(record("u1", slot=2))
    assert rstore.all(slot=1) == [] and [r.slot for r in rstore.all(slot=2)] == [2]
    assert not rstore.has_data(1) and rstore.has_data(2)


def test_a_survivor_updates_calls_it_did_not_save(redis_server: RedisServer) -> None:
    prefix = new_prefix()
    first = RedisCallStore(redis_server.url, prefix)
    survivor = RedisCallStore(redis_server.url, prefix)
    try:
        first.save(record("u1", slot=2, node="ast-a"))
        # Without reading first: the record is changed where it is.
        survivor.mark_answered("u1", "2024-01-01T00:00:05.000Z")
        [adopted] = survivor.all(slot=2)
        assert adopted.answered_at == "2024-01-01T00:00:05.000Z" and adopted.node == "ast-a"
        survivor.update_progress("u1", [{"action": "talk"}], 1, 0)
        assert first.all()[0].ncco == [{"action": "talk"}]
        survivor.delete("u1")
        assert first.all() == [] and not first.has_data(2)
    finally:
        first.close()
        survivor.close()


def test_an_update_puts_back_a_record_redis_lost(rstore: RedisCallStore,
                                                 redis_server: RedisServer) -> None:
    rstore.save(record("u1", slot=1))
    raw = redis.Redis.from_url(redis_server.url)
    raw.delete(f"{rstore.prefix}call:u1")
    assert rstore.all() == []
    rstore.update_progress("u1", [{"action": "talk"}], 1, 0)
    [back] = rstore.all(slot=1)
    assert back.uuid == "u1" and back.position == 1
    raw.close()


# ------------------------------------------------------------------------- outbox
def test_outbox_order_and_streams_match_on_both_backends(tmp_path: Path,
                                                         redis_server: RedisServer) -> None:
    """One script of outbox operations, run on SQLite and on Redis: the same answers."""

    def run(s: CallStorage) -> list[Any]:
        seen: list[Any] = []
        s.save(record("a"))
        s.save(record("b"))
        ids = {}
        for name, seq in (("a", 1), ("b", 2), ("a", 3), ("c", 4), ("b", 5)):
            ids[seq] = s.outbox_add(event(name, seq, next_attempt_at=100.0 + seq))
        seen.append(s.outbox_streams())
        seen.append((s.outbox_count(), s.outbox_oldest_created_at()))
        head = s.outbox_head("a")
        assert head is not None
        seen.append((head.payload, head.attempts, head.next_attempt_at, head.signed))
        s.outbox_retry_later(head.id, 3, 500.0)
        seen.append(s.outbox_streams())
        s.outbox_delete(head.id)  # a's head is now event 3, newer than b's head 2
        seen.append(s.outbox_streams())
        seen.append([(e.call_uuid, e.payload["seq"]) for e in s.outbox_events()])
        seen.append((s.outbox_count(), s.outbox_oldest_created_at()))
        for seq in (2, 3, 4, 5):
            s.outbox_delete(ids[seq])
        s.outbox_delete(ids[5])  # again: nothing
        seen.append((s.outbox_streams(), s.outbox_count(), s.outbox_oldest_created_at(),
                     s.outbox_head("a"), s.outbox_events()))
        return seen

    sqlite = CallStore(tmp_path / "calls.sqlite3")
    shared = RedisCallStore(redis_server.url, new_prefix())
    try:
        expected = run(sqlite)
        assert expected[0] == [("a", 101.0), ("b", 102.0), ("c", 104.0)]
        assert expected[3] == [("a", 500.0), ("b", 102.0), ("c", 104.0)]
        assert expected[4] == [("b", 102.0), ("a", 103.0), ("c", 104.0)]
        assert run(shared) == expected
    finally:
        sqlite.close()
        shared.close()


def test_event_ids_are_unique_and_growing_across_stores(redis_server: RedisServer) -> None:
    prefix = new_prefix()
    one = RedisCallStore(redis_server.url, prefix)
    two = RedisCallStore(redis_server.url, prefix)
    try:
        ids = [s.outbox_add(event(f"c{i}", i)) for i in range(10) for s in (one, two)]
        assert ids == sorted(ids) and len(set(ids)) == 20
    finally:
        one.close()
        two.close()


def test_completed_and_the_end_of_the_call_are_one_write(rstore: RedisCallStore,
                                                         redis_server: RedisServer) -> None:
    rstore.save(record("u1", slot=2))
    rstore.save(record("u2", slot=2))
    event_id = rstore.outbox_add(event("u1", 1), end_call="u1")
    raw = redis.Redis.from_url(redis_server.url, decode_responses=True)
    p = rstore.prefix
    # One view of both sides: the call is gone and its event is there, at the same instant.
    pipe = raw.pipeline(transaction=True)
    pipe.exists(f"{p}call:u1")
    pipe.sismember(f"{p}slot:2:calls", "u1")
    pipe.lrange(f"{p}events:u1", 0, -1)
    pipe.exists(f"{p}event:{event_id}")
    pipe.zrange(f"{p}slot:2:streams", 0, -1)
    assert pipe.execute() == [0, 0, [str(event_id)], 1, ["u1"]]
    raw.close()
    # The event belongs to the slot of the call it ended.
    assert rstore.has_data(2) and not rstore.has_data(0)
    assert [r.uuid for r in rstore.all()] == ["u2"]


def test_the_outbox_covers_only_the_owned_slots(redis_server: RedisServer) -> None:
    owned: set[int] = {2}
    prefix = new_prefix()
    s = RedisCallStore(redis_server.url, prefix, owned_slots=owned)
    try:
        for uuid, slot in (("one", 1), ("two", 2), ("three", 3)):
            s.save(record(uuid, slot=slot))
        s.outbox_add(event("one", 1))
        s.outbox_add(event("two", 2))
        s.outbox_add(event("two", 3))
        s.outbox_add(event("three", 4))
        s.outbox_add(event("stranger", 5))  # no record known: the lowest owned slot (2)
        s.outbox_add(event("one/passthru", 6))  # a side stream goes with its call (slot 1)
        assert [c for c, _ in s.outbox_streams()] == ["two", "stranger"]
        assert (s.outbox_count(), s.outbox_oldest_created_at()) == (3, 2.0)

        owned.update({1, 0})  # the coordinator adopted slots 0 and 1
        assert [c for c, _ in s.outbox_streams()] == ["one", "two", "stranger", "one/passthru"]
        assert (s.outbox_count(), s.outbox_oldest_created_at()) == (5, 1.0)
        owned.clear()
        assert (s.outbox_streams(), s.outbox_count(), s.outbox_oldest_created_at()) == (
            [], 0, None)
        # Inspection and the heads are not filtered.
        assert len(s.outbox_events()) == 6 and s.outbox_head("three") is not None
        assert [s.has_data(k) for k in range(5)] == [False, True, True, True, False]
    finally:
        s.close()
    every = RedisCallStore(redis_server.url, prefix)  # owned_slots None: every slot
    try:
        assert (every.outbox_count(), len(every.outbox_streams())) == (6, 5)
    finally:
        every.close()


def test_open_call_store_follows_the_configuration(tmp_path: Path,
                                                   redis_server: RedisServer) -> None:
    sqlite = open_call_store(Config.model_validate(
        {"store": {"path": str(tmp_path / "c.sqlite3")}}))
    owned = {1}
    shared = open_call_store(Config.model_validate(
        {"store": {"backend": "redis", "redis_url": redis_server.url,
                   "redis_prefix": "cfg:"}}), owned_slots=owned)
    try:
        assert isinstance(sqlite, CallStore)
        assert isinstance(shared, RedisCallStore)
        assert shared.prefix == "cfg:" and shared.owned_slots is owned
    finally:
        sqlite.close()
        shared.close()


# ------------------------------------------------------------------ Redis away
def test_writes_wait_while_redis_is_away_and_are_replayed_in_order(tmp_path: Path) -> None:
    data = tmp_path / "redis"
    server = RedisServer(data_dir=data, appendonly=True).start()
    s = RedisCallStore(server.url, "away:", retry_interval_s=0.0)
    restarted: RedisServer | None = None
    try:
        s.save(record("kept", slot=1))
        s.save(record("ended", slot=1))
        s.outbox_add(event("kept", 1))
        server.stop()

        with structlog.testing.capture_logs() as logs:
            s.save(record("new", slot=1))  # none of these raise
            s.update_progress("kept", [{"action": "talk"}], 1, 0)
            s.mark_answered("kept", "2024-01-01T00:00:09.000Z")
            s.delete("ended")
            s.save(record("brief", slot=1))
            s.delete("brief")
            assert s.flush_deferred() == 6 and s.deferred_count() == 6
        assert [e["event"] for e in logs if e["event"].startswith("store.")] == [
            "store.write_deferred"]  # once per outage
        with pytest.raises(StoreUnavailable):
            s.check_writable()
        with pytest.raises(StoreUnavailable):
            s.all()
        with pytest.raises(StoreUnavailable):
            s.outbox_add(event("kept", 2))
        # The outbox keeps the event in memory until Redis is back; the call stays live.
        app = ApplicationConfig(id="app", answer_url="http://127.0.0.1:9/answer")
        events = EventOutbox(s, WebhookClient(), lambda _: app)
        with structlog.testing.capture_logs() as logs:
            assert not events.post("kept", app, "http://127.0.0.1:9/event", "POST",
                                   {"status": "completed"}, ends_call=True)
        assert [e["event"] for e in logs] == ["event.write_deferred"]
        assert events.unwritten == 1
        with pytest.raises(StoreUnavailable):
            s.has_data(1)

        restarted = RedisServer(port=server.port, data_dir=data, appendonly=True).start()
        with structlog.testing.capture_logs() as logs:
            assert s.flush_deferred() == 0
        assert [(e["event"], e.get("replayed")) for e in logs] == [("store.write_resumed", 6)]
        got = by_uuid(s.all(slot=1))
        assert set(got) == {"kept", "new"}  # written before the stop, or replayed
        assert got["kept"].ncco == [{"action": "talk"}]
        assert got["kept"].answered_at == "2024-01-01T00:00:09.000Z"
        assert [e.payload["seq"] for e in s.outbox_events()] == [1]
        s.check_writable()
        # The completed kept in memory is written now, with the deletion of its call.
        events.write_unwritten()
        assert events.unwritten == 0 and set(by_uuid(s.all(slot=1))) == {"new"}
        assert [e.payload.get("status") for e in s.outbox_events()] == [None, "completed"]
    finally:
        s.close()
        server.stop()
        if restarted is not None:
            restarted.stop()


def test_a_later_write_replays_what_waits_first(tmp_path: Path) -> None:
    data = tmp_path / "redis"
    server = RedisServer(data_dir=data, appendonly=True).start()
    s = RedisCallStore(server.url, "order:", retry_interval_s=0.0)
    restarted: RedisServer | None = None
    try:
        server.stop()
        s.save(record("u1", slot=1))
        s.delete("u1")
        restarted = RedisServer(port=server.port, data_dir=data, appendonly=True).start()
        s.save(record("u1", slot=1, node="again"))  # after the delete, so it stays
        assert s.deferred_count() == 0
        assert [(r.uuid, r.node) for r in s.all()] == [("u1", "again")]
    finally:
        s.close()
        server.stop()
        if restarted is not None:
            restarted.stop()


def test_the_replay_queue_is_bounded_and_drops_the_oldest(tmp_path: Path) -> None:
    server = RedisServer().start()
    s = RedisCallStore(server.url, "bounded:", max_deferred=3, retry_interval_s=0.0)
    try:
        server.stop()
        with structlog.testing.capture_logs() as logs:
            for i in range(5):
                s.save(record(f"u{i}"))
        assert s.deferred_count() == 3
        assert [e["call_uuid"] for e in logs if e["event"] == "store.write_dropped"] == [
            "u0", "u1"]
        assert all(e["log_level"] == "error" for e in logs
                   if e["event"] == "store.write_dropped")
    finally:
        s.close()
        server.stop()
