"""The applet's ``start_call_playback``: what the agent hears before the caller is joined."""

from __future__ import annotations

import asyncio
from typing import Any

from bridge.ari.errors import AriError
from bridge.ari.gateway import new_id
from bridge.ari.waits import playback_finished
from bridge.dial.dialer import Leg
from bridge.exotel.params import AppletParams
from bridge.media.errors import MediaError
from bridge.media.voices import resolve_voice
from bridge.ncco.context import CallContext

#: Seconds allowed beyond a playback's length.
PLAYBACK_MARGIN_S = 10.0


async def play_to_agent(call: CallContext, leg: Leg, params: AppletParams, log: Any) -> None:
    """start_call_playback: heard by the agent before the caller is joined (bounded)."""
    media = call.media
    try:
        if params.playback_type == "text":
            item = await media.tts(params.playback_value or "",
                                   resolve_voice(None, None, None))
        else:
            item = await media.fetch(params.playback_value or "")
    except MediaError as exc:
        call.error(f"connect applet: start_call_playback failed: {exc}")
        return
    playback_id = new_id()
    finished = leg.waits.expect(playback_finished(playback_id))  # subscribe before asking
    try:
        uri = call.services.media_uri(item.media_id)
        await call.gateway.play(leg.channel_id, [uri], playback_id)
        waits = [asyncio.ensure_future(finished.wait(None)),
                 asyncio.ensure_future(call.gone.wait())]
        try:
            await asyncio.wait(waits, timeout=item.duration_s + PLAYBACK_MARGIN_S,
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()
    except AriError as exc:
        log.warning("connect.playback_failed", error=str(exc))
    finally:
        leg.waits.cancel(finished)
