"""Keeping the connection to one Asterisk: connect, reconnect with backoff, probe, watchdog.

* aioari opens the connection (it loads Asterisk's swagger description, which also proves the
  credentials) and the event websocket. Its ``run()`` returns when the websocket closes, and
  it awaits every listener in turn inside the reader, so the gateway reads the websocket
  itself (bridge/ari/routing.py).
* The connection is kept forever: jittered, capped exponential backoff between full connect
  attempts, and on every (re)connect an ``on_connected`` callback reconciles what happened
  while we were away. While disconnected, a cheap probe (``GET /asterisk/ping`` over HTTP)
  runs every ``probe_interval_s``, and the moment Asterisk answers again after it did not, the
  bridge reconnects without waiting out the backoff. A watchdog pings Asterisk, because a
  half-open TCP connection would otherwise look alive forever.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import random
import time
from collections.abc import Callable, Coroutine
from typing import Any
from urllib.parse import urlparse

import aioari
import aiohttp
import structlog
from aioswagger11.http_client import ApiKeyAuthenticator, AsynchronousHttpClient

from bridge import metrics
from bridge.ari.errors import AriError
from bridge.ari.rest import HttpTransport, describe
from bridge.config import AriConfig

log = structlog.get_logger(__name__)


def reconnect_delay(failures: int, min_s: float, max_s: float,
                    rng: random.Random | None = None) -> float:
    """Seconds to wait before the next full connect attempt, after ``failures`` attempts
    failed in a row (0: the connection was just lost).

    The step doubles from ``min_s`` and is capped at ``max_s``; the delay is drawn between half
    the step and the whole step ("equal jitter"), so that bridges that lost the same Asterisk
    do not all come back in the same instant, yet none waits much less than the step."""
    exponent = min(max(failures, 0), 32)  # 2**32 * min_s is past any cap
    step = min(max_s, min_s * 2.0 ** exponent)
    return step / 2 + (rng or random).uniform(0, step / 2)


async def close_client(client: Any) -> None:
    """Close an aioari client and its HTTP session. aioari's ``close`` fails on a client
    whose ``init`` did not finish (Asterisk unreachable: it has no websocket set yet) before
    it reaches the session, which then leaked on every failed connect attempt."""
    try:
        await client.close()
    except Exception:
        with contextlib.suppress(Exception):
            await client.swagger.close()


class AriConnection:
    """The connection's life; the gateway (a subclass) says what happens on it: ``_opened``
    when the event websocket is open, ``_read`` while it is, ``_closed`` when it closed, and
    ``_ping`` for the watchdog."""

    def __init__(
        self,
        config: AriConfig,
        on_connected: Callable[[], Coroutine[Any, Any, None]] | None = None,
    ) -> None:
        self.config = config
        self.app = config.app
        self._on_connected = on_connected
        self._http: HttpTransport | None = None
        self._base = config.url.rstrip("/") + "/ari"
        self._task: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()
        self._stopping = False
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self.last_error: str | None = None
        self.connects = 0
        self.connect_attempts = 0  # full attempts (swagger load and event websocket)
        self.probes = 0  # cheap pings while disconnected
        self._disconnected_at: float | None = None  # monotonic; None while connected

    # Hooks for the gateway.
    async def _opened(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        """The event websocket is open; runs before the gateway counts as connected."""

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        raise NotImplementedError

    def _closed(self, reason: str) -> None:
        """The event websocket closed."""

    async def _ping(self) -> None:
        """Raise AriError when Asterisk does not answer."""
        raise NotImplementedError

    # ----------------------------------------------------------------- lifecycle
    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def wait_connected(self, timeout: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._connected.wait(), timeout)
        return self.connected

    async def start(self) -> None:
        credentials = f"{self.config.username}:{self.config.password.get_secret_value()}"
        session = aiohttp.ClientSession(
            headers={"Authorization": "Basic " + base64.b64encode(credentials.encode()).decode()},
            timeout=aiohttp.ClientTimeout(total=self.config.request_timeout_s),
            connector=aiohttp.TCPConnector(limit=64, keepalive_timeout=30),
        )
        self._http = HttpTransport(session, self._base)
        self._task = asyncio.create_task(self._run(), name="ari-gateway")

    async def stop(self) -> None:
        self._stopping = True
        if self._ws is not None:
            await self._ws.close()  # ends the reader; _run then closes the client itself
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), 2)
            except TimeoutError:
                self._task.cancel()  # it was waiting to reconnect: nothing open to close
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
        if self._http is not None:
            await self._http.session.close()

    async def _run(self) -> None:
        failures = 0
        while not self._stopping:
            client = self._new_client()
            try:
                if await self._connect_and_read(client):
                    failures = 0
            finally:
                # Shielded: a stop() arriving now must not leave aioari's session open.
                await asyncio.shield(close_client(client))
            if self._stopping:
                return
            if self._disconnected_at is None:
                self._disconnected_at = time.monotonic()
            delay = reconnect_delay(failures, self.config.reconnect_min_s,
                                    self.config.reconnect_max_s)
            failures += 1
            log.warning("ari.disconnected", error=self.last_error, retry_in_s=round(delay, 2))
            woken_by = await self._wait_to_reconnect(delay)
            log.debug("ari.reconnecting", woken_by=woken_by, attempt=failures)

    async def _wait_to_reconnect(self, delay_s: float) -> str:
        """Wait up to ``delay_s`` seconds before the next full attempt, probing ARI every
        ``probe_interval_s`` meanwhile. Returns "probe" when the wait ended because Asterisk
        answered again after it did not, "backoff" when the delay ran out.

        Only a change from unreachable to reachable ends the wait early: when ARI answers
        pings but the full connect fails anyway (a missing module, a refused websocket), the
        backoff still applies, so such a failure is never retried in a tight loop."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + delay_s
        seen_down = not await self._probe()
        while not self._stopping:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return "backoff"
            await asyncio.sleep(min(self.config.probe_interval_s, remaining))
            if self._stopping or loop.time() >= deadline:
                return "backoff"
            if await self._probe():
                if seen_down:
                    return "probe"
            else:
                seen_down = True
        return "backoff"

    async def _probe(self) -> bool:
        """A cheap check that ARI answers (``GET /asterisk/ping``, 200), bounded by a short
        timeout so a silent network does not hold the probe loop."""
        if self._http is None:
            return False
        self.probes += 1
        timeout = aiohttp.ClientTimeout(total=max(self.config.probe_interval_s, 1.0))
        try:
            async with self._http.session.get(self._base + "/asterisk/ping",
                                              timeout=timeout) as resp:
                await resp.read()
                return resp.status == 200
        except (aiohttp.ClientError, TimeoutError, OSError):
            return False

    async def _connect_and_read(self, client: Any) -> bool:
        """One connection's life. Returns True if it got as far as reading events."""
        self.connect_attempts += 1
        try:
            await client.init()
            ws = await client.swagger.events.eventWebsocket(app=self.app)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # aioari raises bare aiohttp/HTTP errors of many kinds
            self.last_error = describe(exc)
            return False
        self._ws = ws
        self.connects += 1
        self.last_error = None
        side_tasks: list[asyncio.Task[None]] = []
        try:
            await self._opened(ws)
            self._connected.set()
            down_s = (None if self._disconnected_at is None
                      else round(time.monotonic() - self._disconnected_at, 3))
            self._disconnected_at = None
            if self.connects > 1:
                metrics.ARI_RECONNECTS.inc()
            log.info("ari.connected", url=self.config.url, app=self.app,
                     connects=self.connects, down_s=down_s)
            side_tasks.append(asyncio.create_task(self._watchdog(ws), name="ari-watchdog"))
            if self._on_connected is not None:
                side_tasks.append(asyncio.create_task(self._on_connected(),
                                                      name="ari-reconcile"))
            await self._read(ws)
        finally:
            self._connected.clear()
            self._disconnected_at = time.monotonic()
            self._ws = None
            self._closed("event websocket closed")
            for task in side_tasks:
                task.cancel()
        self.last_error = "event websocket closed"
        return True

    def _new_client(self) -> Any:
        """An aioari client (what ``aioari.connect`` builds), kept in hand before ``init`` so
        that its HTTP session is closed even when Asterisk is unreachable."""
        host = urlparse(self.config.url).hostname or ""
        secret = f"{self.config.username}:{self.config.password.get_secret_value()}"
        http_client = AsynchronousHttpClient(auth=ApiKeyAuthenticator(host, secret))
        return aioari.Client(self.config.url, http_client)

    async def _watchdog(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        """Close the websocket when Asterisk stops answering, so ``_run`` reconnects."""
        while not ws.closed:
            await asyncio.sleep(self.config.ping_interval_s)
            try:
                await self._ping()
            except AriError as exc:
                log.warning("ari.ping_failed", error=exc.details)
                await ws.close()
                return
