"""What a webhook request and its outcome are, and how data goes on the wire.

Vonage's delivery rules for the data: ``GET`` sends it as query parameters (nested values
JSON-encoded, ``None`` values omitted); ``POST`` sends it as a compact JSON body.  The
response types here are what every caller of :class:`~bridge.webhooks.client.WebhookClient`
reads; the parsers they hand to it raise :class:`ParseError`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

from yarl import URL

__all__ = [
    "JSON_NESTING_ERROR",
    "KINDS",
    "FallbackResult",
    "Kind",
    "Method",
    "ParseError",
    "Timeouts",
    "WebhookRequest",
    "WebhookResponse",
    "encode_body",
    "encode_query",
    "is_json_media_type",
    "redact_url",
    "require_json_content_type",
]

Method = Literal["GET", "POST"]
T = TypeVar("T")

Kind = Literal["answer", "fallback", "event", "exotel"]
KINDS: tuple[Kind, ...] = ("answer", "fallback", "event", "exotel")
"""What a request is for, the ``kind`` label of the webhook metrics: ``answer`` (answer_url
and other URLs that return a call's NCCO), ``fallback`` (fallback_answer_url, for any
primary), ``event`` (event_url, NCCO eventUrl hooks such as notify and input), ``exotel``
(the Connect applet's Primary/Fallback and transition URLs)."""

JSON_NESTING_ERROR = "JSON is nested too deeply"
"""The cause given when a JSON document nests deeper than the parser can follow (e.g. a
body of 100,000 ``[``): Python's decoder raises RecursionError, never a JSONDecodeError."""


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
