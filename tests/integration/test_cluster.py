"""The cluster, for real: two lab Asterisk nodes, two bridge processes, one redis-server.

Each bridge holds one of the two slots (Stasis applications ``ari-bridge-1`` and
``ari-bridge-2``) and connects it on both nodes; the nodes' dialplan tries the slots from a
random start, so calls on either node reach either bridge. The redis-server keeps its data on
disk (append-only file), as a production one does, so that a restart keeps the calls.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from bridge.agents.redis_server import RedisServer
from bridge.lab import LabInfo, LabOptions, asterisk_cli, lab_down, lab_up
from bridge.lab.sipp import Agent, RtpReceiver, SippResult, free_port, place_call
from bridge.lab.sipp.traces import double_bookings, messages, start_lines
from tests.integration.harness import WebhookApp, new_number
from tests.integration.processes import (
    BridgeProcess,
    ari_channel_ids,
    ari_hangup,
    poll,
    process_config,
)

pytestmark = pytest.mark.integration

#: Two bridges, two slots: each bridge holds one, so every call is a coin toss between them.
SLOTS = 2
NODE_NAMES = ("a", "b")
NODE_OPTS: list[LabOptions] = []  # the running nodes, for a failing test's diagnostics


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[LabInfo]]:
    """Two lab Asterisk nodes whose dialplan spreads calls over the cluster's slots."""
    started: list[LabOptions] = []
    infos = []
    try:
        for name in NODE_NAMES:
            rtp = 14000 + len(started) * 700
            opts = LabOptions(
                state_dir=tmp_path_factory.mktemp(f"node-{name}"),
                ari_port=free_port(), sip_port=free_port(),
                rtp_start=rtp, rtp_end=rtp + 600, slots=SLOTS,
            )
            infos.append(lab_up(opts))
            started.append(opts)
            NODE_OPTS.append(opts)
        yield infos
    finally:
        for opts in started:
            lab_down(opts)


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test, keeping its data on disk (so a restart keeps it)."""
    server = RedisServer(data_dir=tmp_path / "redis", appendonly=True).start()
    try:
        yield server
    finally:
        server.stop()


def cluster_config(nodes: list[LabInfo], webhooks: WebhookApp, folder: Path, redis_url: str,
                   instance: str, **extra: Any) -> dict[str, Any]:
    """One bridge of the cluster: both nodes, the shared Redis, this test's own key prefix."""
    data = process_config(nodes[0], webhooks, folder)
    shared = {k: v for k, v in data["ari"].items() if k not in ("url", "username", "password",
                                                                 "name", "nodes")}
    data["ari"] = {**shared, "app": "ari-bridge", "nodes": [
        {"name": name, "url": node.ari_url, "username": node.ari_username,
         "password": node.ari_password}
        for name, node in zip(NODE_NAMES, nodes, strict=True)]}
    prefix = f"test-{folder.parent.name}:"
    data["store"] = {"backend": "redis", "redis_url": redis_url, "redis_prefix": prefix,
                     "path": str(folder / "calls.sqlite3")}
    data["agents"] = {**data.get("agents", {}), "backend": "redis", "redis_url": redis_url,
                      "redis_prefix": prefix}
    data["cluster"] = {"enabled": True, "slots": SLOTS, "heartbeat_s": 1.0,
                       "dead_after_s": 3.0, "instance_id": instance}
    for key, value in extra.items():
        data[key] = value
    return data


@contextlib.asynccontextmanager
async def two_bridges(nodes: list[LabInfo], webhooks: WebhookApp, tmp_path: Path,
                      redis_url: str, **extra: Any) -> AsyncIterator[list[BridgeProcess]]:
    bridges = []
    for name in ("bridge-1", "bridge-2"):
        folder = tmp_path / name
        folder.mkdir()
        bridges.append(BridgeProcess(
            cluster_config(nodes, webhooks, folder, redis_url, name, **extra), folder))
    try:
        for bridge in bridges:
            await bridge.start()
        yield bridges
    except BaseException:
        for bridge in bridges:
            print(f"--- {bridge.url}\n{bridge.output()}")
        raise
    finally:
        for bridge in bridges:
            await bridge.stop()


#: Callers on hold: their numbers, their RTP receivers, their sipp tasks.
OnHold = tuple[list[str], list[RtpReceiver], list["asyncio.Future[SippResult]"]]


@contextlib.asynccontextmanager
async def callers_on_hold(nodes: list[LabInfo], webhooks: WebhookApp, count: int,
                          timeout_s: float) -> AsyncIterator[OnHold]:
    """``count`` callers dialling their own numbers, alternately on each node, each answered
    with an endless prompt; yields their numbers, RTP receivers and sipp tasks (stopped at the
    end)."""
    numbers = [new_number() for _ in range(count)]
    for number in numbers:
        webhooks.answer(number, [{"action": "talk", "text": "Please hold.", "loop": 0}])
    receivers = [await RtpReceiver.open() for _ in numbers]
    callers = [asyncio.ensure_future(place_call(
        nodes[i % 2].sip_host, nodes[i % 2].sip_port, number, rtp_port=receivers[i].port,
        timeout_s=timeout_s)) for i, number in enumerate(numbers)]
    try:
        yield numbers, receivers, callers
    finally:
        for caller in callers:
            caller.cancel()
        for receiver in receivers:
            receiver.close()


async def readiness(bridge: BridgeProcess) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as http, http.get(f"{bridge.url}/readyz") as resp:
        return resp.status, await resp.json()


async def all_channels(nodes: list[LabInfo]) -> list[str]:
    return [c for node in nodes for c in await ari_channel_ids(node)]


async def hang_up_everything(nodes: list[LabInfo]) -> None:
    for node in nodes:
        for channel in await ari_channel_ids(node):
            await ari_hangup(node, channel)


async def channels_of(node: LabInfo, number: str) -> list[str]:
    """The channels of ``node`` whose call was dialled to ``number``."""
    token = base64.b64encode(f"{node.ari_username}:{node.ari_password}".encode()).decode()
    async with aiohttp.ClientSession(headers={"Authorization": f"Basic {token}"}) as http, \
            http.get(f"{node.ari_url}/ari/channels") as resp:
        return [c["id"] for c in await resp.json() if c["dialplan"]["exten"] == number]


async def no_channel_left(nodes: list[LabInfo]) -> bool:
    return not await all_channels(nodes)


async def outbox_empty(bridge: BridgeProcess) -> bool:
    """The bridge's event outbox has nothing left to deliver (its backlog metric is 0)."""
    async with aiohttp.ClientSession() as http, http.get(f"{bridge.url}/metrics") as resp:
        text = await resp.text()
    return any(line.split()[-1] in ("0", "0.0") for line in text.splitlines()
               if line.startswith("ari_bridge_outbox_backlog "))


def calls_ended(trace: str) -> bool:
    """Every call an agent received has its BYE in the agent's trace."""
    starts = [start_lines(text)[1] for _, text in messages(trace)]
    return (sum(1 for line in starts if line.startswith("INVITE "))
            <= sum(1 for line in starts if line.startswith("BYE ")))


def heard_since(receiver: RtpReceiver, since: float) -> bool:
    """Audio above silence reached the caller after ``since`` (monotonic)."""
    return receiver.last_voiced() > since


# ---------------------------------------------------------------------------------- 1
async def test_calls_on_both_nodes_are_served_by_both_bridges(nodes, webhooks, tmp_path, redis):
    calls_per_node = 16  # a bridge missing a node's calls by chance: 2 * 2**-16
    async with two_bridges(nodes, webhooks, tmp_path, redis.url) as bridges:
        numbers = {name: [new_number() for _ in range(calls_per_node)] for name in NODE_NAMES}
        for number in (n for ns in numbers.values() for n in ns):
            webhooks.answer(number, [{"action": "talk", "text": "Hello."}])
        limit = asyncio.Semaphore(8)

        async def call(node: LabInfo, number: str) -> SippResult:
            async with limit:
                return await place_call(node.sip_host, node.sip_port, number,
                                        rtp_port=free_port(), timeout_s=30)

        results = await asyncio.gather(*(
            call(node, number) for node, name in zip(nodes, NODE_NAMES, strict=True)
            for number in numbers[name]))
        assert all(r.ok for r in results), [r.errors for r in results if not r.ok]
        for number in (n for ns in numbers.values() for n in ns):
            await webhooks.wait_completed(number)
            assert webhooks.statuses(number) == ["started", "ringing", "answered", "completed"]

        served: dict[tuple[str, str], int] = {}
        slots = set()
        for bridge in bridges:
            status, body = await readiness(bridge)
            assert status == 200, body
            assert len(body["cluster"]["slots"]) == 1, body["cluster"]
            slots.update(body["cluster"]["slots"])
            for link in body["links"]:
                served[(bridge.url, link["node"])] = link["calls_started"]
        assert slots == {1, 2}  # one slot each
        assert sum(served.values()) == 2 * calls_per_node
        assert len(served) == 4 and all(count > 0 for count in served.values()), served


# ---------------------------------------------------------------------------------- 2
async def test_kill_9_of_a_bridge_its_calls_are_adopted_and_go_on(nodes, webhooks, tmp_path,
                                                                  redis):
    """20 callers on hold, spread over both nodes and both bridges. One bridge dies with
    SIGKILL: the other adopts its slot and resumes every call (the callers keep hearing the
    prompt), and each call's hang-up later gives exactly one ``completed``."""
    calls = 20
    async with two_bridges(nodes, webhooks, tmp_path, redis.url) as bridges, \
            callers_on_hold(nodes, webhooks, calls, timeout_s=180) as (numbers, receivers, callers):
        async def all_answered() -> bool:
            return all("answered" in webhooks.statuses(n) for n in numbers)

        try:
            await poll(all_answered, timeout=60)
        except AssertionError:
            for opts in NODE_OPTS:  # where the unanswered calls are
                print(asterisk_cli(opts, "core show channels concise"))
            raise AssertionError({n: (webhooks.statuses(n), c.done() and c.result())
                                  for n, c in zip(numbers, callers, strict=True)}) from None
        live = [(await readiness(b))[1]["live_calls"] for b in bridges]
        assert sum(live) == calls and min(live) > 0, live
        victim, survivor = (bridges if live[0] >= live[1] else bridges[::-1])

        await victim.kill()
        killed_at = time.monotonic()

        async def all_adopted() -> bool:
            _, body = await readiness(survivor)
            return body["live_calls"] == calls

        await poll(all_adopted, timeout=30)
        adopted_s = time.monotonic() - killed_at
        print(f"all {calls} calls adopted {adopted_s:.2f} s after the kill")
        _, body = await readiness(survivor)
        assert len(body["cluster"]["adopted"]) == 1, body["cluster"]

        # Every caller, on either bridge before, hears the prompt after the adoption.
        adopted_at = time.monotonic()
        for receiver in receivers:
            await poll(lambda r=receiver: _async(heard_since(r, adopted_at)), timeout=20)
        assert not any(c.done() for c in callers)
        for number in numbers:
            assert webhooks.errors(number) == [], (number, webhooks.errors(number))
            assert "completed" not in webhooks.statuses(number)

        await hang_up_everything(nodes)
        results = await asyncio.wait_for(asyncio.gather(*callers), 60)
        assert all(r.ok for r in results), [r.errors for r in results if not r.ok]
        for number in numbers:
            await webhooks.wait_completed(number)
        # Nothing left to send on the survivor: a duplicate would have been sent by now.
        await poll(lambda: outbox_empty(survivor), timeout=30)
        for number in numbers:
            assert webhooks.statuses(number) == [
                "started", "ringing", "answered", "completed"], webhooks.statuses(number)
        await poll(lambda: no_channel_left(nodes), timeout=60)


async def _async(value: bool) -> bool:
    return value


# ---------------------------------------------------------------------------------- 3
async def test_100_callers_over_both_nodes_never_double_book_an_agent(nodes, webhooks,
                                                                      tmp_path, redis):
    """Exotel Connect with state management on both nodes and both bridges at once: 100
    callers (50 per node) race for 20 agents; an agent busy through one bridge or one node is
    busy for all (the leases are in the shared Redis), so no agent ever has two calls."""
    agent_count, callers_per_node, applet_number = 20, 50, "15557770001"
    agents = [Agent(200, hangup_after_ms=1500) for _ in range(agent_count)]
    agent_numbers = [f"+4478{i:07d}" for i in range(agent_count)]
    asked: list[str] = []

    async def primary(request: web.Request) -> web.Response:
        asked.append(request.query.get("CallSid", ""))
        return web.json_response({"destination": [{"contact_uri": n} for n in agent_numbers],
                                  "state_management": True, "max_ringing_duration": 10})

    async def goodbye(request: web.Request) -> web.Response:
        return web.json_response([{"action": "talk", "text": "Goodbye."}])

    app = web.Application()
    app.router.add_get("/primary", primary)
    app.router.add_get("/goodbye", goodbye)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    url = f"http://127.0.0.1:{port}"
    try:
        for agent in agents:
            await agent.__aenter__()
        extra = {
            "trunks": [{"name": f"agent{i}", "host": "127.0.0.1", "port": a.port}
                       for i, a in enumerate(agents)],
            "routes": [{"prefix": n.lstrip("+"), "trunk": f"agent{i}"}
                       for i, n in enumerate(agent_numbers)],
            "connect_applets": {applet_number: {
                "application": "main", "primary_url": f"{url}/primary",
                "nobody_dialled": {"url": f"{url}/goodbye"},
                "after_conversation": {}, "nobody_answered": {}}},
        }
        async with two_bridges(nodes, webhooks, tmp_path, redis.url, **extra) as bridges:
            limit = asyncio.Semaphore(25)

            async def caller(node: LabInfo, i: int) -> SippResult:
                async with limit:
                    return await place_call(node.sip_host, node.sip_port, applet_number,
                                            caller=f"9190{i:07d}", rtp_port=free_port(),
                                            timeout_s=60)

            results = await asyncio.gather(*(
                caller(node, n * 1000 + i) for n, node in enumerate(nodes)
                for i in range(callers_per_node)))
            assert sum(1 for r in results if r.ok) == 2 * callers_per_node, \
                [r.errors for r in results if not r.ok][:3]
            await poll(lambda: _async(all(calls_ended(a.messages) for a in agents)),
                       timeout=30)  # the last agents' BYEs are in their traces
            overlaps = 0
            routed = 0
            for agent in agents:
                count, invites = double_bookings(agent.messages)
                overlaps += count
                routed += len(invites)
            assert len(asked) == 2 * callers_per_node  # every caller ran the applet
            assert routed >= agent_count  # agents were rung, on both nodes' calls
            assert overlaps == 0
            served = [link["calls_started"] for b in bridges
                      for link in (await readiness(b))[1]["links"]]
            assert all(count > 0 for count in served), served
    finally:
        for agent in agents:
            await agent.__aexit__(None, None, None)
        await runner.cleanup()


# ---------------------------------------------------------------------------------- 4
async def test_redis_restart_calls_go_on_and_readiness_says_so(nodes, webhooks, tmp_path,
                                                              redis):
    """Redis stops for longer than dead_after_s and comes back (its data on disk): both
    bridges say they are not ready while it is away, the calls go on meanwhile, nobody
    adopts anybody's calls when it is back, and every call still ends with one completed."""
    calls = 4
    async with two_bridges(nodes, webhooks, tmp_path, redis.url) as bridges, \
            callers_on_hold(nodes, webhooks, calls, timeout_s=120) as (numbers, receivers, callers):
        for number in numbers:
            await webhooks.wait_for(lambda n=number: "answered" in webhooks.statuses(n))

        redis.stop()
        away_at = time.monotonic()
        for bridge in bridges:
            async def not_ready(b: BridgeProcess = bridge) -> bool:
                status, body = await readiness(b)
                return status == 503 and "call_store" in body["failed"]

            await poll(not_ready, timeout=10)
        await asyncio.sleep(max(0.0, 4.0 - (time.monotonic() - away_at)))  # > dead_after_s
        for receiver in receivers:  # the calls went on without Redis
            await poll(lambda r=receiver: _async(heard_since(r, away_at + 1.0)), timeout=15)
        # A caller hangs up meanwhile: its completed waits in the bridge's memory.
        first = numbers[0]
        [gone] = await channels_of(nodes[0], first)
        await ari_hangup(nodes[0], gone)
        assert (await asyncio.wait_for(callers[0], 30)).ok
        await asyncio.sleep(1)
        assert "completed" not in webhooks.statuses(first)

        redis.start()
        back_at = time.monotonic()
        for bridge in bridges:
            async def ready(b: BridgeProcess = bridge) -> bool:
                status, _ = await readiness(b)
                return status == 200

            await poll(ready, timeout=20)
        await asyncio.sleep(5)  # longer than a survivor would wait to adopt
        adoptions = [(await readiness(b))[1]["cluster"]["adoptions"] for b in bridges]
        assert adoptions == [0, 0]
        live = [(await readiness(b))[1]["live_calls"] for b in bridges]
        assert sum(live) == calls - 1, live
        await webhooks.wait_completed(first)  # written and delivered once Redis is back
        for receiver in receivers[1:]:
            await poll(lambda r=receiver: _async(heard_since(r, back_at)), timeout=15)
        for number in numbers:
            assert webhooks.errors(number) == []

        await hang_up_everything(nodes)
        results = await asyncio.wait_for(asyncio.gather(*callers), 60)
        assert all(r.ok for r in results), [r.errors for r in results if not r.ok]
        for number in numbers:
            await webhooks.wait_completed(number)
            assert webhooks.statuses(number) == [
                "started", "ringing", "answered", "completed"]


# ---------------------------------------------------------------------------------- 5
async def test_sigterm_gives_the_slot_back_and_the_other_bridge_takes_the_calls(
        nodes, webhooks, tmp_path, redis):
    """A bridge stopped with SIGTERM drains, gives its slot back as it exits, and the other
    bridge adopts its calls at once (no waiting for the slot's key to expire); calls placed
    afterwards all reach the bridge that is left."""
    calls = 6
    async with two_bridges(nodes, webhooks, tmp_path, redis.url) as bridges, \
            callers_on_hold(nodes, webhooks, calls, timeout_s=120) as (numbers, receivers, callers):
        for number in numbers:
            await webhooks.wait_for(lambda n=number: "answered" in webhooks.statuses(n))
        live = [(await readiness(b))[1]["live_calls"] for b in bridges]
        leaving, staying = (bridges if live[0] >= live[1] else bridges[::-1])

        await leaving.stop()
        assert leaving.proc is not None and leaving.proc.returncode == 0

        async def all_taken() -> bool:
            return (await readiness(staying))[1]["live_calls"] == calls

        await poll(all_taken, timeout=10)
        assert (await readiness(staying))[1]["cluster"]["adoptions"] == 1
        taken_at = time.monotonic()
        for receiver in receivers:
            await poll(lambda r=receiver: _async(heard_since(r, taken_at)), timeout=20)

        later = [new_number() for _ in range(4)]
        for number in later:
            webhooks.answer(number, [{"action": "talk", "text": "Hello."}])
        before = (await readiness(staying))[1]["calls_started"]
        results = await asyncio.gather(*(place_call(
            nodes[i % 2].sip_host, nodes[i % 2].sip_port, number, rtp_port=free_port(),
            timeout_s=30) for i, number in enumerate(later)))
        assert all(r.ok for r in results), [r.errors for r in results if not r.ok]
        assert (await readiness(staying))[1]["calls_started"] == before + len(later)

        await hang_up_everything(nodes)
        await asyncio.wait_for(asyncio.gather(*callers), 60)
        for number in numbers + later:
            await webhooks.wait_completed(number)
            assert webhooks.statuses(number) == [
                "started", "ringing", "answered", "completed"], webhooks.statuses(number)
