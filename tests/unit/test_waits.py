"""Subscribe-before-act waits: an event that comes before anyone awaits it is not lost, the end
of the resource resolves every wait, a wait given up is forgotten."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from bridge.ari.waits import EventTap, EventWaits, WaitOutcome, first, is_type, playback_finished


class RoutingGateway:
    def __init__(self) -> None:
        self.routes: dict[str, Any] = {}

    def route(self, key: str, handler: Any) -> None:
        self.routes[key] = handler

    def unroute(self, key: str) -> None:
        self.routes.pop(key, None)


async def test_an_event_before_the_await_resolves_the_wait() -> None:
    waits = EventWaits()
    finished = waits.expect(playback_finished("p1"))
    waits.dispatch({"type": "PlaybackFinished", "playback": {"id": "p2"}})
    waits.dispatch({"type": "PlaybackFinished", "playback": {"id": "p1", "state": "done"}})
    outcome, event = await finished.wait(0)
    assert outcome is WaitOutcome.EVENT and event is not None
    assert event["playback"]["state"] == "done"


async def test_the_end_resolves_pending_and_later_waits_as_hangup() -> None:
    waits = EventWaits()
    pending = waits.expect(is_type("ChannelDtmfReceived"))
    waits.end({"type": "StasisEnd"})
    later = waits.expect(is_type("ChannelDtmfReceived"))
    assert (await pending.wait(0))[0] is WaitOutcome.HANGUP
    assert (await later.wait(0))[0] is WaitOutcome.HANGUP
    with pytest.raises(TimeoutError):
        await later.event(0)


async def test_a_wait_without_its_event_times_out_and_can_be_dropped() -> None:
    waits = EventWaits()
    waiter = waits.expect(is_type("StasisStart"))
    assert (await waiter.wait(0.01)) == (WaitOutcome.TIMEOUT, None)
    waits.cancel(waiter)
    waits.dispatch({"type": "StasisStart"})
    assert waiter.future.cancelled()


async def test_a_tap_sees_an_event_that_came_before_the_wait() -> None:
    gateway = RoutingGateway()
    tap = EventTap(gateway, "channel:snoop")  # type: ignore[arg-type]
    gateway.routes["channel:snoop"]({"type": "StasisStart"})  # before anyone asked
    assert (await asyncio.wait_for(tap.expect(is_type("StasisStart")), 1))["type"] == "StasisStart"
    tap.close()
    assert gateway.routes == {}


async def test_a_tap_wait_that_timed_out_is_forgotten_and_close_cancels_the_rest() -> None:
    gateway = RoutingGateway()
    tap = EventTap(gateway, "bridge:b")  # type: ignore[arg-type]
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(tap.expect(is_type("RecordingFinished")), 0.01)
    assert tap.waits._waiters == []
    open_wait = tap.expect(is_type("RecordingFinished"))
    tap.close()
    await asyncio.sleep(0)
    assert open_wait.cancelled()


async def test_a_timed_out_or_cancelled_wait_leaves_the_subscription_usable() -> None:
    waits = EventWaits()
    waiter = waits.expect(is_type("PlaybackStarted"))
    assert (await waiter.wait(0.01)) == (WaitOutcome.TIMEOUT, None)
    task = asyncio.ensure_future(waiter.wait(None))
    await asyncio.sleep(0)  # one turn of the loop: the task is now waiting
    assert not task.done()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not waiter.future.done()  # neither the timeout nor the cancellation touched it
    later = asyncio.ensure_future(waiter.wait(5))
    await asyncio.sleep(0)
    waits.dispatch({"type": "PlaybackStarted", "playback": {"id": "p"}})
    outcome, event = await later
    assert outcome is WaitOutcome.EVENT and event is not None and event["playback"]["id"] == "p"


async def test_waiting_on_a_dropped_subscription_raises_cancelled() -> None:
    waits = EventWaits()
    waiter = waits.expect(is_type("PlaybackStarted"))
    pending = asyncio.ensure_future(waiter.wait(5))
    await asyncio.sleep(0)
    waits.close()
    with pytest.raises(asyncio.CancelledError):
        await pending


async def test_first_of_several_waits_prefers_the_list_order_and_times_out() -> None:
    waits = EventWaits()
    finished = waits.expect(playback_finished("p"))
    started = waits.expect(is_type("PlaybackStarted"))
    assert await first([finished, started], 0.01) is None
    assert not finished.future.done() and not started.future.done()

    pending = asyncio.ensure_future(first([finished, started], 5))
    await asyncio.sleep(0)
    waits.dispatch({"type": "PlaybackStarted", "playback": {"id": "p"}})
    assert await pending is started
    # Both resolved by now: the one listed first wins.
    waits.dispatch({"type": "PlaybackFinished", "playback": {"id": "p"}})
    assert await first([finished, started], 0) is finished
