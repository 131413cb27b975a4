"""The typed ARI operations the bridge uses, one method per request.

Each is a thin wrapper over ``request`` (whichever transport carries it), named for what it
does and turning Asterisk's answers into what callers act on: ChannelGone on channel
operations, "already gone" treated as done where that is what the caller means.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from typing import Any

from bridge.ari.errors import AriError, ChannelGone
from bridge.ari.rest import Transport

#: Requests outside a call's path (provisioning, the reconciliation after a reconnect) go
#: over HTTP: Asterisk carries out the websocket's requests one after another, and a burst
#: of these, or one large answer, would hold up the calls' own requests behind them.
_CONTROL: Transport = "http"


class AriVerbs:
    """Mixed into the gateway, which provides ``app``, ``request`` and ``_get_bytes``."""

    app: str

    async def request(
        self,
        method: str,
        path: str,
        params: dict[str, Any] | None = None,
        body: Any = None,
        channel_id: str | None = None,
        transport: Transport | None = None,
    ) -> Any:
        raise NotImplementedError

    async def _get_bytes(self, path: str) -> bytes:
        raise NotImplementedError

    # Channel operations; each raises ChannelGone when the channel has hung up.
    async def answer(self, channel_id: str) -> None:
        await self.request("POST", f"/channels/{channel_id}/answer", channel_id=channel_id)

    async def ring(self, channel_id: str) -> None:
        await self.request("POST", f"/channels/{channel_id}/ring", channel_id=channel_id)

    async def hangup(self, channel_id: str, reason: str = "normal") -> None:
        """Hang up; a channel that is already gone is not an error here."""
        with contextlib.suppress(ChannelGone):
            await self.request(
                "DELETE", f"/channels/{channel_id}", {"reason": reason}, channel_id=channel_id
            )

    async def play(self, channel_id: str, media: Iterable[str], playback_id: str) -> None:
        await self.request(
            "POST",
            f"/channels/{channel_id}/play/{playback_id}",
            {"media": list(media)},
            channel_id=channel_id,
        )

    async def stop_playback(self, playback_id: str) -> bool:
        """Stop a playback (or cancel it, while it waits in the channel's queue). Returns False
        when there was none: one that already finished is fine."""
        try:
            await self.request("DELETE", f"/playbacks/{playback_id}")
        except AriError as exc:
            if exc.status != 404:
                raise
            return False
        return True

    async def create_channel(
        self, channel_id: str, endpoint: str, app_args: list[str], variables: dict[str, str]
    ) -> None:
        """Create an outgoing channel in our application without dialling it yet.

        The leg carries our application's name (``ARI_BRIDGE_APP``): a leg sent to the
        dialplan (answering-machine detection) returns to the application that sent it, which
        in a cluster is one slot's of several."""
        await self.request(
            "POST", "/channels/create",
            {"endpoint": endpoint, "app": self.app, "appArgs": app_args,
             "channelId": channel_id},
            body={"variables": {"ARI_BRIDGE_APP": self.app, **variables}},
        )

    async def dial(self, channel_id: str, caller_id: str | None, timeout_s: int) -> None:
        """Dial a created channel; Asterisk stops ringing after ``timeout_s`` seconds."""
        await self.request(
            "POST", f"/channels/{channel_id}/dial",
            {"caller": caller_id, "timeout": timeout_s}, channel_id=channel_id,
        )

    async def external_media(
        self, channel_id: str, external_host: str, audio_format: str
    ) -> tuple[str, int]:
        """Create an externalMedia channel sending RTP to ``external_host``; returns the
        address and port where Asterisk listens for our RTP."""
        channel = await self.request(
            "POST", "/channels/externalMedia",
            {"app": self.app, "channelId": channel_id, "external_host": external_host,
             "format": audio_format, "encapsulation": "rtp", "transport": "udp",
             "direction": "both"},
        )
        variables = channel.get("channelvars", {}) if isinstance(channel, dict) else {}
        return (str(variables.get("UNICASTRTP_LOCAL_ADDRESS", "127.0.0.1")),
                int(variables.get("UNICASTRTP_LOCAL_PORT", 0)))

    async def continue_in_dialplan(self, channel_id: str, context: str, extension: str = "s",
                                   label: str | None = None) -> None:
        """Send a channel to the dialplan (it may come back with a new StasisStart): at
        priority 1, or at ``label`` of that extension."""
        target: dict[str, Any] = {"context": context, "extension": extension}
        target.update({"label": label} if label else {"priority": 1})
        await self.request("POST", f"/channels/{channel_id}/continue", target,
                           channel_id=channel_id)

    async def send_dtmf(self, channel_id: str, digits: str, between_ms: int = 100) -> None:
        """Send RFC 4733 digits; 'w' in ``digits`` is a 500 ms pause."""
        await self.request(
            "POST", f"/channels/{channel_id}/dtmf", {"dtmf": digits, "between": between_ms},
            channel_id=channel_id,
        )

    async def create_bridge(self, bridge_id: str, kind: str = "mixing", name: str = "") -> None:
        await self.request("POST", f"/bridges/{bridge_id}", {"type": kind, "name": name or None})

    async def add_to_bridge(self, bridge_id: str, channel_id: str) -> None:
        await self.request(
            "POST", f"/bridges/{bridge_id}/addChannel", {"channel": channel_id},
            channel_id=channel_id,
        )

    async def remove_from_bridge(self, bridge_id: str, channel_id: str) -> None:
        with contextlib.suppress(AriError):
            await self.request(
                "POST", f"/bridges/{bridge_id}/removeChannel", {"channel": channel_id}
            )

    async def destroy_bridge(self, bridge_id: str) -> None:
        """Destroy a bridge; one that is already gone is fine."""
        try:
            await self.request("DELETE", f"/bridges/{bridge_id}")
        except AriError as exc:
            if exc.status != 404:
                raise

    async def mute(self, channel_id: str, direction: str) -> None:
        """Mute a channel: 'in' (what it sends), 'out' (what it hears) or 'both'."""
        await self.request(
            "POST", f"/channels/{channel_id}/mute", {"direction": direction},
            channel_id=channel_id,
        )

    async def unmute(self, channel_id: str, direction: str) -> None:
        await self.request(
            "DELETE", f"/channels/{channel_id}/mute", {"direction": direction},
            channel_id=channel_id,
        )

    # Recordings (speech input): recorded on Asterisk, fetched over ARI, no shared filesystem.
    async def record(
        self, channel_id: str, name: str, *, fmt: str = "wav", max_duration_s: int = 0,
        max_silence_s: int = 0, if_exists: str = "overwrite", beep: bool = False,
        terminate_on: str = "none",
    ) -> None:
        """Start recording what the channel sends (RecordingStarted/Finished/Failed follow)."""
        await self.request(
            "POST", f"/channels/{channel_id}/record",
            {"name": name, "format": fmt, "maxDurationSeconds": max_duration_s,
             "maxSilenceSeconds": max_silence_s, "ifExists": if_exists, "beep": beep,
             "terminateOn": terminate_on},
            channel_id=channel_id,
        )

    async def stop_recording(self, name: str) -> None:
        """Stop a live recording and keep what it has; one that already ended is fine."""
        try:
            await self.request("POST", f"/recordings/live/{name}/stop")
        except AriError as exc:
            if exc.status != 404:
                raise

    async def cancel_recording(self, name: str) -> None:
        """Stop a live recording and discard it; one that already ended is fine."""
        try:
            await self.request("DELETE", f"/recordings/live/{name}")
        except AriError as exc:
            if exc.status != 404:
                raise

    async def stored_recording_file(self, name: str) -> bytes:
        """The bytes of a stored recording (GET /recordings/stored/{name}/file), always over
        HTTP: a websocket message carries text, not audio."""
        return await self._get_bytes(f"/recordings/stored/{name}/file")

    async def delete_stored_recording(self, name: str) -> None:
        """Delete a stored recording; one that is already gone is fine."""
        try:
            await self.request("DELETE", f"/recordings/stored/{name}")
        except AriError as exc:
            if exc.status != 404:
                raise

    # Snoop channels and bridge media (record, conversation).
    async def snoop(self, channel_id: str, snoop_id: str, spy: str, app_args: list[str]) -> None:
        """A snoop channel on ``channel_id`` in our application: ``spy`` 'in' carries what
        the channel sends, 'out' what it hears. Route ``channel:<snoop_id>`` first."""
        await self.request(
            "POST", f"/channels/{channel_id}/snoop/{snoop_id}",
            {"spy": spy, "whisper": "none", "app": self.app, "appArgs": app_args},
            channel_id=channel_id,
        )

    async def record_bridge(
        self, bridge_id: str, name: str, *, fmt: str = "wav", max_duration_s: int = 0,
        if_exists: str = "overwrite",
    ) -> None:
        """Record a bridge's mix (events carry target_uri 'bridge:<id>')."""
        await self.request(
            "POST", f"/bridges/{bridge_id}/record",
            {"name": name, "format": fmt, "maxDurationSeconds": max_duration_s,
             "ifExists": if_exists},
        )

    async def play_on_bridge(self, bridge_id: str, media: Iterable[str],
                             playback_id: str) -> None:
        await self.request(
            "POST", f"/bridges/{bridge_id}/play/{playback_id}", {"media": list(media)}
        )

    async def start_moh(self, channel_id: str, moh_class: str = "default") -> None:
        """Music on hold on one channel (Exotel Connect: the caller while agents ring)."""
        await self.request("POST", f"/channels/{channel_id}/moh", {"mohClass": moh_class},
                           channel_id=channel_id)

    async def stop_moh(self, channel_id: str) -> None:
        with contextlib.suppress(AriError):
            await self.request("DELETE", f"/channels/{channel_id}/moh")

    async def endpoint_state(self, tech: str, resource: str) -> dict[str, Any] | None:
        """``GET /endpoints/{tech}/{resource}`` (state online/offline, channel_ids), or None
        when Asterisk has no such endpoint."""
        try:
            result = await self.request("GET", f"/endpoints/{tech}/{resource}")
        except AriError as exc:
            if exc.status == 404:
                return None
            raise
        return dict(result) if isinstance(result, dict) else None

    async def put_dynamic_config(self, config_class: str, object_type: str, object_id: str,
                                 fields: dict[str, str]) -> None:
        """Create or update a sorcery object at run time
        (``PUT /asterisk/config/dynamic/{class}/{type}/{id}``): agents' PJSIP devices. The
        object type needs a writable wizard (asterisk-config/sorcery.conf). Asterisk echoes
        every field back, secrets included, so the answer is dropped here unread."""
        await self.request(
            "PUT", f"/asterisk/config/dynamic/{config_class}/{object_type}/{object_id}",
            body={"fields": [{"attribute": k, "value": v} for k, v in fields.items()]},
            transport=_CONTROL,
        )

    async def delete_dynamic_config(self, config_class: str, object_type: str,
                                    object_id: str) -> None:
        """Delete a sorcery object created at run time; one that is already gone is fine."""
        try:
            await self.request(
                "DELETE", f"/asterisk/config/dynamic/{config_class}/{object_type}/{object_id}",
                transport=_CONTROL)
        except AriError as exc:
            if exc.status != 404:
                raise

    async def app_channel_ids(self) -> list[str]:
        """Channels currently in our Stasis application (what a restart must pick up)."""
        info = await self.request("GET", f"/applications/{self.app}", transport=_CONTROL)
        ids = []
        for source in info.get("channel_ids", []) if isinstance(info, dict) else []:
            ids.append(str(source))
        return ids
