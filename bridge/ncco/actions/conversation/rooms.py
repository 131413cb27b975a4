"""Named conversation rooms: one Asterisk mixing bridge per (application, name).

The first call whose NCCO runs ``conversation`` with a name creates the room; later calls with
the same name (in the same application) join it, up to ``MAX_PARTICIPANTS``. The room is
destroyed when its last member leaves, or ended for everybody (every member hung up) when a
member with ``endOnExit`` leaves.

What Asterisk's mixing bridge (bridge_softmix) can and cannot do, and so what this does:

* Every member hears the mix of every other member; nobody hears themselves.
* ``mute`` is ``POST /channels/{id}/mute?direction=in``: the member's audio no longer reaches
  the mix; they still hear the room.
* ``canSpeak`` / ``canHear`` (lists of leg uuids) need one mix per listener, which a single
  softmix bridge cannot do. A room becomes a *matrix room* as soon as a member using either
  list joins it (and stays one until it closes; members already inside are moved). In a
  matrix room every member listens through its own mixing bridge (its *listener bridge*): the
  member's channel plus, for every other member it may hear, a snoop channel with ``spy=in``
  on that speaker (what the speaker says). Listener L hears speaker S when S is in L's
  ``canHear`` (absent = everyone), L is in S's ``canSpeak`` (absent = everyone) and S is not
  ``mute``. The snoops are created and hung up on every join and leave. A matrix room holds at
  most ``MAX_MATRIX_PARTICIPANTS`` (10) members: up to 90 snoops plus the recorder's; the
  next caller gets an error event naming that cap and its NCCO goes on. The room's own
  bridge then holds no member: it carries the hold music for the recording and, while the
  room is recorded, one ``spy=in`` snoop per member that is not ``mute`` (the recording is
  everything said in the room, whoever was allowed to hear it).
* ``startOnEnter: false`` members wait for a member with ``startOnEnter: true``. Meanwhile
  ``musicOnHoldUrl`` is fetched and converted by the bridge (like ``stream``) and played on the
  bridge in a loop (in a matrix room on every listener bridge too), so waiting members hear it
  (and each other, as the matrix allows); it stops when the room starts.
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

from bridge.ari.errors import AriError
from bridge.ari.gateway import AriGateway, new_id
from bridge.ari.waits import EventTap, is_type, recording_ended
from bridge.media.errors import MediaError
from bridge.webhooks import payloads as ev

if TYPE_CHECKING:
    from bridge.ncco.context import CallContext, CallServices
    from bridge.ncco.models import Conversation

log = structlog.get_logger(__name__)

#: Participants per room; the next caller gets an error event and its NCCO goes on.
MAX_PARTICIPANTS = 50
#: Participants of a room where someone uses canSpeak/canHear (a bridge and up to n-1 snoops
#: per member).
MAX_MATRIX_PARTICIPANTS = 10
#: The listener key of the room's own bridge in a matrix room (it records the room).
RECORDER = ""
#: Copies of the hold music queued per bridge play request.
MUSIC_CHUNK = 10
#: Seconds allowed for Asterisk to finish a room's recording.
ARI_WAIT_S = 5.0


class RoomFull(Exception):
    """The room already holds MAX_PARTICIPANTS (a matrix room MAX_MATRIX_PARTICIPANTS)
    members."""


def uses_lists(action: Conversation) -> bool:
    return action.can_speak is not None or action.can_hear is not None


def may_hear(listener: Member, speaker: Member) -> bool:
    """Vonage's per-pair rule: the speaker is in the listener's canHear and the listener in
    the speaker's canSpeak (an absent list allows everyone); a muted member is heard by
    nobody."""
    if listener.leg == speaker.leg or speaker.action.mute:
        return False
    hear, speak = listener.action.can_hear, speaker.action.can_speak
    return ((hear is None or speaker.leg in hear)
            and (speak is None or listener.leg in speak))


@dataclass
class Member:
    call: CallContext
    action: Conversation
    muted_in: bool = False
    muted_out: bool = False
    #: The bridge the member's channel is in (the room's, or its listener bridge).
    bridge_id: str | None = None
    listener_tap: EventTap | None = None

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
    registry: RoomRegistry
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
    #: Music playback id by bridge id (the room's bridge, listener bridges).
    music_playbacks: dict[str, str] = field(default_factory=dict)
    recording: RoomRecording | None = None
    #: Set when a member using canSpeak/canHear is reserved; never cleared.
    matrix: bool = False
    #: (listener leg or RECORDER, speaker leg) -> (snoop channel id, its tap).
    snoops: dict[tuple[str, str], tuple[str, EventTap]] = field(default_factory=dict)
    _recording_pending: bool = False

    @property
    def gateway(self) -> AriGateway:
        return self.registry.gateway

    async def open(self) -> None:
        self.tap = EventTap(self.gateway, f"bridge:{self.bridge_id}", self._on_event)
        await self.gateway.create_bridge(self.bridge_id, "mixing", f"conversation-{self.name}")
        log.info("conversation.created", room=self.name, bridge_id=self.bridge_id)

    def _on_event(self, event: dict[str, Any]) -> None:
        playback = event.get("playback") or {}
        if event.get("type") != "PlaybackFinished" or self.started or self.closed:
            return
        for bridge_id, playback_id in list(self.music_playbacks.items()):
            if playback.get("id") == playback_id:
                self.registry.run_task(self._play_music(bridge_id))  # the loop goes on

    # ----------------------------------------------------------------- members
    async def admit(self, member: Member) -> None:
        """Put a reserved member into the room and apply everything that depends on it."""
        async with self.lock:
            call, action = member.call, member.action
            if self.matrix:
                await self._to_matrix()  # the members already inside, the first time
                await self._open_listener(member)
            else:
                await self.gateway.add_to_bridge(self.bridge_id, call.channel_id)
                member.bridge_id = self.bridge_id
            if action.start_on_enter and not self.started:
                self.started = True
                await self._stop_music()
            elif not self.started and self.music_uri is None and action.music_on_hold_url:
                await self._start_music(call, action.music_on_hold_url[0])
            elif not self.started and self.music_uri is not None and self.matrix:
                assert member.bridge_id is not None
                await self._play_music(member.bridge_id)
            if action.record and self.recording is None:
                await self._start_recording(member)
            await self._apply_matrix()
            log.info("conversation.joined", room=self.name, leg=member.leg,
                     members=len(self.members), started=self.started, matrix=self.matrix)

    async def leave(self, member: Member) -> None:
        async with self.lock:
            if self.members.pop(member.leg, None) is None:
                return
            await self._drop_snoops([key for key in self.snoops if member.leg in key])
            if not member.call.gone.is_set() and member.bridge_id is not None:
                await self.gateway.remove_from_bridge(member.bridge_id, member.call.channel_id)
                for direction, muted in (("in", member.muted_in), ("out", member.muted_out)):
                    if muted:
                        with contextlib.suppress(AriError):
                            await self.gateway.unmute(member.call.channel_id, direction)
            await self._close_listener(member)
            log.info("conversation.left", room=self.name, leg=member.leg,
                     members=len(self.members))
            if member.action.end_on_exit and not self.ended.is_set():
                log.info("conversation.ended_by_exit", room=self.name, leg=member.leg)
                self.ended.set()
                self.registry.remove(self)  # a caller arriving now opens a new room
                for other in list(self.members.values()):
                    with contextlib.suppress(AriError):
                        await self.gateway.hangup(other.call.channel_id)
            elif self.members:
                await self._apply_matrix()
            if not self.members:
                await self._close()

    async def _apply_matrix(self) -> None:
        """A plain room: ``mute`` is a mute of what the member sends. A matrix room: the
        snoops feeding the listener bridges follow ``may_hear``."""
        for member in list(self.members.values()):
            await self._set_mute(member, "in", member.action.mute and not self.matrix)
        if self.matrix:
            await self._sync_snoops()

    async def _set_mute(self, member: Member, direction: str, want: bool) -> None:
        have = member.muted_in if direction == "in" else member.muted_out
        if want == have or member.bridge_id is None:
            return
        try:
            if want:
                await self.gateway.mute(member.call.channel_id, direction)
            else:
                await self.gateway.unmute(member.call.channel_id, direction)
        except AriError as exc:
            log.warning("conversation.mute_failed", leg=member.leg, error=str(exc))
            return
        if direction == "in":
            member.muted_in = want
        else:
            member.muted_out = want

    # ------------------------------------------------------------------ matrix
    def wanted_snoops(self) -> set[tuple[str, str]]:
        """(listener leg or RECORDER, speaker leg) for every pair that must be connected."""
        placed = [m for m in self.members.values() if m.bridge_id is not None]
        wanted = {(listener.leg, speaker.leg) for listener in placed for speaker in placed
                  if may_hear(listener, speaker)}
        if self.recording is not None or self._recording_pending:
            wanted |= {(RECORDER, speaker.leg) for speaker in placed if not speaker.action.mute}
        return wanted

    async def _to_matrix(self) -> None:
        """Move the members still in the room's bridge each into its listener bridge."""
        await self._add_recorder_snoops()  # first: a bridge left alone ends its recording
        for other in list(self.members.values()):
            if other.bridge_id != self.bridge_id:
                continue
            for direction in ("in", "out"):  # in a matrix room mute means no snoops
                await self._set_mute(other, direction, False)
            await self.gateway.remove_from_bridge(self.bridge_id, other.call.channel_id)
            other.bridge_id = None
            try:
                await self._open_listener(other)
            except AriError as exc:
                log.warning("conversation.listener_failed", leg=other.leg, error=str(exc))
            if not self.started and self.music_uri is not None and other.bridge_id is not None:
                await self._play_music(other.bridge_id)

    async def _open_listener(self, member: Member) -> None:
        bridge_id = new_id()
        member.listener_tap = EventTap(self.gateway, f"bridge:{bridge_id}", self._on_event)
        await self.gateway.create_bridge(bridge_id, "mixing", f"conversation-{self.name}-listen")
        member.bridge_id = bridge_id  # destroyed by _close_listener from here on
        await self.gateway.add_to_bridge(bridge_id, member.call.channel_id)

    async def _close_listener(self, member: Member) -> None:
        if member.bridge_id is not None and member.bridge_id != self.bridge_id:
            self.music_playbacks.pop(member.bridge_id, None)
            with contextlib.suppress(AriError):
                await self.gateway.destroy_bridge(member.bridge_id)
        if member.listener_tap is not None:
            member.listener_tap.close()
            member.listener_tap = None
        member.bridge_id = None

    async def _add_recorder_snoops(self) -> None:
        if self.recording is None and not self._recording_pending:
            return
        wanted = {key for key in self.wanted_snoops() if key[0] == RECORDER}
        await asyncio.gather(*(self._add_snoop(*key) for key in wanted
                               if key not in self.snoops))

    async def _sync_snoops(self) -> None:
        wanted = self.wanted_snoops()
        await self._drop_snoops([key for key in self.snoops if key not in wanted])
        missing = [key for key in wanted if key not in self.snoops]
        await asyncio.gather(*(self._add_snoop(*key) for key in missing))

    async def _add_snoop(self, listener_leg: str, speaker_leg: str) -> None:
        speaker = self.members[speaker_leg]
        target = (self.bridge_id if listener_leg == RECORDER
                  else self.members[listener_leg].bridge_id)
        assert target is not None
        snoop_id = new_id()
        tap = EventTap(self.gateway, f"channel:{snoop_id}")
        self.snoops[(listener_leg, speaker_leg)] = (snoop_id, tap)
        entered = tap.expect(is_type("StasisStart"))
        try:
            await self.gateway.snoop(speaker.call.channel_id, snoop_id, "in",
                                     ["snoop", speaker_leg])
            await asyncio.wait_for(entered, ARI_WAIT_S)
            await self.gateway.add_to_bridge(target, snoop_id)
        except (AriError, TimeoutError) as exc:
            log.warning("conversation.snoop_failed", room=self.name, listener=listener_leg,
                        speaker=speaker_leg, error=str(exc) or type(exc).__name__)
            await self._drop_snoops([(listener_leg, speaker_leg)])

    async def _drop_snoops(self, keys: list[tuple[str, str]]) -> None:
        for key in keys:
            item = self.snoops.pop(key, None)
            if item is None:
                continue
            snoop_id, tap = item
            with contextlib.suppress(AriError):
                await self.gateway.hangup(snoop_id)
            tap.close()

    # ------------------------------------------------------------------- music
    async def _start_music(self, call: CallContext, url: str) -> None:
        try:
            item = await self.registry.services.media.fetch(url)
        except MediaError as exc:
            call.error(f"conversation: cannot play musicOnHoldUrl {url}: {exc.cause}")
            return
        self.music_uri = self.registry.services.media_uri(item.media_id)
        self.music_s = item.duration_s
        for bridge_id in self._music_bridges():
            await self._play_music(bridge_id)

    def _music_bridges(self) -> list[str]:
        """The room's bridge, and in a matrix room every listener bridge."""
        listeners = [m.bridge_id for m in self.members.values()
                     if m.bridge_id is not None and m.bridge_id != self.bridge_id]
        return [self.bridge_id, *listeners]

    async def _play_music(self, bridge_id: str) -> None:
        if self.music_uri is None or self.started or self.closed:
            return
        playback_id = new_id()
        self.music_playbacks[bridge_id] = playback_id
        try:
            await self.gateway.play_on_bridge(bridge_id, [self.music_uri] * MUSIC_CHUNK,
                                              playback_id)
        except AriError as exc:
            log.warning("conversation.music_failed", room=self.name, error=str(exc))

    async def _stop_music(self) -> None:
        playbacks, self.music_playbacks = self.music_playbacks, {}
        for playback in playbacks.values():
            with contextlib.suppress(AriError):
                await self.gateway.stop_playback(playback)

    # --------------------------------------------------------------- recording
    async def _start_recording(self, member: Member) -> None:
        recording_uuid = str(uuidlib.uuid4())
        name = f"ari-bridge-{recording_uuid}-room"
        if self.matrix:
            # The members speak into the room's bridge through snoops; a bridge recording
            # started (or left) with nobody in it ends at once.
            self._recording_pending = True
            await self._add_recorder_snoops()
            self._recording_pending = False
        try:
            await self.gateway.record_bridge(self.bridge_id, name, fmt="wav")
        except AriError as exc:
            member.call.error(f"conversation: Asterisk could not record the room: {exc}")
            await self._drop_snoops([key for key in self.snoops if key[0] == RECORDER])
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
        services = self.registry.services
        url, method = ((action.event_url[0], action.event_method) if action.event_url
                       else (call.app.event_url, call.app.event_method))
        try:
            stored = await services.recordings.store([recording.name], "mono", "mp3", 1,
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
                "recording_url": services.file_url(stored.file_id),
                "size": stored.size,
                "recording_uuid": recording.recording_uuid,
                "conversation_uuid": self.conversation_uuid,
                "timestamp": ev.timestamp(),
            }
        if url is not None:
            call.post_event(url, method, payload)

    # ------------------------------------------------------------------- close
    async def _close(self) -> None:
        self.closed = True
        self.ended.set()
        self.registry.remove(self)
        await self._stop_music()
        await self._drop_snoops([key for key in self.snoops if key[0] != RECORDER])
        recording, self.recording = self.recording, None
        finishing = None
        if recording is not None:
            finishing = self.registry.services.recordings.run_detached(
                self._finish_recording(recording), f"conversation-record:{self.name}")
        if finishing is not None:
            # The bridge (and the tap that sees RecordingFinished) goes once it is stored.
            finishing.add_done_callback(lambda _: self.registry.run_task(self._destroy()))
        else:
            await self._destroy()
        log.info("conversation.closed", room=self.name)

    async def _destroy(self) -> None:
        await self._drop_snoops(list(self.snoops))
        with contextlib.suppress(AriError):
            await self.gateway.destroy_bridge(self.bridge_id)
        if self.tap is not None:
            self.tap.close()


class RoomRegistry:
    """Rooms by (application id, name). Touched only from the event loop.

    ``services``: the bridge's (ARI, media, recordings); a room's work is not any one
    member's call."""

    def __init__(self, services: CallServices) -> None:
        self.services = services
        self.gateway: AriGateway = services.gateway
        self.rooms: dict[tuple[str, str], Room] = {}
        self._tasks: set[asyncio.Task[Any]] = set()

    def run_task(self, coro: Any) -> None:
        """Run a room's own work (the music loop, destroying a closed room)."""
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def remove(self, room: Room) -> None:
        """Take a room out of the registry: a caller arriving now opens a new one."""
        key = (room.application_id, room.name)
        if self.rooms.get(key) is room:
            del self.rooms[key]

    def room(self, application_id: str, name: str) -> Room | None:
        return self.rooms.get((application_id, name))

    async def join(self, call: CallContext, action: Conversation) -> tuple[Room, Member]:
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
                self.remove(room)
                raise
            if not room.closed:
                break
        if len(room.members) >= MAX_PARTICIPANTS:
            raise RoomFull(f"the conversation {action.name!r} already has "
                           f"{MAX_PARTICIPANTS} participants")
        if (room.matrix or uses_lists(action)) and len(room.members) >= MAX_MATRIX_PARTICIPANTS:
            raise RoomFull(f"the conversation {action.name!r} uses canSpeak/canHear and already "
                           f"has {MAX_MATRIX_PARTICIPANTS} participants, the most such a room "
                           f"may have")
        room.matrix = room.matrix or uses_lists(action)
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
