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
from typing import TYPE_CHECKING, Any

import aiohttp
import structlog

from bridge.agents.tracking import track_call
from bridge.ari.errors import AriError
from bridge.ari.gateway import new_id
from bridge.ari.waits import playback_finished
from bridge.dial.dialer import DialTarget, Leg, NoRoute, detect_machine
from bridge.dial.join import join_until_one_leaves, tear_down_join
from bridge.dial.outcome import LegOutcome
from bridge.media import MediaError, resolve_voice
from bridge.ncco.models import (
    Action,
    Connect,
    NccoError,
    PhoneEndpoint,
    SipEndpoint,
    Stream,
    Talk,
    Wait,
    WebsocketEndpoint,
)
from bridge.ncco.replies import reply_ncco
from bridge.ncco.websocket_leg import WebsocketLeg
from bridge.webhooks import WebhookRequest
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
        return await _connect_websocket(call, action, endpoint, events)
    try:
        target = _target(call, action, leg_uuid, caller_id)
    except NoRoute as exc:
        call.error(f"connect: {exc}")
        return await _failed(call, action, events, LegOutcome.FAILED)

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
        return await _failed(call, action, events, outcome)
    await _converse(call, action, winner, events)
    return None


async def _failed(call: CallContext, action: Connect, events: LegEvents,
                  outcome: LegOutcome) -> list[Action] | None:
    status = outcome.value
    if action.event_type == "synchronous" and outcome.is_failure and events.url is not None:
        events.sent.append(status)
        return await call.ask_for_ncco(events.url, events.method, events.payload(status))
    events.send(status)
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
    if agents.track_all_calls:
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
            await _on_answer(call, leg, str(endpoint.on_answer["url"]), events)
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


async def _connect_websocket(call: CallContext, action: Connect, endpoint: WebsocketEndpoint,
                             events: LegEvents) -> list[Action] | None:
    """Relay the caller's audio to and from the application's WebSocket until either ends."""
    gateway = call.gateway
    leg = WebsocketLeg(gateway, endpoint, new_id())
    try:
        await leg.connect(close_timeout_s=5)
    except (aiohttp.ClientError, OSError) as exc:
        call.error(f"connect: websocket {endpoint.uri} unreachable: {exc}")
        return await _failed(call, action, events, LegOutcome.FAILED)
    bridge_id = new_id()
    in_stasis = asyncio.Event()

    def on_media_event(event: dict[str, Any]) -> None:
        if event.get("type") == "StasisStart":
            in_stasis.set()

    gateway.route(f"channel:{leg.channel_id}", on_media_event)
    answered = datetime.now(UTC)
    try:
        # Like a created channel, the media channel joins our application a moment after
        # the request returns; adding it to a bridge before that gets 422.
        await leg.start_media(in_stasis.wait(), before_media=call.ensure_answered)
        events.send("answered")
        await gateway.create_bridge(bridge_id, "mixing", f"websocket-{call.uuid}")
        await gateway.add_to_bridge(bridge_id, call.channel_id)
        await gateway.add_to_bridge(bridge_id, leg.channel_id)
        pump = asyncio.ensure_future(leg.relay())
        ended = asyncio.ensure_future(call.gone.wait())
        try:
            await asyncio.wait([pump, ended], timeout=action.limit,
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            pump.cancel()
            ended.cancel()
    except TimeoutError:
        call.error("connect: Asterisk's media channel for the websocket did not start")
    finally:
        await asyncio.shield(_close_websocket(call, leg, bridge_id))
        gateway.unroute(f"channel:{leg.channel_id}")
        by = "platform" if call.gone.is_set() else "user"
        events.send("completed",
                    **ev.completed_extra(answered, answered, datetime.now(UTC), by))
    return None


async def _close_websocket(call: CallContext, leg: WebsocketLeg, bridge_id: str) -> None:
    await leg.close()
    if not call.gone.is_set():
        await call.gateway.remove_from_bridge(bridge_id, call.channel_id)
    with contextlib.suppress(AriError):
        await call.gateway.destroy_bridge(bridge_id)


async def _on_answer(call: CallContext, leg: Leg, url: str, events: LegEvents) -> None:
    """The callee hears the onAnswer NCCO (talk, stream, wait) before being joined."""
    params = {"uuid": leg.uuid, "conversation_uuid": call.conversation_uuid,
              "to": leg.target.to, "from": events.from_}
    result = await call.services.webhooks.send_with_fallback(
        WebhookRequest(url=url, method="GET", data=params), None, reply_ncco,
        call.services.timeouts(call.app, event=False), call.services.signer(call.app))
    if result.value is None:
        call.error(f"connect: onAnswer {url} failed: {result.error}; joining without it")
        return
    for index, step in enumerate(result.value):
        if leg.ended.is_set():
            return
        if isinstance(step, Wait):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(leg.ended.wait(), step.timeout)
            continue
        try:
            if isinstance(step, Talk):
                voice = resolve_voice(step.voice_name, step.language, step.style)
                item = await call.media.tts(step.text, voice, step.level)
            elif isinstance(step, Stream):
                item = await call.media.fetch(step.stream_url[0], step.level)
            else:
                call.error(f"connect: onAnswer [{index}].action {step.action!r} cannot run on "
                           "the callee before it is joined; skipped")
                continue
        except (MediaError, ValueError) as exc:
            call.error(f"connect: onAnswer [{index}]: {exc}")
            continue
        uri = call.services.media_uri(item.media_id)
        loops = max(getattr(step, "loop", 1), 1)
        await _play_to_leg(call, leg, [uri] * loops, item.duration_s * loops)


async def _play_to_leg(call: CallContext, leg: Leg, media: list[str], duration_s: float) -> None:
    playback_id = new_id()
    finished = leg.waits.expect(playback_finished(playback_id))  # subscribe before asking
    try:
        await call.gateway.play(leg.channel_id, media, playback_id)
        # Resolves at the end of the playback, or HANGUP when the leg ends first.
        await finished.wait(duration_s + 15)
    except AriError as exc:
        call.error(f"connect: onAnswer playback failed: {exc}")
    finally:
        leg.waits.cancel(finished)
