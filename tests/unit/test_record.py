"""record and conversation pieces without Asterisk: mixing and converting recordings (real
sox), retention, which record actions hold the NCCO, and the conversation audio matrix."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from bridge.media.files import FileStore
from bridge.media.recordings import RecordingService, combine
from bridge.ncco.actions.conversation import rooms
from bridge.ncco.actions.conversation.rooms import Member, Room, RoomFull, RoomRegistry, may_hear
from bridge.ncco.actions.record import is_synchronous
from bridge.ncco.models import Conversation, Record, parse_ncco


def tone(path: Path, hz: int, seconds: float = 1.0) -> Path:
    subprocess.run(["sox", "-n", "-r", "8000", "-b", "16", "-c", "1", str(path),
                    "synth", str(seconds), "sine", str(hz), "gain", "-6"], check=True)
    return path


def info(path: Path) -> tuple[str, int, int, float]:
    out = subprocess.run(["soxi", str(path)], capture_output=True, text=True, check=True).stdout
    kind = subprocess.run(["soxi", "-t", str(path)], capture_output=True, text=True,
                          check=True).stdout.strip()
    channels = int(next(line for line in out.splitlines() if "Channels" in line).split(":")[1])
    rate = int(next(line for line in out.splitlines() if "Sample Rate" in line).split(":")[1])
    length = float(subprocess.run(["soxi", "-D", str(path)], capture_output=True, text=True,
                                  check=True).stdout)
    return kind, channels, rate, length


def raw(path: Path) -> bytes:
    return subprocess.run(["sox", str(path), "-t", "raw", "-e", "signed-integer", "-b", "16",
                           "-"], capture_output=True, check=True).stdout


@pytest.mark.parametrize("fmt", ["wav", "mp3", "ogg"])
async def test_mono_mix_in_every_format(tmp_path: Path, fmt: str) -> None:
    sides = [tone(tmp_path / "in.wav", 600, 2.0), tone(tmp_path / "out.wav", 1000, 1.0)]
    target = tmp_path / f"mix.{fmt}"
    await combine(sides, target, "mono")
    kind, channels, rate, length = info(target)
    assert kind in (fmt, "vorbis")
    assert (channels, rate) == (1, 8000)
    assert 1.9 < length < 2.2  # the longer side, the shorter padded


async def test_split_puts_sides_on_channels_and_pads_to_the_requested_count(
        tmp_path: Path) -> None:
    sides = [tone(tmp_path / "in.wav", 600), tone(tmp_path / "out.wav", 1000)]
    target = tmp_path / "split.wav"
    await combine(sides, target, "split", channels=4)
    # More than two channels is WAVE_FORMAT_EXTENSIBLE, which the wave module cannot read.
    assert info(target)[1:3] == (4, 8000)
    frames = raw(target)
    samples = [int.from_bytes(frames[i:i + 2], "little", signed=True)
               for i in range(0, len(frames), 2)]
    per_channel = [samples[c::4] for c in range(4)]
    peaks = [max(abs(s) for s in channel) for channel in per_channel]
    assert peaks[0] > 8000 and peaks[1] > 8000
    assert peaks[2] == 0 and peaks[3] == 0


async def test_a_single_side_split_still_has_two_channels(tmp_path: Path) -> None:
    target = tmp_path / "one.wav"
    await combine([tone(tmp_path / "in.wav", 600)], target, "split", channels=2)
    assert info(target)[1] == 2


def test_retention_deletes_only_old_files(tmp_path: Path) -> None:
    files = FileStore(tmp_path / "store")
    old = files.add(tone(tmp_path / "a.wav", 600), "main")
    new = files.add(tone(tmp_path / "b.wav", 600), "main")
    stale = time.time() - 3 * 3600
    old_path = files.path_for(old)
    assert old_path is not None
    os.utime(old_path, (stale, stale))
    service = RecordingService(gateway=None, files=files, retention_hours=2)  # type: ignore[arg-type]
    assert service.sweep() == 1
    assert files.path_for(old) is None
    assert not list((tmp_path / "store").glob(f"{old}.*"))  # the owner file too
    assert files.path_for(new) is not None


@pytest.mark.parametrize(("extra", "synchronous"), [
    ({}, False),
    ({"format": "wav", "split": "conversation", "channels": 2}, False),
    ({"endOnKey": "#"}, True),
    ({"endOnSilence": 3}, True),
    ({"timeOut": 60}, True),
    ({"endOnSilence": "5"}, True),  # the 2017 reference's string form
])
def test_which_record_actions_hold_the_ncco(extra: dict[str, Any], synchronous: bool) -> None:
    (action,) = parse_ncco([{"action": "record", **extra}])
    assert isinstance(action, Record)
    assert is_synchronous(action) is synchronous


# ------------------------------------------------------------------ conversation matrix
class FakeGateway:
    """Records what the room asks of Asterisk; a snoop enters Stasis at once."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, ...]] = []
        self.routes: dict[str, Any] = {}
        self.snoops: dict[str, tuple[str, str]] = {}  # snoop id -> (spied channel, spy)
        self.bridges: dict[str, set[str]] = {}

    def route(self, key: str, handler: Any) -> None:
        self.routes[key] = handler

    def unroute(self, key: str) -> None:
        self.routes.pop(key, None)

    async def mute(self, channel_id: str, direction: str) -> None:
        self.calls.append(("mute", channel_id, direction))

    async def unmute(self, channel_id: str, direction: str) -> None:
        self.calls.append(("unmute", channel_id, direction))

    async def create_bridge(self, bridge_id: str, kind: str = "mixing", name: str = "") -> None:
        self.bridges[bridge_id] = set()

    async def destroy_bridge(self, bridge_id: str) -> None:
        self.bridges.pop(bridge_id, None)

    async def add_to_bridge(self, bridge_id: str, channel_id: str) -> None:
        for members in self.bridges.values():
            assert channel_id not in members, "a channel is in one bridge at a time"
        self.bridges[bridge_id].add(channel_id)

    async def remove_from_bridge(self, bridge_id: str, channel_id: str) -> None:
        self.bridges[bridge_id].discard(channel_id)

    async def snoop(self, channel_id: str, snoop_id: str, spy: str, app_args: list[str]) -> None:
        self.snoops[snoop_id] = (channel_id, spy)
        self.routes[f"channel:{snoop_id}"]({"type": "StasisStart"})

    async def hangup(self, channel_id: str) -> None:
        self.snoops.pop(channel_id, None)
        for members in self.bridges.values():
            members.discard(channel_id)

    def hearing(self) -> set[tuple[str, str]]:
        """(listener channel, spied channel) for every listener bridge."""
        out = set()
        for members in self.bridges.values():
            listeners = [c for c in members if c not in self.snoops]
            for listener in listeners:
                out |= {(listener, self.snoops[s][0]) for s in members if s in self.snoops}
        return out


def registry_of(gateway: FakeGateway) -> RoomRegistry:
    """Rooms on a fake gateway: the only service these tests' rooms use."""
    return RoomRegistry(SimpleNamespace(gateway=gateway))  # type: ignore[arg-type]


def member(uuid: str, **fields: Any) -> Member:
    call = SimpleNamespace(uuid=uuid, channel_id=f"chan-{uuid}", gone=asyncio.Event(),
                           app=SimpleNamespace(id="main"))
    return Member(call, Conversation(action="conversation", name="r", **fields))  # type: ignore[arg-type]


def test_may_hear_needs_both_lists_to_allow_the_pair() -> None:
    a, b = member("a", canHear=["b"]), member("b")
    c = member("c", canSpeak=["a"])
    hears = {(x.leg, y.leg) for x in (a, b, c) for y in (a, b, c) if may_hear(x, y)}
    assert hears == {("a", "b"), ("b", "a"), ("c", "a"), ("c", "b")}
    assert not may_hear(b, member("quiet", mute=True))


async def test_a_plain_room_is_one_bridge_and_mute_is_a_channel_mute() -> None:
    gateway = FakeGateway()
    room = Room(registry_of(gateway), "main", "r")
    await room.open()
    for m in (member("a"), member("quiet", mute=True)):
        room.members[m.leg] = m
        await room.admit(m)
    assert gateway.bridges == {room.bridge_id: {"chan-a", "chan-quiet"}}
    assert gateway.calls == [("mute", "chan-quiet", "in")]
    assert not gateway.snoops


async def test_a_matrix_room_feeds_each_listener_and_follows_the_membership() -> None:
    gateway = FakeGateway()
    registry = registry_of(gateway)
    b = member("b")
    room, _ = await registry.join(b.call, b.action)  # type: ignore[arg-type]
    assert not room.matrix and gateway.bridges[room.bridge_id] == {"chan-b"}
    a = member("a", canHear=["b"])
    await registry.join(a.call, a.action)  # type: ignore[arg-type]
    assert room.matrix
    assert gateway.bridges[room.bridge_id] == set()  # b moved to its own listener bridge
    assert gateway.hearing() == {("chan-a", "chan-b"), ("chan-b", "chan-a")}
    assert {spy for _, spy in gateway.snoops.values()} == {"in"}
    c = member("c", canSpeak=["a"])
    await registry.join(c.call, c.action)  # type: ignore[arg-type]
    assert gateway.hearing() == {("chan-a", "chan-b"), ("chan-b", "chan-a"),
                                 ("chan-c", "chan-a"), ("chan-c", "chan-b")}
    await room.leave(room.members["a"])
    assert gateway.hearing() == {("chan-c", "chan-b")}
    assert len(gateway.snoops) == 1  # a's snoops were hung up
    for leg in list(room.members):
        await room.leave(room.members[leg])
    assert not gateway.snoops and not gateway.bridges and not gateway.routes


async def test_a_matrix_room_is_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rooms, "MAX_MATRIX_PARTICIPANTS", 2)
    registry = registry_of(FakeGateway())
    for m in (member("a"), member("b")):
        await registry.join(m.call, m.action)  # type: ignore[arg-type]
    coach = member("coach", canSpeak=["a"])
    with pytest.raises(RoomFull, match=r"canSpeak/canHear.*2 participants"):
        await registry.join(coach.call, coach.action)  # type: ignore[arg-type]
    third = member("c")  # a plain room keeps the larger cap
    await registry.join(third.call, third.action)  # type: ignore[arg-type]


async def test_a_muted_member_is_unmuted_when_the_room_becomes_a_matrix() -> None:
    gateway = FakeGateway()
    registry = registry_of(gateway)
    quiet, other = member("quiet", mute=True), member("other")
    await registry.join(quiet.call, quiet.action)  # type: ignore[arg-type]
    await registry.join(other.call, other.action)  # type: ignore[arg-type]
    coach = member("coach", canHear=["quiet", "other"])
    await registry.join(coach.call, coach.action)  # type: ignore[arg-type]
    assert gateway.calls == [("mute", "chan-quiet", "in"), ("unmute", "chan-quiet", "in")]
    # Muted means heard by nobody: no snoop on it.
    assert gateway.hearing() == {("chan-coach", "chan-other"), ("chan-other", "chan-coach"),
                                 ("chan-quiet", "chan-other"), ("chan-quiet", "chan-coach")}
