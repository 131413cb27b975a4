"""talk: text to speech, synthesized by the bridge and played by Asterisk from our server."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bridge.media import MediaError, resolve_voice
from bridge.ncco.actions._playback import play_item
from bridge.ncco.models import Action, NccoError, Talk

if TYPE_CHECKING:
    from bridge.ncco.context import CallContext


def check(action: Talk, index: int) -> None:
    try:
        resolve_voice(action.voice_name, action.language, action.style)
    except ValueError as exc:
        message = str(exc)
        field = next(
            (f for f in ("style", "language", "voiceName") if message.startswith(f)),
            "language" if action.language else "voiceName",
        )
        raise NccoError(str(exc), f"[{index}].{field}") from None


async def run(call: CallContext, action: Talk) -> list[Action] | None:
    voice = resolve_voice(action.voice_name, action.language, action.style)
    try:
        item = await call.media.tts(action.text, voice, action.level)
    except MediaError as exc:
        call.error(f"talk: speech synthesis failed: {exc}")
        return None
    await play_item(call, item, action.loop, action.barge_in, "talk")
    return None
