"""One call leg's life: explicit states, the action list it owns, and everything actions use.

A session is driven by one task (``run``). ARI events reach it through ``on_event``, a
synchronous callback called by the gateway's reader: it only records facts (a digit, a hangup)
and resolves the futures that actions subscribed to *before* asking Asterisk to act.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import time
from collections.abc import Callable, Coroutine, Mapping
from datetime import UTC, datetime
from typing import Any

import structlog

from bridge import metrics
from bridge.ari.errors import AriError, ChannelGone
from bridge.ari.waits import Event, EventWaits, Predicate, Waiter
from bridge.calls.answers import ask_for_ncco, fetch_answer_ncco
from bridge.calls.outbound import OutboundCall, dial_out
from bridge.calls.store import CallRecord, CallStorage
from bridge.config import ApplicationConfig
from bridge.dial.dialer import Leg
from bridge.ids import name_uuid
from bridge.ncco.actions._playback import stop_leftover_playbacks
from bridge.ncco.context import CallServices, Runner
from bridge.ncco.dtmf import DtmfBuffer
from bridge.ncco.models import Action, dump_ncco
from bridge.timeline import RECORDER
from bridge.webhooks import payloads as ev

log = structlog.get_logger(__name__)


class CallState(enum.Enum):
    RINGING = "ringing"  # in Stasis, not answered; the answer webhook is being asked
    RUNNING = "running"  # executing the NCCO
    ENDING = "ending"  # no action left, or an error: hanging up
    ENDED = "ended"  # the channel is gone and ``completed`` was sent


class CallSession:
    """A call leg in Stasis; implements :class:`bridge.ncco.context.CallContext`.

    Built by the call engine, which passes in what the session needs: the shared services,
    the call store, the runner of each action, and ``on_ended`` (called once the call has
    ended and its ``completed`` event is written; ``in_store``: its live row is still there).
    """

    def __init__(
        self,
        services: CallServices,
        store: CallStorage,
        record: CallRecord,
        app: ApplicationConfig,
        runners: Mapping[str, Runner],
        on_ended: Callable[[CallSession, bool], None],
        actions: list[Action] | None = None,
        resumed: bool = False,
        outbound: OutboundCall | None = None,
    ) -> None:
        self.services = services
        self.store = store
        self.record = record
        self.uuid = record.uuid
        self.conversation_uuid = record.conversation_uuid
        self.channel_id = record.channel_id
        # With a REST-created call's own URLs, kept in the store across restarts.
        self.app = app
        self.outbound = outbound
        self.created = time.monotonic()
        self.gateway = services.gateway
        self.media = services.media
        self._runners = runners
        self._on_ended = on_ended
        self.state = CallState.RUNNING if resumed else CallState.RINGING
        self.actions: list[Action] = list(actions or [])
        self.position = record.position
        self.replacements = record.replacements
        self.started = ev.parse_timestamp(record.started_at) or datetime.now(UTC)
        self.answered: datetime | None = ev.parse_timestamp(record.answered_at)
        self.dtmf = DtmfBuffer()
        self.gone = asyncio.Event()
        self.hangup_cause: str | None = None
        self.disconnected_by = "platform"
        self.final_status = "completed"  # or the failure an outbound call ended with
        self._hanging_up = False
        self.ringing_leg: Leg | None = None  # an outbound call's leg while it is dialled
        self._waits = EventWaits()
        self._current: asyncio.Task[list[Action] | None] | None = None
        self._pending_ncco: list[Action] | None = None
        self._background: set[asyncio.Task[Any]] = set()
        self._resumed = resumed
        self._saved: tuple[int, int, int] | None = None
        self.log = log.bind(call_uuid=self.uuid, channel_id=self.channel_id)

    # ------------------------------------------------------------------ events in
    def on_event(self, event: Event) -> None:
        """Called by the ARI reader. Must not block."""
        kind = event.get("type")
        if kind == "ChannelDtmfReceived":
            self.dtmf.push(str(event.get("digit", "")))
        elif kind in ("ChannelHangupRequest", "StasisEnd", "ChannelDestroyed"):
            self._mark_gone(event)
        self._waits.dispatch(event)

    def _mark_gone(self, event: Event) -> None:
        if self.gone.is_set():
            return
        if self.state is not CallState.ENDING and not self._hanging_up:  # the far end did it
            self.disconnected_by = "user"
        cause = event.get("cause_txt") or event.get("cause")
        self.hangup_cause = str(cause) if cause is not None else None
        self.log.debug("call.gone", ari_event=event.get("type"), cause=self.hangup_cause)
        self.gone.set()
        self._waits.end(event)
        if self._current is not None and not self._current.done():
            self._current.cancel()

    def expect(self, predicate: Predicate) -> Waiter:
        """Subscribe to an event before triggering it. Resolves HANGUP if the call ends."""
        if self.gone.is_set():
            # Also a call that ended without a hangup event (an outbound call never answered).
            self._waits.end(None)
        return self._waits.expect(predicate)

    def stop_waiting(self, waiter: Waiter) -> None:
        self._waits.cancel(waiter)

    # ------------------------------------------------------------- what actions use
    @property
    def direction(self) -> str:
        return self.record.direction

    @property
    def from_number(self) -> str:
        return self.record.from_number

    @property
    def to_number(self) -> str:
        return self.record.to_number

    def post_event(self, url: str, method: str, payload: dict[str, Any],
                   ends_call: bool = False) -> bool:
        """Write an event of this call to the durable outbox: delivered in order after the
        call's earlier events, retried through outages and restarts; never blocks.

        ``ends_call``: the call's live row is deleted in the same transaction. Returns
        True once the event is written."""
        return self.services.events.post(self.uuid, self.app, url, method, payload,
                                       ends_call=ends_call)

    def status(self, status: str, ends_call: bool = False, **extra: Any) -> bool:
        """Send a status event to the application's event_url (in order, never blocking).

        Returns True when it was written (False also when there is no event_url)."""
        if self.app.event_url is None:
            return False
        payload = ev.status_event(
            uuid=self.uuid, conversation_uuid=self.conversation_uuid, status=status,
            direction=self.direction, from_=self.record.from_number,
            to=self.record.to_number, **extra,
        )
        return self.post_event(self.app.event_url, self.app.event_method, payload, ends_call)

    def error(self, reason: str) -> None:
        """Tell the application what went wrong, naming the cause (and field)."""
        self.log.warning("call.error", reason=reason)
        if RECORDER.on:
            RECORDER.note(self.uuid, "error", reason)
        if self.app.event_url is None:
            return
        payload = ev.error_event(
            uuid=self.uuid, conversation_uuid=self.conversation_uuid, reason=reason
        )
        self.post_event(self.app.event_url, self.app.event_method, payload)

    def action_playback_ids(self) -> tuple[str, str]:
        """The playback ids of the NCCO action now running (a looping prompt alternates
        between the two). Derived from the call and the action's place in its NCCO, not
        random: a bridge that resumes the call after a restart knows them, and stops what its
        predecessor left playing (a talk with ``loop: 0`` queues a long chunk)."""
        place = f"playback:{self.replacements}:{self.position}"
        return name_uuid(self.uuid, place + ":0"), name_uuid(self.uuid, place + ":1")

    async def ensure_answered(self) -> None:
        """Answer the channel once, the first time an action needs media."""
        if self.answered is not None:
            return
        await self.gateway.answer(self.channel_id)
        self.mark_answered()

    def mark_answered(self) -> None:
        """The call is answered now: kept in the store, ``answered`` sent."""
        self.answered = datetime.now(UTC)
        self.store.mark_answered(self.uuid, ev.timestamp(self.answered))
        self.status("answered")

    async def hang_up(self) -> None:
        """End the call from our side (a REST hangup): ``disconnected_by`` is the platform.
        An outbound call still ringing is ``cancelled``, Vonage's status for a call its
        originator stopped before it was answered."""
        self._hanging_up = True
        if self.ringing_leg is not None:
            self.ringing_leg.cancel()
        await self.gateway.hangup(self.channel_id)

    def run_beside(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        """Run an asynchronous action part (barge-in prompt, recording) beside the NCCO.

        It is cancelled when the call ends."""
        task = asyncio.create_task(coro, name=f"{name}:{self.uuid}")
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    async def ask_for_ncco(
        self, url: str, method: str, payload: dict[str, Any]
    ) -> list[Action] | None:
        """Send an event whose reply may carry an NCCO (notify, input, synchronous connect)."""
        return await ask_for_ncco(self, url, method, payload)

    # ------------------------------------------------------------------ main task
    async def run(self) -> None:
        structlog.contextvars.bind_contextvars(call_uuid=self.uuid)
        if RECORDER.on:
            RECORDER.call_started(self.uuid, self.channel_id, self.record.from_number,
                                  self.record.to_number, self.app.id, self.direction)
        try:
            if self.outbound is not None and not self._resumed:
                self._begin(await dial_out(self, self.outbound))
            elif not self._resumed:
                self.status("started")
                self.status("ringing")
                self._begin(await self._first_ncco())
            if self.state is CallState.RUNNING:
                if self._resumed:
                    await stop_leftover_playbacks(self)
                await self._run_actions()
                self._transition(CallState.ENDING, "hangup" if self.gone.is_set() else "ncco_done")
                await self.gateway.hangup(self.channel_id)
            else:
                # No usable NCCO: congestion makes Asterisk answer the INVITE with 503, so a
                # trunk can route the call elsewhere, as when the bridge is not connected.
                self._transition(CallState.ENDING, "no_ncco")
                await self.gateway.hangup(self.channel_id, "congestion")
        except ChannelGone:
            self._transition(CallState.ENDING, "channel_gone")
        except AriError as exc:
            self.error(f"Asterisk refused a request: {exc}")
            self._transition(CallState.ENDING, "ari_error")
            with contextlib.suppress(AriError):
                await self.gateway.hangup(self.channel_id, "normal")
        except asyncio.CancelledError:
            # The bridge is shutting down: leave the call to a restarted bridge, which finds
            # it in Stasis and in the store and resumes it. No completed event here.
            await self._stop_background()
            raise
        except Exception as exc:
            self.log.exception("call.crashed")
            self.error(f"internal error: {type(exc).__name__}")
            with contextlib.suppress(AriError):
                await self.gateway.hangup(self.channel_id, "normal")
        await self._finish()

    async def _first_ncco(self) -> list[Action] | None:
        """The actions an inbound call starts with, while the caller is sent 180 Ringing.

        Actions given at creation (an Exotel Connect applet, which asks its own URL) run at
        once, and the caller rings at once. Otherwise the caller rings only if answer_url
        has not replied within the application's ``ring_after_ms``. A call whose application
        replies sooner is answered without a 180: one ARI request fewer, and nothing a caller
        can hear. A failure that fast reaches the carrier as a bare 503, which carriers fail
        over on more readily than a 503 after a 180.
        """
        ringing: list[asyncio.Task[None]] = []

        def ring() -> None:
            ringing.append(asyncio.create_task(self.gateway.ring(self.channel_id)))

        delay_s = self.app.ring_after_ms / 1000
        timer: asyncio.TimerHandle | None = None
        if self.actions or delay_s <= 0:
            ring()
        else:
            timer = asyncio.get_running_loop().call_later(delay_s, ring)
        try:
            actions = list(self.actions) if self.actions else await fetch_answer_ncco(self)
        finally:
            if timer is not None:
                timer.cancel()
        # The ring request goes before the answer on the same connection: wait for it.
        for task in ringing:
            with contextlib.suppress(ChannelGone):
                await task
        return actions

    def _begin(self, actions: list[Action] | None) -> None:
        """Take the first NCCO; without one the call stays out of RUNNING and is ended."""
        if actions is not None:
            self.actions = actions
            self.position = 0
            self._save_progress()
            self._transition(CallState.RUNNING, "ncco")

    async def _run_actions(self) -> None:
        while self.position < len(self.actions) and not self.gone.is_set():
            action = self.actions[self.position]
            self._save_progress()
            replacement = await self._run_one(action)
            if self._pending_ncco is not None:
                replacement, self._pending_ncco = self._pending_ncco, None
            if replacement is not None:
                if not self._accept_replacement(replacement):
                    return
                continue
            self.position += 1

    async def _run_one(self, action: Action) -> list[Action] | None:
        runner = self._runners[action.action]
        if action.NEEDS_MEDIA:
            await self.ensure_answered()
        self.log.debug("action.start", action=action.action, position=self.position)
        if RECORDER.on:
            RECORDER.action_started(self.uuid, action.action, self.position, action)
        metrics.child(metrics.NCCO_ACTIONS, action.action).inc()
        self._current = asyncio.create_task(runner(self, action), name=f"{action.action}")
        try:
            result = await self._current
        except asyncio.CancelledError:
            current_task = asyncio.current_task()
            if current_task is not None and current_task.cancelling():
                raise  # the session itself is being cancelled (shutdown)
            result = None  # the action was cancelled: hangup or a replacement NCCO
        finally:
            self._current = None
        self.log.debug("action.end", action=action.action, position=self.position,
                      replaced=result is not None or self._pending_ncco is not None)
        if RECORDER.on:
            RECORDER.action_ended(self.uuid, action.action, self.position, self.gone.is_set(),
                                  replaced=result is not None or self._pending_ncco is not None)
        return result

    def _accept_replacement(self, actions: list[Action]) -> bool:
        self.replacements += 1
        if self.replacements > self.app.max_ncco_replacements:
            self.error(
                f"more than {self.app.max_ncco_replacements} NCCOs received for this call; "
                "ending it (max_ncco_replacements)"
            )
            return False
        self.actions = actions
        self.position = 0
        return True

    def transfer(self, actions: list[Action]) -> None:
        """Replace the NCCO from outside (REST transfer): cancel the running action."""
        self._pending_ncco = actions
        if self._current is not None and not self._current.done():
            self._current.cancel()

    def _save_progress(self) -> None:
        """Persist the NCCO and position, when they changed (one small write per action)."""
        key = (id(self.actions), self.position, self.replacements)
        if key == self._saved:
            return
        self._saved = key
        self.store.update_progress(
            self.uuid, dump_ncco(self.actions), self.position, self.replacements
        )

    async def _stop_background(self) -> None:
        for task in list(self._background):
            task.cancel()
        for task in list(self._background):
            with contextlib.suppress(BaseException):
                await task

    async def _finish(self) -> None:
        await self._stop_background()
        if not self.gone.is_set():
            # We hung up; wait (bounded) for Asterisk to confirm so the duration is right.
            # A wait for no event resolves when the channel is gone: one future and a timer,
            # where wait_for(gone.wait()) would start a task as well.
            confirmed = self._waits.expect(_no_event)
            try:
                await confirmed.wait(5)
            finally:
                self._waits.cancel(confirmed)
        ended = datetime.now(UTC)
        self.log.info("call.ended", direction=self.direction, to=self.record.to_number,
                      answered=self.answered is not None, disconnected_by=self.disconnected_by,
                      actions_run=self.position, replacements=self.replacements)
        # Every call ends with completed, also an outbound call that was never answered
        # (after its busy, timeout, cancelled, ... status; its duration is 0): Vonage's
        # call flow, "always received at the end of a call". The metric counts the final
        # status of an outbound call that never reached anyone.
        reached = self.outbound is None or self.answered is not None
        metrics.child(metrics.CALLS_ENDED, "completed" if reached else self.final_status).inc()
        send_completed = self.app.event_url is not None
        if send_completed:
            # The event and the deletion of the live row are one transaction: after a crash
            # the call is neither resumed nor left without its completed.
            self.status(
                "completed", ends_call=True,
                **ev.completed_extra(self.started, self.answered, ended, self.disconnected_by),
            )
        self._transition(CallState.ENDED, "completed")
        # Nothing to wait for: the outbox delivers the events, also after a restart. If the
        # completed event could not be written, the live row is kept and a reconcile sends it.
        self._on_ended(self, not send_completed)

    def _transition(self, new: CallState, event: str) -> None:
        if new is self.state:
            return
        self.log.debug(f"{self.state.value} -[{event}]-> {new.value}")
        self.state = new
        if RECORDER.on:
            RECORDER.call_state(self.uuid, new.value, event, self.final_status, self.hangup_cause)


def _no_event(_: Event) -> bool:
    return False


__all__ = ["CallSession", "CallState"]
