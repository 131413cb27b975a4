"""record: record the call, both parties, while the NCCO goes on; send a ``record`` event.

How a call is recorded, whether or not it is (or later becomes) bridged by ``connect``: two
snoop channels watch the caller's channel, ``spy=in`` (what the caller says) and ``spy=out``
(what the caller hears: prompts, the other party of a connect, a conversation's mix). Asterisk
records each snoop into a WAV; when the recording ends the bridge fetches both over ARI,
deletes them on Asterisk, and mixes them to mono or, with ``split: conversation``, merges them
as channel 1 (the caller) and channel 2 (the other party), padded with silent channels up to
``channels``. The file is kept in the bridge's FileStore and ``recording_url`` points at
``{public_url}/v1/files/{id}``.

When does the NCCO go on? As in the Vonage reference, ``endOnSilence``, ``endOnKey`` and an
explicit ``timeOut`` are *synchronous conditions*: the NCCO waits until one of them is met (a
voicemail: talk, record with endOnKey, talk "thank you"). Without any, the recording runs in
the background over the following actions until the call ends (record the whole call, then
connect). Either way a hangup ends the recording and it is still delivered.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid as uuidlib
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import structlog

from bridge.ari.errors import AriError
from bridge.ari.gateway import new_id
from bridge.ari.waits import EventTap, is_type, playback_finished, recording_ended
from bridge.media.errors import MediaError
from bridge.media.recordings import StoredRecording
from bridge.ncco.models import Action, Record
from bridge.webhooks import payloads as ev

if TYPE_CHECKING:
    from bridge.ncco.context import CallContext

log = structlog.get_logger(__name__)

#: Fields whose presence makes the NCCO wait for the recording to end.
SYNCHRONOUS_FIELDS = frozenset({"end_on_silence", "end_on_key", "time_out"})
#: Seconds allowed for Asterisk to create a snoop channel, start or finish a recording.
ARI_WAIT_S = 5.0
#: The beep played before recording when ``beepStart`` is true.
BEEP = "tone:1000/500"
BEEP_S = 0.5


def is_synchronous(action: Record) -> bool:
    return bool(SYNCHRONOUS_FIELDS & action.model_fields_set)


async def run(call: CallContext, action: Record) -> list[Action] | None:
    recording = CallRecording(call, action)
    try:
        await recording.start()
    except (AriError, TimeoutError) as exc:
        await asyncio.shield(recording.stop())
        if not call.gone.is_set():
            call.error(f"record: Asterisk could not start the recording: {exc}")
        return None
    if is_synchronous(action):
        await recording.run_until_done()
    else:
        call.run_beside(recording.run_until_done(), "record")
    return None


async def beep(call: CallContext) -> None:
    """A short beep to the caller; returns once it has played (bounded)."""
    playback_id = new_id()
    finished = call.expect(playback_finished(playback_id))
    try:
        await call.gateway.play(call.channel_id, [BEEP], playback_id)
        await finished.wait(BEEP_S)
    finally:
        call.stop_waiting(finished)
        with contextlib.suppress(AriError):
            await asyncio.shield(call.gateway.stop_playback(playback_id))


class CallRecording:
    """One record action on one call: two snoops, two Asterisk recordings, one file."""

    SIDES = ("in", "out")  # the caller's voice, then what the caller hears

    def __init__(self, call: CallContext, action: Record) -> None:
        self.call = call
        self.action = action
        self.gateway = call.gateway
        self.recording_uuid = str(uuidlib.uuid4())
        self.names = {side: f"ari-bridge-{self.recording_uuid}-{side}" for side in self.SIDES}
        self.snoops: dict[str, str] = {}
        self.taps: dict[str, EventTap] = {}
        self.started_at: datetime | None = None
        self.ended_at: datetime | None = None
        self._stopped = False
        self.log = log.bind(call_uuid=call.uuid, recording_uuid=self.recording_uuid)

    # ------------------------------------------------------------------ start
    async def start(self) -> None:
        action = self.action
        if action.beep_start:
            await beep(self.call)
        for side in self.SIDES:
            snoop_id = new_id()
            tap = EventTap(self.gateway, f"channel:{snoop_id}")
            self.taps[side] = tap
            self.snoops[side] = snoop_id
            entered = tap.expect(is_type("StasisStart"))
            await self.gateway.snoop(self.call.channel_id, snoop_id, side,
                                     ["snoop", self.call.uuid])
            await asyncio.wait_for(entered, ARI_WAIT_S)
        self.started_at = datetime.now(UTC)
        for side in self.SIDES:
            # Silence is measured on the caller's side only: what the caller hears may be
            # silent (nobody talking back) while the caller is still speaking.
            silence = (action.end_on_silence or 0) if side == "in" else 0
            await self.gateway.record(
                self.snoops[side], self.names[side], fmt="wav",
                max_duration_s=action.time_out, max_silence_s=silence,
            )
        self.log.info("record.started", synchronous=is_synchronous(action),
                      split=action.split, fmt=action.format)

    # ------------------------------------------------------------------- wait
    async def run_until_done(self) -> None:
        """Wait for the action's condition (or the call's end); then finish, outside the call."""
        try:
            await self._wait_condition()
            await self.stop()
        finally:
            self.call.services.recordings.run_detached(self.finish(),
                                                       f"record-finish:{self.call.uuid}")

    async def _wait_condition(self) -> None:
        call, action = self.call, self.action
        caller_done = self.taps["in"].expect(recording_ended(self.names["in"]))
        waits: list[asyncio.Future[Any]] = [caller_done,
                                            asyncio.ensure_future(call.gone.wait())]
        key_waiter = None
        if action.end_on_key is not None:
            key = action.end_on_key
            key_waiter = call.expect(
                lambda e: e.get("type") == "ChannelDtmfReceived" and e.get("digit") == key)
            waits.append(asyncio.ensure_future(key_waiter.wait(None)))
        try:
            done, _ = await asyncio.wait(waits, timeout=action.time_out + ARI_WAIT_S,
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()
            if key_waiter is not None:
                call.stop_waiting(key_waiter)
        if key_waiter is not None and key_waiter.future.done() and not call.gone.is_set():
            # The key ended the recording; it is not input for a later action.
            with contextlib.suppress(ValueError):
                call.dtmf.digits.remove(action.end_on_key)  # type: ignore[arg-type]
        self.log.info("record.condition_met", by_key=bool(key_waiter and
                      key_waiter.future.done()), hangup=call.gone.is_set(), timed_out=not done)

    # ------------------------------------------------------------------- stop
    async def stop(self) -> None:
        """Stop both recordings and remove the snoops (idempotent)."""
        if self._stopped:
            return
        self._stopped = True
        self.ended_at = datetime.now(UTC)
        finished = [self.taps[side].expect(recording_ended(self.names[side]))
                    for side in self.taps]
        for side in self.taps:
            with contextlib.suppress(AriError):
                await self.gateway.stop_recording(self.names[side])
        if finished:
            await asyncio.wait(finished, timeout=ARI_WAIT_S)
        for side, snoop_id in self.snoops.items():
            with contextlib.suppress(AriError):
                await self.gateway.hangup(snoop_id)
            self.taps[side].close()

    # ----------------------------------------------------------------- finish
    async def finish(self) -> StoredRecording | None:
        """Fetch, convert, store, and send the ``record`` event (runs beside the call).
        Returns the stored file, or None when nothing could be saved."""
        call, action = self.call, self.action
        await self.stop()
        split = action.split == "conversation" and (action.channels or 2) >= 2
        try:
            stored = await call.services.recordings.store(
                [self.names["in"], self.names["out"]], "split" if split else "mono",
                action.format, action.channels or 2, call.app.id)
        except (MediaError, AriError) as exc:
            self.log.warning("record.failed", error=str(exc))
            self._send(ev.error_event(uuid=call.uuid, conversation_uuid=call.conversation_uuid,
                                      reason=f"record: the recording could not be saved: "
                                             f"{exc}"), error=True)
            return None
        self.log.info("record.stored", file_id=stored.file_id, size=stored.size,
                      duration_s=stored.duration_s)
        started = self.started_at or datetime.now(UTC)
        ended = self.ended_at or datetime.now(UTC)
        self._send({
            "start_time": ev.timestamp(started),
            "end_time": ev.timestamp(ended),
            "recording_url": call.services.file_url(stored.file_id),
            "size": stored.size,
            "recording_uuid": self.recording_uuid,
            "conversation_uuid": call.conversation_uuid,
            "uuid": call.uuid,
            "timestamp": ev.timestamp(),
        })
        return stored

    def _send(self, payload: dict[str, Any], error: bool = False) -> None:
        call, action = self.call, self.action
        url: str | None = call.app.event_url
        method: str = call.app.event_method
        if action.event_url and not error:
            url, method = action.event_url[0], action.event_method
        if url is None:
            self.log.warning("record.no_event_url")
            return
        # In the call's order, also when the recording is stored after the call ended.
        call.post_event(url, method, payload)
