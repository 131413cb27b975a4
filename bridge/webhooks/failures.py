"""Why a webhook attempt failed, whether it is retried, and the metric reason for it.

Vonage retries a request **once** on connect timeout, read timeout, connection refused or
reset, and on HTTP 429, 503 and 504; any other failure is final.  :func:`classify_error`
turns what aiohttp (or the overall deadline) raised into the short cause the callers and
the logs see, plus that retry decision; :func:`failure_reason` maps a cause to the
``reason`` label of ``WEBHOOK_FAILURES``.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass

import aiohttp

__all__ = [
    "FAILURE_REASONS",
    "RETRY_STATUSES",
    "Attempt",
    "classify_error",
    "failure_reason",
]

FAILURE_REASONS = ("timeout", "reset", "connect", "status", "invalid_ncco", "invalid_response")
"""The ``reason`` label of ``WEBHOOK_FAILURES``: ``timeout`` (connect or read), ``reset``
(the connection dropped), ``connect`` (refused, DNS, TLS), ``status`` (a non-2xx answer),
``invalid_ncco`` (the caller's parser rejected the body), ``invalid_response`` (anything
else: body over the cap, truncated body, unusable URL)."""

RETRY_STATUSES = frozenset({429, 503, 504})
"""HTTP statuses that are retried once."""

_RESET_ERRNOS = frozenset({errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED})


@dataclass
class Attempt:
    """One HTTP attempt: what came back (if anything), the cause of a failure and whether
    the failure is worth the one retry."""

    status: int | None
    body: bytes
    content_type: str | None
    error: str | None
    retryable: bool


def failure_reason(error: str) -> str:
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


def classify_error(exc: TimeoutError | aiohttp.ClientError) -> tuple[str, bool]:
    """``(cause, retryable)`` for an exception raised while sending or reading.

    The order matters: aiohttp's exception classes overlap (a connect timeout is also a
    ``TimeoutError``; a connector error is also an OS error), the most specific wins.
    """
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return "connect timeout", True
    if isinstance(exc, TimeoutError):
        # aiohttp's socket read timeouts and the client's overall deadline.
        return "read timeout", True
    if isinstance(exc, aiohttp.ClientConnectorError):
        return _connector_error(exc)
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientConnectionResetError):
        return "connection reset", True
    if isinstance(exc, aiohttp.TooManyRedirects):
        return "too many redirects", False
    if isinstance(exc, aiohttp.InvalidURL):
        return "invalid url", False
    if isinstance(exc, aiohttp.ClientPayloadError):
        return "incomplete response body", False
    if isinstance(exc, aiohttp.ClientOSError):
        if exc.errno in _RESET_ERRNOS:
            return "connection reset", True
        return "connection error", True
    return f"request failed: {type(exc).__name__}", False
