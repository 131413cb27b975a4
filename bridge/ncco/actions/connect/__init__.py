"""connect: ring a phone number or SIP URI and join the caller to whoever answers.

Synchronous by the reference: the NCCO goes on only when the connected call ends (the callee
hangs up, or nobody answered). With ``eventType: synchronous`` a failed attempt (busy,
rejected, timeout, unanswered, failed) is POSTed to eventUrl and an NCCO in the reply replaces
the running one: the seed's "connect to an alternative number".

The callee is a new leg with its own uuid and the caller's conversation_uuid; its status events
(started, ringing, answered or the failure, completed) go to the action's eventUrl, or the
application's event_url. Every leg ends with its final status and then ``completed``, whichever
side ends it: the callee (busy, hanging up), our ringing timer, or the caller's side (the caller
hangs up, a REST hangup or transfer, the NCCO moving on): a leg stopped before it had an outcome
is ``cancelled``, Vonage's status for a call cancelled by its originator before answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import uuid as uuidlib
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import structlog

from bridge.agents.tracking import track_call
from bridge.ari.errors import AriError
from bridge.ari.gateway import new_id
from bridge.dial.dialer import DialTarget, Leg, NoRoute, detect_machine
from bridge.dial.join import join_until_one_leaves, tear_down_join
from bridge.dial.outcome import LegOutcome
from bridge.media import MediaError
from bridge.ncco.actions.connect.leg_events import LegEvents, report_failure
from bridge.ncco.actions.connect.on_answer import on_answer
from bridge.ncco.actions.connect.websocket import connect_websocket
from bridge.ncco.models import (
    Action,
    Connect,
    NccoError,
    PhoneEndpoint,
    SipEndpoint,
    WebsocketEndpoint,
)
from bridge.webhooks import payloads as ev

if TYPE_CHECKING:
    from bridge.ncco.context import CallContext

log = structlog.get_logger(__name__)


def check(action: Connect, index: int) -> None:
    endpoint = action.endpoint[0]
    if not isinstance(endpoint, PhoneEndpoint | SipEndpoint | WebsocketEndpoint):
        raise NccoError(
            f"connect to a {endpoint.type!r} endpoint is not supported by this version of "
            "ari-bridge", f"[{index}].endpoint[0].type",
        )
    if isinstance(endpoint, PhoneEndpoint) and endpoint.on_answer is not None:
        url = endpoint.on_answer.get("url")
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise NccoError("onAnswer needs a url (http or https)",
                            f"[{index}].endpoint[0].onAnswer.url")
    if action.machine_detection is not None and isinstance(endpoint, WebsocketEndpoint):
        raise NccoError("machineDetection applies to phone and sip endpoints",
                        f"[{index}].machineDetection")


def _caller_id(call: CallContext, action: Connect) -> str:
    """``from``, or with randomFromNumber one of the application's own numbers, or the number
    the call came in on."""
    if action.random_from_number:
        pool = call.services.config.numbers_of(call.app.id)
        if pool:
            return random.choice(pool)
    return action.from_ or call.to_number


def _target(call: CallContext, action: Connect, leg_uuid: str, caller_id: str) -> DialTarget:
    endpoint = action.endpoint[0]
    dialer = call.services.dialer
    if isinstance(endpoint, PhoneEndpoint):
        return DialTarget(leg_uuid, dialer.phone_endpoint(endpoint.number), endpoint.number,
                          caller_id)
    assert isinstance(endpoint, SipEndpoint)
    headers = {f"X-{k}" if not k.lower().startswith("x-") else k: v
               for k, v in endpoint.headers.items()}
    headers.update(endpoint.standard_headers)
    return DialTarget(leg_uuid, dialer.sip_endpoint(endpoint.uri), endpoint.uri, caller_id,
                      headers)


async def run(call: CallContext, action: Connect) -> list[Action] | None:
    leg_uuid = str(uuidlib.uuid4())
    endpoint = action.endpoint[0]
    to = endpoint.number if isinstance(endpoint, PhoneEndpoint) else endpoint.uri  # type: ignore[union-attr]
    caller_id = _caller_id(call, action)
    events = LegEvents(call, action, leg_uuid, to, caller_id)
    events.send("started")
    try:
        return await _run_leg(call, action, events, leg_uuid, caller_id)
    finally:
        # Also when this action is cancelled (the caller hung up, a REST hangup or transfer):
        # the dialer has hung up a leg still ringing, and the application must hear of it.
        await events.close()


async def _run_leg(call: CallContext, action: Connect, events: LegEvents, leg_uuid: str,
                   caller_id: str) -> list[Action] | None:
    endpoint = action.endpoint[0]
    if isinstance(endpoint, WebsocketEndpoint):
        return await connect_websocket(call, action, endpoint, events)
    try:
        target = _target(call, action, leg_uuid, caller_id)
    except NoRoute as exc:
        call.error(f"connect: {exc}")
        return await report_failure(call, action, events, LegOutcome.FAILED)

    ringback = await _start_ringback(call, _ringback_url(action))
    try:
        winner, legs = await call.services.dialer.dial(
            [target], action.timeout, events.on_leg_status)
    finally:
        await _stop_ringback(call, ringback)
    leg = legs[0]
    if winner is None:
        call.services.dialer.release(leg)
        outcome = leg.outcome or LegOutcome.FAILED
        if outcome is LegOutcome.CANCELLED:
            events.send("cancelled")
            return None
        return await report_failure(call, action, events, outcome)
    await _converse(call, action, winner, events)
    return None


def _ringback_url(action: Connect) -> str | None:
    endpoint = action.endpoint[0]
    if isinstance(endpoint, PhoneEndpoint) and endpoint.on_answer:
        tone = endpoint.on_answer.get("ringbackTone")
        if isinstance(tone, str):
            return tone
    return action.ringback_tone


async def _start_ringback(call: CallContext, url: str | None) -> str | None:
    """The caller hears ringing while the callee rings: SIP 180 before answer, a tone after,
    or the application's own ringbackTone (which needs media, so the caller is answered)."""
    media = ["tone:ring"]
    if url is not None:
        try:
            item = await call.media.fetch(url)
            # Repeated in one playback (stopped when the callee answers): ten copies keep the
            # request short and cover most ringing; after that the caller hears silence.
            media = [call.services.media_uri(item.media_id)] * 10
            await call.ensure_answered()
        except MediaError as exc:
            call.error(f"connect: ringbackTone {url} cannot be played: {exc.cause}; "
                       "using a ringing tone")
    if call.answered is None:
        with contextlib.suppress(AriError):
            await call.gateway.ring(call.channel_id)
        return None
    playback_id = new_id()
    with contextlib.suppress(AriError):
        await call.gateway.play(call.channel_id, media, playback_id)
        return playback_id
    return None


async def _stop_ringback(call: CallContext, playback_id: str | None) -> None:
    if playback_id is not None:
        with contextlib.suppress(AriError):
            await asyncio.shield(call.gateway.stop_playback(playback_id))


async def _converse(call: CallContext, action: Connect, leg: Leg, events: LegEvents) -> None:
    """Join caller and callee until one of them hangs up or the limit is reached."""
    gateway = call.gateway
    bridge_id = new_id()
    answered = events.answered_at or datetime.now(UTC)
    agents = call.services.config.agents
    if call.services.config.tracks_all_calls():
        # The callee is an agent on a call through the bridge: busy for Connect applets.
        call.run_beside(track_call(call.services.agents, leg.target.to, f"leg:{leg.uuid}",
                              agents.lease_s, leg.ended), "busy-tracking")
    try:
        if action.machine_detection is not None:
            verdict = await detect_machine(gateway, leg)
            log.info("connect.machine_detection", verdict=verdict)
            if verdict == "MACHINE":
                events.send("machine")
                if action.machine_detection == "hangup":
                    return  # the finally hangs the leg up; the NCCO goes on
            elif verdict in ("HUMAN", "NOTSURE"):
                events.send("human")
            if leg.ended.is_set():
                return
        endpoint = action.endpoint[0]
        if isinstance(endpoint, PhoneEndpoint) and endpoint.on_answer:
            await on_answer(call, leg, str(endpoint.on_answer["url"]), events)
            if leg.ended.is_set():
                return
        await call.ensure_answered()
        if isinstance(endpoint, PhoneEndpoint) and endpoint.dtmf_answer:
            # 'p' is Vonage's 500 ms pause; Asterisk's DTMF streams write it 'w'.
            await gateway.send_dtmf(leg.channel_id, endpoint.dtmf_answer.replace("p", "w"))
        limit_reached = await join_until_one_leaves(
            gateway, bridge_id, f"connect-{call.uuid}", call.channel_id, call.gone, leg,
            action.limit)
        if limit_reached:
            log.info("connect.limit_reached", limit_s=action.limit)
            with contextlib.suppress(AriError):
                await gateway.hangup(call.channel_id)
    finally:
        # Who ended the conversation: the callee hung up first ("user"), or our side did (the
        # caller left, a limit, machine detection, a transfer or REST hangup: "platform").
        by = "user" if leg.ended.is_set() and not call.gone.is_set() else "platform"
        await asyncio.shield(tear_down_join(call.gateway, bridge_id, call.channel_id,
                                            call.gone, leg))
        events.send("completed", **ev.completed_extra(answered, answered, datetime.now(UTC), by))
        call.services.dialer.release(leg)


