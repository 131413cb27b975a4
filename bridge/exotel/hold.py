"""What the caller hears while the applet's agents ring: Exotel's ``music_on_hold``."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from bridge.ari.errors import AriError
from bridge.ari.gateway import new_id
from bridge.ari.waits import playback_finished
from bridge.exotel.params import AppletParams
from bridge.media.errors import MediaError
from bridge.ncco.context import CallContext

#: Seconds allowed beyond a playback's length.
PLAYBACK_MARGIN_S = 10.0


class HoldMusic:
    """Started for the first attempt and kept across attempts; stopped when an agent is
    joined or the applet ends."""

    def __init__(self, call: CallContext, log: Any) -> None:
        self.call = call
        self.log = log
        self._playback: str | None = None
        self._moh = False
        self._task: asyncio.Task[None] | None = None

    async def start(self, params: AppletParams) -> None:
        """What the caller hears while agents ring (kept across attempts)."""
        if self._moh or self._playback or self._task:
            return
        gateway = self.call.gateway
        try:
            if params.moh_type == "default_tone":
                await gateway.start_moh(self.call.channel_id, "default")
                self._moh = True
            elif params.moh_type == "custom_tone" and params.moh_url:
                item = await self.call.media.fetch(params.moh_url)
                uri = self.call.services.media_uri(item.media_id)
                self._task = asyncio.ensure_future(self._loop(uri, item.duration_s))
            else:
                # operator_tone, or nothing asked: the ringback an operator plays.
                self._playback = new_id()
                await gateway.play(self.call.channel_id, ["tone:ring"], self._playback)
        except (AriError, MediaError) as exc:
            self.log.warning("connect.hold_failed", error=str(exc))

    async def _loop(self, uri: str, duration_s: float) -> None:
        # A few copies per request: the media list travels in the query string.
        copies = 5
        while not self.call.gone.is_set():
            playback_id = new_id()
            self._playback = playback_id
            finished = self.call.expect(playback_finished(playback_id))
            try:
                await self.call.gateway.play(self.call.channel_id, [uri] * copies, playback_id)
                _, event = await finished.wait(duration_s * copies + PLAYBACK_MARGIN_S)
                if (event or {}).get("playback", {}).get("state") == "failed":
                    self.log.warning("connect.hold_music_failed", uri=uri)
                    return
            except AriError as exc:
                self.log.warning("connect.hold_music_failed", error=str(exc))
                return
            finally:
                self.call.stop_waiting(finished)

    async def stop(self) -> None:
        gateway = self.call.gateway
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        playback, self._playback = self._playback, None
        if playback is not None:
            with contextlib.suppress(AriError):
                await gateway.stop_playback(playback)
        if self._moh:
            self._moh = False
            await gateway.stop_moh(self.call.channel_id)
