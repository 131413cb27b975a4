"""``onAnswer``: an NCCO (talk, stream, wait) the callee hears before being joined."""

from __future__ import annotations

import asyncio
import contextlib

from bridge.ari.errors import AriError
from bridge.ari.gateway import new_id
from bridge.ari.waits import playback_finished
from bridge.dial.dialer import Leg
from bridge.media import MediaError, resolve_voice
from bridge.ncco.actions.connect.leg_events import LegEvents
from bridge.ncco.context import CallContext
from bridge.ncco.models import Stream, Talk, Wait
from bridge.ncco.replies import reply_ncco
from bridge.webhooks import WebhookRequest


async def on_answer(call: CallContext, leg: Leg, url: str, events: LegEvents) -> None:
    """The callee hears the onAnswer NCCO (talk, stream, wait) before being joined."""
    params = {"uuid": leg.uuid, "conversation_uuid": call.conversation_uuid,
              "to": leg.target.to, "from": events.from_}
    result = await call.services.webhooks.send_with_fallback(
        WebhookRequest(url=url, method="GET", data=params), None, reply_ncco,
        call.services.timeouts(call.app, event=False), call.services.signer(call.app))
    if result.value is None:
        call.error(f"connect: onAnswer {url} failed: {result.error}; joining without it")
        return
    for index, step in enumerate(result.value):
        if leg.ended.is_set():
            return
        if isinstance(step, Wait):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(leg.ended.wait(), step.timeout)
            continue
        try:
            if isinstance(step, Talk):
                voice = resolve_voice(step.voice_name, step.language, step.style)
                item = await call.media.tts(step.text, voice, step.level)
            elif isinstance(step, Stream):
                item = await call.media.fetch(step.stream_url[0], step.level)
            else:
                call.error(f"connect: onAnswer [{index}].action {step.action!r} cannot run on "
                           "the callee before it is joined; skipped")
                continue
        except (MediaError, ValueError) as exc:
            call.error(f"connect: onAnswer [{index}]: {exc}")
            continue
        uri = call.services.media_uri(item.media_id)
        loops = max(getattr(step, "loop", 1), 1)
        await _play_to_leg(call, leg, [uri] * loops, item.duration_s * loops)


async def _play_to_leg(call: CallContext, leg: Leg, media: list[str], duration_s: float) -> None:
    playback_id = new_id()
    finished = leg.waits.expect(playback_finished(playback_id))  # subscribe before asking
    try:
        await call.gateway.play(leg.channel_id, media, playback_id)
        # Resolves at the end of the playback, or HANGUP when the leg ends first.
        await finished.wait(duration_s + 15)
    except AriError as exc:
        call.error(f"connect: onAnswer playback failed: {exc}")
    finally:
        leg.waits.cancel(finished)
