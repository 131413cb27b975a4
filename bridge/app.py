"""The aiohttp application: media for Asterisk, health, and the call engine behind them.

``create_app`` builds everything; the ARI gateway, the webhook client and the call store live
in the app's ``cleanup_ctx`` so they start after the HTTP server is bound (Asterisk fetches our
media from it) and stop before it closes. ``BridgeService`` runs one app on a port for the CLI,
the demo and the tests.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from typing import Any

import structlog
from aiohttp import web

from bridge.api import FileStore, RestApi
from bridge.ari.gateway import AriGateway
from bridge.calls.engine import CallEngine
from bridge.calls.store import CallStore
from bridge.config import Config
from bridge.media import EspeakTts, MediaStore
from bridge.media.asr import PocketsphinxAsr
from bridge.webhooks import WebhookClient

log = structlog.get_logger(__name__)

CONFIG_KEY = web.AppKey("config", Config)
ENGINE_KEY = web.AppKey("engine", CallEngine)
GATEWAY_KEY = web.AppKey("gateway", AriGateway)
MEDIA_KEY = web.AppKey("media", MediaStore)
BASE_URL_KEY = web.AppKey("base_url", list)  # one mutable cell: filled once the port is bound
API_KEY = web.AppKey("api", RestApi)


def create_app(config: Config) -> web.Application:
    app = web.Application(client_max_size=config.http.max_body_bytes)
    app[CONFIG_KEY] = config
    app[BASE_URL_KEY] = [config.http.base_url()]
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/media/{media_id}.wav", media_file)
    app[API_KEY] = RestApi(config, FileStore(config.recordings.path), lambda: app.get(ENGINE_KEY))
    app[API_KEY].register(app)
    app.cleanup_ctx.append(_components)
    return app


async def _components(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG_KEY]
    webhooks = WebhookClient(max_body_bytes=config.http.max_body_bytes)
    await webhooks.start()
    media = MediaStore(
        config.media.path,
        EspeakTts(),
        max_download_bytes=config.media.max_download_bytes,
        fetch_timeout_s=config.media.fetch_timeout_s,
    )
    store = CallStore(config.store.path)
    engine_cell: list[CallEngine] = []

    def on_stasis_start(event: dict[str, Any]) -> None:
        engine_cell[0].on_stasis_start(event)

    async def on_connected() -> None:
        # Calls first (resume or end what is in Stasis), then the agents' SIP devices, which
        # a restarted Asterisk has forgotten (they live in its memory wizard).
        try:
            await engine_cell[0].reconcile()
        except Exception:  # a bug there must not leave the devices unprovisioned
            log.exception("reconcile.crashed")
        await engine_cell[0].devices.provision()

    gateway = AriGateway(config.ari, on_stasis_start, on_connected)
    engine = CallEngine(config, gateway, webhooks, media, store, lambda: app[BASE_URL_KEY][0])
    engine.asr = PocketsphinxAsr()
    engine_cell.append(engine)
    app[ENGINE_KEY] = engine
    app[GATEWAY_KEY] = gateway
    app[MEDIA_KEY] = media
    # Events left by a previous process go out first, before new calls add theirs.
    await engine.events.start()
    await gateway.start()
    await engine.recordings.start()
    try:
        yield
    finally:
        await engine.shutdown()
        await engine.recordings.close()
        await engine.conferences.shutdown()
        await gateway.stop()
        # Undelivered events stay in the store for the next start.
        await engine.events.stop()
        await webhooks.close()
        await media.close()
        store.close()


async def healthz(request: web.Request) -> web.Response:
    """Healthy only while the ARI connection is up: a bridge without Asterisk takes no calls."""
    gateway = request.app[GATEWAY_KEY]
    engine = request.app[ENGINE_KEY]
    body = {
        "status": "ok" if gateway.connected else "unavailable",
        "ari": "connected" if gateway.connected else "disconnected",
        "ari_error": gateway.last_error,
        "live_calls": len(engine.sessions),
        "calls_started": engine.calls_started,
    }
    return web.json_response(body, status=200 if gateway.connected else 503)


async def media_file(request: web.Request) -> web.StreamResponse:
    """Generated and converted audio, fetched by Asterisk's HTTP media cache.

    Ids are content hashes, so a file never changes: Asterisk may cache it for good."""
    path = request.app[MEDIA_KEY].path_for(request.match_info["media_id"])
    if path is None:
        raise web.HTTPNotFound(text="no such media")
    return web.FileResponse(
        path,
        headers={"Content-Type": "audio/wav", "Cache-Control": "public, max-age=31536000, "
                 "immutable"},
    )


class BridgeService:
    """One running bridge: HTTP server bound, ARI gateway connecting."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.app = create_app(config)
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    @property
    def base_url(self) -> str:
        return str(self.app[BASE_URL_KEY][0])

    @property
    def engine(self) -> CallEngine:
        return self.app[ENGINE_KEY]

    @property
    def media(self) -> MediaStore:
        return self.app[MEDIA_KEY]

    @property
    def gateway(self) -> AriGateway:
        return self.app[GATEWAY_KEY]

    async def start(self) -> None:
        # Bind the socket before the app starts, so the public URL (with an ephemeral port,
        # if one was asked for) is known before ARI connects and calls ask for media.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.config.http.host, self.config.http.port))
        self.port = int(sock.getsockname()[1])
        self.app[BASE_URL_KEY][0] = self.config.http.base_url(self.port)
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await self._runner.setup()
        await web.SockSite(self._runner, sock).start()
        log.info("bridge.listening", url=self.base_url)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def serve_forever(self) -> None:
        await self.start()
        try:
            await asyncio.Event().wait()
        finally:
            await self.stop()
