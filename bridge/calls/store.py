"""What a restarted bridge needs to pick a live call up again, kept in an embedded SQLite file.

One row per live call: its ids, the leg's channel, the NCCO it is running and the position in
it. The row is written when the call starts and at each action, and deleted when the call has
ended and its ``completed`` event was queued. Writes are small and SQLite runs in WAL mode with
``synchronous=NORMAL``, so a write costs tens of microseconds and is done inline on the event
loop rather than in a thread (a thread hop would cost more than the write).
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


class CallStore:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(_SCHEMA)
        self._db.execute(_HEALTH_SCHEMA)

    def close(self) -> None:
        self._db.close()

    def check_writable(self) -> None:
        """Commit one small write (``GET /readyz``); raises ``sqlite3.Error`` when the
        database cannot take writes (read-only, disk full, locked, closed)."""
        self._db.execute("INSERT OR REPLACE INTO store_health VALUES (1, ?)", (time.time(),))

    def save(self, record: CallRecord) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO live_calls VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                record.uuid, record.conversation_uuid, record.channel_id,
                record.application_id, record.direction, record.from_number,
                record.to_number, record.started_at, record.answered_at,
                json.dumps(record.ncco), record.position, record.replacements,
            ),
        )

    def update_progress(
        self, uuid: str, ncco: list[dict[str, Any]], position: int, replacements: int
    ) -> None:
        self._db.execute(
            "UPDATE live_calls SET ncco=?, position=?, replacements=? WHERE uuid=?",
            (json.dumps(ncco), position, replacements, uuid),
        )

    def mark_answered(self, uuid: str, answered_at: str) -> None:
        self._db.execute("UPDATE live_calls SET answered_at=? WHERE uuid=?", (answered_at, uuid))

    def delete(self, uuid: str) -> None:
        self._db.execute("DELETE FROM live_calls WHERE uuid=?", (uuid,))

    def all(self) -> list[CallRecord]:
        cursor = self._db.execute(
            "SELECT uuid, conversation_uuid, channel_id, application_id, direction, from_number,"
            " to_number, started_at, answered_at, ncco, position, replacements FROM live_calls"
        )
        return [
            CallRecord(
                uuid=row[0], conversation_uuid=row[1], channel_id=row[2], application_id=row[3],
                direction=row[4], from_number=row[5], to_number=row[6], started_at=row[7],
                answered_at=row[8], ncco=json.loads(row[9]), position=row[10],
                replacements=row[11],
            )
            for row in cursor.fetchall()
        ]
