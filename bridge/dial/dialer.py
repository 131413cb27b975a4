"""The one dialer: NCCO connect, outbound REST calls and (later) Exotel Connect all use it.

A leg is created in our Stasis application with an id we generate (so its events are routed to
it before Asterisk knows it), then dialled with Asterisk's own ringing timer. Legs rung
together are first-answer-wins: the moment one answers, the others are hung up, in a shielded
``finally`` so that a cancelled dial never leaves a phone ringing.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

from bridge.ari.errors import AriError
from bridge.ari.gateway import AriGateway, Event, new_id
from bridge.ari.waits import EventWaits
from bridge.config import Config
from bridge.dial.outcome import LegOutcome, outcome_from_cause
from bridge.timeline import RECORDER

log = structlog.get_logger(__name__)

#: Seconds beyond the ringing timer before we stop trusting Asterisk to end a leg.
GUARD_S = 10.0
#: Seconds a created channel may take to enter our application.
STASIS_WAIT_S = 5.0


class NoRoute(Exception):
    """No trunk route matches the number."""


@dataclass
class DialTarget:
    """One destination. ``endpoint`` is the Asterisk dial string."""

    uuid: str
    endpoint: str
    to: str  # the number or URI, as the application gave it
    caller_id: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    channel_id: str | None = None  # given when the caller must know it before dialling


@dataclass
class Leg:
    """A dialled channel. Status callbacks fire once each, in order."""

    target: DialTarget
    channel_id: str = field(default_factory=new_id)
    outcome: LegOutcome | None = None
    cause: int | None = None
    rang: bool = False
    answered_at: float | None = None
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    in_stasis: asyncio.Event = field(default_factory=asyncio.Event)
    #: Set while the leg is away in the dialplan (machine detection): leaving Stasis then is
    #: not the end of the leg.
    away: bool = False
    amd_result: asyncio.Future[str] | None = None
    settled: asyncio.Event = field(default_factory=asyncio.Event)
    on_status: Callable[[Leg, str], None] | None = None
    ring_timeout_s: float = 60.0
    dialled_at: float | None = None
    #: Subscribe-before-act waits on this leg's events (a playback to the callee); they
    #: resolve HANGUP when the leg ends.
    waits: EventWaits = field(default_factory=EventWaits)

    @property
    def uuid(self) -> str:
        return self.target.uuid

    def on_event(self, event: Event) -> None:
        kind = event.get("type")
        if kind == "StasisStart":
            self.in_stasis.set()
            args = [str(a) for a in event.get("args", [])]
            if args[:1] == ["amd"] and self.amd_result is not None and not self.amd_result.done():
                self.away = False
                self.amd_result.set_result(args[1] if len(args) > 1 else "NOTSURE")
        elif kind == "ChannelStateChange":
            state = event.get("channel", {}).get("state")
            if state == "Ringing" and not self.rang:
                self.rang = True
                self._status("ringing")
        elif kind == "Dial":
            status = event.get("dialstatus", "")
            if status == "RINGING" and not self.rang:
                self.rang = True
                self._status("ringing")
            elif status == "ANSWER" and self.outcome is None:
                self.outcome = LegOutcome.ANSWERED
                self.answered_at = time.monotonic()
                self.settled.set()
                self._status("answered")
        elif kind in ("ChannelDestroyed", "ChannelHangupRequest", "StasisEnd"):
            if "cause" in event and self.cause is None:
                self.cause = int(event["cause"])
            if kind == "StasisEnd" and (self.outcome is None or self.away):
                return  # wait for the destroy (which carries the cause), or for its return
            self._end()
        self.waits.dispatch(event)

    def _end(self) -> None:
        if self.outcome is None:
            # When Asterisk's ringing timer fires it just hangs the leg up (cause 32, no Dial
            # NOANSWER event), and a far end that gives up (480, 408) looks alike: only the
            # clock tells them apart.
            timed_out = (
                self.dialled_at is not None
                and time.monotonic() - self.dialled_at >= self.ring_timeout_s - 0.5
            )
            self.outcome = outcome_from_cause(self.cause, timed_out)
            self.settled.set()
            self._status(self.outcome.value)
        self.ended.set()
        self.waits.end(None)

    def cancel(self) -> None:
        """Mark a leg we are hanging up ourselves (not the far end's doing)."""
        if self.outcome is None:
            self.outcome = LegOutcome.CANCELLED
            self.settled.set()
            self._status("cancelled")

    def _status(self, status: str) -> None:
        if RECORDER.on:
            RECORDER.leg_status(self.channel_id, status)
        if self.on_status is not None:
            self.on_status(self, status)


class Dialer:
    def __init__(self, gateway: AriGateway, config: Config) -> None:
        self.gateway = gateway
        self.config = config

    def phone_endpoint(self, number: str) -> str:
        """The dial string for an E.164 number through its trunk (longest prefix)."""
        trunk = self.config.route_for(number)
        if trunk is None:
            raise NoRoute(f"no outbound route for number {number}")
        params = "" if trunk.transport == "udp" else f";transport={trunk.transport}"
        return f"PJSIP/{trunk.endpoint}/sip:{number.lstrip('+')}@{trunk.host}:{trunk.port}{params}"

    def sip_endpoint(self, uri: str) -> str:
        """A SIP URI is dialled through the default trunk endpoint, to the URI's own host."""
        trunk = self.config.route_for("")
        endpoint = trunk.endpoint if trunk is not None else "trunk-out"
        return f"PJSIP/{endpoint}/{uri}"

    async def dial(
        self,
        targets: list[DialTarget],
        ring_timeout_s: int,
        on_status: Callable[[Leg, str], None],
    ) -> tuple[Leg | None, list[Leg]]:
        """Ring ``targets`` together; return the leg that answered (if any) and all legs.

        Cancelling this coroutine hangs up every leg that has not answered."""
        legs = [Leg(target, channel_id=target.channel_id or new_id(), on_status=on_status)
                for target in targets]
        winner: Leg | None = None
        try:
            await asyncio.gather(*(self._start(leg, ring_timeout_s)
                                   for leg in legs))
            pending = {asyncio.ensure_future(leg.settled.wait()): leg for leg in legs}
            deadline = time.monotonic() + ring_timeout_s + GUARD_S
            while pending and winner is None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                done, _ = await asyncio.wait(pending, timeout=remaining,
                                             return_when=asyncio.FIRST_COMPLETED)
                for fut in done:
                    leg = pending.pop(fut)
                    if leg.outcome is LegOutcome.ANSWERED and winner is None:
                        winner = leg
            for fut in pending:
                fut.cancel()
            return winner, legs
        finally:
            losers = [leg for leg in legs if leg is not winner and not leg.ended.is_set()]
            if losers:
                await asyncio.shield(self._hang_up_losers(losers))

    async def _start(self, leg: Leg, ring_timeout_s: int) -> None:
        self.gateway.route(f"channel:{leg.channel_id}", leg.on_event)
        if RECORDER.on:
            RECORDER.leg_started(leg.uuid, leg.channel_id, leg.target.to)
        variables: dict[str, str] = {}
        if leg.target.caller_id:
            # PJSIP builds an outgoing INVITE's From from the channel's connected line (app_dial
            # copies the caller there); a created channel has none and would go out as
            # "Anonymous". Caller ID is set too, for the dialplan and CDRs.
            variables["CONNECTEDLINE(num)"] = leg.target.caller_id
            variables["CONNECTEDLINE(pres)"] = "allowed_not_screened"
            variables["CALLERID(num)"] = leg.target.caller_id
        for name, value in leg.target.headers.items():
            variables[f"PJSIP_HEADER(add,{name})"] = value
        try:
            await self.gateway.create_channel(
                leg.channel_id, leg.target.endpoint, ["dialed", leg.uuid], variables,
            )
            # The created channel joins our application asynchronously: dialling it before
            # its StasisStart gets 409 "Channel not in Stasis application".
            await asyncio.wait_for(leg.in_stasis.wait(), STASIS_WAIT_S)
            if leg.outcome is LegOutcome.CANCELLED:
                return  # stopped while it was being created (a REST hangup): never ring it
            leg.ring_timeout_s = ring_timeout_s
            leg.dialled_at = time.monotonic()
            # No 'caller' here: Asterisk would copy the caller's own number onto the new leg
            # over the caller ID we set (from, outgoing_phone_number, randomFromNumber).
            await self.gateway.dial(leg.channel_id, None, ring_timeout_s)
            log.info("dial.started", leg_uuid=leg.uuid, to=leg.target.to)
        except (AriError, TimeoutError) as exc:
            log.warning("dial.failed_to_start", leg_uuid=leg.uuid, to=leg.target.to,
                        error=str(exc))
            leg._end()

    async def _hang_up_losers(self, losers: list[Leg]) -> None:
        for leg in losers:
            leg.cancel()
        await asyncio.gather(*(self.gateway.hangup(leg.channel_id, "normal") for leg in losers),
                             return_exceptions=True)

    def release(self, leg: Leg) -> None:
        """Stop routing a finished leg's events."""
        self.gateway.unroute(f"channel:{leg.channel_id}")


async def detect_machine(gateway: AriGateway, leg: Leg, timeout_s: float = 10.0) -> str:
    """Run Asterisk's AMD() on an answered leg: 'MACHINE', 'HUMAN', 'NOTSURE' or 'HANGUP'."""
    leg.amd_result = asyncio.get_running_loop().create_future()
    leg.away = True
    try:
        await gateway.continue_in_dialplan(leg.channel_id, "ari-bridge-amd")
        ended: asyncio.Future[Any] = asyncio.ensure_future(leg.ended.wait())
        verdict: asyncio.Future[Any] = leg.amd_result
        try:
            await asyncio.wait([verdict, ended], timeout=timeout_s,
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            ended.cancel()
        if leg.amd_result.done():
            return leg.amd_result.result()
        return "HANGUP" if leg.ended.is_set() else "NOTSURE"
    finally:
        leg.away = False


async def wait_ended(leg: Leg, timeout: float | None = None) -> bool:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(leg.ended.wait(), timeout)
    return leg.ended.is_set()


__all__ = ["DialTarget", "Dialer", "Leg", "LegOutcome", "NoRoute", "detect_machine", "wait_ended"]
