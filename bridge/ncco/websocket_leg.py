"""A WebSocket leg: the application's WebSocket and an ARI externalMedia channel whose audio
the relay carries to and from it (Vonage's protocol, see bridge/media/websocket_relay.py).

Two calls use it: an outbound call to a WebSocket (REST ``to.type: websocket``), where the
media channel *is* the call's channel and closing the WebSocket ends the call, and the NCCO
``connect`` to a WebSocket, where a media channel is bridged with the caller.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

from bridge.ari.errors import AriError
from bridge.ari.gateway import AriGateway
from bridge.dial.dialer import STASIS_WAIT_S
from bridge.media.websocket_relay import ASTERISK_FORMAT, RtpPeer, first_message, open_rtp, relay
from bridge.ncco.context import CallContext
from bridge.ncco.models import WebsocketEndpoint

#: Largest WebSocket message accepted from the application.
MAX_MESSAGE_BYTES = 1 << 20


class WebsocketLeg:
    """One WebSocket and its media channel ``channel_id`` (an id we choose)."""

    def __init__(self, gateway: AriGateway, endpoint: WebsocketEndpoint,
                 channel_id: str) -> None:
        self.gateway = gateway
        self.endpoint = endpoint
        self.channel_id = channel_id
        self.rate = int(endpoint.content_type.rsplit("rate=", 1)[1])
        self.frame_bytes = self.rate * 2 // 50  # 20 ms of 16-bit samples
        self.http: aiohttp.ClientSession | None = None
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.peer: RtpPeer | None = None

    async def connect(self, close_timeout_s: float | None = None) -> None:
        """Open the WebSocket and our RTP end. Raises aiohttp.ClientError or OSError."""
        self.http = aiohttp.ClientSession()
        options: dict[str, Any] = {"max_msg_size": MAX_MESSAGE_BYTES}
        if close_timeout_s is not None:
            options["timeout"] = aiohttp.ClientWSTimeout(ws_close=close_timeout_s)
        try:
            self.ws = await self.http.ws_connect(self.endpoint.uri, **options)
        except BaseException:
            await self.http.close()
            self.http = None
            raise
        self.peer = await open_rtp(self.rate)

    async def start_media(self, in_stasis: Callable[[], Awaitable[Any]],
                          before_media: Callable[[], Awaitable[None]] | None = None) -> None:
        """Greet the application, create the media channel and wait (bounded) for it to
        join our application (``in_stasis()``, a wait subscribed before). Raises AriError,
        or TimeoutError when the channel did not start."""
        assert self.ws is not None and self.peer is not None
        await self.ws.send_str(first_message(self.endpoint.content_type, self.endpoint.headers))
        if before_media is not None:
            await before_media()
        assert self.peer.transport is not None
        local_port = int(self.peer.transport.get_extra_info("sockname")[1])
        self.peer.remote = await self.gateway.external_media(
            self.channel_id, f"127.0.0.1:{local_port}", ASTERISK_FORMAT)
        try:
            await asyncio.wait_for(in_stasis(), STASIS_WAIT_S)
        except TimeoutError:
            raise TimeoutError("the media channel did not start") from None

    async def relay(self) -> str:
        """Carry audio both ways until either side stops; returns who stopped."""
        assert self.ws is not None and self.peer is not None
        return await relay(self.ws, self.peer, self.frame_bytes)

    async def close(self) -> None:
        """Close the WebSocket and RTP, and hang the media channel up (idempotent)."""
        if self.ws is not None:
            with contextlib.suppress(Exception):
                await self.ws.close()
        if self.http is not None:
            await self.http.close()
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()
        await self.gateway.hangup(self.channel_id)


async def open_websocket_call(call: CallContext, endpoint: WebsocketEndpoint) -> bool:
    """An outbound call to ``endpoint`` on the call's own channel; False (with an error
    event) when that fails. Closing the WebSocket ends the call."""
    leg = WebsocketLeg(call.gateway, endpoint, call.channel_id)
    try:
        await leg.connect()
    except (aiohttp.ClientError, OSError) as exc:
        call.error(f"websocket {endpoint.uri} unreachable: {exc}")
        return False
    call.gateway.route(f"channel:{call.channel_id}", call.on_event)
    joined = call.expect(lambda e: e.get("type") == "StasisStart")
    try:
        await leg.start_media(lambda: joined.event(None))
    except (AriError, TimeoutError, aiohttp.ClientError) as exc:
        call.error(f"websocket {endpoint.uri}: {exc}")
        await leg.close()
        return False

    async def pump() -> None:
        try:
            await leg.relay()
        finally:
            await asyncio.shield(leg.close())

    call.run_beside(pump(), "websocket-relay")
    return True


__all__ = ["WebsocketLeg", "open_websocket_call"]
