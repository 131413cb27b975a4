"""Slot leases on a real redis-server: exclusive claims under races, expiry, renewal that
notices a lost slot, release by the holder only, preferred slots, membership."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator

import pytest
import redis.asyncio as aioredis

from bridge.agents.redis_server import RedisServer
from bridge.cluster import SlotLeases


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


_prefixes = iter(range(10**6))


@pytest.fixture
def prefix() -> str:
    return f"c{next(_prefixes)}:"


@pytest.fixture
async def pair(redis_server: RedisServer,
               prefix: str) -> AsyncIterator[tuple[SlotLeases, SlotLeases]]:
    a = SlotLeases(redis_server.url, prefix, slots=3, instance="bridge-a", ttl_s=30.0)
    b = SlotLeases(redis_server.url, prefix, slots=3, instance="bridge-b", ttl_s=30.0)
    yield a, b
    await a.close()
    await b.close()


async def until_true(check: object, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        assert callable(check)
        if await check():
            return
        assert time.monotonic() < deadline, f"not in time: {what}"
        await asyncio.sleep(0.02)


async def test_racing_claims_never_give_one_slot_to_two_instances(
        pair: tuple[SlotLeases, SlotLeases]) -> None:
    a, b = pair
    for _ in range(50):
        got = await asyncio.gather(a.claim_free(), b.claim_free(), a.claim_free(),
                                   b.claim_free())
        won = [k for k in got if k is not None]
        assert sorted(won) == [1, 2, 3]  # all three taken, each once, one call left empty
        owners = await a.owners()
        assert owners == {k: ("bridge-a" if i % 2 == 0 else "bridge-b")
                          for i, k in enumerate(got) if k is not None}
        for k in range(1, 4):
            await a.release(k)
            await b.release(k)
        assert await a.owners() == {}


async def test_a_claimed_slot_is_not_claimed_again(pair: tuple[SlotLeases, SlotLeases]) -> None:
    a, b = pair
    assert await a.claim(2)
    assert not await b.claim(2) and not await a.claim(2)
    assert (await a.owners()) == {2: "bridge-a"}
    with pytest.raises(ValueError, match=r"slot 4 is not in 1\.\.3"):
        await a.claim(4)


async def test_an_expired_slot_becomes_orphaned(redis_server: RedisServer, prefix: str) -> None:
    short = SlotLeases(redis_server.url, prefix, slots=3, instance="dies", ttl_s=0.3)
    survivor = SlotLeases(redis_server.url, prefix, slots=3, instance="lives", ttl_s=30.0)
    try:
        assert await short.claim(1)

        def has_data(k: int) -> bool:
            return k in (1, 2)

        assert await survivor.orphaned(has_data) == [2]  # 1 is held, 3 has nothing

        async def one_is_orphaned() -> bool:
            return await survivor.orphaned(has_data) == [1, 2]

        await until_true(one_is_orphaned, "slot 1 expired")
        assert await survivor.claim(1)
        assert await short.renew({1}) == {1}  # the dead one, come back, learns it lost it
    finally:
        await short.close()
        await survivor.close()


async def test_renew_extends_what_is_held_and_reports_what_was_lost(
        pair: tuple[SlotLeases, SlotLeases], redis_server: RedisServer) -> None:
    a, b = pair
    raw = aioredis.Redis.from_url(redis_server.url)
    try:
        assert await a.claim(1) and await a.claim(2)
        await raw.pexpire(a.owner_key(1), 5_000)  # nearly run out
        assert await a.renew({1, 2}) == set()
        assert await raw.pttl(a.owner_key(1)) > 5_000  # back to the lease's 30 s
        await raw.delete(a.owner_key(2))  # as if it had expired
        assert await b.claim(2)
        assert await a.renew({1, 2, 3}) == {2, 3}
        assert await a.owners() == {1: "bridge-a", 2: "bridge-b"}
        assert await a.renew(set()) == set()
    finally:
        await raw.aclose()


async def test_only_the_holder_releases(pair: tuple[SlotLeases, SlotLeases]) -> None:
    a, b = pair
    assert await a.claim(3)
    await b.release(3)
    assert await b.owners() == {3: "bridge-a"}
    await a.release(3)
    assert await b.owners() == {}
    await a.release(3)  # not held: nothing happens
    assert await b.claim(3)


async def test_preferred_slots_come_first(pair: tuple[SlotLeases, SlotLeases]) -> None:
    a, b = pair
    for _ in range(20):  # whatever the random starting place
        assert await a.claim_free(prefer=lambda k: k == 3) == 3
        await a.release(3)
    assert await b.claim(3)
    # The preferred slot is held: any other one.
    assert await a.claim_free(prefer=lambda k: k == 3) in (1, 2)
    assert await a.claim_free(prefer=lambda k: k == 3) in (1, 2)
    assert await a.claim_free() is None  # every slot held
    assert await a.owners() == {1: "bridge-a", 2: "bridge-a", 3: "bridge-b"}


async def test_members_are_the_live_heartbeats(redis_server: RedisServer, prefix: str) -> None:
    a = SlotLeases(redis_server.url, prefix, slots=2, instance="bridge-a", ttl_s=30.0)
    brief = SlotLeases(redis_server.url, prefix, slots=2, instance="bridge-b", ttl_s=0.3)
    other = SlotLeases(redis_server.url, "other:", slots=2, instance="elsewhere", ttl_s=30.0)
    try:
        await a.heartbeat({"slots": [1], "http": "http://10.0.0.1:8080", "started_at": 1.5})
        await brief.heartbeat({"slots": [2], "http": "http://10.0.0.2:8080",
                               "started_at": 2.5})
        await other.heartbeat({"slots": []})
        assert await a.members() == [
            {"instance": "bridge-a", "slots": [1], "http": "http://10.0.0.1:8080",
             "started_at": 1.5},
            {"instance": "bridge-b", "slots": [2], "http": "http://10.0.0.2:8080",
             "started_at": 2.5}]

        async def b_is_gone() -> bool:
            return [m["instance"] for m in await a.members()] == ["bridge-a"]

        await until_true(b_is_gone, "bridge-b's heartbeat expired")
    finally:
        await a.close()
        await brief.close()
        await other.close()
