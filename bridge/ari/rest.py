"""ARI REST transports: HTTP (one pooled aiohttp session) and the event websocket.

Asterisk 22.5 (also 21.10 and 20.15) accepts REST requests on the event websocket itself
(``{"type": "RESTRequest", ...}``) and answers with ``RESTResponse`` messages interleaved with
the events. That costs both sides less CPU per request than HTTP, Asterisk included (no HTTP
parsing, no authentication per request: see docs/architecture.md, "ARI transport"). Both
transports raise the same errors, so the verbs above them do not know which one carried them.

Requests skip aioari's swagger operations: the swagger client re-validates every request and
costs a measurable share of a call's CPU (see docs/benchmarks.md).
"""

from __future__ import annotations

import asyncio
import itertools
import re
from typing import Any, Literal

import aiohttp
import orjson

from bridge.ari.errors import AriError, AriUnavailable, ChannelGone

Transport = Literal["http", "websocket"]

#: First releases of each branch that answer REST requests on the event websocket.
_WEBSOCKET_REST_SINCE = {20: (20, 15), 21: (21, 10), 22: (22, 5)}


def query_params(params: dict[str, Any] | None) -> dict[str, str] | None:
    """ARI's query parameters as strings (booleans lowercase, lists comma-separated); None
    values are left out."""
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


def error_message(body: bytes | str) -> str | None:
    """Asterisk's own words from an error body (``{"message": ...}``), else its start."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        text = body.decode(errors="replace") if isinstance(body, bytes) else body
        return text.strip()[:200] or None
    if isinstance(data, dict) and "message" in data:
        return str(data["message"])
    return None


def raise_for_status(method: str, path: str, status: int, reason: str, body: bytes | str,
                     channel_id: str | None) -> None:
    """The error for an answer with ``status`` >= 400: a 404 (or 409 'not in Stasis') on a
    channel request means the channel is gone."""
    if status < 400:
        return
    details = error_message(body) or reason or ""
    gone = status == 404 or (status == 409 and "not in stasis" in details.lower())
    if channel_id is not None and gone:
        raise ChannelGone(method, path, status, details)
    raise AriError(method, path, status, details)


def describe(exc: BaseException) -> str:
    status = getattr(exc, "status", None) or getattr(exc, "status_code", None)
    if status == 401:
        return "authentication failed (check ari.username / ari.password)"
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def asterisk_version(text: str) -> tuple[int, int] | None:
    """(major, minor) from Asterisk's version string ('22.10.1+dfsg-1', 'certified-20.7'),
    None when it names no release (a development build)."""
    found = re.search(r"(\d+)\.(\d+)", text)
    return (int(found.group(1)), int(found.group(2))) if found else None


def websocket_rest_supported(version: tuple[int, int] | None) -> bool:
    if version is None:
        return False
    since = _WEBSOCKET_REST_SINCE.get(version[0])
    if since is not None:
        return version >= since
    return version[0] > max(_WEBSOCKET_REST_SINCE)


def choose_transport(setting: str, version: tuple[int, int] | None) -> Transport:
    """``ari.rest_transport``: 'http' and 'websocket' are taken as said; 'auto' uses the
    websocket when this Asterisk answers REST requests there."""
    if setting == "http":
        return "http"
    if setting == "websocket":
        return "websocket"
    return "websocket" if websocket_rest_supported(version) else "http"


class HttpTransport:
    """REST over one pooled, keep-alive aiohttp session with basic auth."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str) -> None:
        self.session = session
        self.base = base_url  # ending in /ari

    async def request(self, method: str, path: str, params: dict[str, Any] | None,
                      body: Any, channel_id: str | None) -> Any:
        data = None if body is None else orjson.dumps(body)
        headers = None if data is None else {"Content-Type": "application/json"}
        try:
            async with self.session.request(method, self.base + path,
                                            params=query_params(params),
                                            data=data, headers=headers) as resp:
                raw = await resp.read()
                raise_for_status(method, path, resp.status, resp.reason or "", raw, channel_id)
                return orjson.loads(raw) if raw else None
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise AriUnavailable(method, path, None, describe(exc)) from None

    async def get_bytes(self, path: str) -> bytes:
        """A binary resource (a recording's file), as it is."""
        try:
            async with self.session.get(self.base + path) as resp:
                raw = await resp.read()
                raise_for_status("GET", path, resp.status, resp.reason or "", raw, None)
                return raw
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise AriUnavailable("GET", path, None, describe(exc)) from None


class WebSocketTransport:
    """REST requests sent on the event websocket, matched to their answers by request id.

    The websocket's reader hands every ``RESTResponse`` to :meth:`resolve`. When the socket
    closes, :meth:`fail_all` fails the requests still waiting with AriUnavailable: Asterisk
    may or may not have carried them out, exactly as with a dropped HTTP connection."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, timeout_s: float) -> None:
        self.ws = ws
        self.timeout_s = timeout_s
        # Request id -> (its answer, its deadline on the loop's clock).
        self._pending: dict[str, tuple[asyncio.Future[dict[str, Any]], float]] = {}
        self._ids = itertools.count(1)
        self._closed_because: str | None = None
        # Deadlines are checked by one sweep a few times per timeout, not by a timer per
        # request: four requests per call would otherwise start and cancel four timers. A
        # request that gets no answer fails between timeout_s and 1.25 x timeout_s.
        self._sweep_every = timeout_s / 4
        self._sweep: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def pending(self) -> int:
        return len(self._pending)

    async def request(self, method: str, path: str, params: dict[str, Any] | None,
                      body: Any, channel_id: str | None) -> Any:
        if self._closed_because is not None or self.ws.closed:
            raise AriUnavailable(method, path, None, self._closed_because or "websocket closed")
        request_id = str(next(self._ids))
        message: dict[str, Any] = {"type": "RESTRequest", "request_id": request_id,
                                   "method": method, "uri": path.lstrip("/")}
        query = query_params(params)
        if query:
            message["query_strings"] = [{"name": k, "value": v} for k, v in query.items()]
        if body is not None:
            message["content_type"] = "application/json"
            message["message_body"] = orjson.dumps(body).decode()
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        answer: asyncio.Future[dict[str, Any]] = loop.create_future()
        self._pending[request_id] = (answer, loop.time() + self.timeout_s)
        if self._sweep is None:
            self._sweep = loop.call_later(self._sweep_every, self._expire_overdue)
        try:
            await self.ws.send_str(orjson.dumps(message).decode())
            response = await answer
        except _NoAnswer:
            raise AriUnavailable(method, path, None,
                                 f"no answer on the websocket within {self.timeout_s} s"
                                 ) from None
        except _SocketClosed as exc:
            raise AriUnavailable(method, path, None, str(exc)) from None
        except (aiohttp.ClientError, ConnectionError) as exc:
            raise AriUnavailable(method, path, None, describe(exc)) from None
        finally:
            self._pending.pop(request_id, None)
        status = int(response.get("status_code") or 0)
        raw = response.get("message_body") or ""
        raise_for_status(method, path, status, str(response.get("reason_phrase") or ""), raw,
                         channel_id)
        return orjson.loads(raw) if raw else None

    def resolve(self, response: dict[str, Any]) -> bool:
        """Hand an answer to its request; False when nobody waits for it (timed out, or a
        request Asterisk could not parse, which comes back without our id)."""
        pending = self._pending.pop(str(response.get("request_id") or ""), None)
        if pending is None or pending[0].done():
            return False
        pending[0].set_result(response)
        return True

    def _expire_overdue(self) -> None:
        """The sweep: fail the requests past their deadline; run again while any wait."""
        self._sweep = None
        if self._loop is None:
            return
        now = self._loop.time()
        for answer, deadline in list(self._pending.values()):
            if deadline <= now and not answer.done():
                answer.set_exception(_NoAnswer())
        if self._pending and self._closed_because is None:
            self._sweep = self._loop.call_later(self._sweep_every, self._expire_overdue)

    def fail_all(self, reason: str) -> None:
        """The socket is gone: no answer will come for the requests still waiting."""
        self._closed_because = reason
        pending, self._pending = self._pending, {}
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        for waiter, _ in pending.values():
            if not waiter.done():
                waiter.set_exception(_SocketClosed(reason))


class _SocketClosed(Exception):
    """The websocket closed while a request waited for its answer."""


class _NoAnswer(Exception):
    """No answer to a websocket request within the request timeout."""

