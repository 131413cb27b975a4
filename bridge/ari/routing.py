"""Reading the event websocket and routing each event to its owner.

The reader never awaits a handler: each event is handed to the owner of its channel, bridge or
playback target through a synchronous callback that must not block (call sessions resolve
futures and return), so one slow call cannot stall every other call's events.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import aiohttp
import orjson
import structlog

from bridge import metrics
from bridge.timeline import RECORDER

log = structlog.get_logger(__name__)

Event = dict[str, Any]
EventHandler = Callable[[Event], None]

#: The only event types the bridge asks Asterisk for (ARI's application event filter). A call
#: otherwise brings dozens of ChannelVarset, ChannelDialplan and similar events that Asterisk
#: would serialize and we would parse for nothing. Code that waits for a new type adds it here.
SUBSCRIBED_EVENTS = (
    "StasisStart", "StasisEnd", "ChannelDestroyed", "ChannelHangupRequest",
    "ChannelStateChange", "ChannelDtmfReceived", "Dial",
    "PlaybackStarted", "PlaybackFinished",
    "RecordingStarted", "RecordingFinished", "RecordingFailed",
    "ChannelEnteredBridge", "ChannelLeftBridge", "BridgeDestroyed",
    "ApplicationReplaced",
)


def route_key(event: Event) -> str | None:
    """The owner an event belongs to: 'channel:<id>' or 'bridge:<id>'."""
    for field in ("channel", "peer"):
        obj = event.get(field)
        if isinstance(obj, dict) and "id" in obj:
            return f"channel:{obj['id']}"
    for field in ("playback", "recording"):
        obj = event.get(field)
        if isinstance(obj, dict) and obj.get("target_uri"):
            return str(obj["target_uri"])
    bridge = event.get("bridge")
    if isinstance(bridge, dict) and "id" in bridge:
        return f"bridge:{bridge['id']}"
    return None


class EventRouter:
    """Owners by route key; ``on_stasis_start`` gets StasisStart events nobody owns yet (new
    inbound calls)."""

    def __init__(self, app: str, on_stasis_start: EventHandler) -> None:
        self.app = app
        self._on_stasis_start = on_stasis_start
        self._routes: dict[str, EventHandler] = {}
        self.events_routed = 0
        self.events_unrouted = 0

    def route(self, key: str, handler: EventHandler) -> None:
        """Send events for ``key`` ('channel:<id>' or 'bridge:<id>') to ``handler``."""
        self._routes[key] = handler

    def unroute(self, key: str) -> None:
        self._routes.pop(key, None)

    async def read(self, ws: aiohttp.ClientWebSocketResponse,
                   on_rest_response: Callable[[dict[str, Any]], None]) -> None:
        """Read until the websocket closes. Answers to REST requests sent over the same
        socket (``RESTResponse``) arrive interleaved with the events and go to
        ``on_rest_response``."""
        async for msg in ws:
            if msg.type is aiohttp.WSMsgType.TEXT:
                try:
                    message = orjson.loads(msg.data)
                except orjson.JSONDecodeError:
                    log.warning("ari.bad_event", size=len(msg.data))
                    continue
                if not isinstance(message, dict):
                    continue
                if message.get("type") == "RESTResponse":
                    on_rest_response(message)
                else:
                    metrics.ARI_EVENTS.inc()
                    self.dispatch(message)
            elif msg.type in (aiohttp.WSMsgType.ERROR, aiohttp.WSMsgType.CLOSED):
                break

    def dispatch(self, event: Event) -> None:
        if RECORDER.on:
            RECORDER.ari_event(event)
        key = route_key(event)
        handler = self._routes.get(key) if key else None
        try:
            if handler is not None:
                self.events_routed += 1
                handler(event)
            elif event.get("type") == "ApplicationReplaced":
                # Another client registered our application name: events now go there.
                log.error("ari.application_replaced", app=self.app)
            elif event.get("type") == "StasisStart":
                self.events_routed += 1
                self._on_stasis_start(event)
            else:
                self.events_unrouted += 1
        except Exception:
            # An owner's bug must never stop the reader that every other call depends on.
            log.exception("ari.handler_failed", event_type=event.get("type"), key=key)
