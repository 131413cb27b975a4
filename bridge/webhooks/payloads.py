"""Vonage event payloads: the exact field and status names applications parse."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any


def timestamp(moment: datetime | None = None) -> str:
    """Vonage's format: ISO 8601, UTC, milliseconds, trailing Z."""
    moment = moment or datetime.now(UTC)
    # Formatted field by field: strftime costs several times more, several times per call.
    return (f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}T{moment.hour:02d}:"
            f"{moment.minute:02d}:{moment.second:02d}.{moment.microsecond // 1000:03d}Z")


def status_event(
    *,
    uuid: str,
    conversation_uuid: str,
    status: str,
    direction: str,
    from_: str,
    to: str,
    **extra: Any,
) -> dict[str, Any]:
    """A call status event (started, ringing, answered, completed, ...)."""
    payload: dict[str, Any] = {
        "from": from_,
        "to": to,
        "uuid": uuid,
        "conversation_uuid": conversation_uuid,
        "status": status,
        "direction": direction,
        "timestamp": timestamp(),
    }
    payload.update(extra)
    return payload


def completed_extra(
    started: datetime, answered: datetime | None, ended: datetime, disconnected_by: str
) -> dict[str, Any]:
    """Fields Vonage adds to ``completed``. ``duration`` is whole seconds of conversation, as a
    string (0 when the call was never answered)."""
    seconds = int((ended - answered).total_seconds()) if answered else 0
    return {
        "start_time": timestamp(answered or started),
        "end_time": timestamp(ended),
        "duration": str(max(seconds, 0)),
        "disconnected_by": disconnected_by,
        "network": "ari-bridge",
    }


ERROR_STATUS = "error"
"""The ``status`` of an error event: applications dispatch events on ``status``, so an
error needs one too (Vonage's own error callbacks name the problem only in ``reason``)."""


def error_event(*, uuid: str, conversation_uuid: str, reason: str) -> dict[str, Any]:
    """Errors are delivered to the event webhook too, with ``status: "error"``; ``reason``
    names the cause and field."""
    return {
        "status": ERROR_STATUS,
        "reason": reason,
        "uuid": uuid,
        "conversation_uuid": conversation_uuid,
        "timestamp": timestamp(),
    }


def parse_timestamp(value: str | None) -> datetime | None:
    """A timestamp as :func:`timestamp` writes it (or any ISO 8601); None for none."""
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def completed_event(
    *,
    uuid: str,
    conversation_uuid: str,
    direction: str,
    from_: str,
    to: str,
    started: datetime | None,
    answered: datetime | None,
    ended: datetime,
    disconnected_by: str,
) -> dict[str, Any]:
    """The ``completed`` status event that ends every call (``started`` None: now)."""
    return status_event(
        uuid=uuid, conversation_uuid=conversation_uuid, status="completed",
        direction=direction, from_=from_, to=to,
        **completed_extra(started or ended, answered, ended, disconnected_by),
    )
