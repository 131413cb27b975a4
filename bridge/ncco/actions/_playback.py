"""Playing media on the call's channel: the part talk and stream share.

Subscribe first, then ask: the PlaybackFinished waiter exists before the play request is sent,
so a short file that finishes at once cannot be missed. Every wait has a deadline (the media's
length plus a margin) and a typed result.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
from typing import TYPE_CHECKING

from bridge.ari.errors import AriError
from bridge.ari.gateway import new_id
from bridge.calls.session import WaitOutcome

if TYPE_CHECKING:
    from bridge.calls.session import CallSession
    from bridge.media import MediaItem

#: Seconds allowed beyond the media's own length before a playback counts as stuck.
MARGIN_S = 15.0
#: Copies queued per play request when looping until the call ends (loop=0).
ENDLESS_CHUNK = 10


class PlayResult(enum.Enum):
    DONE = "done"
    BARGED = "barged"  # a key press stopped it (bargeIn)
    FAILED = "failed"  # Asterisk could not play the media
    HANGUP = "hangup"
    TIMEOUT = "timeout"


async def play_item(
    call: CallSession, item: MediaItem, loop: int, barge_in: bool, what: str
) -> None:
    """Play a media-store file the way talk and stream do: to the end, or, with bargeIn,
    beside the rest of the NCCO (asynchronous by the reference) until a key stops it.
    A playback Asterisk could not do becomes an error event naming ``what``."""
    uri = call.engine.media_uri(item.media_id)
    if barge_in:
        call.spawn(play(call, uri, loop, item.duration_s, True), what)
        return
    result = await play(call, uri, loop, item.duration_s, False)
    if result in (PlayResult.FAILED, PlayResult.TIMEOUT):
        call.error(f"{what}: Asterisk could not play it ({result.value})")


async def play(
    call: CallSession, media_uri: str, loop: int, duration_s: float, barge_in: bool
) -> PlayResult:
    """Play ``media_uri`` ``loop`` times (0 = until the call ends)."""
    if loop == 0:
        while True:
            result = await _play_once(call, [media_uri] * ENDLESS_CHUNK,
                                      duration_s * ENDLESS_CHUNK, barge_in)
            if result is not PlayResult.DONE:
                return result
    return await _play_once(call, [media_uri] * loop, duration_s * loop, barge_in)


async def _play_once(
    call: CallSession, media: list[str], duration_s: float, barge_in: bool
) -> PlayResult:
    playback_id = new_id()
    finished = call.expect(
        lambda e: e.get("type") == "PlaybackFinished"
        and e.get("playback", {}).get("id") == playback_id
    )
    keyed = call.expect(lambda e: e.get("type") == "ChannelDtmfReceived") if barge_in else None
    stopped = False
    try:
        try:
            await call.gateway.play(call.channel_id, media, playback_id)
        except AriError:
            if call.gone.is_set():
                return PlayResult.HANGUP
            raise
        waits = [asyncio.ensure_future(finished.wait(duration_s + MARGIN_S))]
        if keyed is not None:
            waits.append(asyncio.ensure_future(keyed.wait(None)))
        try:
            done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()
        first = done.pop().result()
        outcome, event = first
        if keyed is not None and keyed.future.done() and not finished.future.done():
            return PlayResult.BARGED if outcome is WaitOutcome.EVENT else PlayResult.HANGUP
        if outcome is WaitOutcome.HANGUP:
            stopped = True
            return PlayResult.HANGUP
        if outcome is WaitOutcome.TIMEOUT:
            return PlayResult.TIMEOUT
        stopped = True
        state = (event or {}).get("playback", {}).get("state")
        return PlayResult.FAILED if state == "failed" else PlayResult.DONE
    finally:
        call.forget(finished)
        if keyed is not None:
            call.forget(keyed)
        if not stopped and not call.gone.is_set():
            # Cancelled (new NCCO), barged in or stuck: the prompt must not go on playing.
            with contextlib.suppress(AriError):
                await asyncio.shield(call.gateway.stop_playback(playback_id))
