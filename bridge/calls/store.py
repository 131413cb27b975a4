"""What a restarted bridge needs to pick a live call up again, kept in an embedded SQLite file.

One row per live call: its ids, the leg's channel, the NCCO it is running and the position in
it, for a REST-created call its own answer and event URLs, and its place in a cluster (the
Asterisk node of its channel, the slot whose Stasis application holds it). The row is written
when the call starts and at each action, and deleted when the call has ended, in the same
transaction that writes its ``completed`` event to the event outbox.

Live-call writes are gathered for ``write_delay_s`` (``store.write_delay_ms``) and committed
together: a call's start, answer and first action, usually a few milliseconds apart, become
one row written once, and the calls of a busy moment share one transaction. What a process
crash can lose is therefore the last ``write_delay_s`` of changes: a call that started that
recently is hung up by the restarted bridge instead of resumed, a call that moved on to its
next action that recently resumes one action back. Reads of the live calls, event writes and
closing commit what is gathered first, so every reader of this object, and the outbox's
write-and-end transaction, see the writes in the order they were made.

:class:`CallStorage` is what the engine needs of a call store; the bridges of a cluster share
one in Redis instead (bridge/calls/redis_store.py, ``store.backend: redis``).

The same file holds the event outbox (table ``event_outbox``, see bridge/webhooks/outbox.py):
every status event is written there before it counts as sent, and deleted once delivered.

Writes are small and SQLite runs in WAL mode with ``synchronous=NORMAL``, so a write costs tens
of microseconds and is done inline on the event loop rather than in a thread: a thread hop would
cost more than the write, and what saves is gathering writes (above). ``NORMAL`` keeps the file
consistent through a crash of the process (the case the outbox is for); a power loss may lose
the last transactions.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import orjson
import structlog

from bridge.webhooks.outbox import NewOutboxEvent, OutboxEvent

_SCHEMA = """
CREATE TABLE IF NOT EXISTS live_calls (
    uuid TEXT PRIMARY KEY,
    conversation_uuid TEXT NOT NULL,
    channel_id TEXT NOT NULL UNIQUE,
    application_id TEXT NOT NULL,
    direction TEXT NOT NULL,
    from_number TEXT NOT NULL,
    to_number TEXT NOT NULL,
    started_at TEXT NOT NULL,
    answered_at TEXT,
    ncco TEXT NOT NULL,
    position INTEGER NOT NULL,
    replacements INTEGER NOT NULL DEFAULT 0
)
"""

#: One row, rewritten by every readiness check: proof that the database takes writes.
_HEALTH_SCHEMA = """
CREATE TABLE IF NOT EXISTS store_health (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    checked_at REAL NOT NULL
)
"""

# A REST-created call's own URLs (NULL: the application's). Added after the first release:
# an existing file gets them by ALTER TABLE.
_CALL_URL_COLUMNS = ("answer_url", "answer_method", "event_url", "event_method", "fallback_url")
# Where the call is in a cluster (its Asterisk node, its slot); added by ALTER TABLE as well.
_CALL_PLACE_COLUMNS = {"node": "TEXT NOT NULL DEFAULT ''", "slot": "INTEGER NOT NULL DEFAULT 0"}
_CALL_COLUMNS = ("uuid, conversation_uuid, channel_id, application_id, direction, from_number,"
                 " to_number, started_at, answered_at, ncco, position, replacements, answer_url,"
                 " answer_method, event_url, event_method, fallback_url, node, slot")
_SAVE_CALL = (f"INSERT OR REPLACE INTO live_calls ({_CALL_COLUMNS})"
              " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)")
# Where answered_at, ncco, position and replacements sit in a row of _SAVE_CALL.
_ANSWERED_AT, _NCCO, _POSITION, _REPLACEMENTS = 8, 9, 10, 11
_UPDATE_PROGRESS = "UPDATE live_calls SET ncco=?, position=?, replacements=? WHERE uuid=?"
_MARK_ANSWERED = "UPDATE live_calls SET answered_at=? WHERE uuid=?"
_DELETE_CALL = "DELETE FROM live_calls WHERE uuid=?"
#: After a failed commit (disk full, file locked), the next attempt is this much later.
_RETRY_AFTER_FAILURE_S = 1.0

log = structlog.get_logger(__name__)


def _json(ncco: list[dict[str, Any]]) -> str:
    # orjson: the NCCO is written on every action of every call, and json.dumps costs
    # several times more. Read back with json.loads, like rows written before.
    return orjson.dumps(ncco).decode()


_OUTBOX_SCHEMA = """
CREATE TABLE IF NOT EXISTS event_outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    call_uuid TEXT NOT NULL,
    application_id TEXT NOT NULL,
    url TEXT NOT NULL,
    method TEXT NOT NULL,
    payload TEXT NOT NULL,
    fallback_url TEXT,
    signed INTEGER NOT NULL,
    created_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS event_outbox_by_call ON event_outbox (call_uuid, id);
"""

_OUTBOX_COLUMNS = ("id, call_uuid, application_id, url, method, payload, fallback_url, signed,"
                   " created_at, attempts, next_attempt_at")


@dataclass
class CallRecord:
    uuid: str
    conversation_uuid: str
    channel_id: str
    application_id: str
    direction: str
    from_number: str
    to_number: str
    started_at: str
    answered_at: str | None
    ncco: list[dict[str, Any]]
    position: int
    replacements: int = 0
    # A REST-created call's own URLs; None: the application's.
    answer_url: str | None = None
    answer_method: str | None = None
    event_url: str | None = None
    event_method: str | None = None
    fallback_url: str | None = None
    # The Asterisk node its channel is on ('' for the single node of a plain bridge) and the
    # slot whose Stasis application holds it (0 outside a cluster).
    node: str = ""
    slot: int = 0

    def url_overrides(self) -> dict[str, str]:
        """The application settings this call overrides (``ApplicationConfig`` field names)."""
        fields = {"answer_url": self.answer_url, "answer_method": self.answer_method,
                  "event_url": self.event_url, "event_method": self.event_method,
                  "fallback_answer_url": self.fallback_url}
        return {k: v for k, v in fields.items() if v is not None}


class CallStorage(Protocol):
    """What the engine needs of a call store; :class:`CallStore` (SQLite) and
    ``bridge.calls.redis_store.RedisCallStore`` implement it."""

    def close(self) -> None: ...

    def check_writable(self) -> None:
        """Make one small write (``GET /readyz``); raises when the store cannot take it."""
        ...

    def save(self, record: CallRecord) -> None: ...

    def update_progress(
        self, uuid: str, ncco: list[dict[str, Any]], position: int, replacements: int
    ) -> None: ...

    def mark_answered(self, uuid: str, answered_at: str) -> None: ...

    def delete(self, uuid: str) -> None: ...

    def all(self, slot: int | None = None) -> list[CallRecord]:
        """The live calls, or only those of ``slot``."""
        ...

    def outbox_add(self, event: NewOutboxEvent, end_call: str | None = None) -> int: ...

    def outbox_head(self, call_uuid: str) -> OutboxEvent | None: ...

    def outbox_events(self) -> list[OutboxEvent]: ...

    def outbox_delete(self, event_id: int) -> None: ...

    def outbox_retry_later(self, event_id: int, attempts: int, next_attempt_at: float) -> None:
        ...

    def outbox_streams(self) -> list[tuple[str, float]]: ...

    def outbox_count(self) -> int: ...

    def outbox_oldest_created_at(self) -> float | None: ...


class _PendingWrite:
    """What is not yet committed of one live call's row: a whole row (``save``, with the
    later changes applied to it), or the changes to a row already written, or its delete."""

    __slots__ = ("answered_at", "delete", "progress", "row")

    def __init__(self) -> None:
        self.row: list[Any] | None = None
        self.progress: tuple[str, int, int] | None = None  # ncco as JSON, position, replacements
        self.answered_at: str | None = None
        self.delete = False


class CallStore:
    """The SQLite call store. ``write_delay_s``: how long live-call writes are gathered
    before they are committed together (0: each is committed at once)."""

    def __init__(self, path: Path, write_delay_s: float = 0.0) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.write_delay_s = write_delay_s
        self._pending: dict[str, _PendingWrite] = {}
        self._commit_timer: asyncio.TimerHandle | None = None
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        # Small pages for a new file: a call's few writes each dirty two or three pages,
        # and a WAL commit writes and checksums whole pages (no effect on an existing file).
        self._db.execute("PRAGMA page_size=1024")
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(_SCHEMA)
        self._db.execute(_HEALTH_SCHEMA)
        have = {row[1] for row in self._db.execute("PRAGMA table_info(live_calls)")}
        for column in _CALL_URL_COLUMNS:
            if column not in have:
                self._db.execute(f"ALTER TABLE live_calls ADD COLUMN {column} TEXT")
        for column, definition in _CALL_PLACE_COLUMNS.items():
            if column not in have:
                self._db.execute(f"ALTER TABLE live_calls ADD COLUMN {column} {definition}")
        self._db.executescript(_OUTBOX_SCHEMA)

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):  # already logged by commit_pending
            self.commit_pending()
        self._cancel_timer()  # the retry a failed commit scheduled
        self._db.close()

    def check_writable(self) -> None:
        """Commit one small write (``GET /readyz``); raises ``sqlite3.Error`` when the
        database cannot take writes (read-only, disk full, locked, closed)."""
        self._db.execute("INSERT OR REPLACE INTO store_health VALUES (1, ?)", (time.time(),))

    # ------------------------------------------------------------ live calls
    def save(self, record: CallRecord) -> None:
        pending = self._pending_for(record.uuid, new=True)
        pending.row = [
            record.uuid, record.conversation_uuid, record.channel_id,
            record.application_id, record.direction, record.from_number,
            record.to_number, record.started_at, record.answered_at,
            _json(record.ncco), record.position, record.replacements,
            record.answer_url, record.answer_method, record.event_url,
            record.event_method, record.fallback_url, record.node, record.slot,
        ]
        self._written()

    def update_progress(
        self, uuid: str, ncco: list[dict[str, Any]], position: int, replacements: int
    ) -> None:
        pending = self._pending_for(uuid)
        if pending.row is not None:
            pending.row[_NCCO:_REPLACEMENTS + 1] = _json(ncco), position, replacements
        elif not pending.delete:  # like an UPDATE after a DELETE: nothing to change
            pending.progress = (_json(ncco), position, replacements)
        self._written()

    def mark_answered(self, uuid: str, answered_at: str) -> None:
        pending = self._pending_for(uuid)
        if pending.row is not None:
            pending.row[_ANSWERED_AT] = answered_at
        elif not pending.delete:
            pending.answered_at = answered_at
        self._written()

    def delete(self, uuid: str) -> None:
        # Always a DELETE, even when the row is still pending: an earlier save of the same
        # call may already be in the file.
        self._pending_for(uuid, new=True).delete = True
        self._written()

    def commit_pending(self) -> None:
        """Commit the gathered live-call writes in one transaction. Raises ``sqlite3.Error``
        (after logging it) when they cannot be written; they are kept and tried again."""
        self._cancel_timer()
        if not self._pending:
            return
        try:
            with self._transaction():
                self._write_pending()
        except sqlite3.Error as exc:
            self._write_failed(exc)
            raise
        self._pending.clear()

    def _write_pending(self) -> None:
        """The gathered writes, inside the caller's transaction."""
        for uuid, pending in self._pending.items():
            if pending.delete:
                self._db.execute(_DELETE_CALL, (uuid,))
            if pending.row is not None:
                self._db.execute(_SAVE_CALL, pending.row)
            if pending.answered_at is not None:
                self._db.execute(_MARK_ANSWERED, (pending.answered_at, uuid))
            if pending.progress is not None:
                self._db.execute(_UPDATE_PROGRESS, (*pending.progress, uuid))

    def _write_failed(self, exc: sqlite3.Error) -> None:
        """Log a failed commit of the gathered writes; they are kept and tried again."""
        log.error("store.write_failed", calls=len(self._pending), error=str(exc))
        self._schedule_commit(_RETRY_AFTER_FAILURE_S)

    def _pending_for(self, uuid: str, new: bool = False) -> _PendingWrite:
        """The call's pending write; ``new``: a fresh one replacing it (a save or a delete
        supersedes whatever came before it)."""
        pending = None if new else self._pending.get(uuid)
        if pending is None:
            pending = self._pending[uuid] = _PendingWrite()
        return pending

    def _written(self) -> None:
        if self._commit_timer is not None:
            return  # a commit is due already; this write goes with it
        if self.write_delay_s <= 0 or not self._schedule_commit(self.write_delay_s):
            self.commit_pending()

    def _schedule_commit(self, delay_s: float) -> bool:
        """Commit in ``delay_s``; False when there is no event loop to do it (a tool, a
        test) and the caller must commit now."""
        self._cancel_timer()
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return False
        self._commit_timer = loop.call_later(delay_s, self._commit_later)
        return True

    def _commit_later(self) -> None:
        self._commit_timer = None
        with contextlib.suppress(sqlite3.Error):  # logged, kept and retried by commit_pending
            self.commit_pending()

    def _cancel_timer(self) -> None:
        if self._commit_timer is not None:
            self._commit_timer.cancel()
            self._commit_timer = None

    def all(self, slot: int | None = None) -> list[CallRecord]:
        """The live calls, or only those of ``slot``."""
        self.commit_pending()
        if slot is None:
            cursor = self._db.execute(f"SELECT {_CALL_COLUMNS} FROM live_calls")
        else:
            cursor = self._db.execute(f"SELECT {_CALL_COLUMNS} FROM live_calls WHERE slot=?",
                                      (slot,))
        return [
            CallRecord(
                uuid=row[0], conversation_uuid=row[1], channel_id=row[2], application_id=row[3],
                direction=row[4], from_number=row[5], to_number=row[6], started_at=row[7],
                answered_at=row[8], ncco=json.loads(row[9]), position=row[10],
                replacements=row[11], answer_url=row[12], answer_method=row[13],
                event_url=row[14], event_method=row[15], fallback_url=row[16],
                node=row[17], slot=int(row[18]),
            )
            for row in cursor.fetchall()
        ]

    # ------------------------------------------------------------ the event outbox
    def outbox_add(self, event: NewOutboxEvent, end_call: str | None = None) -> int:
        """Write an event; returns its id. With ``end_call``, that live call's row is deleted
        in the same transaction: a crash leaves either the live call (which a restarted
        bridge completes) or its ``completed`` event, never neither, never both."""
        values = (
            event.call_uuid, event.application_id, event.url, event.method,
            json.dumps(event.payload, separators=(",", ":"), default=str), event.fallback_url,
            int(event.signed), event.created_at, event.next_attempt_at,
        )
        insert = ("INSERT INTO event_outbox (call_uuid, application_id, url, method, payload,"
                  " fallback_url, signed, created_at, next_attempt_at) VALUES (?,?,?,?,?,?,?,?,?)")
        if end_call is None and not self._pending:
            return int(self._db.execute(insert, values).lastrowid or 0)
        # The live-call writes gathered before this event go in its transaction, first.
        try:
            with self._transaction():
                self._write_pending()
                event_id = int(self._db.execute(insert, values).lastrowid or 0)
                if end_call is not None:
                    self._db.execute(_DELETE_CALL, (end_call,))
        except sqlite3.Error as exc:
            if self._pending:
                self._write_failed(exc)
            raise
        self._pending.clear()
        self._cancel_timer()
        return event_id

    def outbox_head(self, call_uuid: str) -> OutboxEvent | None:
        row = self._db.execute(
            f"SELECT {_OUTBOX_COLUMNS} FROM event_outbox WHERE call_uuid=? ORDER BY id LIMIT 1",
            (call_uuid,),
        ).fetchone()
        return None if row is None else _outbox_event(row)

    def outbox_events(self) -> list[OutboxEvent]:
        """Every pending event, oldest first (for tests and inspection)."""
        rows = self._db.execute(f"SELECT {_OUTBOX_COLUMNS} FROM event_outbox ORDER BY id")
        return [_outbox_event(row) for row in rows.fetchall()]

    def outbox_delete(self, event_id: int) -> None:
        self._db.execute("DELETE FROM event_outbox WHERE id=?", (event_id,))

    def outbox_retry_later(self, event_id: int, attempts: int, next_attempt_at: float) -> None:
        self._db.execute("UPDATE event_outbox SET attempts=?, next_attempt_at=? WHERE id=?",
                         (attempts, next_attempt_at, event_id))

    def outbox_streams(self) -> list[tuple[str, float]]:
        rows = self._db.execute(
            "SELECT e.call_uuid, e.next_attempt_at FROM event_outbox e JOIN"
            " (SELECT MIN(id) AS id FROM event_outbox GROUP BY call_uuid) h ON e.id = h.id"
            " ORDER BY e.id"
        )
        return [(str(row[0]), float(row[1])) for row in rows.fetchall()]

    def outbox_count(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM event_outbox").fetchone()[0])

    def outbox_oldest_created_at(self) -> float | None:
        # Ids grow with time: the first row is the oldest (no index on created_at needed).
        row = self._db.execute(
            "SELECT created_at FROM event_outbox ORDER BY id LIMIT 1").fetchone()
        return None if row is None else float(row[0])

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")


def _outbox_event(row: tuple[Any, ...]) -> OutboxEvent:
    return OutboxEvent(
        id=int(row[0]), call_uuid=row[1], application_id=row[2], url=row[3],
        method="GET" if row[4] == "GET" else "POST", payload=json.loads(row[5]),
        fallback_url=row[6], signed=bool(row[7]), created_at=float(row[8]),
        attempts=int(row[9]), next_attempt_at=float(row[10]),
    )
