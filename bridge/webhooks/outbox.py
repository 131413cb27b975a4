"""Per-call, ordered, non-blocking delivery of call status events."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import structlog

from bridge.webhooks.client import (
    Method,
    Timeouts,
    WebhookClient,
    WebhookRequest,
    WebhookResponse,
    redact_url,
)
from bridge.webhooks.signing import Signer

__all__ = ["EventOutbox"]

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class _Event:
    url: str
    method: Method
    payload: dict[str, Any]


def _ignore_body(resp: WebhookResponse) -> None:
    """Status event responses carry nothing the call needs."""
    return None


class EventOutbox:
    """Per-call ordered, non-blocking delivery of status events.

    Status events are ``started``, ``ringing``, ``answered``, ``completed`` and so on.

    :meth:`post` only enqueues; one worker task delivers the events one after another in
    the order they were posted, each with the client's retry rule and, when configured,
    the fallback URL.  A failed event is logged and counted in :attr:`failed`; it never
    stops later events.  Call :meth:`drain` at the end of the call.

    ``max_pending``: events queued beyond this are dropped (logged, counted as failed).
    """

    def __init__(
        self,
        client: WebhookClient,
        timeouts: Timeouts,
        signer: Signer | None,
        fallback_url: str | None = None,
        *,
        max_pending: int = 1000,
    ) -> None:
        self._client = client
        self._timeouts = timeouts
        self._signer = signer
        self._fallback_url = fallback_url
        self._max_pending = max_pending
        self._queue: asyncio.Queue[_Event] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None
        self.delivered = 0
        self.failed = 0

    @property
    def pending(self) -> int:
        """Events queued and not yet attempted (the one in flight excluded)."""
        return self._queue.qsize()

    def post(self, url: str, method: str, payload: Mapping[str, Any]) -> None:
        """Queue an event for delivery; never blocks and never raises.

        ``method`` is ``"GET"`` or ``"POST"`` (case-insensitive).  ``payload`` is copied
        (shallowly) so later changes by the caller do not affect the queued event.
        """
        try:
            m = method.upper()
            if m not in ("GET", "POST"):
                raise ValueError(f"unsupported method {method!r}")
            if self._queue.qsize() >= self._max_pending:
                raise OverflowError(f"more than {self._max_pending} events pending")
            event = _Event(url=url, method="GET" if m == "GET" else "POST", payload=dict(payload))
            self._ensure_worker()
            self._queue.put_nowait(event)
        except Exception as exc:
            self.failed += 1
            log.warning(
                "webhook event dropped",
                url=redact_url(url) if isinstance(url, str) else None,
                error=str(exc) or type(exc).__name__,
            )

    async def drain(self, timeout_s: float = 15.0) -> None:
        """Wait (up to ``timeout_s`` seconds) until every queued event has been attempted.

        Events still undelivered when the timeout expires are abandoned, logged and
        counted as failed.  The outbox stays usable: a later :meth:`post` restarts it.
        """
        worker = self._worker
        if worker is None:
            return
        try:
            async with asyncio.timeout(timeout_s):
                await self._queue.join()
        except TimeoutError:
            abandoned = self._queue.qsize() + 1  # plus the one in flight
            log.warning("webhook events abandoned", count=abandoned, timeout_s=timeout_s)
        finally:
            await self._stop_worker()

    def _ensure_worker(self) -> None:
        if self._worker is None or self._worker.done():
            # Raises RuntimeError outside a running loop; post() reports that.
            self._worker = asyncio.get_running_loop().create_task(
                self._run(), name="webhook-event-outbox"
            )

    async def _stop_worker(self) -> None:
        worker, self._worker = self._worker, None
        if worker is not None and not worker.done():
            worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await worker
        while not self._queue.empty():
            self._queue.get_nowait()
            self._queue.task_done()
            self.failed += 1

    async def _run(self) -> None:
        while True:
            event = await self._queue.get()
            try:
                await self._deliver(event)
            except asyncio.CancelledError:
                self.failed += 1
                raise
            except Exception:
                self.failed += 1
                log.exception("webhook event delivery crashed", url=redact_url(event.url))
            finally:
                self._queue.task_done()

    async def _deliver(self, event: _Event) -> None:
        req = WebhookRequest(url=event.url, method=event.method, data=event.payload)
        result = await self._client.send_with_fallback(
            req, self._fallback_url, _ignore_body, self._timeouts, self._signer
        )
        if result.ok:
            self.delivered += 1
            return
        self.failed += 1
        last = result.fallback or result.primary
        log.warning(
            "webhook event failed",
            url=redact_url(event.url),
            status=last.status,
            error=result.error,
        )
