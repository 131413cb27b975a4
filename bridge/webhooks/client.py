"""HTTP client for customers' applications (answer_url, event_url, fallbacks, eventUrl).

This module is the one place that sends HTTP requests to customer applications.  It
copies the Vonage Voice API delivery rules:

* ``GET`` sends the data as query parameters (nested values JSON-encoded, ``None``
  values omitted); ``POST`` sends the data as a JSON body.
* A request is retried **once** on connect timeout, read timeout, connection refused or
  reset, and on HTTP 429, 503 and 504.  Any other 4xx/5xx is final.  aiohttp's own
  silent retry of idempotent requests on a dropped keep-alive connection is switched off,
  so an application sees at most two requests, GET or POST.
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
import errno
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import metadata
from typing import Any, Generic, Literal, TypeVar

import aiohttp
import structlog
from yarl import URL

from bridge import metrics
from bridge.timeline import RECORDER
from bridge.webhooks.signing import Signer

__all__ = [
    "DEFAULT_MAX_BODY_BYTES",
    "FAILURE_REASONS",
    "JSON_NESTING_ERROR",
    "KINDS",
    "RETRY_STATUSES",
    "FallbackResult",
    "Kind",
    "Method",
    "ParseError",
    "Timeouts",
    "WebhookClient",
    "WebhookRequest",
    "WebhookResponse",
    "default_user_agent",
    "encode_body",
    "encode_query",
    "is_json_media_type",
    "redact_url",
    "require_json_content_type",
]

log = structlog.get_logger(__name__)

Method = Literal["GET", "POST"]
T = TypeVar("T")

Kind = Literal["answer", "fallback", "event", "exotel"]
KINDS: tuple[Kind, ...] = ("answer", "fallback", "event", "exotel")
"""What a request is for, the ``kind`` label of the webhook metrics: ``answer`` (answer_url
and other URLs that return a call's NCCO), ``fallback`` (fallback_answer_url, for any
primary), ``event`` (event_url, NCCO eventUrl hooks such as notify and input), ``exotel``
(the Connect applet's Primary/Fallback and transition URLs)."""

FAILURE_REASONS = ("timeout", "reset", "connect", "status", "invalid_ncco", "invalid_response")
"""The ``reason`` label of ``WEBHOOK_FAILURES``: ``timeout`` (connect or read), ``reset``
(the connection dropped), ``connect`` (refused, DNS, TLS), ``status`` (a non-2xx answer),
``invalid_ncco`` (the caller's parser rejected the body), ``invalid_response`` (anything
else: body over the cap, truncated body, unusable URL)."""

JSON_NESTING_ERROR = "JSON is nested too deeply"
"""The cause given when a JSON document nests deeper than the parser can follow (e.g. a
body of 100,000 ``[``): Python's decoder raises RecursionError, never a JSONDecodeError."""

DEFAULT_MAX_BODY_BYTES = 1 << 20
"""Default response body cap in bytes (1 MiB)."""

RETRY_STATUSES = frozenset({429, 503, 504})
"""HTTP statuses that are retried once."""

_READ_CHUNK = 64 * 1024
_RESET_ERRNOS = frozenset({errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED})


def default_user_agent() -> str:
    """``ari-bridge/<version>`` using the installed distribution's version."""
    try:
        version = metadata.version("ari-bridge")
    except metadata.PackageNotFoundError:
        import bridge

        version = str(getattr(bridge, "__version__", "0+unknown"))
    return f"ari-bridge/{version}"


@dataclass(frozen=True)
class Timeouts:
    """Per-application HTTP timeouts.

    ``connect_ms``: milliseconds allowed to establish the connection (Vonage allows
    300-1000).  ``read_ms``: milliseconds allowed to receive the response once connected
    (Vonage allows 1000-10000); it bounds both the wait between received bytes and the
    whole response.  Range checks belong to application configuration; here any
    positive value is accepted.
    """

    connect_ms: int = 1000
    read_ms: int = 5000

    def __post_init__(self) -> None:
        if self.connect_ms <= 0 or self.read_ms <= 0:
            raise ValueError("timeouts must be positive milliseconds")

    @property
    def connect_s(self) -> float:
        """Connect timeout in seconds."""
        return self.connect_ms / 1000.0

    @property
    def read_s(self) -> float:
        """Read timeout in seconds."""
        return self.read_ms / 1000.0


@dataclass(frozen=True)
class WebhookRequest:
    """One request to a customer application.

    ``data`` is sent as query parameters for ``GET`` and as a JSON object for ``POST``.
    """

    url: str
    method: Method
    data: Mapping[str, Any]
    headers: Mapping[str, str] | None = None  # extra request headers (e.g. exotel-version)

    def __post_init__(self) -> None:
        if self.method not in ("GET", "POST"):
            raise ValueError(f"unsupported webhook method {self.method!r}")


@dataclass
class WebhookResponse:
    """The final outcome of a request, after the retry if one happened.

    ``status`` is ``None`` when no HTTP response was received.  ``attempts`` counts HTTP
    attempts (1 or 2).  ``elapsed_ms`` is the wall time in milliseconds over all
    attempts.  ``error`` is ``None`` on a 2xx response whose body was read completely,
    else a short cause such as ``"connect timeout"``, ``"read timeout"``,
    ``"connection refused"``, ``"http 404"`` or ``"body exceeds 1048576 bytes"``.
    ``content_type`` is the media type without parameters (lower case), if any.
    """

    request: WebhookRequest
    status: int | None
    body: bytes
    content_type: str | None
    attempts: int
    elapsed_ms: float
    error: str | None

    @property
    def ok(self) -> bool:
        """True for a 2xx response with no error."""
        return self.error is None and self.status is not None and 200 <= self.status < 300

    def json(self) -> Any:
        """Decode the body as JSON; raises :class:`ValueError` naming the problem."""
        if not self.body.strip():
            raise ValueError("response body is empty")
        try:
            return json.loads(self.body)
        except json.JSONDecodeError as exc:
            raise ValueError(
                f"response body is not valid JSON: {exc.msg} "
                f"at line {exc.lineno} column {exc.colno}"
            ) from None
        except UnicodeDecodeError as exc:
            raise ValueError(f"response body is not valid UTF-8 JSON: {exc.reason}") from None
        except RecursionError:
            raise ValueError(f"response body is not usable: {JSON_NESTING_ERROR}") from None


class ParseError(Exception):
    """Raised by response parsers for invalid content; the message names field and cause.

    The message becomes the ``reason`` sent to the fallback URL, for example
    ``"invalid ncco: [0].action: unknown action 'foo'"``.
    """


@dataclass
class FallbackResult(Generic[T]):
    """Outcome of :meth:`WebhookClient.send_with_fallback`.

    ``value``: parsed value from the primary or fallback response (``None`` if neither
    was usable).  ``source``: which response produced it (``None`` if neither).
    ``reason``: why the primary response was not used (``None`` if it was).
    ``error``: why nothing usable was obtained (``None`` when ``source`` is set).
    """

    value: T | None
    source: Literal["primary", "fallback"] | None
    primary: WebhookResponse
    fallback: WebhookResponse | None
    reason: str | None
    error: str | None

    @property
    def ok(self) -> bool:
        """True when the primary or the fallback produced a usable value."""
        return self.source is not None


def _query_value(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"), default=str)


def encode_query(data: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Query parameters for a GET webhook.

    Strings are sent as they are, ``None`` values are omitted, everything else (numbers,
    booleans, lists, objects) is JSON-encoded, e.g. ``True`` -> ``"true"``.
    """
    return [(str(k), _query_value(v)) for k, v in data.items() if v is not None]


def encode_body(data: Mapping[str, Any]) -> bytes:
    """The JSON body for a POST webhook (compact, UTF-8)."""
    text = json.dumps(dict(data), separators=(",", ":"), ensure_ascii=False, default=str)
    return text.encode("utf-8")


def redact_url(url: str | URL) -> str:
    """``scheme://host[:port]/path`` without credentials, query string or fragment."""
    try:
        u = url if isinstance(url, URL) else URL(url)
        if not u.is_absolute():
            return u.path
        return str(u.with_user(None).with_query(None).with_fragment(None))
    except (ValueError, TypeError):
        return "<invalid url>"


@dataclass
class _Attempt:
    status: int | None
    body: bytes
    content_type: str | None
    error: str | None
    retryable: bool


def is_json_media_type(media_type: str | None) -> bool:
    """True for ``application/json`` and structured ``+json`` types (parameters removed)."""
    if media_type is None:
        return False
    return media_type == "application/json" or (
        media_type.startswith("application/") and media_type.endswith("+json"))


def require_json_content_type(resp: WebhookResponse, source: str) -> None:
    """Raise :class:`ParseError` unless ``resp`` declares a JSON body.

    ``source`` names the URL in the message (``"answer_url returned content type
    text/html, expected application/json"``).  A response with no ``Content-Type`` at all
    is accepted: its body must then parse as JSON, which the caller's parser checks.
    """
    if resp.content_type is None or is_json_media_type(resp.content_type):
        return
    raise ParseError(
        f"{source} returned content type {resp.content_type}, expected application/json")


def _failure_reason(error: str) -> str:
    """The metric reason for a :attr:`WebhookResponse.error`."""
    if error.endswith("timeout"):
        return "timeout"
    if error == "connection reset":
        return "reset"
    if error.startswith("http "):
        return "status"
    if error in ("connection refused", "dns lookup failed", "tls error", "connect error",
                 "connection error"):
        return "connect"
    return "invalid_response"


def _connector_error(exc: aiohttp.ClientConnectorError) -> tuple[str, bool]:
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return "dns lookup failed", False
    if isinstance(exc, aiohttp.ClientSSLError):
        return "tls error", False
    code = exc.os_error.errno if exc.os_error is not None else None
    if code == errno.ECONNREFUSED or isinstance(exc.os_error, ConnectionRefusedError):
        return "connection refused", True
    if code in _RESET_ERRNOS:
        return "connection reset", True
    return "connect error", True


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
        metrics.WEBHOOK_SECONDS.labels(kind=kind).observe(elapsed_ms / 1000.0)
        if outcome.error is not None:
            metrics.WEBHOOK_FAILURES.labels(
                kind=kind, reason=_failure_reason(outcome.error)).inc()
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
    ) -> _Attempt:
        try:
            url = URL(req.url)
        except (ValueError, TypeError):
            return _Attempt(None, b"", None, "invalid url", False)
        if url.scheme not in ("http", "https") or not url.host:
            return _Attempt(None, b"", None, "invalid url", False)

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

        client_timeout = aiohttp.ClientTimeout(
            total=None,
            connect=timeouts.connect_s,
            sock_connect=timeouts.connect_s,
            sock_read=timeouts.read_s,
        )
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
        except aiohttp.ConnectionTimeoutError:
            return _Attempt(None, b"", None, "connect timeout", True)
        except TimeoutError:
            # aiohttp's socket read timeouts and our overall deadline.
            return _Attempt(None, b"", None, "read timeout", True)
        except aiohttp.ClientConnectorError as exc:
            cause, retry = _connector_error(exc)
            return _Attempt(None, b"", None, cause, retry)
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientConnectionResetError):
            return _Attempt(None, b"", None, "connection reset", True)
        except aiohttp.TooManyRedirects:
            return _Attempt(None, b"", None, "too many redirects", False)
        except aiohttp.InvalidURL:
            return _Attempt(None, b"", None, "invalid url", False)
        except aiohttp.ClientPayloadError:
            return _Attempt(None, b"", None, "incomplete response body", False)
        except aiohttp.ClientOSError as exc:
            if exc.errno in _RESET_ERRNOS:
                return _Attempt(None, b"", None, "connection reset", True)
            return _Attempt(None, b"", None, "connection error", True)
        except aiohttp.ClientError as exc:
            return _Attempt(None, b"", None, f"request failed: {type(exc).__name__}", False)

        retryable = status in RETRY_STATUSES
        if not 200 <= status < 300:
            return _Attempt(status, content, content_type, f"http {status}", retryable)
        if over:
            return _Attempt(
                status, b"", content_type, f"body exceeds {self.max_body_bytes} bytes", False
            )
        return _Attempt(status, content, content_type, None, False)

    async def _read_capped(self, resp: aiohttp.ClientResponse) -> tuple[bytes, bool]:
        """Read the body streaming; ``(b"", True)`` as soon as it exceeds the cap."""
        cap = self.max_body_bytes
        if resp.content_length is not None and resp.content_length > cap:
            resp.close()
            return b"", True
        buf = bytearray()
        while True:
            chunk = await resp.content.read(min(_READ_CHUNK, cap + 1 - len(buf)))
            if not chunk:
                return bytes(buf), False
            buf += chunk
            if len(buf) > cap:
                resp.close()
                return b"", True
