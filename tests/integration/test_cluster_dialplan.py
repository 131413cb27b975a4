"""The cluster dialplan on a real Asterisk: with ARI_SLOTS=2 inbound calls go to the Stasis
applications ``ari-bridge-1`` and ``ari-bridge-2``, to whichever is connected, a slot that
sends a call on (ARI ``continue`` to the label ``next``) passes it to the other slot, and
answering-machine detection returns a leg to the application named in ``ARI_BRIDGE_APP``.

No bridge runs here: each slot is a raw ARI websocket of this test, which records every
StasisStart and then hangs the channel up (busy, so the caller sees 486) or sends it on.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import os
import shutil
import socket
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest

from bridge.lab import LabError, LabInfo, LabOptions, asterisk_cli, lab_down, lab_up
from bridge.lab.sipp import SippResult, free_port, place_call

pytestmark = pytest.mark.integration

SLOTS = 2
CALLER = "15550001111"
#: How many sipp callers run at once.
PARALLEL_CALLS = 4


@pytest.fixture(scope="module")
def slots_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LabOptions, LabInfo]]:
    if os.geteuid() != 0:
        pytest.fail("integration tests need root (the lab runs Asterisk in a chroot)")
    if shutil.which("sipp") is None:
        pytest.fail("needs sipp (apt-get install sip-tester)")
    rtp = free_port()
    opts = LabOptions(
        state_dir=tmp_path_factory.mktemp("slots-lab"),
        ari_port=free_port(socket.SOCK_STREAM), sip_port=free_port(),
        # Below the ephemeral range, as in the shared lab fixture.
        rtp_start=12000 + (rtp % 7000), rtp_end=12000 + (rtp % 7000) + 200,
        slots=SLOTS,
    )
    info = lab_up(opts)
    try:
        yield opts, info
    finally:
        lab_down(opts)


@dataclass
class Slot:
    """A raw ARI websocket holding one slot's application."""

    lab: LabInfo
    app: str
    #: Send every inbound call on to the next slot instead of taking it.
    refuse: bool = False
    #: Answer every inbound call and send it to answering-machine detection, naming this
    #: application in ARI_BRIDGE_APP ("": not set) as the one to return to.
    amd_return_to: str | None = None
    #: (channel id, Stasis args) of every StasisStart received.
    starts: list[tuple[str, list[str]]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def channels(self) -> list[str]:
        return [channel for channel, _ in self.starts]

    async def _on_start(self, http: aiohttp.ClientSession, event: dict[str, Any]) -> None:
        channel = event["channel"]
        self.starts.append((channel["id"], list(event.get("args", []))))
        base = f"{self.lab.ari_url}/ari/channels/{channel['id']}"
        inbound = event.get("args", [""])[0] == "inbound"
        if self.refuse and inbound:
            number = channel["dialplan"]["exten"]
            await self._request(http.post(f"{base}/continue", params={
                "context": "ari-bridge-inbound", "extension": number, "label": "next"}))
        elif self.amd_return_to is not None and inbound:
            await self._request(http.post(f"{base}/answer"))
            if self.amd_return_to:
                await self._request(http.post(f"{base}/variable", params={
                    "variable": "ARI_BRIDGE_APP", "value": self.amd_return_to}))
            await self._request(http.post(f"{base}/continue", params={
                "context": "ari-bridge-amd", "extension": "s", "priority": "1"}))
        else:
            await self._request(http.delete(base, params={"reason": "busy"}))

    async def _request(self, request: Any) -> None:
        async with request as resp:
            if resp.status not in (200, 204):
                self.errors.append(f"{self.app}: {resp.method} {resp.url.path}: {resp.status}")

    async def run(self, http: aiohttp.ClientSession, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for msg in ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            event = msg.json()
            if event.get("type") == "StasisStart":
                await self._on_start(http, event)


def _ari_http(lab: LabInfo) -> aiohttp.ClientSession:
    token = base64.b64encode(f"{lab.ari_username}:{lab.ari_password}".encode()).decode()
    return aiohttp.ClientSession(headers={"Authorization": f"Basic {token}"})


async def _registered(http: aiohttp.ClientSession, lab: LabInfo) -> set[str]:
    async with http.get(f"{lab.ari_url}/ari/applications") as resp:
        assert resp.status == 200
        return {app["name"] for app in await resp.json()}


async def _wait_registered(http: aiohttp.ClientSession, lab: LabInfo, want: set[str]) -> None:
    """Until exactly ``want`` of this test's applications are registered in Asterisk."""
    ours = {lab.app_name, *(f"{lab.app_name}-{k}" for k in range(1, SLOTS + 1))}
    for _ in range(200):
        if await _registered(http, lab) & ours == want:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"registered: {await _registered(http, lab)}, wanted {want}")


@contextlib.asynccontextmanager
async def connected(lab: LabInfo, *slots: Slot) -> AsyncIterator[None]:
    """The slots' websockets open (and their applications registered) for the block."""
    ws_base = lab.ari_url.replace("http://", "ws://", 1)
    async with _ari_http(lab) as http:
        sockets = []
        tasks = []
        try:
            for slot in slots:
                ws = await http.ws_connect(f"{ws_base}/ari/events", params={"app": slot.app})
                sockets.append(ws)
                tasks.append(asyncio.ensure_future(slot.run(http, ws)))
            await _wait_registered(http, lab, {slot.app for slot in slots})
            yield
        finally:
            for ws in sockets:
                await ws.close()
            await asyncio.gather(*tasks, return_exceptions=True)
            await _wait_registered(http, lab, set())
    for slot in slots:
        assert not slot.errors, slot.errors


async def _calls(lab: LabInfo, numbers: list[str], expect_status: int) -> list[SippResult]:
    limit = asyncio.Semaphore(PARALLEL_CALLS)

    async def one(number: str) -> SippResult:
        async with limit:
            return await place_call(lab.sip_host, lab.sip_port, number, rtp_port=free_port(),
                                    caller=CALLER, expect_status=expect_status, timeout_s=20)

    results = await asyncio.gather(*(one(n) for n in numbers))
    for number, result in zip(numbers, results, strict=True):
        assert result.ok, (number, result.statuses, result.errors[-1500:])
        assert result.statuses[-1] == expect_status, (number, result.statuses)
    return list(results)


def _numbers(prefix: str, count: int) -> list[str]:
    return [f"{prefix}{k:04d}" for k in range(count)]


def _args_by_number(*slots: Slot) -> dict[str, list[list[str]]]:
    seen: dict[str, list[list[str]]] = {}
    for slot in slots:
        for _, args in slot.starts:
            seen.setdefault(args[1], []).append(args)
    return seen


def test_the_lab_renders_the_slots(slots_lab: tuple[LabOptions, LabInfo]) -> None:
    opts, info = slots_lab
    assert info.slots == SLOTS
    assert f"ARI_SLOTS={SLOTS}" in asterisk_cli(opts, "dialplan show globals")
    # The running lab's dialplan cannot change: asking it for other slots is an error.
    with pytest.raises(LabError, match="slot"):
        lab_up(dataclasses.replace(opts, slots=0))
    inbound = asterisk_cli(opts, "dialplan show ari-bridge-inbound")
    for label in ("[slots]", "[try]", "[next]", "[unavailable]"):
        assert label in inbound


async def test_only_slot_two_connected_takes_every_call(
    slots_lab: tuple[LabOptions, LabInfo],
) -> None:
    _, lab = slots_lab
    two = Slot(lab, f"{lab.app_name}-2")
    numbers = _numbers("1555200", 6)
    async with connected(lab, two):
        await _calls(lab, numbers, expect_status=486)
    assert sorted(args for _, args in two.starts) == [["inbound", n, CALLER] for n in numbers]


async def test_both_slots_share_the_calls_each_once(
    slots_lab: tuple[LabOptions, LabInfo],
) -> None:
    _, lab = slots_lab
    one, two = Slot(lab, f"{lab.app_name}-1"), Slot(lab, f"{lab.app_name}-2")
    numbers = _numbers("1555300", 20)
    async with connected(lab, one, two):
        await _calls(lab, numbers, expect_status=486)
    # The first slot is random: all 20 on one slot has a chance of 2 * 2^-20 = 2^-19.
    assert one.starts and two.starts
    assert _args_by_number(one, two) == {n: [["inbound", n, CALLER]] for n in numbers}
    channels = one.channels() + two.channels()
    assert len(set(channels)) == len(channels) == len(numbers)


async def test_a_refusing_slot_sends_every_call_to_the_other(
    slots_lab: tuple[LabOptions, LabInfo],
) -> None:
    _, lab = slots_lab
    one = Slot(lab, f"{lab.app_name}-1", refuse=True)
    two = Slot(lab, f"{lab.app_name}-2")
    numbers = _numbers("1555400", 8)
    async with connected(lab, one, two):
        await _calls(lab, numbers, expect_status=486)
    assert sorted(args for _, args in two.starts) == [["inbound", n, CALLER] for n in numbers]
    assert len(set(two.channels())) == len(numbers)
    # A call that started on slot 1 went to slot 2 and ended there: never back to slot 1.
    assert len(set(one.channels())) == len(one.channels())
    assert set(one.channels()) <= set(two.channels())


async def test_no_slot_connected_is_503(slots_lab: tuple[LabOptions, LabInfo]) -> None:
    _, lab = slots_lab
    async with _ari_http(lab) as http:
        await _wait_registered(http, lab, set())
    results = await _calls(lab, ["15555000000"], expect_status=503)
    assert results[0].statuses[-1] == 503
    assert lab.log_file is not None
    assert (f"ARI application {lab.app_name}-1..{SLOTS} is not connected or is draining: "
            "call to 15555000000 rejected with 503") in lab.log_file.read_text()


async def test_a_call_every_slot_refuses_ends_with_503(
    slots_lab: tuple[LabOptions, LabInfo],
) -> None:
    _, lab = slots_lab
    one = Slot(lab, f"{lab.app_name}-1", refuse=True)
    two = Slot(lab, f"{lab.app_name}-2", refuse=True)
    async with connected(lab, one, two):
        await _calls(lab, ["15556000000"], expect_status=503)
    # The try counter ends the round after one visit to each slot.
    assert len(one.starts) == len(two.starts) == 1


async def test_amd_returns_the_leg_to_the_application_that_sent_it(
    slots_lab: tuple[LabOptions, LabInfo],
) -> None:
    _, lab = slots_lab
    # Slot 2 sends its calls to AMD naming slot 1 as the way back; the single application
    # (ARI_APP) is connected too, and must not see them.
    one = Slot(lab, f"{lab.app_name}-1", refuse=True)  # inbound calls all end up on slot 2
    two = Slot(lab, f"{lab.app_name}-2", amd_return_to=f"{lab.app_name}-1")
    single = Slot(lab, lab.app_name)
    async with connected(lab, one, two, single):
        await _calls(lab, ["15557000000"], expect_status=200)
    amd = [args for _, args in one.starts if args[0] == "amd"]
    assert len(amd) == 1 and len(amd[0]) == 3, one.starts
    assert not single.starts


async def test_amd_without_a_named_application_returns_to_ari_app(
    slots_lab: tuple[LabOptions, LabInfo],
) -> None:
    _, lab = slots_lab
    one = Slot(lab, f"{lab.app_name}-1", refuse=True)
    two = Slot(lab, f"{lab.app_name}-2", amd_return_to="")
    single = Slot(lab, lab.app_name)
    async with connected(lab, one, two, single):
        await _calls(lab, ["15558000000"], expect_status=200)
    assert [args[0] for _, args in single.starts] == ["amd"]
    assert len(single.starts[0][1]) == 3
