"""An outbound call to a WebSocket (REST ``POST /v1/calls`` with ``to.type: websocket``).

The call's channel is an ARI externalMedia channel; the relay carries its audio to and from the
application's WebSocket (Vonage's protocol, see bridge/media/websocket_relay.py), so the NCCO's
talk and stream actions are heard by the application. Closing the WebSocket ends the call.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

import aiohttp

from bridge.ari.errors import AriError
from bridge.dial.dialer import STASIS_WAIT_S
from bridge.media.websocket_relay import ASTERISK_FORMAT, first_message, open_rtp, relay
from bridge.ncco.models import WebsocketEndpoint

if TYPE_CHECKING:
    from bridge.calls.session import CallSession


async def open_websocket_leg(call: CallSession, endpoint: WebsocketEndpoint) -> bool:
    """Connect the call to ``endpoint``; False (with an error event) when that fails."""
    rate = int(endpoint.content_type.rsplit("rate=", 1)[1])
    http = aiohttp.ClientSession()
    try:
        ws = await http.ws_connect(endpoint.uri, max_msg_size=1 << 20)
    except (aiohttp.ClientError, OSError) as exc:
        await http.close()
        call.error(f"websocket {endpoint.uri} unreachable: {exc}")
        return False
    peer = await open_rtp(rate)
    assert peer.transport is not None
    local_port = int(peer.transport.get_extra_info("sockname")[1])
    call.gateway.route(f"channel:{call.channel_id}", call.on_event)
    joined = call.expect(lambda e: e.get("type") == "StasisStart")
    try:
        await ws.send_str(first_message(endpoint.content_type, endpoint.headers))
        peer.remote = await call.gateway.external_media(
            call.channel_id, f"127.0.0.1:{local_port}", ASTERISK_FORMAT)
        outcome, _ = await joined.wait(STASIS_WAIT_S)
        if outcome.value != "event":
            raise TimeoutError("the media channel did not start")
    except (AriError, TimeoutError, aiohttp.ClientError) as exc:
        call.error(f"websocket {endpoint.uri}: {exc}")
        await _close(call, ws, http, peer)
        return False

    async def pump() -> None:
        try:
            await relay(ws, peer, rate * 2 // 50)
        finally:
            await asyncio.shield(_close(call, ws, http, peer))

    call.spawn(pump(), "websocket-relay")
    return True


async def _close(call: CallSession, ws: aiohttp.ClientWebSocketResponse,
                 http: aiohttp.ClientSession, peer: object) -> None:
    with contextlib.suppress(Exception):
        await ws.close()
    await http.close()
    transport = getattr(peer, "transport", None)
    if transport is not None:
        transport.close()
    await call.gateway.hangup(call.channel_id)
