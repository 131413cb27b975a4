"""Agent store: both real backends (embedded SQLite, a real redis-server) behave alike."""

from __future__ import annotations

import asyncio
import multiprocessing
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

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


def _race_for_agents(backend: str, where: str, prefix: str, owner: str, agents: list[str],
                     start: Any, results: Any) -> None:
    """One racing bridge process: its own store on the shared backend, then every agent."""
    async def run() -> list[str]:
        store: AgentStore = (SqliteAgentStore(Path(where)) if backend == "sqlite"
                             else RedisAgentStore(where, prefix=prefix))
        start.wait()  # all processes begin together
        try:
            return [agent for agent in agents if await store.acquire(agent, owner, 30)]
        finally:
            await store.close()

    results.put((owner, asyncio.run(run())))


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_racing_processes_never_both_get_one_agent(backend: str, tmp_path: Path,
                                                   request: pytest.FixtureRequest) -> None:
    # Separate processes, each with its own connection, all taking the same agents at once:
    # only the backend's atomic check-and-take (BEGIN IMMEDIATE, a Lua script) keeps two of
    # them from both winning an agent. Inside one process SQLite calls never interleave.
    where = (str(tmp_path / "agents.sqlite3") if backend == "sqlite"
             else request.getfixturevalue("redis_server").url)
    if backend == "sqlite":
        SqliteAgentStore(Path(where))  # create the schema before the race
    prefix = f"race{next(_prefixes)}:"
    agents = [f"agent-{n}" for n in range(300)]
    racers = 4
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(racers)
    results = ctx.Queue()
    procs = [ctx.Process(target=_race_for_agents,
                         args=(backend, where, prefix, f"bridge-{i}", agents, start, results))
             for i in range(racers)]
    for proc in procs:
        proc.start()
    won = dict(results.get(timeout=120) for _ in procs)
    for proc in procs:
        proc.join(timeout=30)
        assert proc.exitcode == 0
    winners = {agent: [owner for owner, taken in won.items() if agent in taken]
               for agent in agents}
    doubles = {agent: owners for agent, owners in winners.items() if len(owners) > 1}
    assert doubles == {}
    assert all(len(owners) == 1 for owners in winners.values())


async def test_racing_calls_in_one_process_never_both_get_one_agent(store: AgentStore) -> None:
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


async def until_busy(store: AgentStore, agent: str) -> None:
    """Poll (deadline 5 s) until ``agent`` is busy: tracking holds it from its own task."""
    deadline = time.monotonic() + 5
    while not await store.is_busy(agent):
        assert time.monotonic() < deadline, f"{agent} never became busy"
        await asyncio.sleep(0.01)


async def test_track_call_holds_until_the_call_is_gone(store: AgentStore) -> None:
    gone = asyncio.Event()
    task = asyncio.ensure_future(track_call(store, "+15550001", "call:1", 30, gone))
    await until_busy(store, "15550001")
    gone.set()
    await asyncio.wait_for(task, 5)
    assert not await store.is_busy("15550001")


async def test_a_call_longer_than_its_lease_keeps_the_party_busy(store: AgentStore) -> None:
    gone = asyncio.Event()
    task = asyncio.ensure_future(track_call(store, "+15550002", "call:2", 0.6, gone))
    await until_busy(store, "15550002")
    # Close to three lease lengths: only the refreshes keep the lease alive.
    for _ in range(8):
        await asyncio.sleep(0.2)
        assert await store.is_busy("15550002")
    gone.set()
    await asyncio.wait_for(task, 5)
    assert not await store.is_busy("15550002")


async def test_a_cancelled_tracking_releases_the_party(store: AgentStore) -> None:
    gone = asyncio.Event()
    task = asyncio.ensure_future(track_call(store, "+15550003", "call:3", 30, gone))
    await until_busy(store, "15550003")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not await store.is_busy("15550003")


async def test_a_tracking_cancelled_while_its_hold_is_answered_releases_the_party(
        store: AgentStore, monkeypatch: pytest.MonkeyPatch) -> None:
    real_hold = store.hold
    written = asyncio.Event()

    async def hold_answered_late(agent: str, owner: str, lease_s: float) -> None:
        await real_hold(agent, owner, lease_s)
        written.set()
        await asyncio.Event().wait()  # the store's answer still on its way when cancelled

    monkeypatch.setattr(store, "hold", hold_answered_late)
    task = asyncio.ensure_future(track_call(store, "+15550004", "call:4", 30, asyncio.Event()))
    await asyncio.wait_for(written.wait(), 5)
    assert await store.is_busy("15550004")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not await store.is_busy("15550004")


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
