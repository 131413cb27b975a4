"""The call engine: creates a session for every call, owns the registry, and reconciles.

Registry: call uuid -> session and channel id -> session. There is no global lock: each
session is driven by its own task, and the registry is only touched from the event loop.

Reconciliation runs after every ARI (re)connect. Channels still in our Stasis application that
no live session owns are either resumed from the call store (a restarted bridge) or hung up
(nothing known about them), so none is leaked; calls in the store whose channel is gone get
their ``completed`` event, so none is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid as uuidlib
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import structlog

from bridge import metrics
from bridge.agents import open_agent_store
from bridge.agents.devices import DeviceProvisioner
from bridge.agents.tracking import track_call
from bridge.ari.errors import AriError, ChannelGone
from bridge.ari.gateway import AriGateway, Event, new_id
from bridge.calls.history import CallHistory
from bridge.calls.outbound import Draining, OutboundCall
from bridge.calls.session import CallSession
from bridge.calls.store import CallRecord, CallStore
from bridge.config import ApplicationConfig, Config
from bridge.dial.dialer import Dialer
from bridge.exotel import applet as exotel_applet
from bridge.media import MediaStore
from bridge.media.files import FileStore
from bridge.media.recordings import RecordingService
from bridge.ncco import actions as action_modules
from bridge.ncco.actions.conversation.rooms import RoomRegistry
from bridge.ncco.context import CallServices, Runner
from bridge.ncco.models import Action, NccoError
from bridge.webhooks import EventOutbox, WebhookClient
from bridge.webhooks import payloads as ev

log = structlog.get_logger(__name__)

#: Where the dialplan (asterisk-config/extensions.conf, [ari-bridge-inbound]) rejects a call
#: when the bridge cannot take it: it logs and hangs up with cause 34, which PJSIP answers
#: as SIP 503, so a carrier fails over to another Asterisk.
UNAVAILABLE_LABEL = "unavailable"


class CallEngine:
    def __init__(
        self,
        config: Config,
        gateway: AriGateway,
        webhooks: WebhookClient,
        media: MediaStore,
        store: CallStore,
        public_url: Callable[[], str],
    ) -> None:
        self.config = config
        self.gateway = gateway
        self.webhooks = webhooks
        self.store = store
        self.sessions: dict[str, CallSession] = {}
        self.by_channel: dict[str, CallSession] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.calls_started = 0
        self.calls_rejected = 0
        #: Set on SIGTERM: new calls are turned away, live ones keep running until exit.
        self.draining = False
        self.history = CallHistory()  # ended calls, for GET /v1/calls
        self.recordings = RecordingService(  # record, conversation record
            gateway, FileStore(config.recordings.path),
            retention_hours=config.recordings.retention_hours)
        # Exotel Connect: agent busy leases and sticky agents (SQLite or Redis).
        self.agents = open_agent_store(config.agents.backend, config.agents_path(),
                                       config.agents.redis_url, config.agents.redis_prefix)
        # Agents' SIP devices (agents.devices), created in Asterisk after every connect.
        self.devices = DeviceProvisioner(gateway, config.agents.devices)
        # Every status event of every call: durable (in the call store), ordered per call,
        # retried through outages and restarts. Started and stopped with the service.
        self.events = EventOutbox(
            store, webhooks, config.application,
            retention_s=config.events.retention_s, retry_base_s=config.events.retry_base_s,
            retry_cap_s=config.events.retry_cap_s, max_in_flight=config.events.max_in_flight,
        )
        #: What calls share; sessions and their actions see only this, not the engine.
        self.services = CallServices(
            gateway=gateway, media=media, dialer=Dialer(gateway, config), webhooks=webhooks,
            events=self.events, recordings=self.recordings, agents=self.agents,
            config=config, public_url=public_url, check_runnable=self.check_runnable,
        )
        self.rooms = RoomRegistry(self.services)  # named conversation rooms
        #: Action name -> runner: the NCCO actions, and an applet number's Exotel Connect.
        self.runners: dict[str, Runner] = {
            **action_modules.runners(self.rooms),
            exotel_applet.ACTION: exotel_applet.run,
        }

    # ------------------------------------------------------------------ helpers
    def application(self, app_id: str) -> ApplicationConfig:
        app = self.config.application(app_id)
        if app is None:
            raise KeyError(f"unknown application {app_id!r}")
        return app

    def application_of(self, record: CallRecord) -> ApplicationConfig:
        """The application a call runs, with the call's own URLs (a REST-created call's
        answer_url and event_url) in place of the application's."""
        app = self.application(record.application_id)
        overrides = record.url_overrides()
        return app.model_copy(update=overrides) if overrides else app

    def check_runnable(self, actions: list[Action]) -> None:
        """Checks beyond the schema that need this bridge (voices, supported actions)."""
        action_modules.check(actions)

    def parse(self, data: Any) -> list[Action]:
        """An NCCO this bridge can run (raises NccoError)."""
        return self.services.parse(data)

    def new_session(self, record: CallRecord, actions: list[Action] | None = None,
                 resumed: bool = False, outbound: OutboundCall | None = None,
                 app: ApplicationConfig | None = None) -> CallSession:
        """A session for ``record``, wired to this engine's services and runners (not yet
        started)."""
        return CallSession(self.services, self.store, record, app or self.application_of(record),
                           self.runners, self._session_ended, actions, resumed, outbound)

    # ---------------------------------------------------------------- new calls
    def on_stasis_start(self, event: Event) -> None:
        """A channel entered our application and nobody owns it: a new inbound call."""
        channel = event.get("channel") or {}
        channel_id = str(channel.get("id", ""))
        args = [str(a) for a in event.get("args", [])]
        if not channel_id or channel_id in self.by_channel:
            return
        if not args or args[0] != "inbound":
            log.warning("call.unexpected_channel", channel_id=channel_id, args=args)
            self._run_task(self.gateway.hangup(channel_id))
            return
        if self.draining:
            self.calls_rejected += 1
            self._run_task(self._reject_while_draining(channel))
            return
        to = args[1] if len(args) > 1 else str(channel.get("dialplan", {}).get("exten", ""))
        caller = args[2] if len(args) > 2 else str(channel.get("caller", {}).get("number", ""))
        applet = self.config.applet_for_number(to)
        app = (self.config.application(applet.application) if applet is not None
               else self.config.application_for_number(to))
        if app is None:
            self.calls_rejected += 1
            log.warning("call.no_application", to=to, channel_id=channel_id)
            # 'unallocated' makes Asterisk answer the INVITE with 404: no such number here.
            self._run_task(self.gateway.hangup(channel_id, "unallocated"))
            return
        record = CallRecord(
            uuid=str(uuidlib.uuid4()),
            conversation_uuid="CON-" + str(uuidlib.uuid4()),
            channel_id=channel_id,
            application_id=app.id,
            direction="inbound",
            from_number=caller,
            to_number=to,
            started_at=ev.timestamp(),
            answered_at=None,
            ncco=[],
            position=0,
        )
        self.store.save(record)
        # An applet number runs its Connect applet instead of fetching answer_url.
        first: list[Any] | None = ([exotel_applet.ExotelConnect(number=to)]
                                   if applet is not None else None)
        self._start(self.new_session(record, first))

    async def _reject_while_draining(self, channel: dict[str, Any]) -> None:
        """Send a new inbound call back to the dialplan's fallback (SIP 503), as if no
        bridge were connected: the carrier retries elsewhere, no event is sent."""
        channel_id = str(channel.get("id", ""))
        dialplan = channel.get("dialplan") or {}
        context = str(dialplan.get("context") or "ari-bridge-inbound")
        extension = str(dialplan.get("exten") or "s")
        log.info("call.rejected_draining", channel_id=channel_id, to=extension)
        try:
            await self.gateway.continue_in_dialplan(channel_id, context, extension,
                                                    label=UNAVAILABLE_LABEL)
        except ChannelGone:
            return
        except AriError as exc:
            # A dialplan without the label: congestion (cause 34) is the same SIP 503.
            log.warning("call.reject_fallback_missing", channel_id=channel_id,
                        context=context, error=exc.details)
            await self.gateway.hangup(channel_id, "congestion")

    async def place_call(self, request: OutboundCall) -> CallSession:
        """Start an outbound call; returns at once (the session rings, then runs the NCCO).

        Raises :class:`Draining` once the bridge is shutting down."""
        if self.draining:
            raise Draining("the bridge is shutting down and takes no new calls")
        app = self.application(request.application_id)  # KeyError for an unknown one
        record = CallRecord(
            uuid=str(uuidlib.uuid4()),
            conversation_uuid="CON-" + str(uuidlib.uuid4()),
            channel_id=new_id(),
            application_id=app.id,
            direction="outbound",
            from_number=request.from_number,
            to_number=request.to_address,
            started_at=ev.timestamp(),
            answered_at=None,
            ncco=[],
            position=0,
            # Kept with the call, so that a restarted bridge still uses them (not the app's).
            answer_url=request.answer_url or None,
            answer_method=request.answer_method.upper() if request.answer_url else None,
            event_url=request.event_url or None,
            event_method=request.event_method.upper() if request.event_url else None,
        )
        self.store.save(record)
        self._start(self.new_session(record, outbound=request))
        return self.sessions[record.uuid]

    def _start(self, session: CallSession) -> None:
        self.calls_started += 1
        metrics.CALLS_ACTIVE.inc()
        self.sessions[session.uuid] = session
        self.by_channel[session.channel_id] = session
        self.gateway.route(f"channel:{session.channel_id}", session.on_event)
        self._run_task(session.run())
        if self.config.agents.track_all_calls:
            # The remote party is busy for Connect applets while this call lasts.
            party = (session.record.from_number if session.direction == "inbound"
                     else session.record.to_number)
            self._run_task(track_call(self.agents, party, f"call:{session.uuid}",
                                   self.config.agents.lease_s, session.gone))

    def _session_ended(self, session: CallSession, in_store: bool = True) -> None:
        """Called by a session once it has ended: out of the registry, into the history.
        ``in_store``: its live row is still there (no ``completed`` event removed it) and is
        deleted now."""
        if self.sessions.pop(session.uuid, None) is not None:
            metrics.CALLS_ACTIVE.dec()
        self.by_channel.pop(session.channel_id, None)
        self.history.record_ended(session)
        self.gateway.unroute(f"channel:{session.channel_id}")
        if in_store:
            self.store.delete(session.uuid)

    def _run_task(self, coro: Any) -> None:
        """Run engine work (a rejection, a hangup, busy tracking) until shutdown."""
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------ reconciliation
    async def reconcile(self) -> None:
        """After a (re)connect: resume or end what is in Stasis, complete what is gone."""
        # Only sessions older than the snapshot can be judged by it: a call that starts while
        # the request is in flight is not in the list yet, and is not gone.
        snapshot_at = time.monotonic()
        try:
            in_stasis = set(await self.gateway.app_channel_ids())
        except AriError as exc:
            log.warning("reconcile.failed", error=str(exc))
            return
        # Live sessions whose channel vanished while the websocket was down.
        for session in list(self.sessions.values()):
            dialling = session.outbound is not None and session.answered is None
            if (session.created < snapshot_at and not dialling
                    and session.channel_id not in in_stasis):
                session.on_event({"type": "ChannelDestroyed", "cause_txt": "gone while away"})
        records = {r.channel_id: r for r in self.store.all()}
        resumed = ended = cleaned = 0
        for channel_id in in_stasis - set(self.by_channel):
            record = records.pop(channel_id, None)
            if record is None:
                cleaned += 1
                await self.gateway.hangup(channel_id)
                continue
            if self._resume(record):
                resumed += 1
            else:
                ended += 1
        # Calls we knew about whose channel ended while no bridge was watching.
        for channel_id, record in records.items():
            if channel_id in self.by_channel:
                continue
            self._complete_orphan(record)
            ended += 1
        log.info("reconcile.done", in_stasis=len(in_stasis), resumed=resumed,
                 ended=ended, cleaned=cleaned, live=len(self.sessions))

    def _resume(self, record: CallRecord) -> bool:
        try:
            app = self.application_of(record)
            actions = self.parse(record.ncco)
        except (KeyError, NccoError) as exc:
            log.warning("reconcile.cannot_resume", call_uuid=record.uuid, error=str(exc))
            self._complete_orphan(record)
            self._run_task(self.gateway.hangup(record.channel_id))
            return False
        log.info("reconcile.resume", call_uuid=record.uuid, position=record.position)
        self._start(self.new_session(record, actions, resumed=True, app=app))
        return True

    def _complete_orphan(self, record: CallRecord) -> None:
        """Send ``completed`` for a call that ended while no bridge was running."""
        metrics.CALLS_ENDED.labels(status="completed").inc()
        try:
            app: ApplicationConfig | None = self.application_of(record)
        except KeyError:
            app = None
        if app is None or app.event_url is None:
            self.store.delete(record.uuid)
            return
        payload = ev.completed_event(
            uuid=record.uuid, conversation_uuid=record.conversation_uuid,
            direction=record.direction, from_=record.from_number, to=record.to_number,
            started=ev.parse_timestamp(record.started_at),
            answered=ev.parse_timestamp(record.answered_at),
            ended=datetime.now(UTC), disconnected_by="platform",
        )
        # Written with the deletion of the live row, in one transaction.
        self.events.post(record.uuid, app, app.event_url, app.event_method, payload,
                         ends_call=True)

    # ------------------------------------------------------------------ shutdown
    def start_draining(self) -> None:
        """Take no new calls (inbound ones get SIP 503, REST ones an error); live calls go
        on until the process exits and stay in Asterisk for the next bridge."""
        if not self.draining:
            self.draining = True
            log.info("drain.started", live_calls=len(self.sessions))

    async def flush_events(self, timeout_s: float) -> int:
        """Deliver the events written so far, waiting at most ``timeout_s`` seconds; returns
        how many are still undelivered. They are not lost: they stay in the outbox on disk
        and the next bridge on this store delivers them."""
        started = time.monotonic()
        backlog = self.events.backlog()
        left = await self.events.flush(timeout_s)
        log.info("drain.events_flushed", pending=backlog, left_for_next_start=left,
                 seconds=round(time.monotonic() - started, 3))
        return left

    async def shutdown(self) -> None:
        """Stop driving calls without hanging them up: a restarted bridge resumes them."""
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
        # Those calls are no longer driven by this process.
        metrics.CALLS_ACTIVE.dec(len(self.sessions))
        self.sessions.clear()
        self.by_channel.clear()
        await self.agents.close()
