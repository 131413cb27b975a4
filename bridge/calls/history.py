"""Call history for the REST API (``GET /v1/calls``): calls that ended, plus the live ones.

Ended calls are kept in memory, the most recent ``limit`` of them (10,000 by default); a
restarted bridge starts with an empty history. Live calls are never copied here: they are read
from the engine's registry at the moment of the request, so their status is always current.

Each entry has the fields of Vonage's call resource: ``uuid``, ``conversation_uuid``,
``status``, ``direction``, ``from``/``to`` as endpoint objects, ``start_time``, ``end_time``,
``duration`` (whole seconds of conversation, as a string), ``rate``/``price`` (always null:
nothing is billed here) and ``network``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from bridge.webhooks import payloads as ev

if TYPE_CHECKING:
    from bridge.calls.session import CallSession

DEFAULT_LIMIT = 10_000
NETWORK = "ari-bridge"


def endpoint(value: str) -> dict[str, Any]:
    """A Vonage endpoint object for a number or URI as the call store keeps it."""
    if value.startswith(("sip:", "sips:")):
        return {"type": "sip", "uri": value}
    if value.startswith(("ws://", "wss://")):
        return {"type": "websocket", "uri": value}
    return {"type": "phone", "number": value}


@dataclass(frozen=True)
class CallEntry:
    uuid: str
    conversation_uuid: str
    application_id: str
    status: str
    direction: str
    from_: dict[str, Any]
    to: dict[str, Any]
    started: datetime
    start_time: str | None
    end_time: str | None
    duration: str | None
    network: str | None = NETWORK

    def to_json(self) -> dict[str, Any]:
        return {
            "uuid": self.uuid,
            "conversation_uuid": self.conversation_uuid,
            "to": self.to,
            "from": self.from_,
            "status": self.status,
            "direction": self.direction,
            "rate": None,
            "price": None,
            "duration": self.duration,
            "start_time": self.start_time,
            "end_time": self.end_time,
            "network": self.network,
        }


def live_status(session: CallSession) -> str:
    """Vonage's status of a call that has not ended yet."""
    if session.answered is not None:
        return "answered"
    return "ringing"


def snapshot(session: CallSession, ended: datetime | None = None) -> CallEntry:
    """An entry for ``session``: live (``ended`` None) or just ended."""
    record = session.record
    start_time = ev.timestamp(session.answered or session.started)
    if ended is None:
        return CallEntry(
            uuid=session.uuid, conversation_uuid=session.conversation_uuid,
            application_id=record.application_id, status=live_status(session),
            direction=record.direction, from_=endpoint(record.from_number),
            to=endpoint(record.to_number), started=session.started,
            start_time=start_time, end_time=None, duration=None,
        )
    extra = ev.completed_extra(session.started, session.answered, ended, session.disconnected_by)
    return CallEntry(
        uuid=session.uuid, conversation_uuid=session.conversation_uuid,
        application_id=record.application_id, status=session.final_status,
        direction=record.direction, from_=endpoint(record.from_number),
        to=endpoint(record.to_number), started=session.started,
        start_time=extra["start_time"], end_time=extra["end_time"], duration=extra["duration"],
    )


class CallHistory:
    """The most recent ended calls, oldest first; bounded."""

    def __init__(self, limit: int = DEFAULT_LIMIT) -> None:
        self.limit = limit
        self._ended: OrderedDict[str, CallEntry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._ended)

    def add(self, entry: CallEntry) -> None:
        self._ended.pop(entry.uuid, None)
        self._ended[entry.uuid] = entry
        while len(self._ended) > self.limit:
            self._ended.popitem(last=False)

    def record_ended(self, session: CallSession) -> None:
        """Called by the engine when a session is forgotten."""
        self.add(snapshot(session, datetime.now(UTC)))

    def get(self, uuid: str, live: Iterable[CallSession] = ()) -> CallEntry | None:
        for session in live:
            if session.uuid == uuid:
                return snapshot(session)
        return self._ended.get(uuid)

    def entries(self, live: Iterable[CallSession] = ()) -> list[CallEntry]:
        """Every known call, ended and live, oldest start first."""
        ended = dict(self._ended)
        for session in live:
            ended[session.uuid] = snapshot(session)  # a live session is the truth
        return sorted(ended.values(), key=lambda e: e.started)

    def query(
        self,
        live: Iterable[CallSession] = (),
        *,
        application_id: str | None = None,
        status: str | None = None,
        conversation_uuid: str | None = None,
        date_start: datetime | None = None,
        date_end: datetime | None = None,
        order: str = "asc",
    ) -> list[CallEntry]:
        out = [
            e for e in self.entries(live)
            if (application_id is None or e.application_id == application_id)
            and (status is None or e.status == status)
            and (conversation_uuid is None or e.conversation_uuid == conversation_uuid)
            and (date_start is None or e.started >= date_start)
            and (date_end is None or e.started <= date_end)
        ]
        if order == "desc":
            out.reverse()
        return out
