"""Live updates: one task sends what changed to every open page, over Server-Sent Events.

The task wakes every ``update_interval_s`` and does nothing while no page is open. Otherwise it
serialises one message with the changed calls, webhooks, agents and ARI state, once for all
pages; each page has a bounded queue (bridge/timeline.py), and one that falls behind is sent a
fresh ``state`` instead of its backlog.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import structlog
from aiohttp import web

from bridge.console.views import DEVICE_STATE_TTL_S, ConsoleViews
from bridge.timeline import RESYNC, Timeline

log = structlog.get_logger(__name__)

#: Seconds between keep-alive comments on an idle stream (proxies close silent connections).
KEEPALIVE_S = 15.0
#: Put in a page's queue when the bridge stops: the stream ends at once.
CLOSE = "close"


def sse(event: str, data: str) -> bytes:
    return f"event: {event}\ndata: {data}\n\n".encode()


class LiveFeed:
    def __init__(self, recorder: Timeline, views: ConsoleViews, interval_s: float) -> None:
        self.recorder = recorder
        self.views = views
        self.interval_s = interval_s
        self._last_ari: dict[str, Any] | None = None
        self._last_agents: list[dict[str, Any]] | None = None
        self._agents_at = 0.0
        self.published = 0

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            if not self.recorder.subscribers:
                continue
            try:
                message = await self.changes()
            except Exception:  # a bug here must not end the live view for good
                log.exception("console.update_failed")
                continue
            if message:
                self.recorder.publish(json.dumps(message, default=str))
                self.published += 1

    async def changes(self) -> dict[str, Any]:
        dirty = self.recorder.take_dirty()
        message: dict[str, Any] = {}
        for key in ("calls", "removed", "webhooks"):
            if dirty[key]:
                message[key] = dirty[key]
        ari = self.views.ari()
        if ari != self._last_ari:
            message["ari"] = self._last_ari = ari
        due = time.monotonic() - self._agents_at >= DEVICE_STATE_TTL_S
        if dirty["agents_changed"] or due:
            self._agents_at = time.monotonic()
            agents = await self.views.agents()
            if agents != self._last_agents:
                message["agents"] = self._last_agents = agents
        if message:
            message["now"] = time.time()
            message["counts"] = self.views.counts()
        return message

    def close_all(self) -> None:
        for sub in list(self.recorder.subscribers):
            while not sub.queue.empty():  # what it has not read yet no longer matters
                sub.queue.get_nowait()
            sub.queue.put_nowait(CLOSE)

    async def stream(self, request: web.Request) -> web.StreamResponse:
        """``GET /v1/console/events``: ``state`` (everything) first, then ``update``s."""
        resp = web.StreamResponse(headers={
            "Content-Type": "text/event-stream", "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no"})
        await resp.prepare(request)
        # Subscribed before the state is taken: nothing that changes in between is lost.
        sub = self.recorder.subscribe()
        try:
            await resp.write(sse("state", json.dumps(await self.views.state(), default=str)))
            while True:
                message = await sub.next(KEEPALIVE_S)
                if message is None:
                    await resp.write(b": keep-alive\n\n")
                elif message == CLOSE:
                    break
                elif message == RESYNC:
                    state = await self.views.state()
                    await resp.write(sse("state", json.dumps(state, default=str)))
                else:
                    await resp.write(sse("update", message))
        except (ConnectionResetError, ConnectionError):
            pass  # the page went away
        finally:
            self.recorder.unsubscribe(sub)
        return resp
