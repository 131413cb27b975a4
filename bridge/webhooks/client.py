"""The HTTP client for customers' applications (answer_url, event_url, fallbacks, eventUrl).

This module is the one place that sends HTTP requests to customer applications.  It
copies the Vonage Voice API delivery rules:

* ``GET`` sends the data as query parameters, ``POST`` as a JSON body
  (:mod:`bridge.webhooks.messages`).
* A request is retried **once** on connect timeout, read timeout, connection refused or
  reset, and on HTTP 429, 503 and 504 (:mod:`bridge.webhooks.failures`).  Any other
  4xx/5xx is final.  aiohttp's own silent retry of idempotent requests on a dropped
  keep-alive connection is switched off, so an application sees at most two requests,
  GET or POST.
* Connect and read timeouts come from the application configuration (:class:`Timeouts`).
* Response bodies are read streaming and capped (1 MiB by default).
* :meth:`WebhookClient.send_with_fallback` re-sends a failed request (or one whose
  response the caller's parser rejected) to the fallback URL with ``reason`` and
  ``original_request`` added to the data.
* With a :class:`~bridge.webhooks.signing.Signer`, each attempt carries an HS256 JWT in
  ``Authorization: Bearer ...``.

Each :meth:`WebhookClient.send` logs one line with the outcome (method, URL without
query string, status, attempts, elapsed time, error).  Headers, bodies, secrets and
tokens are never logged.

Metrics: every request's total time (retry included) goes to ``WEBHOOK_SECONDS`` and
every failed one to ``WEBHOOK_FAILURES``, labelled with the caller's ``kind`` (one of
:data:`KINDS`) and a reason from :data:`FAILURE_REASONS`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable
from typing import TypeVar

import aiohttp
import structlog
from yarl import URL

from bridge import __version__, metrics
from bridge.timeline import RECORDER
from bridge.webhooks.failures import RETRY_STATUSES, Attempt, classify_error, failure_reason
from bridge.webhooks.messages import (
    JSON_NESTING_ERROR,
    FallbackResult,
    Kind,
    ParseError,
    Timeouts,
    WebhookRequest,
    WebhookResponse,
    encode_body,
    encode_query,
    redact_url,
)
from bridge.webhooks.signing import Signer

__all__ = ["DEFAULT_MAX_BODY_BYTES", "WebhookClient", "default_user_agent"]

log = structlog.get_logger(__name__)

T = TypeVar("T")

DEFAULT_MAX_BODY_BYTES = 1 << 20
"""Default response body cap in bytes (1 MiB)."""

_READ_CHUNK = 64 * 1024


@functools.lru_cache(maxsize=64)
def _client_timeout(connect_s: float, read_s: float) -> aiohttp.ClientTimeout:
    """aiohttp's timeouts for one pair of limits (an application has one or two pairs)."""
    return aiohttp.ClientTimeout(total=None, connect=connect_s, sock_connect=connect_s,
                                 sock_read=read_s)


def default_user_agent() -> str:
    """``ari-bridge/<version>``: the installed distribution's version (``0+unknown`` when
    run from a source tree that was never installed)."""
    return f"ari-bridge/{__version__}"


def _media_type(resp: aiohttp.ClientResponse) -> str | None:
    raw = resp.headers.get(aiohttp.hdrs.CONTENT_TYPE)
    if not raw:
        return None
    return raw.split(";", 1)[0].strip().lower() or None


class WebhookClient:
    """Sends webhooks with one shared :class:`aiohttp.ClientSession` (connection pooling).

    ``max_body_bytes``: response body cap in bytes.  ``max_connections``: connection pool
    size (0 means unlimited).  Call :meth:`start` before use and :meth:`close` at shutdown
    (or use ``async with``).
    """

    def __init__(
        self,
        *,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        user_agent: str | None = None,
        max_connections: int = 256,
    ) -> None:
        if max_body_bytes <= 0:
            raise ValueError("max_body_bytes must be positive")
        self.max_body_bytes = max_body_bytes
        self.user_agent = user_agent or default_user_agent()
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        """Create the shared session (idempotent)."""
        if self._session is not None and not self._session.closed:
            return
        connector = aiohttp.TCPConnector(limit=self._max_connections, ttl_dns_cache=300)
        self._session = aiohttp.ClientSession(
            connector=connector,
            headers={aiohttp.hdrs.USER_AGENT: self.user_agent},
            # Customer applications must never see each other's cookies.
            cookie_jar=aiohttp.DummyCookieJar(),
            trust_env=False,
        )
        # aiohttp silently sends an idempotent request (GET) a second time when a
        # connection drops before the answer, under our own retry: an application that
        # closes without answering would see four requests. Vonage's rule is one retry in
        # all, and send() makes it. aiohttp has no public switch for this (3.9-3.14); the
        # unit tests count the requests an application receives, so a rename shows there.
        if hasattr(self._session, "_retry_connection"):
            self._session._retry_connection = False
        else:
            log.warning("webhook client: cannot switch off aiohttp's own retry",
                        aiohttp=aiohttp.__version__)

    async def close(self) -> None:
        """Close the session and its pooled connections (idempotent)."""
        session, self._session = self._session, None
        if session is not None and not session.closed:
            await session.close()

    async def __aenter__(self) -> WebhookClient:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def started(self) -> bool:
        """True between :meth:`start` and :meth:`close`."""
        return self._session is not None and not self._session.closed

    def _require_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            raise RuntimeError("WebhookClient is not started")
        return self._session

    async def send(
        self,
        req: WebhookRequest,
        timeouts: Timeouts,
        signer: Signer | None = None,
        kind: Kind = "event",
    ) -> WebhookResponse:
        """Send ``req``, retrying once on a retryable failure; never raises for HTTP errors.

        ``kind`` labels the metrics (see :data:`KINDS`).  Raises :class:`RuntimeError` if
        the client is not started.
        """
        session = self._require_session()
        started = time.monotonic()
        attempts = 0
        while True:
            attempts += 1
            outcome = await self._attempt(session, req, timeouts, signer)
            if not outcome.retryable or attempts >= 2:
                break
        elapsed_ms = (time.monotonic() - started) * 1000.0
        metrics.child(metrics.WEBHOOK_SECONDS, kind).observe(elapsed_ms / 1000.0)
        if outcome.error is not None:
            metrics.WEBHOOK_FAILURES.labels(
                kind=kind, reason=failure_reason(outcome.error)).inc()
        resp = WebhookResponse(
            request=req,
            status=outcome.status,
            body=outcome.body,
            content_type=outcome.content_type,
            attempts=attempts,
            elapsed_ms=elapsed_ms,
            error=outcome.error,
        )
        if RECORDER.on:
            RECORDER.webhook(req, resp, kind, signed=signer is not None)
        # A successful request is a debug line: its fields are not even built at info level.
        if not resp.ok or log.is_enabled_for(logging.DEBUG):
            (log.debug if resp.ok else log.warning)(
                "webhook request",
                method=req.method,
                url=redact_url(req.url),
                status=resp.status,
                attempts=attempts,
                elapsed_ms=round(elapsed_ms, 1),
                error=resp.error,
            )
        return resp

    async def send_with_fallback(
        self,
        req: WebhookRequest,
        fallback_url: str | None,
        parse: Callable[[WebhookResponse], T],
        timeouts: Timeouts,
        signer: Signer | None = None,
        kind: Kind = "event",
    ) -> FallbackResult[T]:
        """Send ``req``; if it fails or ``parse`` rejects it, try ``fallback_url``.

        ``kind`` labels the primary request's metrics; the fallback request is labelled
        ``fallback``.  A rejection by ``parse`` counts as an ``invalid_ncco`` failure.

        ``parse`` is called only for ok responses and raises :class:`ParseError` for
        invalid content (a :class:`ValueError`, e.g. from :meth:`WebhookResponse.json`,
        is treated the same way).  A rejected response goes to the fallback without a
        retry.  The fallback request uses the same method and data plus ``reason`` and
        ``original_request`` (``{"url": ..., "method": ...}``).
        """
        primary = await self.send(req, timeouts, signer, kind)
        value, reason = self._parse(primary, parse, kind)
        if reason is None:
            return FallbackResult(value, "primary", primary, None, None, None)
        if not fallback_url:
            return FallbackResult(None, None, primary, None, reason, reason)

        data = dict(req.data)
        data["reason"] = reason
        data["original_request"] = {"url": req.url, "method": req.method}
        fb_req = WebhookRequest(url=fallback_url, method=req.method, data=data)
        fallback = await self.send(fb_req, timeouts, signer, "fallback")
        fb_value, fb_reason = self._parse(fallback, parse, "fallback")
        if fb_reason is None:
            return FallbackResult(fb_value, "fallback", primary, fallback, reason, None)
        error = f"primary: {reason}; fallback: {fb_reason}"
        return FallbackResult(None, None, primary, fallback, reason, error)

    @staticmethod
    def _parse(
        resp: WebhookResponse, parse: Callable[[WebhookResponse], T], kind: Kind
    ) -> tuple[T | None, str | None]:
        """``(value, None)`` when usable, else ``(None, reason)``."""
        if not resp.ok:
            return None, resp.error or f"http {resp.status}"
        try:
            return parse(resp), None
        except ParseError as exc:
            metrics.WEBHOOK_FAILURES.labels(kind=kind, reason="invalid_ncco").inc()
            return None, str(exc) or "invalid response"
        except ValueError as exc:
            metrics.WEBHOOK_FAILURES.labels(kind=kind, reason="invalid_ncco").inc()
            return None, f"invalid response: {exc}"
        except RecursionError:
            metrics.WEBHOOK_FAILURES.labels(kind=kind, reason="invalid_ncco").inc()
            return None, f"invalid response: {JSON_NESTING_ERROR}"
        except Exception as exc:
            log.exception(
                "webhook response parser failed",
                url=redact_url(resp.request.url),
                error_type=type(exc).__name__,
            )
            return None, "invalid response"

    async def _attempt(
        self,
        session: aiohttp.ClientSession,
        req: WebhookRequest,
        timeouts: Timeouts,
        signer: Signer | None,
    ) -> Attempt:
        try:
            url = URL(req.url)
        except (ValueError, TypeError):
            return Attempt(None, b"", None, "invalid url", False)
        if url.scheme not in ("http", "https") or not url.host:
            return Attempt(None, b"", None, "invalid url", False)

        headers: dict[str, str] = dict(req.headers or {})
        if req.method == "GET":
            body = b""
            params = encode_query(req.data)
            if params:
                url = url.extend_query(params)
        else:
            body = encode_body(req.data)
            headers[aiohttp.hdrs.CONTENT_TYPE] = "application/json"
        if signer is not None:
            headers[aiohttp.hdrs.AUTHORIZATION] = f"Bearer {signer.token(body)}"

        client_timeout = _client_timeout(timeouts.connect_s, timeouts.read_s)
        try:
            # Overall bound: connecting can take at most connect_s (enforced above), so
            # hitting this deadline means the response took longer than read_s.
            async with (
                asyncio.timeout(timeouts.connect_s + timeouts.read_s),
                session.request(
                    req.method,
                    url,
                    data=body if req.method == "POST" else None,
                    headers=headers,
                    timeout=client_timeout,
                ) as resp,
            ):
                status = resp.status
                content_type = _media_type(resp)
                content, over = await self._read_capped(resp)
        except (TimeoutError, aiohttp.ClientError) as exc:
            # TimeoutError: aiohttp's socket read timeouts and the overall deadline above.
            cause, retry = classify_error(exc)
            return Attempt(None, b"", None, cause, retry)

        retryable = status in RETRY_STATUSES
        if not 200 <= status < 300:
            return Attempt(status, content, content_type, f"http {status}", retryable)
        if over:
            return Attempt(
                status, b"", content_type, f"body exceeds {self.max_body_bytes} bytes", False
            )
        return Attempt(status, content, content_type, None, False)

    async def _read_capped(self, resp: aiohttp.ClientResponse) -> tuple[bytes, bool]:
        """Read the body streaming; ``(b"", True)`` as soon as it exceeds the cap."""
        cap = self.max_body_bytes
        if resp.content_length is not None:
            if resp.content_length > cap:
                resp.close()
                return b"", True
            if resp.headers.get(aiohttp.hdrs.CONTENT_ENCODING, "identity") == "identity":
                # The usual answer: its length is known and allowed, read it in one go. (A
                # compressed body is read in chunks below: its length says nothing about
                # what it inflates to.)
                return await resp.read(), False
        buf = bytearray()
        while True:
            chunk = await resp.content.read(min(_READ_CHUNK, cap + 1 - len(buf)))
            if not chunk:
                return bytes(buf), False
            buf += chunk
            if len(buf) > cap:
                resp.close()
                return b"", True
