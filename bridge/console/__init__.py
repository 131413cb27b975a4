"""The operator console: a live page at ``/console`` and the same data under ``/v1/console``.

Off unless ``console.enabled`` (then none of its routes exist, and the call path's recorder
hooks stay off). See bridge/timeline.py for what is recorded and how it is bounded.

Routes (all behind the console's token or basic-auth users):

* ``GET /console``: the page (HTML, CSS and JavaScript inline; nothing fetched elsewhere);
* ``GET /v1/console/state``: everything the page shows, at once;
* ``GET /v1/console/calls``, ``/v1/console/calls/{uuid}``: live and ended calls, one call's
  timeline;
* ``GET /v1/console/agents``, ``/v1/console/webhooks``;
* ``GET /v1/console/events``: Server-Sent Events, ``state`` then ``update`` messages.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

from aiohttp import web

from bridge.config import Config
from bridge.console.auth import ConsoleAuth
from bridge.console.live import LiveFeed
from bridge.console.page import PAGE
from bridge.console.views import ConsoleViews
from bridge.timeline import RECORDER

if TYPE_CHECKING:
    from bridge.ari.gateway import AriGateway
    from bridge.calls.engine import CallEngine

__all__ = ["register_console"]


def register_console(app: web.Application, config: Config,
                     engine: Callable[[], CallEngine | None],
                     gateway: Callable[[], AriGateway | None]) -> None:
    """Add the console's routes to ``app`` when it is enabled (else nothing at all)."""
    settings = config.console
    if not settings.enabled:
        return
    auth = ConsoleAuth(settings)
    views = ConsoleViews(RECORDER, [d.name for d in config.agents.devices], engine, gateway)
    feed = LiveFeed(RECORDER, views, settings.update_interval_s)

    async def page(request: web.Request) -> web.Response:
        return web.Response(text=PAGE, content_type="text/html", charset="utf-8",
                            headers={"Cache-Control": "no-store",
                                     "Content-Security-Policy": "default-src 'self'; "
                                     "script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
                                     "img-src 'self' data:"})

    async def state(request: web.Request) -> web.Response:
        return web.json_response(await views.state())

    async def calls(request: web.Request) -> web.Response:
        return web.json_response({"live": RECORDER.live_calls(), "ended": RECORDER.ended_calls()})

    async def call(request: web.Request) -> web.Response:
        found = RECORDER.call(request.match_info["uuid"])
        if found is None:
            raise web.HTTPNotFound(text='{"error": "no such call (or no longer kept)"}',
                                   content_type="application/json")
        return web.json_response(found.detail())

    async def agents(request: web.Request) -> web.Response:
        return web.json_response({"agents": await views.agents()})

    async def webhooks(request: web.Request) -> web.Response:
        return web.json_response({"webhooks": RECORDER.webhook_health()})

    for path, handler in (
        ("/console", page), ("/v1/console/state", state), ("/v1/console/calls", calls),
        ("/v1/console/calls/{uuid}", call), ("/v1/console/agents", agents),
        ("/v1/console/webhooks", webhooks), ("/v1/console/events", feed.stream),
    ):
        app.router.add_get(path, auth.protect(handler))

    async def recording(app: web.Application) -> AsyncIterator[None]:
        RECORDER.configure(
            max_entries_per_call=settings.max_entries_per_call,
            max_live_calls=settings.max_live_calls, keep_ended=settings.keep_ended,
            keep_ended_s=settings.keep_ended_minutes * 60.0)
        RECORDER.enable()
        task = asyncio.create_task(feed.run(), name="console-feed")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            RECORDER.disable()

    async def close_streams(app: web.Application) -> None:
        feed.close_all()  # open pages would otherwise hold the shutdown up

    app.cleanup_ctx.append(recording)
    app.on_shutdown.append(close_streams)
