"""Named conversation rooms: one Asterisk mixing bridge per (application, name).

The first call whose NCCO runs ``conversation`` with a name creates the room; later calls with
the same name (in the same application) join it, up to ``MAX_PARTICIPANTS``. The room is
destroyed when its last member leaves, or ended for everybody (every member hung up) when a
member with ``endOnExit`` leaves.

What Asterisk's mixing bridge (bridge_softmix) can and cannot do, and so what this does:

* Every member hears the mix of every other member; nobody hears themselves.
* ``mute`` is ``POST /channels/{id}/mute?direction=in``: the member's audio no longer reaches
  the mix; they still hear the room.
* ``canSpeak`` / ``canHear`` (lists of leg uuids) would need one mix per listener. A single
  softmix bridge has no per-pair matrix, so a leg is only ever heard by everyone or by nobody
  (mute direction ``in``) and hears everyone or nobody (mute direction ``out``). The matrix is
  applied privacy-first and recomputed on every join and leave: a leg is heard by the room only
  while every other member is in its ``canSpeak`` list (absent = everyone), and hears the room
  only while every other member is in its ``canHear`` list. An empty list therefore mutes that
  direction, and ``canSpeak: [agent]`` works while the room holds just the two of them, but
  nobody ever hears a leg they were not meant to hear. A full matrix (coaching/whisper with
  three or more members) would take a bridge per listener fed by snoop channels; not done.
* ``startOnEnter: false`` members wait for a member with ``startOnEnter: true``. Meanwhile
  ``musicOnHoldUrl`` is fetched and converted by the bridge (like ``stream``) and played on the
  bridge in a loop, so waiting members hear it (and each other); it stops when the room starts.
* ``record: true`` records the room's mix (``POST /bridges/{id}/record``) from then until the
  room closes; the file goes through the same path as ``record`` and a ``record`` event with
  ``recording_url`` goes to that member's eventUrl.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid as uuidlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import structlog

from bridge.api.files import FileStore
from bridge.ari.errors import AriError
from bridge.ari.gateway import AriGateway, new_id
from bridge.calls import events as ev
from bridge.media.errors import MediaError
from bridge.media.recordings import EventTap, recording_ended

if TYPE_CHECKING:
    from bridge.calls.session import CallSession
    from bridge.ncco.models import Conversation

log = structlog.get_logger(__name__)

#: Participants per room; the next caller gets an error event and its NCCO goes on.
MAX_PARTICIPANTS = 50
#: Copies of the hold music queued per bridge play request.
MUSIC_CHUNK = 10
#: Seconds allowed for Asterisk to finish a room's recording.
ARI_WAIT_S = 5.0


class RoomFull(Exception):
    """The room already holds MAX_PARTICIPANTS members."""


@dataclass
class Member:
    call: CallSession
    action: Conversation
    muted_in: bool = False
    muted_out: bool = False

    @property
    def leg(self) -> str:
        return self.call.uuid


@dataclass
class RoomRecording:
    name: str
    recording_uuid: str
    requested_by: Member
    started_at: datetime


@dataclass
class Room:
    registry: ConferenceRegistry
    application_id: str
    name: str
    bridge_id: str = field(default_factory=new_id)
    conversation_uuid: str = field(default_factory=lambda: "CON-" + str(uuidlib.uuid4()))
    members: dict[str, Member] = field(default_factory=dict)
    started: bool = False
    closed: bool = False
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    opening: asyncio.Future[None] | None = None
    tap: EventTap | None = None
    music_uri: str | None = None
    music_s: float = 0.0
    music_playback: str | None = None
    recording: RoomRecording | None = None

    @property
    def gateway(self) -> AriGateway:
        return self.registry.gateway

    async def open(self) -> None:
        self.tap = EventTap(self.gateway, f"bridge:{self.bridge_id}", self._on_event)
        await self.gateway.create_bridge(self.bridge_id, "mixing", f"conversation-{self.name}")
        log.info("conversation.created", room=self.name, bridge_id=self.bridge_id)

    def _on_event(self, event: dict[str, Any]) -> None:
        playback = event.get("playback") or {}
        if (event.get("type") == "PlaybackFinished" and playback.get("id") == self.music_playback
                and not self.started and not self.closed):
            self.registry.spawn(self._play_music())  # the loop goes on

    # ----------------------------------------------------------------- members
    async def admit(self, member: Member) -> None:
        """Put a reserved member into the bridge and apply everything that depends on it."""
        async with self.lock:
            call, action = member.call, member.action
            await self.gateway.add_to_bridge(self.bridge_id, call.channel_id)
            await self._apply_matrix()
            if action.start_on_enter and not self.started:
                self.started = True
                await self._stop_music()
            elif not self.started and self.music_uri is None and action.music_on_hold_url:
                await self._start_music(call, action.music_on_hold_url[0])
            if action.record and self.recording is None:
                await self._start_recording(member)
            log.info("conversation.joined", room=self.name, leg=member.leg,
                     members=len(self.members), started=self.started)

    async def leave(self, member: Member) -> None:
        async with self.lock:
            if self.members.pop(member.leg, None) is None:
                return
            if not member.call.gone.is_set():
                await self.gateway.remove_from_bridge(self.bridge_id, member.call.channel_id)
                for direction, muted in (("in", member.muted_in), ("out", member.muted_out)):
                    if muted:
                        with contextlib.suppress(AriError):
                            await self.gateway.unmute(member.call.channel_id, direction)
            log.info("conversation.left", room=self.name, leg=member.leg,
                     members=len(self.members))
            if member.action.end_on_exit and not self.ended.is_set():
                log.info("conversation.ended_by_exit", room=self.name, leg=member.leg)
                self.ended.set()
                self.registry.forget(self)  # a caller arriving now opens a new room
                for other in list(self.members.values()):
                    with contextlib.suppress(AriError):
                        await self.gateway.hangup(other.call.channel_id)
            elif self.members:
                await self._apply_matrix()
            if not self.members:
                await self._close()

    async def _apply_matrix(self) -> None:
        legs = set(self.members)
        for member in list(self.members.values()):
            others = legs - {member.leg}
            speak = member.action.can_speak
            hear = member.action.can_hear
            mute_in = member.action.mute or (speak is not None and not others <= set(speak))
            mute_out = hear is not None and not others <= set(hear)
            for direction, want, have in (("in", mute_in, member.muted_in),
                                          ("out", mute_out, member.muted_out)):
                if want == have:
                    continue
                try:
                    if want:
                        await self.gateway.mute(member.call.channel_id, direction)
                    else:
                        await self.gateway.unmute(member.call.channel_id, direction)
                except AriError as exc:
                    log.warning("conversation.mute_failed", leg=member.leg, error=str(exc))
                    continue
                if direction == "in":
                    member.muted_in = want
                else:
                    member.muted_out = want

    # ------------------------------------------------------------------- music
    async def _start_music(self, call: CallSession, url: str) -> None:
        try:
            item = await call.media.fetch(url)
        except MediaError as exc:
            call.error(f"conversation: cannot play musicOnHoldUrl {url}: {exc.cause}")
            return
        self.music_uri = call.engine.media_uri(item.media_id)
        self.music_s = item.duration_s
        await self._play_music()

    async def _play_music(self) -> None:
        if self.music_uri is None or self.started or self.closed:
            return
        playback_id = new_id()
        self.music_playback = playback_id
        try:
            await self.gateway.play_on_bridge(self.bridge_id, [self.music_uri] * MUSIC_CHUNK,
                                              playback_id)
        except AriError as exc:
            log.warning("conversation.music_failed", room=self.name, error=str(exc))

    async def _stop_music(self) -> None:
        playback, self.music_playback = self.music_playback, None
        if playback is not None:
            with contextlib.suppress(AriError):
                await self.gateway.stop_playback(playback)

    # --------------------------------------------------------------- recording
    async def _start_recording(self, member: Member) -> None:
        recording_uuid = str(uuidlib.uuid4())
        name = f"ari-bridge-{recording_uuid}-room"
        try:
            await self.gateway.record_bridge(self.bridge_id, name, fmt="wav")
        except AriError as exc:
            member.call.error(f"conversation: Asterisk could not record the room: {exc}")
            return
        self.recording = RoomRecording(name, recording_uuid, member, datetime.now(UTC))

    async def _finish_recording(self, recording: RoomRecording) -> None:
        assert self.tap is not None
        finished = self.tap.expect(recording_ended(recording.name))
        with contextlib.suppress(AriError):
            await self.gateway.stop_recording(recording.name)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(finished, ARI_WAIT_S)
        ended = datetime.now(UTC)
        call, action = recording.requested_by.call, recording.requested_by.action
        engine = call.engine
        url, method = ((action.event_url[0], action.event_method) if action.event_url
                       else (call.app.event_url, call.app.event_method))
        try:
            stored = await engine.recordings.store([recording.name], "mono", "mp3", 1,
                                                   call.app.id)
        except (MediaError, AriError) as exc:
            log.warning("conversation.record_failed", room=self.name, error=str(exc))
            payload = ev.error_event(uuid=call.uuid, conversation_uuid=self.conversation_uuid,
                                     reason=f"conversation: the recording could not be saved: "
                                            f"{exc}")
            url, method = call.app.event_url, call.app.event_method
        else:
            payload = {
                "start_time": ev.timestamp(recording.started_at),
                "end_time": ev.timestamp(ended),
                "recording_url": FileStore.url(engine.public_url(), stored.file_id),
                "size": stored.size,
                "recording_uuid": recording.recording_uuid,
                "conversation_uuid": self.conversation_uuid,
                "timestamp": ev.timestamp(),
            }
        if url is not None:
            outbox = engine.new_outbox(call.app)
            outbox.post(url, method, payload)
            await outbox.drain()

    # ------------------------------------------------------------------- close
    async def _close(self) -> None:
        self.closed = True
        self.ended.set()
        self.registry.forget(self)
        await self._stop_music()
        recording, self.recording = self.recording, None
        finishing = None
        if recording is not None:
            engine = recording.requested_by.call.engine
            finishing = engine.recordings.spawn(self._finish_recording(recording),
                                                f"conversation-record:{self.name}")
        if finishing is not None:
            # The bridge (and the tap that sees RecordingFinished) goes once it is stored.
            finishing.add_done_callback(lambda _: self.registry.spawn(self._destroy()))
        else:
            await self._destroy()
        log.info("conversation.closed", room=self.name)

    async def _destroy(self) -> None:
        with contextlib.suppress(AriError):
            await self.gateway.destroy_bridge(self.bridge_id)
        if self.tap is not None:
            self.tap.close()


class ConferenceRegistry:
    """Rooms by (application id, name). Touched only from the event loop."""

    def __init__(self, gateway: AriGateway) -> None:
        self.gateway = gateway
        self.rooms: dict[tuple[str, str], Room] = {}
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def forget(self, room: Room) -> None:
        key = (room.application_id, room.name)
        if self.rooms.get(key) is room:
            del self.rooms[key]

    def room(self, application_id: str, name: str) -> Room | None:
        return self.rooms.get((application_id, name))

    async def join(self, call: CallSession, action: Conversation) -> tuple[Room, Member]:
        """Create or find the room, reserve a place, and put the call in it.

        Raises RoomFull, or AriError when Asterisk refuses (the place is given back)."""
        key = (call.app.id, action.name)
        while True:
            room = self.rooms.get(key)
            if room is None:
                room = Room(self, call.app.id, action.name)
                self.rooms[key] = room
                room.opening = asyncio.ensure_future(room.open())
            assert room.opening is not None
            try:
                await asyncio.shield(room.opening)
            except AriError:
                self.forget(room)
                raise
            if not room.closed:
                break
        if len(room.members) >= MAX_PARTICIPANTS:
            raise RoomFull(f"the conversation {action.name!r} already has "
                           f"{MAX_PARTICIPANTS} participants")
        member = Member(call, action)
        room.members[member.leg] = member  # reserved before any await: the count is exact
        try:
            await room.admit(member)
        except BaseException:
            await asyncio.shield(room.leave(member))
            raise
        return room, member

    async def shutdown(self) -> None:
        for task in list(self._tasks):
            task.cancel()
