"""The SQLite call store's gathered live-call writes, on a real SQLite file read back by a
second connection, as another process (an operator's ``sqlite3``, a restarted bridge) would."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog.testing

import bridge.calls.store as store_module
from bridge.calls.store import CallRecord, CallStore
from bridge.webhooks.outbox import NewOutboxEvent
from tests.polling import until

#: Long enough that nothing is committed by the timer while a test looks.
LONG_DELAY_S = 30.0


def record(uuid: str) -> CallRecord:
    return CallRecord(uuid=uuid, conversation_uuid="CON-" + uuid, channel_id=f"chan-{uuid}",
                      application_id="app", direction="inbound", from_number="1",
                      to_number="2", started_at="2024-01-01T00:00:00.000Z", answered_at=None,
                      ncco=[], position=0)


def event(call_uuid: str) -> NewOutboxEvent:
    return NewOutboxEvent(call_uuid=call_uuid, application_id="app",
                          url="http://127.0.0.1:9/event", method="POST",
                          payload={"status": "completed"}, fallback_url=None, signed=False,
                          created_at=time.time(), next_attempt_at=time.time())


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "calls.sqlite3"


@pytest.fixture
def open_store(path: Path) -> Iterator[Callable[[float], CallStore]]:
    opened: list[CallStore] = []

    def make(write_delay_s: float) -> CallStore:
        opened.append(CallStore(path, write_delay_s=write_delay_s))
        return opened[-1]

    yield make
    for store in opened:
        with contextlib.suppress(sqlite3.Error):
            store.close()


def rows(path: Path) -> list[tuple[Any, ...]]:
    """The live calls as another connection sees them."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        return db.execute("SELECT uuid, answered_at, ncco, position, replacements"
                          " FROM live_calls ORDER BY uuid").fetchall()


def count_statements(store: CallStore) -> list[str]:
    """Every statement the store runs from now on (SQLite's trace callback)."""
    seen: list[str] = []
    store._db.set_trace_callback(seen.append)
    return seen


async def test_a_calls_start_answer_and_first_action_are_one_row_written_once(
        path: Path, open_store: Callable[[float], CallStore]) -> None:
    store = open_store(0.05)
    statements = count_statements(store)
    store.save(record("a"))
    store.mark_answered("a", "2024-01-01T00:00:01.000Z")
    store.update_progress("a", [{"action": "talk", "text": "hi"}], 1, 0)
    assert rows(path) == []  # gathered, not yet written
    await until(lambda: rows(path) != [], "the row written", 5)
    assert rows(path) == [("a", "2024-01-01T00:00:01.000Z",
                           json.dumps([{"action": "talk", "text": "hi"}], separators=(",", ":")),
                           1, 0)]
    writes = [s for s in statements if "live_calls" in s]
    assert len(writes) == 1 and writes[0].startswith("INSERT OR REPLACE INTO live_calls")
    assert statements.count("COMMIT") == 1


async def test_changes_to_a_written_row_and_other_calls_share_one_transaction(
        path: Path, open_store: Callable[[float], CallStore]) -> None:
    store = open_store(LONG_DELAY_S)
    store.save(record("a"))
    store.save(record("b"))
    store.commit_pending()
    statements = count_statements(store)
    store.mark_answered("a", "2024-01-01T00:00:01.000Z")
    store.update_progress("a", [{"action": "stream", "streamUrl": ["x"]}], 2, 1)
    store.delete("b")
    store.save(record("c"))
    assert [r[0] for r in rows(path)] == ["a", "b"]
    store.commit_pending()
    assert rows(path) == [
        ("a", "2024-01-01T00:00:01.000Z", '[{"action":"stream","streamUrl":["x"]}]', 2, 1),
        ("c", None, "[]", 0, 0)]
    assert statements.count("BEGIN IMMEDIATE") == 1 and statements.count("COMMIT") == 1


async def test_a_call_deleted_before_its_row_was_written_leaves_nothing(
        path: Path, open_store: Callable[[float], CallStore]) -> None:
    store = open_store(LONG_DELAY_S)
    store.save(record("a"))
    store.commit_pending()
    # Saved again (a row already in the file) and deleted before the commit: the DELETE
    # still runs, or the first row would stay behind.
    store.save(record("a"))
    store.update_progress("a", [], 3, 0)
    store.delete("a")
    store.mark_answered("a", "2024-01-01T00:00:01.000Z")  # after the delete: no row to change
    store.commit_pending()
    assert rows(path) == []


async def test_reads_event_writes_and_close_see_the_writes_made_before_them(
        path: Path, open_store: Callable[[float], CallStore]) -> None:
    store = open_store(LONG_DELAY_S)
    store.save(record("a"))
    assert [r.uuid for r in store.all()] == ["a"]  # a read commits first
    store.save(record("b"))
    store.update_progress("b", [], 4, 0)
    statements = count_statements(store)
    # The event that ends call b: its row is written, then removed with the event, all in
    # the event's one transaction.
    store.outbox_add(event("b"), end_call="b")
    assert [r[0] for r in rows(path)] == ["a"]
    assert [e.call_uuid for e in store.outbox_events()] == ["b"]
    assert statements.count("COMMIT") == 1
    written = [s.split(" (")[0] for s in statements if s.startswith(("INSERT", "DELETE"))]
    assert written == ["INSERT OR REPLACE INTO live_calls", "INSERT INTO event_outbox",
                       "DELETE FROM live_calls WHERE uuid='b'"]
    store.save(record("c"))
    store.close()
    assert [r[0] for r in rows(path)] == ["a", "c"]


def test_without_an_event_loop_each_write_is_committed_at_once(
        path: Path, open_store: Callable[[float], CallStore]) -> None:
    store = open_store(LONG_DELAY_S)
    store.save(record("a"))
    assert [r[0] for r in rows(path)] == ["a"]


async def test_a_failed_commit_is_logged_kept_and_tried_again(
        path: Path, open_store: Callable[[float], CallStore],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_module, "_RETRY_AFTER_FAILURE_S", 0.05)
    store = open_store(0.01)
    store._db.execute("PRAGMA query_only=ON")  # every write fails, as on a read-only file
    with structlog.testing.capture_logs() as logs:
        store.save(record("a"))
        store.mark_answered("a", "2024-01-01T00:00:01.000Z")
        await until(lambda: any(e["event"] == "store.write_failed" for e in logs),
                    "the failed commit logged", 5)
    [failure, *_] = [e for e in logs if e["event"] == "store.write_failed"]
    assert failure["calls"] == 1 and "readonly" in failure["error"]
    assert rows(path) == []
    store._db.execute("PRAGMA query_only=OFF")  # the disk has room again
    await until(lambda: rows(path) != [], "the row written on a later try", 5)
    assert rows(path) == [("a", "2024-01-01T00:00:01.000Z", "[]", 0, 0)]


async def test_an_event_that_cannot_be_written_keeps_the_gathered_writes_too(
        path: Path, open_store: Callable[[float], CallStore]) -> None:
    store = open_store(LONG_DELAY_S)
    store.save(record("a"))
    store._db.execute("PRAGMA query_only=ON")
    with pytest.raises(sqlite3.OperationalError):
        store.outbox_add(event("a"))
    store._db.execute("PRAGMA query_only=OFF")
    assert rows(path) == [] and store.outbox_events() == []
    store.commit_pending()  # what the retry does
    assert [r[0] for r in rows(path)] == ["a"]
