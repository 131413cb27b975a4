"""Playing media on the call's channel: the part talk and stream share.

Subscribe first, then ask: the PlaybackStarted and PlaybackFinished waiters exist before the
play request is sent, so a short file that finishes at once cannot be missed. Every wait has a
deadline and a typed result.

Deadlines are measured from PlaybackStarted, not from the request: Asterisk plays a channel's
playbacks one after another, so a prompt may wait behind another one (a prompt started over
REST, or one a bridge that died left on the channel). A playback must start within its media's
length plus the margin (``media.playback_margin_s``), and finish within the same time after it
started.

The NCCO's own playbacks have ids derived from the call and the action's place in it
(``CallContext.action_playback_ids``), so a bridge that resumes the call after a restart can
stop what its predecessor left playing before it plays the prompt again.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
from typing import TYPE_CHECKING

from bridge.ari.errors import AriError
from bridge.ari.gateway import new_id
from bridge.ari.waits import WaitOutcome, playback_event, playback_finished
from bridge.ari.waits import first as first_of

if TYPE_CHECKING:
    from bridge.media import MediaItem
    from bridge.ncco.context import CallContext

#: Copies queued per play request when looping until the call ends (loop=0).
ENDLESS_CHUNK = 10


class PlayResult(enum.Enum):
    DONE = "done"
    BARGED = "barged"  # a key press stopped it (bargeIn)
    FAILED = "failed"  # Asterisk could not play the media
    HANGUP = "hangup"
    TIMEOUT = "timeout"


async def play_item(
    call: CallContext, item: MediaItem, loop: int, barge_in: bool, what: str
) -> None:
    """Play a media-store file the way talk and stream do: to the end, or, with bargeIn,
    beside the rest of the NCCO (asynchronous by the reference) until a key stops it.
    A playback Asterisk could not do becomes an error event naming ``what``."""
    uri = call.services.media_uri(item.media_id)
    # Taken now: a barge-in prompt keeps the ids of its own action while the NCCO moves on.
    ids = call.action_playback_ids()
    if barge_in:
        call.run_beside(play(call, uri, loop, item.duration_s, True, ids), what)
        return
    result = await play(call, uri, loop, item.duration_s, False, ids)
    if result in (PlayResult.FAILED, PlayResult.TIMEOUT):
        call.error(f"{what}: Asterisk could not play it ({result.value})")


async def play(
    call: CallContext, media_uri: str, loop: int, duration_s: float, barge_in: bool,
    ids: tuple[str, str] | None = None,
) -> PlayResult:
    """Play ``media_uri`` ``loop`` times (0 = until the call ends). ``duration_s`` is the
    media's length in seconds. ``ids``: the two playback ids to alternate between (each
    chunk of a looping prompt starts after the previous one finished, so an id is never in
    use twice at once); random ids when None."""
    chunk = 0

    def next_id() -> str:
        nonlocal chunk
        chunk += 1
        return ids[(chunk - 1) % 2] if ids is not None else new_id()

    if loop == 0:
        while True:
            result = await _play_once(call, [media_uri] * ENDLESS_CHUNK,
                                      duration_s * ENDLESS_CHUNK, barge_in, next_id())
            if result is not PlayResult.DONE:
                return result
    return await _play_once(call, [media_uri] * loop, duration_s * loop, barge_in, next_id())


async def _play_once(
    call: CallContext, media: list[str], duration_s: float, barge_in: bool, playback_id: str
) -> PlayResult:
    margin_s = call.services.config.media.playback_margin_s
    finished = call.expect(playback_event("PlaybackFinished", playback_id))
    started = call.expect(playback_event("PlaybackStarted", playback_id))
    keyed = call.expect(lambda e: e.get("type") == "ChannelDtmfReceived") if barge_in else None
    keys = [keyed] if keyed is not None else []
    stopped = False
    try:
        try:
            await call.gateway.play(call.channel_id, media, playback_id)
        except AriError:
            if call.gone.is_set():
                return PlayResult.HANGUP
            raise
        # Queued behind whatever plays on the channel now; then its own length.
        first = await first_of([finished, started, *keys], duration_s + margin_s)
        if first is started:
            first = await first_of([finished, *keys], duration_s + margin_s)
        if first is None:
            return PlayResult.TIMEOUT
        outcome, event = first.future.result()
        if first is keyed:
            return PlayResult.BARGED if outcome is WaitOutcome.EVENT else PlayResult.HANGUP
        stopped = True
        if outcome is WaitOutcome.HANGUP:
            return PlayResult.HANGUP
        state = (event or {}).get("playback", {}).get("state")
        return PlayResult.FAILED if state == "failed" else PlayResult.DONE
    finally:
        for waiter in (finished, started, *keys):
            call.stop_waiting(waiter)
        if not stopped and not call.gone.is_set():
            # Cancelled (new NCCO), barged in or stuck: the prompt must not go on playing.
            with contextlib.suppress(AriError):
                await asyncio.shield(call.gateway.stop_playback(playback_id))


#: Seconds a resumed call waits for Asterisk to let go of a playback it was asked to stop.
LEFTOVER_STOP_WAIT_S = 2.0


async def stop_leftover_playbacks(call: CallContext) -> None:
    """On resume: stop the running action's playback that the previous bridge started,
    and wait (bounded) until Asterisk has finished with it, so that the action plays
    again at once, with the same ids, instead of queueing behind it."""
    for playback_id in call.action_playback_ids():
        finished = call.expect(playback_finished(playback_id))
        try:
            if await call.gateway.stop_playback(playback_id):
                call.log.info("call.leftover_playback_stopped", playback_id=playback_id)
                await finished.wait(LEFTOVER_STOP_WAIT_S)
        except AriError as exc:
            call.log.warning("call.leftover_playback_not_stopped", error=str(exc))
        finally:
            call.stop_waiting(finished)
