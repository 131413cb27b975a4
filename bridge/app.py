"""The aiohttp application: media for Asterisk, health, metrics, and the call engine behind them.

``create_app`` builds everything; the ARI gateway, the webhook client and the call store live
in the app's ``cleanup_ctx`` so they start after the HTTP server is bound (Asterisk fetches our
media from it) and stop before it closes. ``BridgeService`` runs one app on a port for the CLI,
the demo and the tests.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import structlog
from aiohttp import web

from bridge import metrics
from bridge.api import FileStore, RestApi
from bridge.ari.gateway import AriGateway
from bridge.calls.cluster import ClusterMember
from bridge.calls.engine import CallEngine
from bridge.calls.redis_store import RedisCallStore
from bridge.calls.stores import open_call_store
from bridge.config import Config
from bridge.console import register_console
from bridge.media import EspeakTts, MediaStore
from bridge.media.asr import PocketsphinxAsr
from bridge.preflight import describe_stores
from bridge.webhooks import WebhookClient

log = structlog.get_logger(__name__)

CONFIG_KEY = web.AppKey("config", Config)
ENGINE_KEY = web.AppKey("engine", CallEngine)
GATEWAY_KEY = web.AppKey("gateway", AriGateway)
MEDIA_KEY = web.AppKey("media", MediaStore)
BASE_URL_KEY = web.AppKey("base_url", list)  # one mutable cell: filled once the port is bound
API_KEY = web.AppKey("api", RestApi)
#: The cluster membership (one cell: None outside a cluster).
CLUSTER_KEY = web.AppKey("cluster", list)


def create_app(config: Config) -> web.Application:
    app = web.Application(client_max_size=config.http.max_body_bytes)
    app[CONFIG_KEY] = config
    app[BASE_URL_KEY] = [config.http.base_url()]
    app.router.add_get("/livez", livez)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/healthz", readyz)  # the older name, kept for existing probes
    app.router.add_get("/metrics", metrics_page)
    app.router.add_get("/media/{media_id}.wav", media_file)
    app[API_KEY] = RestApi(config, FileStore(config.recordings.path), lambda: app.get(ENGINE_KEY))
    app[API_KEY].register(app)
    # Before the components: the recorder is on before the first call can start.
    register_console(app, config, lambda: app.get(ENGINE_KEY), lambda: app.get(GATEWAY_KEY))
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
    owned_slots: set[int] = set()
    store = open_call_store(config, owned_slots if config.cluster.enabled else None)
    engine = CallEngine(config, webhooks, media, store, lambda: app[BASE_URL_KEY][0])
    engine.asr = PocketsphinxAsr()
    app[ENGINE_KEY] = engine
    app[MEDIA_KEY] = media
    for store_in_use in describe_stores(config):  # which database holds what, at a glance
        log.info("store.opened", **store_in_use)
    member: ClusterMember | None = None
    if config.cluster.enabled:
        # Claims a slot (waiting for one if all are held), then connects its links.
        assert isinstance(store, RedisCallStore)  # the configuration requires it
        member = ClusterMember(config, engine, store, owned_slots, lambda: app[BASE_URL_KEY][0])
        await member.start()
    else:
        for node in config.ari.node_configs():
            engine.add_link(node)
        # Events left by a previous process go out first, before new calls add theirs.
        await engine.events.start()
        for link in engine.links:
            await engine.start_link(link)
    app[GATEWAY_KEY] = engine.gateway
    app[CLUSTER_KEY] = [member]
    try:
        yield
    finally:
        if member is not None:
            await member.stop_beating()  # adopts nothing more
        await engine.shutdown()
        for link in list(engine.links):
            await engine.stop_link(link)
        if member is not None:
            # Only now that no call is driven from here: a survivor adopts the slots at once.
            await member.leave()
        # Undelivered events stay in the store for the next start.
        await engine.events.stop()
        await webhooks.close()
        await media.close()
        store.close()


#: Longest a store may take to answer a readiness write (seconds); slower counts as failed.
STORE_CHECK_TIMEOUT_S = 2.0


async def livez(request: web.Request) -> web.Response:
    """The process runs and its event loop answers: restart it only when this fails."""
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Ready for new calls: ARI connected, both stores writable, not draining (200); else 503.

    Every check is reported in ``checks`` (``ok``, and ``error`` when it failed) and the names
    of the failed ones in ``failed``, so an operator sees why at once."""
    engine = request.app.get(ENGINE_KEY)
    gateway = request.app.get(GATEWAY_KEY)
    if engine is None or gateway is None:  # the components are still starting
        return web.json_response(
            {"status": "unavailable", "failed": ["starting"],
             "checks": {"starting": {"ok": False, "error": "the bridge is starting"}}},
            status=503)

    async def call_store() -> None:
        engine.store.check_writable()

    errors: dict[str, str | None] = {
        "ari": _links_down(engine),
        "call_store": await _probe(call_store),
        "agent_store": await _probe(engine.agents.check_writable),
        "draining": "the bridge is shutting down (SIGTERM)" if engine.draining else None,
    }
    failed = [name for name, error in errors.items() if error is not None]
    body = {
        "status": "unavailable" if failed else "ok",
        "failed": failed,
        "checks": {name: {"ok": True} if error is None else {"ok": False, "error": error}
                   for name, error in errors.items()},
        "ari": "connected" if gateway.connected else "disconnected",
        "ari_error": gateway.last_error,
        "draining": engine.draining,
        "live_calls": len(engine.sessions),
        "calls_started": engine.calls_started,
        "links": [link.describe() for link in engine.links],
    }
    member = (request.app.get(CLUSTER_KEY) or [None])[0]
    if member is not None:
        body["cluster"] = member.describe()
    return web.json_response(body, status=503 if failed else 200)


def _links_down(engine: CallEngine) -> str | None:
    """None when every ARI link is connected; else which are not, and why."""
    down = engine.links_down()
    if not down:
        return None if engine.links else "not connected"
    if len(engine.links) == 1:
        return down[0].gateway.last_error or "not connected"
    return "; ".join(f"{link.name}: {link.gateway.last_error or 'not connected'}"
                     for link in down)


async def _probe(check: Callable[[], Awaitable[None]]) -> str | None:
    """None when ``check`` succeeds in time, else what went wrong."""
    try:
        await asyncio.wait_for(check(), STORE_CHECK_TIMEOUT_S)
    except TimeoutError:
        return f"no answer within {STORE_CHECK_TIMEOUT_S:g} s"
    except Exception as exc:  # sqlite3, redis and OS errors alike: report, never crash
        text = str(exc).strip()
        return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return None


async def metrics_page(request: web.Request) -> web.Response:
    """Prometheus' text format (bridge/metrics.py); unauthenticated, like the probes."""
    return web.Response(body=metrics.render(), headers={"Content-Type": metrics.CONTENT_TYPE})


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

    async def drain(self, timeout_s: float) -> None:
        """What SIGTERM does before :meth:`stop`: take no new calls (``/readyz`` says 503,
        inbound calls get SIP 503 from the dialplan's fallback, or in a cluster go on to the
        next slot), and deliver the events
        already queued, waiting at most ``timeout_s`` seconds. Live calls are left in
        Asterisk (``stop`` does not hang them up), for the next bridge to resume."""
        engine = self.app.get(ENGINE_KEY)
        if engine is None:  # never started: nothing to drain
            return
        engine.start_draining()
        await engine.flush_events(timeout_s)
