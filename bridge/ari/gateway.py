"""The one place that talks to Asterisk over ARI.

Why it looks the way it does:

* aioari opens the connection (it loads Asterisk's swagger description, which also proves the
  credentials) and the event websocket. But its ``run()`` returns when the websocket closes and
  awaits every listener in turn inside the reader, so one slow handler would stall every call.
  We therefore read the websocket ourselves and only *route* events: each event is handed to
  the owner of its channel, bridge or playback target through a synchronous callback that
  must not block (call sessions resolve futures and return).
* REST requests on the hot path (answer, play, hangup, ...) go through one pooled aiohttp
  session instead of aioari's swagger operations: the swagger client re-validates every
  request and costs a measurable share of a call's CPU (see docs/benchmarks.md).
* The connection is kept forever: jittered, capped exponential backoff between full connect
  attempts, and on every (re)connect an ``on_connected`` callback reconciles what happened
  while we were away. While disconnected, a cheap probe (``GET /asterisk/ping``) runs every
  ``probe_interval_s``, and the moment Asterisk answers again after it did not, the bridge
  reconnects without waiting out the backoff. A watchdog pings Asterisk, because a half-open
  TCP connection would otherwise look alive forever.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import random
import time
import uuid
from collections.abc import Callable, Coroutine, Iterable
from typing import Any
from urllib.parse import urlparse

import aioari
import aiohttp
import structlog
from aioswagger11.http_client import ApiKeyAuthenticator, AsynchronousHttpClient

from bridge import metrics
from bridge.ari.errors import AriError, AriUnavailable, ChannelGone
from bridge.config import AriConfig
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


def new_id() -> str:
    """Ids we hand to Asterisk (channels, playbacks, recordings): generated here, so that we
    can subscribe to a resource before asking Asterisk to create it."""
    return str(uuid.uuid4())


async def _close_client(client: Any) -> None:
    """Close an aioari client and its HTTP session. aioari's ``close`` fails on a client
    whose ``init`` did not finish (Asterisk unreachable: it has no websocket set yet) before
    it reaches the session, which then leaked on every failed connect attempt."""
    try:
        await client.close()
    except Exception:
        with contextlib.suppress(Exception):
            await client.swagger.close()


def _route_key(event: Event) -> str | None:
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


def _params(params: dict[str, Any] | None) -> dict[str, str] | None:
    if not params:
        return None
    out: dict[str, str] = {}
    for key, value in params.items():
        if value is None:
            continue
        if isinstance(value, bool):
            out[key] = "true" if value else "false"
        elif isinstance(value, list | tuple):
            out[key] = ",".join(str(v) for v in value)
        else:
            out[key] = str(value)
    return out


class AriGateway:
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
        self.config = config
        self.app = config.app
        self._on_stasis_start = on_stasis_start
        self._on_connected = on_connected
        self._routes: dict[str, EventHandler] = {}
        self._http: aiohttp.ClientSession | None = None
        self._base = config.url.rstrip("/") + "/ari"
        self._task: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()
        self._stopping = False
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self.last_error: str | None = None
        self.connects = 0
        self.connect_attempts = 0  # full attempts (swagger load and event websocket)
        self.probes = 0  # cheap pings while disconnected
        self.events_routed = 0
        self.events_unrouted = 0
        self._disconnected_at: float | None = None  # monotonic; None while connected

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
        self._http = aiohttp.ClientSession(
            headers={"Authorization": "Basic " + base64.b64encode(credentials.encode()).decode()},
            timeout=aiohttp.ClientTimeout(total=self.config.request_timeout_s),
            connector=aiohttp.TCPConnector(limit=64, keepalive_timeout=30),
        )
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
            await self._http.close()

    async def _run(self) -> None:
        failures = 0
        while not self._stopping:
            client = self._new_client()
            try:
                if await self._connect_and_read(client):
                    failures = 0
            finally:
                # Shielded: a stop() arriving now must not leave aioari's session open.
                await asyncio.shield(_close_client(client))
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
            async with self._http.get(self._base + "/asterisk/ping", timeout=timeout) as resp:
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
            self.last_error = _describe(exc)
            return False
        self._ws = ws
        self.connects += 1
        self.last_error = None
        await self._filter_events()
        self._connected.set()
        down_s = (None if self._disconnected_at is None
                  else round(time.monotonic() - self._disconnected_at, 3))
        self._disconnected_at = None
        if self.connects > 1:
            metrics.ARI_RECONNECTS.inc()
        log.info("ari.connected", url=self.config.url, app=self.app, connects=self.connects,
                 down_s=down_s)
        side_tasks = [asyncio.create_task(self._watchdog(ws), name="ari-watchdog")]
        if self._on_connected is not None:
            side_tasks.append(asyncio.create_task(self._on_connected(), name="ari-reconcile"))
        try:
            await self._read(ws)
        finally:
            self._connected.clear()
            self._disconnected_at = time.monotonic()
            self._ws = None
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

    async def _filter_events(self) -> None:
        """Ask Asterisk for only the event types we use (the app exists once the websocket
        is open). Not fatal: without the filter we receive more, and ignore it."""
        try:
            await self.request(
                "PUT", f"/applications/{self.app}/eventFilter",
                body={"allowed": [{"type": kind} for kind in SUBSCRIBED_EVENTS]},
            )
        except AriError as exc:
            log.warning("ari.event_filter_failed", error=exc.details)

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for msg in ws:
            if msg.type is aiohttp.WSMsgType.TEXT:
                try:
                    event = json.loads(msg.data)
                except ValueError:
                    log.warning("ari.bad_event", size=len(msg.data))
                    continue
                if isinstance(event, dict):
                    self._dispatch(event)
            elif msg.type in (aiohttp.WSMsgType.ERROR, aiohttp.WSMsgType.CLOSED):
                break

    async def _watchdog(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        """Close the websocket when Asterisk stops answering, so ``_run`` reconnects."""
        while not ws.closed:
            await asyncio.sleep(self.config.ping_interval_s)
            try:
                await self.request("GET", "/asterisk/ping")
            except AriError as exc:
                log.warning("ari.ping_failed", error=exc.details)
                await ws.close()
                return

    def _dispatch(self, event: Event) -> None:
        if RECORDER.on:
            RECORDER.ari_event(event)
        key = _route_key(event)
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

    # -------------------------------------------------------------------- routing
    def route(self, key: str, handler: EventHandler) -> None:
        """Send events for ``key`` ('channel:<id>' or 'bridge:<id>') to ``handler``."""
        self._routes[key] = handler

    def unroute(self, key: str) -> None:
        self._routes.pop(key, None)

    # ----------------------------------------------------------------------- REST
    async def request(
        self,
        method: str,
        path: str,
        params: dict[str, Any] | None = None,
        body: Any = None,
        channel_id: str | None = None,
    ) -> Any:
        """One ARI request. A 404 (or 'not in Stasis') on ``channel_id`` raises ChannelGone."""
        if self._http is None:
            raise AriUnavailable(method, path, None, "gateway not started")
        started = time.perf_counter()
        try:
            async with self._http.request(
                method, self._base + path, params=_params(params), json=body
            ) as resp:
                text = await resp.text()
                if resp.status >= 400:
                    details = _message(text) or resp.reason or ""
                    gone = resp.status == 404 or (
                        resp.status == 409 and "not in stasis" in details.lower()
                    )
                    if channel_id is not None and gone:
                        raise ChannelGone(method, path, resp.status, details)
                    raise AriError(method, path, resp.status, details)
                return json.loads(text) if text else None
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise AriUnavailable(method, path, None, _describe(exc)) from None
        finally:
            metrics.ARI_REQUEST_SECONDS.labels(method=method).observe(
                time.perf_counter() - started)

    # Channel operations; each raises ChannelGone when the channel has hung up.
    async def answer(self, channel_id: str) -> None:
        await self.request("POST", f"/channels/{channel_id}/answer", channel_id=channel_id)

    async def ring(self, channel_id: str) -> None:
        await self.request("POST", f"/channels/{channel_id}/ring", channel_id=channel_id)

    async def hangup(self, channel_id: str, reason: str = "normal") -> None:
        """Hang up; a channel that is already gone is not an error here."""
        with contextlib.suppress(ChannelGone):
            await self.request(
                "DELETE", f"/channels/{channel_id}", {"reason": reason}, channel_id=channel_id
            )

    async def play(self, channel_id: str, media: Iterable[str], playback_id: str) -> None:
        await self.request(
            "POST",
            f"/channels/{channel_id}/play/{playback_id}",
            {"media": list(media)},
            channel_id=channel_id,
        )

    async def stop_playback(self, playback_id: str) -> bool:
        """Stop a playback (or cancel it, while it waits in the channel's queue). Returns False
        when there was none: one that already finished is fine."""
        try:
            await self.request("DELETE", f"/playbacks/{playback_id}")
        except AriError as exc:
            if exc.status != 404:
                raise
            return False
        return True

    async def get_channel(self, channel_id: str) -> dict[str, Any]:
        result = await self.request("GET", f"/channels/{channel_id}", channel_id=channel_id)
        return dict(result)

    async def set_variable(self, channel_id: str, name: str, value: str) -> None:
        await self.request(
            "POST", f"/channels/{channel_id}/variable", {"variable": name, "value": value},
            channel_id=channel_id,
        )

    async def create_channel(
        self, channel_id: str, endpoint: str, app_args: list[str], variables: dict[str, str]
    ) -> None:
        """Create an outgoing channel in our application without dialling it yet."""
        await self.request(
            "POST", "/channels/create",
            {"endpoint": endpoint, "app": self.app, "appArgs": app_args,
             "channelId": channel_id},
            body={"variables": variables} if variables else None,
        )

    async def dial(self, channel_id: str, caller_id: str | None, timeout_s: int) -> None:
        """Dial a created channel; Asterisk stops ringing after ``timeout_s`` seconds."""
        await self.request(
            "POST", f"/channels/{channel_id}/dial",
            {"caller": caller_id, "timeout": timeout_s}, channel_id=channel_id,
        )

    async def external_media(
        self, channel_id: str, external_host: str, audio_format: str
    ) -> tuple[str, int]:
        """Create an externalMedia channel sending RTP to ``external_host``; returns the
        address and port where Asterisk listens for our RTP."""
        channel = await self.request(
            "POST", "/channels/externalMedia",
            {"app": self.app, "channelId": channel_id, "external_host": external_host,
             "format": audio_format, "encapsulation": "rtp", "transport": "udp",
             "direction": "both"},
        )
        variables = channel.get("channelvars", {}) if isinstance(channel, dict) else {}
        return (str(variables.get("UNICASTRTP_LOCAL_ADDRESS", "127.0.0.1")),
                int(variables.get("UNICASTRTP_LOCAL_PORT", 0)))

    async def continue_in_dialplan(self, channel_id: str, context: str, extension: str = "s",
                                   label: str | None = None) -> None:
        """Send a channel to the dialplan (it may come back with a new StasisStart): at
        priority 1, or at ``label`` of that extension."""
        target: dict[str, Any] = {"context": context, "extension": extension}
        target.update({"label": label} if label else {"priority": 1})
        await self.request("POST", f"/channels/{channel_id}/continue", target,
                           channel_id=channel_id)

    async def send_dtmf(self, channel_id: str, digits: str, between_ms: int = 100) -> None:
        """Send RFC 4733 digits; 'w' in ``digits`` is a 500 ms pause."""
        await self.request(
            "POST", f"/channels/{channel_id}/dtmf", {"dtmf": digits, "between": between_ms},
            channel_id=channel_id,
        )

    async def create_bridge(self, bridge_id: str, kind: str = "mixing", name: str = "") -> None:
        await self.request("POST", f"/bridges/{bridge_id}", {"type": kind, "name": name or None})

    async def add_to_bridge(self, bridge_id: str, channel_id: str) -> None:
        await self.request(
            "POST", f"/bridges/{bridge_id}/addChannel", {"channel": channel_id},
            channel_id=channel_id,
        )

    async def remove_from_bridge(self, bridge_id: str, channel_id: str) -> None:
        with contextlib.suppress(AriError):
            await self.request(
                "POST", f"/bridges/{bridge_id}/removeChannel", {"channel": channel_id}
            )

    async def destroy_bridge(self, bridge_id: str) -> None:
        """Destroy a bridge; one that is already gone is fine."""
        try:
            await self.request("DELETE", f"/bridges/{bridge_id}")
        except AriError as exc:
            if exc.status != 404:
                raise

    async def mute(self, channel_id: str, direction: str) -> None:
        """Mute a channel: 'in' (what it sends), 'out' (what it hears) or 'both'."""
        await self.request(
            "POST", f"/channels/{channel_id}/mute", {"direction": direction},
            channel_id=channel_id,
        )

    async def unmute(self, channel_id: str, direction: str) -> None:
        await self.request(
            "DELETE", f"/channels/{channel_id}/mute", {"direction": direction},
            channel_id=channel_id,
        )

    # Recordings (speech input): recorded on Asterisk, fetched over ARI, no shared filesystem.
    async def record(
        self, channel_id: str, name: str, *, fmt: str = "wav", max_duration_s: int = 0,
        max_silence_s: int = 0, if_exists: str = "overwrite", beep: bool = False,
        terminate_on: str = "none",
    ) -> None:
        """Start recording what the channel sends (RecordingStarted/Finished/Failed follow)."""
        await self.request(
            "POST", f"/channels/{channel_id}/record",
            {"name": name, "format": fmt, "maxDurationSeconds": max_duration_s,
             "maxSilenceSeconds": max_silence_s, "ifExists": if_exists, "beep": beep,
             "terminateOn": terminate_on},
            channel_id=channel_id,
        )

    async def stop_recording(self, name: str) -> None:
        """Stop a live recording and keep what it has; one that already ended is fine."""
        try:
            await self.request("POST", f"/recordings/live/{name}/stop")
        except AriError as exc:
            if exc.status != 404:
                raise

    async def cancel_recording(self, name: str) -> None:
        """Stop a live recording and discard it; one that already ended is fine."""
        try:
            await self.request("DELETE", f"/recordings/live/{name}")
        except AriError as exc:
            if exc.status != 404:
                raise

    async def stored_recording_file(self, name: str) -> bytes:
        """The bytes of a stored recording (GET /recordings/stored/{name}/file)."""
        if self._http is None:
            raise AriUnavailable("GET", f"/recordings/stored/{name}/file", None,
                                 "gateway not started")
        path = f"/recordings/stored/{name}/file"
        started = time.perf_counter()
        try:
            async with self._http.get(self._base + path) as resp:
                body = await resp.read()
                if resp.status >= 400:
                    details = _message(body.decode(errors="replace")) or resp.reason or ""
                    raise AriError("GET", path, resp.status, details)
                return body
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise AriUnavailable("GET", path, None, _describe(exc)) from None
        finally:
            metrics.ARI_REQUEST_SECONDS.labels(method="GET").observe(
                time.perf_counter() - started)

    async def delete_stored_recording(self, name: str) -> None:
        """Delete a stored recording; one that is already gone is fine."""
        try:
            await self.request("DELETE", f"/recordings/stored/{name}")
        except AriError as exc:
            if exc.status != 404:
                raise

    # Snoop channels and bridge media (record, conversation).
    async def snoop(self, channel_id: str, snoop_id: str, spy: str, app_args: list[str]) -> None:
        """A snoop channel on ``channel_id`` in our application: ``spy`` 'in' carries what
        the channel sends, 'out' what it hears. Route ``channel:<snoop_id>`` first."""
        await self.request(
            "POST", f"/channels/{channel_id}/snoop/{snoop_id}",
            {"spy": spy, "whisper": "none", "app": self.app, "appArgs": app_args},
            channel_id=channel_id,
        )

    async def record_bridge(
        self, bridge_id: str, name: str, *, fmt: str = "wav", max_duration_s: int = 0,
        if_exists: str = "overwrite",
    ) -> None:
        """Record a bridge's mix (events carry target_uri 'bridge:<id>')."""
        await self.request(
            "POST", f"/bridges/{bridge_id}/record",
            {"name": name, "format": fmt, "maxDurationSeconds": max_duration_s,
             "ifExists": if_exists},
        )

    async def play_on_bridge(self, bridge_id: str, media: Iterable[str],
                             playback_id: str) -> None:
        await self.request(
            "POST", f"/bridges/{bridge_id}/play/{playback_id}", {"media": list(media)}
        )

    async def start_bridge_moh(self, bridge_id: str, moh_class: str = "default") -> None:
        await self.request("POST", f"/bridges/{bridge_id}/moh", {"mohClass": moh_class})

    async def stop_bridge_moh(self, bridge_id: str) -> None:
        with contextlib.suppress(AriError):
            await self.request("DELETE", f"/bridges/{bridge_id}/moh")

    async def start_moh(self, channel_id: str, moh_class: str = "default") -> None:
        """Music on hold on one channel (Exotel Connect: the caller while agents ring)."""
        await self.request("POST", f"/channels/{channel_id}/moh", {"mohClass": moh_class},
                           channel_id=channel_id)

    async def stop_moh(self, channel_id: str) -> None:
        with contextlib.suppress(AriError):
            await self.request("DELETE", f"/channels/{channel_id}/moh")

    async def endpoint_state(self, tech: str, resource: str) -> dict[str, Any] | None:
        """``GET /endpoints/{tech}/{resource}`` (state online/offline, channel_ids), or None
        when Asterisk has no such endpoint."""
        try:
            result = await self.request("GET", f"/endpoints/{tech}/{resource}")
        except AriError as exc:
            if exc.status == 404:
                return None
            raise
        return dict(result) if isinstance(result, dict) else None

    async def put_dynamic_config(self, config_class: str, object_type: str, object_id: str,
                                 fields: dict[str, str]) -> None:
        """Create or update a sorcery object at run time
        (``PUT /asterisk/config/dynamic/{class}/{type}/{id}``): agents' PJSIP devices. The
        object type needs a writable wizard (asterisk-config/sorcery.conf). Asterisk echoes
        every field back, secrets included, so the answer is dropped here unread."""
        await self.request(
            "PUT", f"/asterisk/config/dynamic/{config_class}/{object_type}/{object_id}",
            body={"fields": [{"attribute": k, "value": v} for k, v in fields.items()]},
        )

    async def delete_dynamic_config(self, config_class: str, object_type: str,
                                    object_id: str) -> None:
        """Delete a sorcery object created at run time; one that is already gone is fine."""
        try:
            await self.request(
                "DELETE", f"/asterisk/config/dynamic/{config_class}/{object_type}/{object_id}")
        except AriError as exc:
            if exc.status != 404:
                raise

    async def app_channel_ids(self) -> list[str]:
        """Channels currently in our Stasis application (what a restart must pick up)."""
        info = await self.request("GET", f"/applications/{self.app}")
        ids = []
        for source in info.get("channel_ids", []) if isinstance(info, dict) else []:
            ids.append(str(source))
        return ids

    async def asterisk_info(self) -> dict[str, Any]:
        return dict(await self.request("GET", "/asterisk/info"))


def _message(text: str) -> str | None:
    try:
        data = json.loads(text)
    except ValueError:
        return text.strip()[:200] or None
    if isinstance(data, dict) and "message" in data:
        return str(data["message"])
    return None


def _describe(exc: BaseException) -> str:
    status = getattr(exc, "status", None) or getattr(exc, "status_code", None)
    if status == 401:
        return "authentication failed (check ari.username / ari.password)"
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
