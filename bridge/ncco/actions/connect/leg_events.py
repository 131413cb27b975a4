"""The callee leg's status events of a ``connect``: each sent once, in order, whoever ends
the leg, and always ``completed`` last."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime
from typing import Any

from bridge.ari.errors import AriError
from bridge.dial.dialer import Leg
from bridge.dial.outcome import LegOutcome
from bridge.ncco.context import CallContext
from bridge.ncco.models import Action, Connect
from bridge.webhooks import payloads as ev

#: Statuses that end a leg that was never answered (Vonage's names).
UNANSWERED_STATUSES = frozenset(o.value for o in LegOutcome if o is not LegOutcome.ANSWERED)
#: Of those, the ones where the callee's side ended the leg (``disconnected_by: user``).
_CALLEE_ENDED = frozenset({LegOutcome.BUSY.value, LegOutcome.REJECTED.value,
                           LegOutcome.UNANSWERED.value})


class LegEvents:
    """Status events of the callee leg, each sent once, in order."""

    def __init__(self, call: CallContext, action: Connect, leg_uuid: str, to: str,
                 from_: str) -> None:
        self.call = call
        self.url = action.event_url[0] if action.event_url else call.app.event_url
        self.method = action.event_method if action.event_url else call.app.event_method
        self.leg_uuid = leg_uuid
        self.to = to
        self.from_ = from_
        self.sent: list[str] = []
        self.started_at = datetime.now(UTC)
        self.answered_at: datetime | None = None
        #: How the dialer saw the leg end before it was answered (busy, timeout, cancelled...).
        self.outcome: str | None = None
        self.leg: Leg | None = None  # known from the dialer's first status callback

    def payload(self, status: str, **extra: Any) -> dict[str, Any]:
        return ev.status_event(
            uuid=self.leg_uuid, conversation_uuid=self.call.conversation_uuid, status=status,
            direction="outbound", from_=self.from_, to=self.to, **extra,
        )

    def send(self, status: str, **extra: Any) -> None:
        if status in self.sent:
            return
        self.sent.append(status)
        if self.url is not None:
            self.call.post_event(self.url, self.method, self.payload(status, **extra))

    def on_leg_status(self, leg: Leg, status: str) -> None:
        """The dialer's status callback: ringing and answered are sent at once; an unanswered
        outcome is kept for ``run`` (a synchronous eventUrl may answer it with an NCCO)."""
        self.leg = leg
        if status == "ringing":
            self.send(status)
        elif status == "answered":
            self.answered_at = datetime.now(UTC)
            self.send(status)
        elif status in UNANSWERED_STATUSES and self.outcome is None:
            self.outcome = status

    def finish(self) -> None:
        """End the leg's events, whatever stopped it: the final status if none was sent yet
        (``cancelled`` when the leg had no outcome of its own), then ``completed``."""
        if "completed" in self.sent:
            return
        if self.answered_at is None:
            final = next((s for s in self.sent if s in UNANSWERED_STATUSES), None)
            if final is None:
                final = self.outcome or LegOutcome.CANCELLED.value
                self.send(final)
            by = "user" if final in _CALLEE_ENDED else "platform"
        else:
            # Answered, but our side stopped the action before the conversation took the leg.
            by = "platform"
        self.send("completed", **ev.completed_extra(self.started_at, self.answered_at,
                                                    datetime.now(UTC), by))

    async def close(self) -> None:
        """The action's last word on its leg, on every path (cancellation included): the
        final events, an answered leg that no conversation took is hung up, and the leg's
        events are no longer routed here."""
        orphaned = (self.leg is not None and self.answered_at is not None
                    and "completed" not in self.sent and not self.leg.ended.is_set())
        self.finish()
        if self.leg is None:
            return
        if orphaned:
            with contextlib.suppress(AriError):
                await asyncio.shield(self.call.gateway.hangup(self.leg.channel_id))
        self.call.services.dialer.release(self.leg)


async def report_failure(call: CallContext, action: Connect, events: LegEvents,
                  outcome: LegOutcome) -> list[Action] | None:
    """Send the leg's failure; with ``eventType: synchronous`` the reply may carry the NCCO
    that replaces the running one (the seed's "connect to an alternative number")."""
    status = outcome.value
    if action.event_type == "synchronous" and outcome.is_failure and events.url is not None:
        events.sent.append(status)
        return await call.ask_for_ncco(events.url, events.method, events.payload(status))
    events.send(status)
    return None
