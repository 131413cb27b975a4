"""The Connect applet, run inside the caller's CallContext as an internal action.

1. Ask the Primary URL (GET, Exotel's query parameters); on the dialect's failure rules ask the
   Fallback URL; if both fail, "nobody was dialled".
2. Dial the destinations in order through the one Dialer: one per attempt (sequential), or up
   to ``max_parallel_attempts`` together (first answer wins, the others are cancelled at once).
   Agents under state management are leased atomically in the agent store and skipped while
   busy (each skip is logged and reported to the application's event_url with its reason).
3. With ``fetch_after_attempt`` the URL is asked again after every unanswered attempt, with
   ``DialCallStatus``; two answers in a row with the same set of destinations end the dialling.
   In the Dial whom dialect each unique number is attempted once.
4. The first agent who answers hears ``start_call_playback``, then is bridged to the caller
   for at most ``max_conversation_duration``.
5. The applet returns the NCCO of its transition: after the conversation, nobody answered, or
   nobody was dialled (which falls back to nobody answered when unset), or hangs up.
"""

from __future__ import annotations

import asyncio
import time
import uuid as uuidlib
from datetime import UTC, datetime
from typing import TYPE_CHECKING, ClassVar, Literal

import structlog
from pydantic import BaseModel

from bridge import metrics
from bridge.agents.leases import HeldAgents
from bridge.agents.store import agent_key
from bridge.ari.gateway import new_id
from bridge.config import ConnectAppletConfig
from bridge.dial.dialer import DialTarget, Leg
from bridge.dial.join import join_until_one_leaves, tear_down_join
from bridge.dial.outcome import LegOutcome
from bridge.exotel.candidates import INVALID_FORMAT, Candidate, find_candidate, skip_label
from bridge.exotel.fetch import fetch_params
from bridge.exotel.hold import HoldMusic
from bridge.exotel.params import (
    AppletParams,
    request_params,
)
from bridge.exotel.playback import play_to_agent
from bridge.exotel.recording import ConversationRecording
from bridge.exotel.transitions import Outcome, transition_ncco
from bridge.ncco.models import Action
from bridge.timeline import RECORDER
from bridge.webhooks import payloads as ev

if TYPE_CHECKING:
    from bridge.ncco.context import CallContext

log = structlog.get_logger(__name__)

#: Upper bound on URL requests per call (fetch_after_attempt loops end well before).
MAX_FETCHES = 50
#: Upper bound on dial attempts per call.
MAX_ATTEMPTS = 200


#: The name of the internal action that runs an applet (never accepted in an NCCO).
ACTION = "exotel_connect"


class ExotelConnect(BaseModel):
    """Internal action: the applet configured for inbound ``number``. Never in an NCCO."""

    action: Literal["exotel_connect"] = "exotel_connect"
    number: str
    NEEDS_MEDIA: ClassVar[bool] = False


def dial_call_status(outcomes: list[LegOutcome]) -> str:
    """Exotel's DialCallStatus for one unanswered attempt (several legs when parallel)."""
    if LegOutcome.ANSWERED in outcomes:
        return "completed"
    if any(o in (LegOutcome.TIMEOUT, LegOutcome.UNANSWERED) for o in outcomes):
        return "no-answer"
    if any(o in (LegOutcome.BUSY, LegOutcome.REJECTED) for o in outcomes):
        return "busy"
    if outcomes and all(o is LegOutcome.CANCELLED for o in outcomes):
        return "canceled"
    return "failed"


async def run(call: CallContext, action: ExotelConnect) -> list[Action] | None:
    applet = call.services.config.applet_for_number(action.number)
    if applet is None:
        call.error(f"no Connect applet is configured for {action.number}")
        return None
    runner = AppletRun(call, applet)
    outcome = await runner.execute()
    return await runner.transition(outcome)


class AppletRun:
    def __init__(self, call: CallContext, applet: ConnectAppletConfig) -> None:
        self.call = call
        self.applet = applet
        self.services = call.services
        self.store = call.services.agents
        self.lease_s = call.services.config.agents.lease_s
        self.held = HeldAgents(self.store, f"applet:{call.uuid}", self.lease_s)
        self.call_sid = call.uuid.replace("-", "")
        self.caller = call.from_number
        self.called = call.to_number
        self.created = call.started
        self.digits: str | None = None
        self.fetches = 0
        self.attempts = 0
        self.dialled_any = False
        self.last_status: str | None = None
        self.last_dialled = ""
        self.dial_call_duration = 0
        self.call_type = "call-attempt"
        self.skips: list[tuple[str, str]] = []  # (contact, reason)
        self.recording: ConversationRecording | None = None
        self.log = call.log.bind(applet=call.to_number)
        self.hold = HoldMusic(call, self.log)

    # ------------------------------------------------------------------ the flow
    async def execute(self) -> Outcome:
        refresher = self.call.run_beside(self.held.refresh_forever(), "agent-leases")
        try:
            return await self._flow()
        finally:
            refresher.cancel()
            await asyncio.shield(self._cleanup())

    async def _cleanup(self) -> None:
        await self.hold.stop()
        await self.held.release_all()

    async def _flow(self) -> Outcome:
        # Keys the caller pressed before the applet (Exotel passes them once, quoted).
        if self.call.dtmf.digits:
            self.digits = "".join(self.call.dtmf.digits)
            self.call.dtmf.digits.clear()
        params = await self.fetch()
        if params is None:
            return "nobody_dialled"
        attempted: set[str] = set()
        refetch = (params.fetch_after_attempt if self.applet.dialect == "1.1"
                   else self.applet.fetch_after_attempt)
        while not self.call.gone.is_set():
            answered, tried = await self._dial_list(params, attempted, refetch)
            if answered:
                return "after_conversation"
            if not refetch or not tried or self.call.gone.is_set():
                break
            previous = params
            fetched = await self.fetch()
            if fetched is None:
                break
            params = fetched
            if self.applet.dialect == "1.1":
                if set(params.destinations) == set(previous.destinations):
                    self.log.info("connect.same_destinations_stop")
                    break
            else:
                fresh = {agent_key(n) for n in params.destinations} - attempted
                if not fresh:
                    self.log.info("connect.all_numbers_attempted")
                    break
        return "nobody_answered" if self.dialled_any else "nobody_dialled"

    async def _dial_list(self, params: AppletParams, attempted: set[str],
                         refetch: bool) -> tuple[bool, bool]:
        """Dial ``params``' destinations. Returns (answered, an attempt was made). With
        ``refetch`` it stops after the first attempt that really dialled someone."""
        contacts = list(dict.fromkeys(params.destinations))  # in order, each once
        if self.applet.dialect == "dial_whom":
            contacts = [c for c in contacts if agent_key(c) not in attempted]
        first: list[str] = []
        if params.sticky_agent:
            sticky = await self.store.sticky(agent_key(self.caller))
            match = next((c for c in contacts if agent_key(c) == sticky), None)
            if match is not None:
                self.log.info("connect.sticky_agent", agent=match)
                contacts.remove(match)
                first = [match]
        size = params.max_parallel_attempts if params.parallel else 1
        groups = ([first] if first else []) + [contacts[i:i + size]
                                               for i in range(0, len(contacts), size)]
        tried = False
        for group in groups:
            if self.call.gone.is_set() or self.attempts >= MAX_ATTEMPTS:
                break
            result = await self.attempt(group, params)
            attempted.update(agent_key(c) for c in group)
            if result == "answered":
                return True, True
            if result == "dialled":
                tried = True
                if refetch:
                    break
        return False, tried

    # ------------------------------------------------------------------- request
    def _params(self) -> dict[str, str]:
        status = "in-progress" if self.call.answered is not None else "ringing"
        params = request_params(
            call_sid=self.call_sid, caller=self.caller, called=self.called, status=status,
            created=self.created, now=datetime.now(UTC),
            dial_call_duration=self.dial_call_duration, call_type=self.call_type,
            dial_whom_number=self.last_dialled,
            dial_call_status=self.last_status if self.fetches > 0 else None,
            digits=self.digits if self.fetches == 0 else None,
            custom_field=None,
            recording_url=self.recording.url if self.recording is not None else None,
        )
        return params

    async def fetch(self) -> AppletParams | None:
        """Ask the Primary URL, then the Fallback URL; None when neither gave parameters."""
        if self.fetches >= MAX_FETCHES:
            return None
        data = self._params()
        self.fetches += 1
        params = await fetch_params(self.call, self.applet, data, self.log)
        if params is not None:
            self._skip_invalid(params)
        return params

    # -------------------------------------------------------------------- dialling
    def _skip_invalid(self, params: AppletParams) -> None:
        """Dial whom tokens that are no numbers: skipped (and reported) like any agent."""
        for token in params.invalid:
            self._skip(token, INVALID_FORMAT)

    def _skip(self, contact: str, reason: str) -> None:
        self.skips.append((contact, reason))
        self.log.info("connect.agent_skipped", agent=contact, reason=reason)
        metrics.AGENTS_SKIPPED.labels(reason=skip_label(reason)).inc()
        app = self.call.app
        if app.event_url is not None:
            self.call.post_event(app.event_url, app.event_method, {
                "uuid": self.call.uuid, "conversation_uuid": self.call.conversation_uuid,
                "status": "agent_skipped", "agent": contact, "reason": reason,
                "direction": "inbound", "from": self.caller, "to": self.called,
                "timestamp": ev.timestamp(),
            })

    def caller_id(self, params: AppletParams) -> str:
        """outgoing_phone_number when it is one of the operator's numbers, else the number
        the call came in on (Exotel's rule)."""
        number = params.outgoing_phone_number
        if params.invalid_outgoing_number is not None:
            # Checked first: the digits of "90876xxxxx" could look like a number of ours.
            self.log.info("connect.caller_id_invalid",
                          outgoing_phone_number=params.invalid_outgoing_number)
        elif number:
            config = self.services.config
            mine = {agent_key(n) for n in (*config.numbers, *config.connect_applets,
                                           *config.agents.caller_ids) if n != "*"}
            if agent_key(number) in mine:
                return number
            self.log.info("connect.caller_id_not_ours", outgoing_phone_number=number)
        return self.called

    async def attempt(self, group: list[str],
                      params: AppletParams) -> Literal["answered", "dialled", "nobody"]:
        candidates: list[Candidate] = []
        for contact in group:
            found = await find_candidate(contact, params, self.services, self.held)
            if isinstance(found, str):
                self._skip(contact, found)
            else:
                candidates.append(found)
        if not candidates or self.call.gone.is_set():
            for cand in candidates:
                await self.held.release(cand.key)
            return "nobody"
        self.attempts += 1
        self.dialled_any = True
        await self.call.ensure_answered()
        await self.hold.start(params)
        caller_id = self.caller_id(params)
        by_leg: dict[str, Candidate] = {}
        targets = []
        for cand in candidates:
            leg_uuid = str(uuidlib.uuid4())
            by_leg[leg_uuid] = cand
            # X-Exotel-CallSid lets the agent's phone or CRM match the leg to the call.
            targets.append(DialTarget(leg_uuid, cand.endpoint, cand.contact, caller_id,
                                      {"X-Exotel-CallSid": self.call_sid}))
            self._passthru(params, "dial", cand.contact)

        seen: dict[str, Leg] = {}

        def on_status(leg: Leg, status: str) -> None:
            seen[leg.uuid] = leg
            if status in ("ringing", "answered"):
                self._passthru(params, status, leg.target.to)

        ring_s = params.max_ringing_s or self.applet.ring_timeout_s
        started = time.monotonic()
        try:
            # No caller channel: Asterisk would copy the caller's identity over the caller ID
            # chosen above (outgoing_phone_number or the number the call came in on).
            winner, legs = await self.services.dialer.dial(targets, ring_s, on_status)
        except asyncio.CancelledError:
            # The caller hung up (or the call was transferred) while the agents rang: the
            # dialer has hung every leg up. Each agent's events still end with terminal, as
            # on every other path; their leases go with the applet's cleanup.
            for leg_uuid, cand in by_leg.items():
                self._passthru(params, "terminal", cand.contact)
                if leg_uuid in seen:
                    self.services.dialer.release(seen[leg_uuid])
            raise
        self.last_dialled = candidates[-1].contact if winner is None else winner.target.to
        for leg in legs:
            if leg is winner:
                continue
            self.services.dialer.release(leg)
            self._passthru(params, "terminal", leg.target.to)
            await self.held.release(by_leg[leg.uuid].key)
        if winner is None:
            self.last_status = dial_call_status([leg.outcome or LegOutcome.FAILED
                                                 for leg in legs])
            self.dial_call_duration = int(time.monotonic() - started)
            self.call_type = "incomplete"
            self.log.info("connect.attempt_failed", status=self.last_status,
                          agents=[c.contact for c in candidates])
            return "dialled"
        cand = by_leg[winner.uuid]
        try:
            await self._converse(winner, cand, params)
        finally:
            self._passthru(params, "terminal", cand.contact)
            self.dial_call_duration = int(time.monotonic() - started)
            await self.held.release(cand.key)
        self.last_status = "completed"
        self.call_type = "completed"
        return "answered"

    def _passthru(self, params: AppletParams, event_type: str, agent: str) -> None:
        if params.passthru_url is None:
            return
        now = datetime.now(UTC).astimezone()
        payload = {
            "event_details": {"event_type": event_type},
            "call_details": {
                "call_sid": self.call_sid,
                "direction": "incoming",
                "from": self.caller,
                "to": agent,
                "virtual_number": self.called,
                "created_time": self.created.astimezone().isoformat(timespec="seconds"),
                "current_time": now.isoformat(timespec="seconds"),
                "status": "free" if event_type == "terminal" else "busy",
            },
        }
        # Its own order (a CRM's URL, not held up by an event_url outage), unsigned and
        # without the application's fallback, as Exotel sends it.
        self.services.events.post(f"{self.call.uuid}/passthru", self.call.app,
                                params.passthru_url, "POST", payload, plain=True)

    # --------------------------------------------------------------- conversation
    async def _converse(self, leg: Leg, cand: Candidate, params: AppletParams) -> None:
        """Join caller and agent until one hangs up or max_conversation_duration."""
        gateway = self.call.gateway
        bridge_id = new_id()
        if params.sticky_agent:
            await self.store.set_sticky(agent_key(self.caller), cand.key,
                                        self.services.config.agents.sticky_ttl_s)
            if RECORDER.on:
                RECORDER.sticky(agent_key(self.caller), cand.key)
        try:
            if params.playback_type is not None:
                await play_to_agent(self.call, leg, params, self.log)
            await self.hold.stop()
            if leg.ended.is_set() or self.call.gone.is_set():
                return
            self.log.info("connect.bridged", agent=cand.contact)
            if params.record and self.recording is None:
                self.recording = ConversationRecording(self.call, params.record_channels)
                await self.recording.start()
            limit_reached = await join_until_one_leaves(
                gateway, bridge_id, f"exotel-{self.call.uuid}", self.call.channel_id,
                self.call.gone, leg, params.max_conversation_s)
            if limit_reached:
                self.log.info("connect.max_conversation_reached",
                              limit_s=params.max_conversation_s)
        finally:
            if self.recording is not None:
                await asyncio.shield(self.recording.end())
            await asyncio.shield(tear_down_join(
                self.call.gateway, bridge_id, self.call.channel_id, self.call.gone, leg))
            self.services.dialer.release(leg)

    # ----------------------------------------------------------------- transitions
    async def transition(self, outcome: Outcome) -> list[Action] | None:
        """The NCCO of the transition taken, or None (hang up)."""
        if not self.call.gone.is_set():
            self.log.info("connect.transition", outcome=outcome,
                          skipped=[f"{c}: {r}" for c, r in self.skips])
        return await transition_ncco(self.call, self.applet, outcome, self._params,
                                     self.recording)
