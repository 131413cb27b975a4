"""``connect`` to a WebSocket: the caller's audio relayed to and from the application."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime
from typing import Any

import aiohttp

from bridge.ari.errors import AriError
from bridge.ari.gateway import new_id
from bridge.dial.outcome import LegOutcome
from bridge.ncco.actions.connect.leg_events import LegEvents, report_failure
from bridge.ncco.context import CallContext
from bridge.ncco.models import Action, Connect, WebsocketEndpoint
from bridge.ncco.websocket_leg import WebsocketLeg
from bridge.webhooks import payloads as ev


async def connect_websocket(call: CallContext, action: Connect, endpoint: WebsocketEndpoint,
                             events: LegEvents) -> list[Action] | None:
    """Relay the caller's audio to and from the application's WebSocket until either ends."""
    gateway = call.gateway
    leg = WebsocketLeg(gateway, endpoint, new_id())
    try:
        await leg.connect(close_timeout_s=5)
    except (aiohttp.ClientError, OSError) as exc:
        call.error(f"connect: websocket {endpoint.uri} unreachable: {exc}")
        return await report_failure(call, action, events, LegOutcome.FAILED)
    bridge_id = new_id()
    in_stasis = asyncio.Event()

    def on_media_event(event: dict[str, Any]) -> None:
        if event.get("type") == "StasisStart":
            in_stasis.set()

    gateway.route(f"channel:{leg.channel_id}", on_media_event)
    answered = datetime.now(UTC)
    try:
        # Like a created channel, the media channel joins our application a moment after
        # the request returns; adding it to a bridge before that gets 422.
        await leg.start_media(in_stasis.wait, before_media=call.ensure_answered)
        events.send("answered")
        await gateway.create_bridge(bridge_id, "mixing", f"websocket-{call.uuid}")
        await gateway.add_to_bridge(bridge_id, call.channel_id)
        await gateway.add_to_bridge(bridge_id, leg.channel_id)
        pump = asyncio.ensure_future(leg.relay())
        ended = asyncio.ensure_future(call.gone.wait())
        try:
            await asyncio.wait([pump, ended], timeout=action.limit,
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            pump.cancel()
            ended.cancel()
    except TimeoutError:
        call.error("connect: Asterisk's media channel for the websocket did not start")
    finally:
        await asyncio.shield(_close_websocket(call, leg, bridge_id))
        gateway.unroute(f"channel:{leg.channel_id}")
        by = "platform" if call.gone.is_set() else "user"
        events.send("completed",
                    **ev.completed_extra(answered, answered, datetime.now(UTC), by))
    return None


async def _close_websocket(call: CallContext, leg: WebsocketLeg, bridge_id: str) -> None:
    await leg.close()
    if not call.gone.is_set():
        await call.gateway.remove_from_bridge(bridge_id, call.channel_id)
    with contextlib.suppress(AriError):
        await call.gateway.destroy_bridge(bridge_id)
