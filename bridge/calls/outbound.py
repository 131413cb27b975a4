"""Outbound calls (REST ``POST /v1/calls``): what to ring, how it is rung, and what to run
once answered."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import structlog

from bridge.calls.answers import fetch_answer_ncco
from bridge.dial.dialer import DialTarget, Leg, NoRoute, detect_machine
from bridge.dial.outcome import LegOutcome
from bridge.ncco.context import CallContext
from bridge.ncco.models import Action, PhoneEndpoint, SipEndpoint, WebsocketEndpoint
from bridge.ncco.websocket_leg import open_websocket_call

log = structlog.get_logger(__name__)


class Draining(Exception):
    """The bridge is shutting down (SIGTERM) and places no new calls."""


@dataclass
class OutboundCall:
    application_id: str
    to: PhoneEndpoint | SipEndpoint | WebsocketEndpoint
    from_number: str
    ncco: list[Action] | None = None  # run this, or else fetch answer_url once answered
    answer_url: str | None = None
    answer_method: str = "GET"
    event_url: str | None = None  # overrides the application's, for this call
    event_method: str = "POST"
    ringing_timer_s: int = 60
    length_timer_s: int = 7200
    machine_detection: str | None = None

    @property
    def to_address(self) -> str:
        """The number or URI as status events name it."""
        if isinstance(self.to, PhoneEndpoint):
            return self.to.number
        return self.to.uri


@dataclass
class Rung:
    """How ringing an outbound call's destination ended."""

    answered: bool
    leg: Leg | None = None  # the answered phone or SIP leg (None for a WebSocket)
    final_status: str = "failed"  # Vonage's status when it was not answered
    declined: bool = False  # the far end turned it down (busy, rejected, unanswered)


async def ring_outbound(call: CallContext, request: OutboundCall,
                        on_status: Callable[[Leg, str], None]) -> Rung:
    """Ring ``request.to`` on the call's own channel id. A failure that is ours (no route, an
    unreachable WebSocket) is reported as an error event."""
    if isinstance(request.to, WebsocketEndpoint):
        return Rung(answered=await open_websocket_call(call, request.to))
    dialer = call.services.dialer
    try:
        endpoint = (dialer.phone_endpoint(request.to.number)
                    if isinstance(request.to, PhoneEndpoint)
                    else dialer.sip_endpoint(request.to.uri))
    except NoRoute as exc:
        call.error(str(exc))
        return Rung(answered=False)
    target = DialTarget(call.uuid, endpoint, request.to_address, request.from_number,
                        channel_id=call.channel_id)
    winner, legs = await dialer.dial([target], request.ringing_timer_s, on_status)
    if winner is not None:
        return Rung(answered=True, leg=winner)
    dialer.release(legs[0])
    outcome = legs[0].outcome
    return Rung(answered=False,
                final_status=outcome.value if outcome is not None else "failed",
                declined=outcome in (LegOutcome.BUSY, LegOutcome.REJECTED,
                                     LegOutcome.UNANSWERED))


async def hang_up_after(call: CallContext, seconds: int) -> None:
    """The call's length timer: hang up an answered call still going after ``seconds``."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(call.gone.wait(), seconds)
    if not call.gone.is_set():
        call.log.info("call.length_timer_expired", seconds=seconds)
        await call.gateway.hangup(call.channel_id)


class DialledCall(CallContext, Protocol):
    """An outbound call as its dialling sees it (``CallSession`` implements it)."""

    final_status: str  # Vonage's status for a call that was not answered
    disconnected_by: str
    ringing_leg: Leg | None  # while it rings, so that a REST hangup can cancel it

    def status(self, status: str, ends_call: bool = False, **extra: Any) -> bool: ...

    def mark_answered(self) -> None: ...


async def dial_out(call: DialledCall, request: OutboundCall) -> list[Action] | None:
    """Ring the destination; once answered, the NCCO given or fetched from answer_url. None
    when the call did not come up (its final status is sent) or is over already."""
    call.status("started")

    def on_status(leg: Leg, status: str) -> None:
        call.ringing_leg = leg
        if status == "ringing":
            call.status("ringing")

    try:
        rung = await ring_outbound(call, request, on_status)
    finally:
        call.ringing_leg = None
    if not rung.answered:
        call.final_status = rung.final_status
        if rung.declined:
            call.disconnected_by = "user"  # the far end turned the call down
        call.status(call.final_status)
        call.gone.set()  # nothing to hang up: the leg never came up
        return None
    call.mark_answered()
    call.run_beside(hang_up_after(call, request.length_timer_s), "length-timer")
    winner = rung.leg
    if winner is not None:  # a phone or SIP leg (a WebSocket has no far-end channel)
        if request.machine_detection in ("continue", "hangup"):
            verdict = await detect_machine(call.gateway, winner)
            call.status("machine" if verdict == "MACHINE" else "human")
            if verdict == "MACHINE" and request.machine_detection == "hangup":
                await call.gateway.hangup(call.channel_id)
                call.gone.set()
                return None
        # From now on the answered channel's events are the session's.
        call.gateway.route(f"channel:{call.channel_id}", call.on_event)
        if winner.ended.is_set():
            call.gone.set()
            return None
    if request.ncco is not None:
        return request.ncco
    return await fetch_answer_ncco(call)
