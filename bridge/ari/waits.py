"""Subscribe before you act: waits on the ARI events of one resource (a call's channel, a
dialled leg, a snoop channel, a room's bridge).

Asterisk may report what a request caused (PlaybackFinished, StasisStart, RecordingFinished)
before the request has even returned, so a wait is registered *before* the request is sent.
Every wait has a deadline and a typed outcome: the event, a timeout, or the resource going
away first (``HANGUP``).

:class:`EventWaits` is the one mechanism; a call session, a leg and an :class:`EventTap`
(a resource we created and route ourselves) each feed theirs from their ``on_event``.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from bridge.ari.gateway import AriGateway

Event = dict[str, Any]
Predicate = Callable[[Event], bool]


class WaitOutcome(enum.Enum):
    EVENT = "event"  # the awaited event arrived
    TIMEOUT = "timeout"  # nothing within the deadline
    HANGUP = "hangup"  # the resource went away first


@dataclass
class Waiter:
    """A subscription made before acting; resolved by :meth:`EventWaits.dispatch`."""

    predicate: Predicate
    future: asyncio.Future[tuple[WaitOutcome, Event | None]]

    async def wait(self, timeout: float | None) -> tuple[WaitOutcome, Event | None]:
        """The outcome, waiting at most ``timeout`` seconds (None = no deadline). A timeout,
        or the caller being cancelled, leaves the subscription as it is."""
        if not self.future.done():
            await _until_one_done((self.future,), timeout)
            if not self.future.done():
                return WaitOutcome.TIMEOUT, None
        return self.future.result()  # CancelledError if the subscription was cancelled

    async def event(self, timeout: float | None) -> Event:
        """The awaited event; TimeoutError when it did not come (or the resource went)."""
        outcome, event = await self.wait(timeout)
        if outcome is not WaitOutcome.EVENT or event is None:
            raise TimeoutError(f"no such event ({outcome.value})")
        return event


async def first(waiters: Sequence[Waiter], timeout: float | None) -> Waiter | None:
    """The first of ``waiters`` to resolve within ``timeout`` seconds, or None; when several
    have, the first in the list. The subscriptions are left as they are."""
    def resolved() -> Waiter | None:
        return next((w for w in waiters if w.future.done()), None)

    if resolved() is None:
        await _until_one_done([w.future for w in waiters], timeout)
    else:
        # Give the loop a turn even so: a caller that loops on this (a prompt repeated until
        # the call ends) must let the rest of the process run.
        await asyncio.sleep(0)
    return resolved()


async def _until_one_done(futures: Sequence[asyncio.Future[Any]], timeout: float | None
                          ) -> None:
    """Return when one of ``futures`` is done or ``timeout`` seconds have passed, without
    touching them. One future and one timer: ``wait_for(shield())`` or ``asyncio.wait`` on
    tasks would cost several futures, tasks and callbacks, several times per call."""
    loop = asyncio.get_running_loop()
    woken: asyncio.Future[None] = loop.create_future()

    def wake(_: object = None) -> None:
        if not woken.done():
            woken.set_result(None)

    timer = None if timeout is None else loop.call_later(max(0.0, timeout), wake)
    for future in futures:
        future.add_done_callback(wake)
    try:
        await woken
    finally:
        if timer is not None:
            timer.cancel()
        for future in futures:
            future.remove_done_callback(wake)


class EventWaits:
    """The pending waits of one event stream. Touched only from the event loop."""

    def __init__(self, keep_seen: int = 0) -> None:
        self._waiters: list[Waiter] = []
        self._ended: Event | None = None
        self._ended_flag = False
        #: The last ``keep_seen`` events, for waits that also accept one already past.
        self._keep = keep_seen
        self.seen: list[Event] = []

    def expect(self, predicate: Predicate, past: bool = False) -> Waiter:
        """Subscribe to the first event matching ``predicate``. ``past``: an event already
        seen (kept ones only) counts too. Resolves HANGUP once the stream has ended."""
        future: asyncio.Future[tuple[WaitOutcome, Event | None]] = (
            asyncio.get_running_loop().create_future()
        )
        waiter = Waiter(predicate, future)
        if past:
            match = next((e for e in self.seen if predicate(e)), None)
            if match is not None:
                future.set_result((WaitOutcome.EVENT, match))
                return waiter
        if self._ended_flag:
            future.set_result((WaitOutcome.HANGUP, self._ended))
        else:
            self._waiters.append(waiter)
        return waiter

    def cancel(self, waiter: Waiter) -> None:
        """Drop a wait that is no longer wanted (idempotent)."""
        if waiter in self._waiters:
            self._waiters.remove(waiter)
        if not waiter.future.done():
            waiter.future.cancel()

    def dispatch(self, event: Event) -> None:
        """Hand an event to the waits (synchronous: called from the ARI reader)."""
        if self._keep:
            self.seen.append(event)
            del self.seen[:-self._keep]
        for waiter in list(self._waiters):
            if waiter.future.done():
                self._waiters.remove(waiter)
            elif waiter.predicate(event):
                waiter.future.set_result((WaitOutcome.EVENT, event))
                self._waiters.remove(waiter)

    def end(self, event: Event | None) -> None:
        """The resource is gone: every pending wait resolves HANGUP, and so do later ones."""
        self._ended_flag = True
        self._ended = event
        for waiter in self._waiters:
            if not waiter.future.done():
                waiter.future.set_result((WaitOutcome.HANGUP, event))
        self._waiters.clear()

    def close(self) -> None:
        """Nobody waits any more: pending waits are cancelled."""
        for waiter in self._waiters:
            if not waiter.future.done():
                waiter.future.cancel()
        self._waiters.clear()


class EventTap:
    """The events of one ARI resource we created (a snoop channel, a room's bridge), routed
    by the gateway while the tap is open, with subscribe-before-act waits that also accept
    an event already seen (a snoop may enter Stasis before its creation returns)."""

    SEEN = 200  # events kept for late waits

    def __init__(self, gateway: AriGateway, key: str,
                 on_event: Callable[[Event], None] | None = None) -> None:
        self.gateway = gateway
        self.key = key
        self.waits = EventWaits(keep_seen=self.SEEN)
        self._extra = on_event
        gateway.route(key, self.on_event)

    def on_event(self, event: Event) -> None:
        self.waits.dispatch(event)
        if self._extra is not None:
            self._extra(event)

    def expect(self, predicate: Predicate) -> asyncio.Future[Event]:
        """A future for the first event matching ``predicate`` (also one already seen)."""
        waiter = self.waits.expect(predicate, past=True)
        result: asyncio.Future[Event] = asyncio.get_running_loop().create_future()

        def resolve(done: asyncio.Future[tuple[WaitOutcome, Event | None]]) -> None:
            if result.done():
                return
            outcome, event = (None, None) if done.cancelled() else done.result()
            if outcome is WaitOutcome.EVENT and event is not None:
                result.set_result(event)
            else:  # the tap was closed
                result.cancel()

        def given_up(future: asyncio.Future[Event]) -> None:
            if future.cancelled():  # e.g. a wait_for that timed out: stop waiting
                self.waits.cancel(waiter)

        waiter.future.add_done_callback(resolve)
        result.add_done_callback(given_up)
        return result

    def close(self) -> None:
        self.gateway.unroute(self.key)
        self.waits.close()


def is_type(*types: str) -> Predicate:
    return lambda event: event.get("type") in types


def playback_finished(playback_id: str) -> Predicate:
    return lambda e: (e.get("type") == "PlaybackFinished"
                      and (e.get("playback") or {}).get("id") == playback_id)


def playback_event(kind: str, playback_id: str) -> Predicate:
    return lambda e: (e.get("type") == kind
                      and (e.get("playback") or {}).get("id") == playback_id)


def recording_ended(name: str) -> Predicate:
    return lambda event: (
        event.get("type") in ("RecordingFinished", "RecordingFailed")
        and (event.get("recording") or {}).get("name") == name
    )


__all__ = ["EventTap", "EventWaits", "WaitOutcome", "Waiter", "is_type", "playback_event",
           "playback_finished", "recording_ended"]
