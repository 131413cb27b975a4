"""stream: an mp3 or wav from a URL, fetched and converted by the bridge, played by Asterisk.

The bridge fetches the file itself (rather than handing the URL to Asterisk) so that a bad URL
or a file that is not audio becomes an error event naming the cause, instead of silence.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bridge.media import MediaError
from bridge.ncco.actions._playback import play_item
from bridge.ncco.models import Action, Stream

if TYPE_CHECKING:
    from bridge.ncco.context import CallContext


async def run(call: CallContext, action: Stream) -> list[Action] | None:
    url = action.stream_url[0]
    try:
        item = await call.media.fetch(url, action.level)
    except MediaError as exc:
        call.error(f"stream: cannot play {url}: {exc.cause}")
        return None
    await play_item(call, item, action.loop, action.barge_in, f"stream {url}")
    return None
