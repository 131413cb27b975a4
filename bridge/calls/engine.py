"""The call engine: creates a session for every call, owns the registry, and reconciles.

Registry: call uuid -> session and channel id -> session. There is no global lock: each
session is driven by its own task, and the registry is only touched from the event loop.

Links: the engine reaches Asterisk through one or more links (bridge/calls/links.py), one per
ARI connection: an Asterisk node and a Stasis application (a slot's, in a cluster). A call
lives on one link, and its record says which (``node``, ``slot``).

Reconciliation runs after every ARI (re)connect. Channels still in our Stasis application that
no live session owns are either resumed from the call store (a restarted bridge) or hung up
(nothing known about them), so none is leaked; calls in the store whose channel is gone get
their ``completed`` event, so none is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
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
from bridge.calls.links import AriLink
from bridge.calls.outbound import Draining, OutboundCall
from bridge.calls.session import CallSession
from bridge.calls.store import CallRecord, CallStorage
from bridge.config import ApplicationConfig, AriConfig, Config
from bridge.dial.dialer import Dialer
from bridge.exotel import applet as exotel_applet
from bridge.ids import random_uuid
from bridge.media import MediaStore
from bridge.media.asr import AsrProvider
from bridge.media.files import FileStore
from bridge.media.recordings import RecordingService
from bridge.ncco import actions as action_modules
from bridge.ncco.actions.conversation.rooms import RoomRegistry
from bridge.ncco.context import CallServices
from bridge.ncco.models import Action, NccoError, parse_ncco
from bridge.webhooks import EventOutbox, WebhookClient
from bridge.webhooks import payloads as ev

log = structlog.get_logger(__name__)

#: Where the dialplan (asterisk-config/extensions.conf, [ari-bridge-inbound]) rejects a call
#: when the bridge cannot take it: it logs and hangs up with cause 34, which PJSIP answers
#: as SIP 503, so a carrier fails over to another Asterisk.
UNAVAILABLE_LABEL = "unavailable"
#: In a cluster's dialplan: try the next slot's Stasis application (another bridge's).
NEXT_SLOT_LABEL = "next"


class CallEngine:
    def __init__(
        self,
        config: Config,
        webhooks: WebhookClient,
        media: MediaStore,
        store: CallStorage,
        public_url: Callable[[], str],
    ) -> None:
        self.config = config
        self.webhooks = webhooks
        self.media = media
        self.store = store
        self.public_url = public_url
        self.sessions: dict[str, CallSession] = {}
        #: By (node, channel id): two Asterisk nodes may give two channels the same id (an
        #: id is the start time and a counter unless the node has a ``systemname``).
        self.by_channel: dict[tuple[str, str], CallSession] = {}
        self.links: list[AriLink] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._session_tasks: dict[str, asyncio.Task[None]] = {}
        self.calls_started = 0
        self.calls_rejected = 0
        self._next_link = 0  # REST calls go round the links in turn
        #: Set on SIGTERM: new calls are turned away, live ones keep running until exit.
        self.draining = False
        self.history = CallHistory()  # ended calls, for GET /v1/calls
        # Exotel Connect: agent busy leases and sticky agents (SQLite or Redis).
        self.agents = open_agent_store(config.agents.backend, config.agents_path(),
                                       config.agents.redis_url, config.agents.redis_prefix)
        # Every status event of every call: durable (in the call store), ordered per call,
        # retried through outages and restarts. Started and stopped with the service.
        self.events = EventOutbox(
            store, webhooks, config.application,
            retention_s=config.events.retention_s, retry_base_s=config.events.retry_base_s,
            retry_cap_s=config.events.retry_cap_s, max_in_flight=config.events.max_in_flight,
        )
        #: The speech recogniser of every link's calls (None: the embedded default).
        self.asr: AsrProvider | None = None

    # -------------------------------------------------------------------- links
    def add_link(self, node: AriConfig, slot: int = 0, adopted: bool = False) -> AriLink:
        """A new ARI connection (not started: ``await link.gateway.start()``) to ``node`` for
        ``slot``'s Stasis application. Its connects reconcile its calls and provision the
        node's agent devices."""
        config = node.model_copy(update={"app": self.config.stasis_app(slot)})
        holder: list[AriLink] = []

        def on_stasis_start(event: Event) -> None:
            self.on_stasis_start(holder[0], event)

        async def on_connected() -> None:
            # Calls first (resume or end what is in Stasis), then the agents' SIP devices,
            # which a restarted Asterisk has forgotten (they live in its memory wizard).
            try:
                await self.reconcile(holder[0])
            except Exception:  # a bug there must not leave the devices unprovisioned
                log.exception("reconcile.crashed", link=holder[0].name)
            await holder[0].devices.provision()

        link = self.attach(AriGateway(config, on_stasis_start, on_connected), node.name,
                           slot, adopted)
        holder.append(link)
        return link

    def attach(self, gateway: AriGateway, node: str = "asterisk", slot: int = 0,
               adopted: bool = False) -> AriLink:
        """Bind the calls' services to ``gateway`` as a new link (``add_link`` makes the
        gateway; the unit tests bring their own)."""
        services = CallServices(
            gateway=gateway, media=self.media, dialer=Dialer(gateway, self.config),
            webhooks=self.webhooks, events=self.events,
            recordings=RecordingService(  # record, conversation record
                gateway, FileStore(self.config.recordings.path),
                retention_hours=self.config.recordings.retention_hours),
            agents=self.agents, config=self.config, public_url=self.public_url,
            check_runnable=self.check_runnable, asr=self.asr,
        )
        link = AriLink.around(services, node, slot, adopted)
        self.links.append(link)
        return link

    async def start_link(self, link: AriLink) -> None:
        await link.gateway.start()
        await link.recordings.start()

    async def stop_link(self, link: AriLink) -> None:
        """Stop driving ``link``'s calls without hanging them up, and close it."""
        for session in self.sessions_on(link):
            self._forget(session)
        await link.recordings.close()
        await link.rooms.shutdown()
        await link.gateway.stop()
        if link in self.links:
            self.links.remove(link)

    def link_of(self, record: CallRecord) -> AriLink | None:
        """The link a stored call belongs to (a record written before nodes were named has
        node '': the first node)."""
        for link in self.links:
            if link.slot == record.slot and (link.node == record.node or not record.node):
                return link
        return None

    def sessions_on(self, link: AriLink) -> list[CallSession]:
        """The live calls driven over ``link``."""
        return [s for s in self.sessions.values() if s.services is link.services]

    def links_down(self) -> list[AriLink]:
        """The links whose ARI connection is not up (for ``/readyz`` and the console)."""
        return [link for link in self.links if not link.gateway.connected]

    @property
    def primary(self) -> AriLink:
        """The first link: what a single-node bridge's API, console and tests use."""
        if not self.links:
            raise RuntimeError("the engine has no ARI link yet")
        return self.links[0]

    @property
    def gateway(self) -> AriGateway:
        return self.primary.gateway

    @property
    def services(self) -> CallServices:
        return self.primary.services

    @property
    def recordings(self) -> RecordingService:
        return self.primary.recordings

    @property
    def devices(self) -> DeviceProvisioner:
        return self.primary.devices

    @property
    def rooms(self) -> RoomRegistry:
        return self.primary.rooms

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
        actions = parse_ncco(data)
        self.check_runnable(actions)
        return actions

    def new_session(self, link: AriLink, record: CallRecord,
                    actions: list[Action] | None = None, resumed: bool = False,
                    outbound: OutboundCall | None = None,
                    app: ApplicationConfig | None = None) -> CallSession:
        """A session for ``record`` on ``link``, wired to its services and runners (not yet
        started)."""
        return CallSession(link.services, self.store, record, app or self.application_of(record),
                           link.runners, self._session_ended, actions, resumed, outbound)

    # ---------------------------------------------------------------- new calls
    def on_stasis_start(self, link: AriLink, event: Event) -> None:
        """A channel entered ``link``'s application and nobody owns it: a new inbound call."""
        channel = event.get("channel") or {}
        channel_id = str(channel.get("id", ""))
        args = [str(a) for a in event.get("args", [])]
        if not channel_id or (link.node, channel_id) in self.by_channel:
            return
        if not args or args[0] != "inbound":
            log.warning("call.unexpected_channel", channel_id=channel_id, args=args)
            self._run_task(link.gateway.hangup(channel_id))
            return
        if self.draining or link.adopted:
            self.calls_rejected += 1
            self._run_task(self._turn_away(link, channel))
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
            self._run_task(link.gateway.hangup(channel_id, "unallocated"))
            return
        record = CallRecord(
            uuid=random_uuid(),
            conversation_uuid="CON-" + random_uuid(),
            channel_id=channel_id,
            application_id=app.id,
            direction="inbound",
            from_number=caller,
            to_number=to,
            started_at=ev.timestamp(),
            answered_at=None,
            ncco=[],
            position=0,
            node=link.node,
            slot=link.slot,
        )
        self.store.save(record)
        # An applet number runs its Connect applet instead of fetching answer_url.
        first: list[Any] | None = ([exotel_applet.ExotelConnect(number=to)]
                                   if applet is not None else None)
        self._start(link, self.new_session(link, record, first))

    async def _turn_away(self, link: AriLink, channel: dict[str, Any]) -> None:
        """Send a new inbound call back to the dialplan, as if this application were not
        connected: outside a cluster to its fallback (SIP 503, the carrier retries
        elsewhere); in a cluster to the next slot, which another bridge may hold. No event
        is sent."""
        channel_id = str(channel.get("id", ""))
        dialplan = channel.get("dialplan") or {}
        context = str(dialplan.get("context") or "ari-bridge-inbound")
        extension = str(dialplan.get("exten") or "s")
        label = NEXT_SLOT_LABEL if self.config.cluster.enabled else UNAVAILABLE_LABEL
        # Draining: the operator's signal; otherwise a slot adopted from a dead bridge.
        log.info("call.rejected_draining" if self.draining else "call.sent_to_next_slot",
                 channel_id=channel_id, to=extension, label=label)
        try:
            await link.gateway.continue_in_dialplan(channel_id, context, extension,
                                                    label=label)
        except ChannelGone:
            return
        except AriError as exc:
            # A dialplan without the label: congestion (cause 34) is the same SIP 503.
            log.warning("call.reject_fallback_missing", channel_id=channel_id,
                        context=context, error=exc.details)
            await link.gateway.hangup(channel_id, "congestion")

    async def place_call(self, request: OutboundCall) -> CallSession:
        """Start an outbound call; returns at once (the session rings, then runs the NCCO).

        Raises :class:`Draining` once the bridge is shutting down."""
        if self.draining:
            raise Draining("the bridge is shutting down and takes no new calls")
        app = self.application(request.application_id)  # KeyError for an unknown one
        link = self._link_for_new_call()
        record = CallRecord(
            uuid=random_uuid(),
            conversation_uuid="CON-" + random_uuid(),
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
            node=link.node,
            slot=link.slot,
        )
        self.store.save(record)
        self._start(link, self.new_session(link, record, outbound=request))
        return self.sessions[record.uuid]

    def _link_for_new_call(self) -> AriLink:
        """Where a REST call is placed: the links of this bridge's own slot (not adopted
        ones), connected ones first, in turn."""
        own = [link for link in self.links if not link.adopted] or self.links
        if not own:
            raise Draining("the bridge is not connected to Asterisk yet")
        connected = [link for link in own if link.gateway.connected] or own
        self._next_link += 1
        return connected[self._next_link % len(connected)]

    def _start(self, link: AriLink, session: CallSession) -> None:
        self.calls_started += 1
        link.calls_started += 1
        metrics.CALLS_ACTIVE.inc()
        self.sessions[session.uuid] = session
        self.by_channel[(session.record.node, session.channel_id)] = session
        link.gateway.route(f"channel:{session.channel_id}", session.on_event)
        self._session_tasks[session.uuid] = self._run_task(session.run())
        if self.config.tracks_all_calls():
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
        self.by_channel.pop((session.record.node, session.channel_id), None)
        self._session_tasks.pop(session.uuid, None)
        self.history.record_ended(session)
        session.gateway.unroute(f"channel:{session.channel_id}")
        if in_store:
            self.store.delete(session.uuid)

    def _forget(self, session: CallSession) -> None:
        """Stop driving a live call without ending it (its slot went to another bridge, or
        this one is closing the link): its channel stays in Asterisk, its record in the
        store, for whoever holds the slot."""
        task = self._session_tasks.pop(session.uuid, None)
        if task is not None:
            task.cancel()
        if self.sessions.pop(session.uuid, None) is not None:
            metrics.CALLS_ACTIVE.dec()
        self.by_channel.pop((session.record.node, session.channel_id), None)
        session.gateway.unroute(f"channel:{session.channel_id}")

    def _run_task(self, coro: Any) -> asyncio.Task[None]:
        """Run engine work (a session, a rejection, a hangup, busy tracking) until shutdown."""
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # ------------------------------------------------------------ reconciliation
    async def reconcile(self, link: AriLink) -> None:
        """After ``link`` (re)connects: resume or end what is in its Stasis application,
        complete what is gone. Only the link's own calls are judged: those of its node and
        slot."""
        # Only sessions older than the snapshot can be judged by it: a call that starts while
        # the request is in flight is not in the list yet, and is not gone.
        snapshot_at = time.monotonic()
        try:
            in_stasis = set(await link.gateway.app_channel_ids())
        except AriError as exc:
            log.warning("reconcile.failed", link=link.name, error=str(exc))
            return
        # Live sessions whose channel vanished while the websocket was down.
        for session in self.sessions_on(link):
            dialling = session.outbound is not None and session.answered is None
            if (session.created < snapshot_at and not dialling
                    and session.channel_id not in in_stasis):
                session.on_event({"type": "ChannelDestroyed", "cause_txt": "gone while away"})
        records = {r.channel_id: r for r in self.store.all(slot=link.slot)
                   if self.link_of(r) is link}
        resumed = ended = cleaned = 0
        owned = {channel for node, channel in self.by_channel if node == link.node}
        for channel_id in in_stasis - owned:
            record = records.pop(channel_id, None)
            if record is None:
                cleaned += 1
                await link.gateway.hangup(channel_id)
                continue
            if self._resume(link, record):
                resumed += 1
            else:
                ended += 1
        # Calls we knew about whose channel ended while no bridge was watching.
        for channel_id, record in records.items():
            if channel_id in owned or (link.node, channel_id) in self.by_channel:
                continue
            self._complete_orphan(record)
            ended += 1
        link.reconciled = True
        log.info("reconcile.done", link=link.name, in_stasis=len(in_stasis), resumed=resumed,
                 ended=ended, cleaned=cleaned, live=len(self.sessions))

    def _resume(self, link: AriLink, record: CallRecord) -> bool:
        try:
            app = self.application_of(record)
            actions = self.parse(record.ncco)
        except (KeyError, NccoError) as exc:
            log.warning("reconcile.cannot_resume", call_uuid=record.uuid, error=str(exc))
            self._complete_orphan(record)
            self._run_task(link.gateway.hangup(record.channel_id))
            return False
        log.info("reconcile.resume", call_uuid=record.uuid, position=record.position,
                 link=link.name)
        record.node = link.node  # a record from before nodes were named
        self._start(link, self.new_session(link, record, actions, resumed=True, app=app))
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
