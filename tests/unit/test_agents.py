"""Agent store: both real backends (embedded SQLite, a real redis-server) behave alike."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from bridge.agents import AgentStore, RedisAgentStore, SqliteAgentStore, agent_key
from bridge.agents.leases import HeldAgents
from bridge.agents.redis_server import RedisServer
from bridge.agents.tracking import track_call


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


_prefixes = iter(range(10**6))


@pytest.fixture(params=["sqlite", "redis"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[AgentStore]:
    if request.param == "sqlite":
        made: AgentStore = SqliteAgentStore(tmp_path / "agents.sqlite3")
    else:
        server = request.getfixturevalue("redis_server")
        made = RedisAgentStore(server.url, prefix=f"t{next(_prefixes)}:")
    yield made
    await made.close()


def test_agent_key_spellings() -> None:
    assert agent_key("+91 98765-43210") == agent_key("919876543210") == "919876543210"
    assert agent_key("SIP:Agent@Host") == "sip:agent@host"


async def test_acquire_is_exclusive_and_release_frees(store: AgentStore) -> None:
    assert await store.acquire("a1", "call-1", 30)
    assert await store.acquire("a1", "call-1", 30)  # the holder may take it again
    assert not await store.acquire("a1", "call-2", 30)
    assert await store.is_busy("a1")
    await store.release("a1", "call-1")
    assert not await store.is_busy("a1")
    assert await store.acquire("a1", "call-2", 30)


async def test_racing_calls_never_both_get_one_agent(store: AgentStore) -> None:
    results = await asyncio.gather(*(store.acquire("agent", f"call-{i}", 30)
                                     for i in range(50)))
    assert results.count(True) == 1


async def test_two_stores_on_one_backend_share_the_view(store: AgentStore,
                                                        tmp_path: Path) -> None:
    """Two bridge instances (two store objects) on the same file or Redis server."""
    if isinstance(store, SqliteAgentStore):
        other: AgentStore = SqliteAgentStore(store.path)
    else:
        assert isinstance(store, RedisAgentStore)
        other = RedisAgentStore(store.url, store.prefix)
    try:
        results = await asyncio.gather(*(
            (store if i % 2 else other).acquire(f"agent-{i % 5}", f"call-{i}", 30)
            for i in range(40)))
        assert results.count(True) == 5
        assert await other.is_busy("agent-0")
    finally:
        await other.close()


async def test_hold_marks_busy_without_checking(store: AgentStore) -> None:
    await store.hold("a2", "incoming-call", 30)
    assert await store.is_busy("a2")
    assert not await store.acquire("a2", "applet", 30)
    await store.hold("a2", "another", 30)
    await store.release("a2", "incoming-call")
    assert await store.is_busy("a2")  # still held by the other call


async def test_a_lease_expires_unless_refreshed(store: AgentStore) -> None:
    assert await store.acquire("a3", "crashed-bridge", 0.3)
    assert await store.acquire("a4", "live-call", 0.3)
    deadline = time.monotonic() + 5
    while await store.is_busy("a3"):
        assert time.monotonic() < deadline, "the lease never expired"
        assert await store.refresh("a4", "live-call", 0.3)
        await asyncio.sleep(0.05)
    assert await store.is_busy("a4")  # refreshed all along
    assert await store.acquire("a3", "next-call", 30)


async def test_held_agents_release_on_every_path(store: AgentStore) -> None:
    held = HeldAgents(store, "call-9", 30)
    with pytest.raises(RuntimeError):
        try:
            assert await held.acquire("x1")
            await held.hold("x2")
            raise RuntimeError("the call crashed")
        finally:
            await held.release_all()
    assert not await store.is_busy("x1") and not await store.is_busy("x2")


async def test_track_call_holds_until_the_call_is_gone(store: AgentStore) -> None:
    gone = asyncio.Event()
    task = asyncio.ensure_future(track_call(store, "+15550001", "call:1", 30, gone))
    deadline = time.monotonic() + 5
    while not await store.is_busy("15550001"):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
    gone.set()
    await asyncio.wait_for(task, 5)
    assert not await store.is_busy("15550001")


async def test_sticky_mapping_lives_for_its_ttl(store: AgentStore) -> None:
    await store.set_sticky("caller-1", "agent-7", 30)
    await store.set_sticky("caller-2", "agent-8", 0.2)
    assert await store.sticky("caller-1") == "agent-7"
    deadline = time.monotonic() + 5
    while await store.sticky("caller-2") is not None:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    assert await store.sticky("nobody") is None


async def test_sticky_survives_reopening_the_store(store: AgentStore) -> None:
    """A restarted bridge opens the same file or server and finds the mapping."""
    await store.set_sticky("caller-3", "agent-3", 60)
    if isinstance(store, SqliteAgentStore):
        again: AgentStore = SqliteAgentStore(store.path)
    else:
        assert isinstance(store, RedisAgentStore)
        again = RedisAgentStore(store.url, store.prefix)
    try:
        assert await again.sticky("caller-3") == "agent-3"
    finally:
        await again.close()
