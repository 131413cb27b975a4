"""The one place that talks to Asterisk over ARI: one Asterisk, one Stasis application.

The gateway is put together from three parts, each in its own module:

* bridge/ari/connection.py keeps the connection (connect, reconnect with backoff, probe,
  watchdog);
* bridge/ari/routing.py reads the event websocket and routes each event to its owner;
* bridge/ari/rest.py carries REST requests, over HTTP or over the event websocket itself
  (``ari.rest_transport``), and bridge/ari/verbs.py names them (answer, play, hangup, ...).

The transport is chosen on every connect. While the websocket is down (and before the first
connect), requests go over HTTP, like the probe and the reconnect path.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Coroutine
from typing import Any

import aiohttp
import structlog

from bridge import metrics
from bridge.ari.connection import AriConnection, reconnect_delay
from bridge.ari.errors import AriError, AriUnavailable
from bridge.ari.rest import (
    Transport,
    WebSocketTransport,
    asterisk_version,
    choose_transport,
)
from bridge.ari.routing import SUBSCRIBED_EVENTS, Event, EventHandler, EventRouter
from bridge.ari.verbs import AriVerbs
from bridge.config import AriConfig
from bridge.ids import random_uuid

__all__ = [
    "SUBSCRIBED_EVENTS",
    "AriGateway",
    "Event",
    "EventHandler",
    "new_id",
    "reconnect_delay",
]

log = structlog.get_logger(__name__)


def new_id() -> str:
    """Ids we hand to Asterisk (channels, playbacks, recordings): generated here, so that we
    can subscribe to a resource before asking Asterisk to create it."""
    return random_uuid()


class AriGateway(AriConnection, AriVerbs):
    """Connection to one Asterisk, one Stasis application.

    ``on_stasis_start`` receives StasisStart events for channels nobody owns yet (new inbound
    calls). ``on_connected`` runs (as its own task) after every successful (re)connect.
    """

    def __init__(
        self,
        config: AriConfig,
        on_stasis_start: EventHandler,
        on_connected: Callable[[], Coroutine[Any, Any, None]] | None = None,
    ) -> None:
        super().__init__(config, on_connected)
        self._router = EventRouter(config.app, on_stasis_start)
        self._ws_rest: WebSocketTransport | None = None
        #: The transport chosen at the last connect ('http' until then).
        self.rest_transport: Transport = "http"
        #: Requests sent per transport (what the choice saves can be checked here).
        self.requests_sent: dict[Transport, int] = {"http": 0, "websocket": 0}

    # -------------------------------------------------------------------- routing
    def route(self, key: str, handler: EventHandler) -> None:
        """Send events for ``key`` ('channel:<id>' or 'bridge:<id>') to ``handler``."""
        self._router.route(key, handler)

    def unroute(self, key: str) -> None:
        self._router.unroute(key)

    @property
    def events_routed(self) -> int:
        return self._router.events_routed

    @property
    def events_unrouted(self) -> int:
        return self._router.events_unrouted

    def _dispatch(self, event: Event) -> None:
        self._router.dispatch(event)

    # ------------------------------------------------------- connection hooks
    async def _opened(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        # Over HTTP: Asterisk's event filter also filters the answers to websocket requests,
        # so until it allows them (an application that outlived our last connection keeps
        # its filter), a request sent on the websocket might never be answered.
        await self._filter_events()
        self.rest_transport = await self._choose_transport()
        if self.rest_transport == "websocket":
            self._ws_rest = WebSocketTransport(ws, self.config.request_timeout_s)
        log.info("ari.rest_transport", transport=self.rest_transport,
                 setting=self.config.rest_transport)

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        await self._router.read(ws, self._rest_response)

    def _closed(self, reason: str) -> None:
        ws_rest, self._ws_rest = self._ws_rest, None
        if ws_rest is not None:
            ws_rest.fail_all(reason)

    async def _ping(self) -> None:
        await self.request("GET", "/asterisk/ping")

    def _rest_response(self, response: dict[str, Any]) -> None:
        if self._ws_rest is None or not self._ws_rest.resolve(response):
            log.debug("ari.unmatched_rest_response", request_id=response.get("request_id"),
                      status=response.get("status_code"), reason=response.get("reason_phrase"))

    async def _filter_events(self) -> None:
        """Ask Asterisk for only the event types we use (the app exists once the websocket
        is open), and for the answers to our websocket requests. Not fatal: without the
        filter we receive more, and ignore it."""
        allowed = [*SUBSCRIBED_EVENTS, "RESTResponse"]
        try:
            await self.request(
                "PUT", f"/applications/{self.app}/eventFilter",
                body={"allowed": [{"type": kind} for kind in allowed]},
                transport="http",
            )
        except AriError as exc:
            log.warning("ari.event_filter_failed", error=exc.details)

    async def _choose_transport(self) -> Transport:
        setting = self.config.rest_transport
        if setting != "auto":
            return choose_transport(setting, None)
        try:
            info = await self.request("GET", "/asterisk/info", {"only": "system"},
                                      transport="http")
        except AriError as exc:
            log.warning("ari.version_unknown", error=exc.details)
            return "http"
        system = info.get("system") if isinstance(info, dict) else None
        version = str(system.get("version", "")) if isinstance(system, dict) else ""
        return choose_transport(setting, asterisk_version(version))

    # ----------------------------------------------------------------------- REST
    async def request(
        self,
        method: str,
        path: str,
        params: dict[str, Any] | None = None,
        body: Any = None,
        channel_id: str | None = None,
        transport: Transport | None = None,
    ) -> Any:
        """One ARI request. A 404 (or 'not in Stasis') on ``channel_id`` raises ChannelGone.

        It goes over the transport chosen at connect, or over HTTP while the websocket is
        down; ``transport='http'`` insists on HTTP."""
        ws_rest = self._ws_rest if transport != "http" else None
        if ws_rest is None and self._http is None:
            raise AriUnavailable(method, path, None, "gateway not started")
        used: Transport = "websocket" if ws_rest is not None else "http"
        self.requests_sent[used] += 1
        started = time.perf_counter()
        try:
            if ws_rest is not None:
                return await ws_rest.request(method, path, params, body, channel_id)
            assert self._http is not None
            return await self._http.request(method, path, params, body, channel_id)
        finally:
            metrics.child(metrics.ARI_REQUEST_SECONDS, method, used).observe(
                time.perf_counter() - started)

    async def _get_bytes(self, path: str) -> bytes:
        if self._http is None:
            raise AriUnavailable("GET", path, None, "gateway not started")
        self.requests_sent["http"] += 1
        started = time.perf_counter()
        try:
            return await self._http.get_bytes(path)
        finally:
            metrics.ARI_REQUEST_SECONDS.labels(method="GET", transport="http").observe(
                time.perf_counter() - started)
