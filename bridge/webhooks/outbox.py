"""The durable event outbox: every status event is written to disk before it counts as sent.

One :class:`EventOutbox` serves the whole bridge (``engine.events``). :meth:`EventOutbox.post`
writes the event to the call store's database (table ``event_outbox``) and wakes the deliverer;
it never waits for the network and never raises. The deliverer sends each event with the
webhook client's rule (timeouts, one retry, signing, the application's fallback URL) and
deletes the row once the application has answered 2xx.

Order and concurrency: the events of one call (one ``call_uuid``) go out one after another,
in the order they were posted; the next waits until the previous one was delivered or given
up. Different calls are delivered in parallel, at most ``max_in_flight`` at a time.

Failures: an attempt that fails for a reason that may pass (connection refused or reset,
timeout, 5xx, 429) is tried again after a random wait between 0 and ``min(cap, base *
2**(n-1))`` seconds (exponential backoff with full jitter), for as long as the retention
allows after the event was written; then the event is dropped with an error log and the
``OUTBOX_DROPPED`` metric. A 4xx answer other than 429 is the application's final word: the
event is logged and deleted at once.

Storage away (a shared Redis restarting, a full disk): an event that cannot be written is
kept in memory, in order, and written before any newer event as soon as the storage takes
writes again (the deliverer retries every half second). Until then it exists only in this
process: an outage and a crash of the process together lose it (at most
``MAX_UNWRITTEN`` are kept; beyond that the oldest is dropped with an error log).

Memory: the events written by this process are also kept in memory, per call, until they are
delivered, so the deliverer reads a call's next event from memory rather than from the storage
(a query per event, a network round trip with Redis). Only a call whose events were written by
another process (a restart, a slot adopted in a cluster) is read from the storage; so is a call
whose events no longer fit (at most ``MAX_CACHED`` events are kept in memory).

Restarts: the rows outlive the process. :meth:`EventOutbox.start` picks up every row left by
a previous process using the same database file and delivers them, in order.

Delivery is at-least-once, and exactly once in the normal case: an event is sent again only
if the process dies (or :meth:`EventOutbox.stop` cancels it) after the application received
it and before its row was deleted, a window of one request per call in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import heapq
import json
import random
import time
import weakref
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import orjson
import structlog

from bridge import metrics
from bridge.config import ApplicationConfig
from bridge.webhooks.client import WebhookClient
from bridge.webhooks.messages import (
    Method,
    Timeouts,
    WebhookRequest,
    WebhookResponse,
    redact_url,
)
from bridge.webhooks.signing import Signer

#: Events kept in memory while the storage cannot take writes (see the module docstring).
MAX_UNWRITTEN = 100_000
#: How often the deliverer tries again to write them (seconds).
UNWRITTEN_RETRY_S = 0.5
#: Written events kept in memory for delivery (see the module docstring).
MAX_CACHED = 10_000

__all__ = [
    "EventOutbox",
    "NewOutboxEvent",
    "OutboxEvent",
    "OutboxStorage",
    "backoff_delay",
    "classify",
]

log = structlog.get_logger(__name__)

Outcome = Literal["delivered", "rejected", "failed"]


@dataclass(frozen=True)
class NewOutboxEvent:
    """An event to write. Times are Unix seconds (wall clock: they must survive a restart).

    ``call_uuid`` is the ordering key: events with the same key are delivered one after
    another. ``application_id`` gives the timeouts and the signing secret at delivery time
    (the secret is never written to disk). ``signed``: sign with the application's secret,
    if it has one. ``fallback_url``: where a failed attempt is sent next, as today's
    ``fallback_answer_url`` rule does.
    """

    call_uuid: str
    application_id: str
    url: str
    method: Method
    payload: dict[str, Any]
    fallback_url: str | None
    signed: bool
    created_at: float
    next_attempt_at: float


@dataclass(frozen=True)
class OutboxEvent(NewOutboxEvent):
    """A stored event: its row id (the order of posting) and the failed attempts so far."""

    id: int = 0
    attempts: int = 0


class OutboxStorage(Protocol):
    """Where the outbox keeps its rows (the call store: SQLite today)."""

    def outbox_add(self, event: NewOutboxEvent, end_call: str | None = None) -> int:
        """Write ``event``; returns its id. With ``end_call``, the live call of that uuid is
        deleted in the same transaction."""
        ...

    def outbox_head(self, call_uuid: str) -> OutboxEvent | None:
        """The oldest event of ``call_uuid``, if any."""
        ...

    def outbox_delete(self, event_id: int) -> None: ...

    def outbox_retry_later(self, event_id: int, attempts: int, next_attempt_at: float) -> None:
        ...

    def outbox_streams(self) -> list[tuple[str, float]]:
        """Every call with pending events, with its oldest event's ``next_attempt_at``, in
        the order their oldest events were written."""
        ...

    def outbox_count(self) -> int: ...

    def outbox_oldest_created_at(self) -> float | None: ...


def backoff_delay(attempts: int, base_s: float, cap_s: float,
                  rng: Callable[[float, float], float] = random.uniform) -> float:
    """Seconds to wait after the ``attempts``-th failed attempt (1 for the first failure).

    Full jitter: a random time between 0 and ``min(cap_s, base_s * 2**(attempts-1))``, so
    that bridges and calls retrying after one outage do not all come back at once.
    """
    exponent = min(max(attempts - 1, 0), 62)  # 2**62 * base already exceeds any cap
    return rng(0.0, min(cap_s, base_s * (2 ** exponent)))


def frozen_payload(payload: Mapping[str, Any]) -> dict[str, Any]:
    """A deep copy of an event's payload as JSON would give it back (values JSON cannot
    carry become strings). orjson makes the round trip in microseconds; data it refuses
    (an integer beyond 64 bits) takes the standard library's slower way."""
    try:
        copied = orjson.loads(orjson.dumps(payload, default=str, option=_FREEZE_OPTIONS))
    except TypeError:
        copied = json.loads(json.dumps(payload, default=str))
    if not isinstance(copied, dict):
        raise TypeError(f"payload must be a JSON object, not {type(payload).__name__}")
    return copied


# Datetimes and dataclasses go through ``default=str`` as with the standard library's json,
# not orjson's own formats: the stored text stays what earlier releases wrote.
_FREEZE_OPTIONS = (orjson.OPT_NON_STR_KEYS | orjson.OPT_PASSTHROUGH_DATETIME
                   | orjson.OPT_PASSTHROUGH_DATACLASS)


def _one(resp: WebhookResponse) -> Outcome:
    status = resp.status
    if status is not None:
        if 200 <= status < 300:
            # The application has it, even if its reply body was unusable.
            return "delivered"
        if 400 <= status < 500 and status != 429:
            return "rejected"
        return "failed"
    if resp.error in ("invalid url", "too many redirects"):
        return "rejected"  # the same request can never succeed
    return "failed"


def classify(primary: WebhookResponse, fallback: WebhookResponse | None) -> Outcome:
    """What one attempt (the request, its retry, and the fallback URL if any) came to.

    ``delivered`` when the primary or the fallback answered 2xx; ``rejected`` (a final
    answer: drop the event) when every URL tried answered 4xx other than 429, or cannot be
    requested at all; else ``failed`` (try again later).
    """
    outcomes = [_one(primary)] + ([_one(fallback)] if fallback is not None else [])
    if "delivered" in outcomes:
        return "delivered"
    if all(o == "rejected" for o in outcomes):
        return "rejected"
    return "failed"


def _ignore_body(resp: WebhookResponse) -> None:
    """Status event replies carry nothing the call needs."""
    return None


# The outboxes running in this process, for the metrics read at scrape time (tests run
# several bridges in one process; production runs one).
_running: weakref.WeakSet[EventOutbox] = weakref.WeakSet()


def _backlog_metric() -> float:
    return float(sum(o.backlog() for o in list(_running)))


def _oldest_age_metric() -> float:
    ages = [o.oldest_age_s() for o in list(_running)]
    return max(ages, default=0.0)


metrics.OUTBOX_BACKLOG.set_function(_backlog_metric)
metrics.OUTBOX_OLDEST_AGE.set_function(_oldest_age_metric)


class EventOutbox:
    """The bridge's one durable, ordered, retrying deliverer of status events.

    ``storage``: where rows live (the call store). ``client``: the webhook client (started
    by its owner). ``applications``: looks an application up by id at delivery time, for its
    timeouts and signing secret. ``retention_s``, ``retry_base_s``, ``retry_cap_s``: seconds
    (see the module docstring). ``max_in_flight``: calls delivered at the same time.
    ``clock`` (Unix seconds) and ``rng`` (``random.uniform``-like) are for tests.
    """

    def __init__(
        self,
        storage: OutboxStorage,
        client: WebhookClient,
        applications: Callable[[str], ApplicationConfig | None],
        *,
        retention_s: float = 24 * 3600.0,
        retry_base_s: float = 0.5,
        retry_cap_s: float = 30.0,
        max_in_flight: int = 64,
        clock: Callable[[], float] = time.time,
        rng: Callable[[float, float], float] = random.uniform,
    ) -> None:
        if retention_s <= 0 or retry_base_s <= 0 or retry_cap_s <= 0 or max_in_flight <= 0:
            raise ValueError("retention, retry times and max_in_flight must be positive")
        self._storage = storage
        self._client = client
        self._applications = applications
        self.retention_s = retention_s
        self.retry_base_s = retry_base_s
        self.retry_cap_s = retry_cap_s
        self.max_in_flight = max_in_flight
        self._clock = clock
        self._rng = rng
        self._count = self._safe_count()
        # Scheduling: a call with pending events is in exactly one of _ready (to attempt
        # now), _timers (waiting for its next attempt) or _in_flight (being attempted).
        self._active: set[str] = set()
        self._ready: deque[str] = deque()
        self._timers: list[tuple[float, int, str]] = []
        self._timer_seq = 0
        self._in_flight: dict[str, asyncio.Task[None]] = {}
        self._wake = asyncio.Event()
        self._changed = asyncio.Event()
        self._dispatcher: asyncio.Task[None] | None = None
        self._unknown_apps: set[str] = set()
        # Events the storage could not take yet, oldest first, with their end_call.
        self._unwritten: deque[tuple[NewOutboxEvent, str | None]] = deque()
        # The stored events of the calls whose every stored event this process wrote, in
        # order: delivery reads them here, not from the storage. A call absent from this map
        # but active is read from the storage.
        self._cached: dict[str, deque[OutboxEvent]] = {}
        self._cached_count = 0
        self.delivered = 0
        self.rejected = 0
        self.dropped = 0

    # ------------------------------------------------------------------ the API
    def post(self, call_uuid: str, app: ApplicationConfig, url: str, method: str,
             payload: Mapping[str, Any], *, plain: bool = False,
             ends_call: bool = False) -> bool:
        """Write an event for delivery and wake the deliverer; never blocks, never raises.

        ``call_uuid`` orders the event after the earlier ones with the same key. ``app``
        is the application it is sent for: its id (timeouts, signing) and, unless
        ``plain``, its ``fallback_answer_url``. ``plain``: neither signed nor sent to the
        fallback (Exotel's passthru). ``method`` is ``GET`` or ``POST`` (any case).
        ``payload`` is copied as JSON. ``ends_call``: delete the call's live row in the
        same transaction (``completed``), so a crash can neither lose the event nor resume
        a finished call.

        Returns True once the event is on disk; False (logged) if it could not be written
        now: it is then kept in memory and written, in order, once the storage is back.
        """
        try:
            m = method.upper()
            if m not in ("GET", "POST"):
                raise ValueError(f"unsupported method {method!r}")
            # A copy made through JSON before this returns: what is sent, now and after a
            # restart, is what the caller posted, whatever it does with its dicts later.
            body = frozen_payload(payload)
            now = self._clock()
            event = NewOutboxEvent(
                call_uuid=call_uuid, application_id=app.id, url=url,
                method="GET" if m == "GET" else "POST", payload=body,
                fallback_url=None if plain else app.fallback_answer_url,
                signed=not plain, created_at=now, next_attempt_at=now,
            )
        except Exception as exc:
            log.error("event.not_written", call_uuid=call_uuid,
                      url=redact_url(url) if isinstance(url, str) else None,
                      error=str(exc) or type(exc).__name__)
            return False
        end_call = call_uuid if ends_call else None
        # Behind any event still waiting for the storage: the order is the order of posts.
        if self._unwritten:
            self.write_unwritten()
        if self._unwritten or not self._write(event, end_call):
            self._keep_unwritten(event, end_call)
            return False
        self._wake.set()
        return True

    def _write(self, event: NewOutboxEvent, end_call: str | None) -> bool:
        """Write one event and schedule its call; False when the storage refused it."""
        try:
            event_id = self._storage.outbox_add(event, end_call=end_call)
        except Exception as exc:
            if not self._unwritten:  # once per outage
                log.warning("event.write_deferred", call_uuid=event.call_uuid,
                            error=str(exc) or type(exc).__name__)
            return False
        self._count += 1
        call_uuid = event.call_uuid
        if call_uuid not in self._active:
            self._active.add(call_uuid)
            self._ready.append(call_uuid)
            self._cached[call_uuid] = deque()
        cached = self._cached.get(call_uuid)
        if cached is not None:
            if self._cached_count < MAX_CACHED:
                cached.append(OutboxEvent(**vars(event), id=event_id))
                self._cached_count += 1
            else:
                # Out of room: this call's events are read from the storage from now on.
                self._uncache(call_uuid)
        return True

    def _uncache(self, call_uuid: str) -> None:
        cached = self._cached.pop(call_uuid, None)
        if cached is not None:
            self._cached_count -= len(cached)

    def _head(self, call_uuid: str) -> OutboxEvent | None:
        """The oldest undelivered event of a call: from memory when this process wrote all
        of them, else from the storage."""
        cached = self._cached.get(call_uuid)
        if cached is None:
            return self._storage.outbox_head(call_uuid)
        return cached[0] if cached else None

    def _keep_unwritten(self, event: NewOutboxEvent, end_call: str | None) -> None:
        self._unwritten.append((event, end_call))
        if len(self._unwritten) > MAX_UNWRITTEN:
            lost, _ = self._unwritten.popleft()
            self.dropped += 1
            log.error("event.not_written", call_uuid=lost.call_uuid, url=redact_url(lost.url),
                      error=f"more than {MAX_UNWRITTEN} events waiting for the storage")
        self._wake.set()

    def write_unwritten(self) -> None:
        """Write the kept events, oldest first, until the storage refuses one."""
        written = 0
        while self._unwritten:
            event, end_call = self._unwritten[0]
            if not self._write(event, end_call):
                break
            self._unwritten.popleft()
            written += 1
        if written and not self._unwritten:
            log.info("event.writes_resumed", written=written)

    @property
    def unwritten(self) -> int:
        """Events waiting in memory for the storage to take writes again."""
        return len(self._unwritten)

    async def start(self) -> None:
        """Start delivering: the rows already on disk first, in order (idempotent)."""
        if self._dispatcher is not None and not self._dispatcher.done():
            return
        self._count = self._safe_count()
        self._active.clear()
        self._ready.clear()
        self._timers.clear()
        self._cached.clear()
        self._cached_count = 0
        if self._schedule_stored():
            log.info("events.resumed", calls=len(self._active), events=self._count)
        self._dispatcher = asyncio.get_running_loop().create_task(
            self._dispatch(), name="event-outbox")
        _running.add(self)

    def adopt_streams(self) -> None:
        """Pick up the calls with pending events that the storage now also covers (a slot
        this bridge adopted in a cluster), behind the ones already queued."""
        if self._dispatcher is None:
            return
        added = self._schedule_stored()
        self._count = self._safe_count()
        if added:
            log.info("events.adopted", calls=added)
        self._wake.set()

    def _schedule_stored(self) -> int:
        """Schedule every stored stream not scheduled yet; returns how many were added."""
        added = 0
        for call_uuid, next_attempt_at in self._storage.outbox_streams():
            if call_uuid not in self._active:
                self._active.add(call_uuid)
                self._schedule(call_uuid, next_attempt_at)
                added += 1
        return added

    async def stop(self) -> None:
        """Stop delivering; what is not delivered stays on disk for the next start.

        Attempts in flight are cancelled: an application may have received one of them,
        and gets it again after the restart (the at-least-once window)."""
        _running.discard(self)
        dispatcher, self._dispatcher = self._dispatcher, None
        tasks = [t for t in (dispatcher, *self._in_flight.values()) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
        self._in_flight.clear()

    async def flush(self, timeout_s: float) -> int:
        """Try every pending event now, and wait (at most ``timeout_s`` seconds) until none
        is left; returns how many remain undelivered (they stay on disk).

        Calls waiting for their next attempt are tried at once, one time; an event that
        fails again waits for its backoff as usual."""
        if self._dispatcher is None or self._dispatcher.done():
            return self.backlog()
        while self._timers:
            _, _, call_uuid = heapq.heappop(self._timers)
            self._ready.append(call_uuid)
        self._wake.set()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(timeout_s, 0.0)):
                while self._count > 0:
                    self._changed.clear()
                    await self._changed.wait()
        return self.backlog()

    def backlog(self) -> int:
        """Events written and not yet delivered or given up."""
        return max(self._count, 0)

    def oldest_age_s(self) -> float:
        """Seconds since the oldest pending event was written (0 when none is pending)."""
        if self._count <= 0:
            return 0.0
        try:
            oldest = self._storage.outbox_oldest_created_at()
        except Exception:
            return 0.0
        return 0.0 if oldest is None else max(self._clock() - oldest, 0.0)

    # ---------------------------------------------------------------- scheduling
    def _safe_count(self) -> int:
        try:
            return self._storage.outbox_count()
        except Exception:
            log.exception("events.count_failed")
            return 0

    def _schedule(self, call_uuid: str, at: float) -> None:
        if at <= self._clock():
            self._ready.append(call_uuid)
        else:
            self._timer_seq += 1
            heapq.heappush(self._timers, (at, self._timer_seq, call_uuid))

    async def _dispatch(self) -> None:
        while True:
            if self._unwritten:
                self.write_unwritten()
            now = self._clock()
            while self._timers and self._timers[0][0] <= now:
                _, _, call_uuid = heapq.heappop(self._timers)
                self._ready.append(call_uuid)
            while self._ready and len(self._in_flight) < self.max_in_flight:
                call_uuid = self._ready.popleft()
                if call_uuid in self._in_flight:
                    continue  # flush() pulled a call forward that is being attempted
                self._in_flight[call_uuid] = asyncio.get_running_loop().create_task(
                    self._advance(call_uuid), name=f"event-outbox:{call_uuid}")
            timeout = None
            if self._timers:
                timeout = max(self._timers[0][0] - now, 0.0)
            if self._unwritten:
                timeout = min(timeout, UNWRITTEN_RETRY_S) if timeout is not None \
                    else UNWRITTEN_RETRY_S
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wake.wait()

    async def _advance(self, call_uuid: str) -> None:
        """Attempt the oldest event of one call, then schedule what comes next."""
        try:
            head = self._head(call_uuid)
            if head is None:
                self._active.discard(call_uuid)
                self._uncache(call_uuid)
                return
            outcome = await self._attempt(head)
            if outcome == "delivered":
                self.delivered += 1
                self._forget(head)
                self._ready.append(call_uuid)
            elif outcome == "rejected":
                self.rejected += 1
                log.warning("event.rejected", call_uuid=head.call_uuid,
                            url=redact_url(head.url), status=head.payload.get("status"))
                self._forget(head)
                self._ready.append(call_uuid)
            else:
                self._failed(head)
        except asyncio.CancelledError:
            raise
        except Exception:
            # A bug or a storage error: never spin on it; try this call again later.
            log.exception("event.delivery_crashed", call_uuid=call_uuid)
            self._schedule(call_uuid, self._clock() + self.retry_cap_s)
        finally:
            self._in_flight.pop(call_uuid, None)
            self._wake.set()

    def _failed(self, head: OutboxEvent) -> None:
        now = self._clock()
        attempts = head.attempts + 1
        expires = head.created_at + self.retention_s
        if now >= expires:
            self.dropped += 1
            metrics.OUTBOX_DROPPED.inc()
            log.error("event.dropped", call_uuid=head.call_uuid, url=redact_url(head.url),
                      status=head.payload.get("status"), attempts=attempts,
                      retention_s=self.retention_s)
            self._forget(head)
            self._ready.append(head.call_uuid)
            return
        # The last attempt falls on the retention's end, not after it.
        at = min(now + backoff_delay(attempts, self.retry_base_s, self.retry_cap_s, self._rng),
                 expires)
        self._storage.outbox_retry_later(head.id, attempts, at)
        cached = self._cached.get(head.call_uuid)
        if cached and cached[0].id == head.id:
            cached[0] = dataclasses.replace(head, attempts=attempts, next_attempt_at=at)
        log.info("event.retry_later", call_uuid=head.call_uuid, url=redact_url(head.url),
                 attempts=attempts, in_s=round(at - now, 3))
        self._schedule(head.call_uuid, at)

    def _forget(self, head: OutboxEvent) -> None:
        self._storage.outbox_delete(head.id)
        cached = self._cached.get(head.call_uuid)
        if cached and cached[0].id == head.id:
            cached.popleft()
            self._cached_count -= 1
        self._count -= 1
        self._changed.set()

    async def _attempt(self, event: OutboxEvent) -> Outcome:
        app = self._applications(event.application_id)
        if app is None and event.application_id not in self._unknown_apps:
            # Its configuration was removed since the event was written: send it anyway,
            # with default timeouts and unsigned.
            self._unknown_apps.add(event.application_id)
            log.warning("event.unknown_application", application_id=event.application_id)
        timeouts = (Timeouts(connect_ms=app.timeouts.connect_ms,
                             read_ms=app.timeouts.event_read_ms)
                    if app is not None else Timeouts())
        signer = None
        if event.signed and app is not None and app.signature_secret is not None:
            signer = Signer(secret=app.signature_secret.get_secret_value(),
                            application_id=app.id)
        request = WebhookRequest(url=event.url, method=event.method, data=event.payload)
        result = await self._client.send_with_fallback(
            request, event.fallback_url, _ignore_body, timeouts, signer, kind="event")
        if result.ok:
            return "delivered"
        return classify(result.primary, result.fallback)
