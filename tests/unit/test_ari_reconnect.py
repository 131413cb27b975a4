"""Reconnecting to ARI: the jittered backoff schedule, and the probe that cuts it short.

The real outage (ARI gone, then back) is tested in tests/integration/test_resilience.py; here
the schedule's bounds and the wait's decisions, with the probe's answers scripted.
"""

from __future__ import annotations

import asyncio
import gc
import random
import socket

import pytest

from bridge.ari.gateway import AriGateway, reconnect_delay
from bridge.config import AriConfig


@pytest.mark.parametrize("failures", range(12))
def test_delay_is_between_half_the_step_and_the_step_and_never_above_the_cap(
        failures: int) -> None:
    min_s, max_s = 0.5, 5.0
    step = min(max_s, min_s * 2 ** failures)
    rng = random.Random(failures)
    delays = [reconnect_delay(failures, min_s, max_s, rng) for _ in range(500)]
    assert all(step / 2 <= d <= step for d in delays)
    assert max(delays) <= max_s
    # Jitter: the delays spread over the range, not one value.
    assert max(delays) - min(delays) > step / 4


def test_schedule_grows_from_the_minimum_and_stops_at_the_cap() -> None:
    low = [reconnect_delay(n, 0.5, 5.0, _Fixed(0.0)) for n in range(8)]
    high = [reconnect_delay(n, 0.5, 5.0, _Fixed(1.0)) for n in range(8)]
    assert low == [0.25, 0.5, 1.0, 2.0, 2.5, 2.5, 2.5, 2.5]
    assert high == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0, 5.0, 5.0]
    # A very long outage does not overflow.
    assert reconnect_delay(10_000, 0.5, 5.0) <= 5.0


class _Fixed(random.Random):
    """uniform() at a fixed fraction of its range."""

    def __init__(self, fraction: float) -> None:
        super().__init__(0)
        self.fraction = fraction

    def uniform(self, a: float, b: float) -> float:
        return a + (b - a) * self.fraction


def _gateway(probes: list[bool], probe_interval_s: float = 0.01) -> AriGateway:
    gateway = AriGateway(AriConfig(probe_interval_s=probe_interval_s), lambda event: None)
    answers = iter(probes)

    async def probe() -> bool:
        gateway.probes += 1
        return next(answers, probes[-1])

    gateway._probe = probe  # type: ignore[method-assign]
    return gateway


async def test_wait_ends_as_soon_as_ari_answers_again_after_it_did_not() -> None:
    gateway = _gateway([False, False, False, True])
    async with asyncio.timeout(5):
        woken_by = await gateway._wait_to_reconnect(60.0)
    assert woken_by == "probe"
    assert gateway.probes == 4


async def test_wait_runs_out_the_backoff_when_ari_answered_all_along() -> None:
    """ARI answers pings but the full connect failed: no tight retry loop."""
    gateway = _gateway([True])
    async with asyncio.timeout(5):
        woken_by = await gateway._wait_to_reconnect(0.2)
    assert woken_by == "backoff"
    assert gateway.probes > 2  # it kept probing meanwhile


async def test_wait_ends_early_when_ari_goes_down_and_comes_back() -> None:
    gateway = _gateway([True, False, True])
    async with asyncio.timeout(5):
        assert await gateway._wait_to_reconnect(60.0) == "probe"


async def test_stopping_ends_the_wait() -> None:
    gateway = _gateway([False])
    waiting = asyncio.ensure_future(gateway._wait_to_reconnect(60.0))
    await asyncio.sleep(0.05)
    gateway._stopping = True
    async with asyncio.timeout(5):
        assert await waiting == "backoff"


async def test_failed_connect_attempts_leave_no_http_session_open() -> None:
    # Nothing listens there: every full attempt fails inside aioari's init. aiohttp reports
    # a session collected while still open to the loop's exception handler.
    from bridge.lab.ports import free_port

    loop = asyncio.get_running_loop()
    reported: list[str] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: reported.append(context["message"]))
    try:
        config = AriConfig(url=f"http://127.0.0.1:{free_port(socket.SOCK_STREAM)}",
                           password="x", reconnect_min_s=0.05, reconnect_max_s=0.05)
        gateway = AriGateway(config, lambda event: None)
        await gateway.start()
        while gateway.connect_attempts < 4:  # noqa: ASYNC110 - attempts run in its own task
            await asyncio.sleep(0.02)
        await gateway.stop()
        gc.collect()
    finally:
        loop.set_exception_handler(previous)
    assert gateway.connect_attempts >= 4
    assert [m for m in reported if "Unclosed client session" in m] == []
