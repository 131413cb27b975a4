"""record and conversation pieces without Asterisk: mixing and converting recordings (real
sox), retention, which record actions hold the NCCO, and the conversation audio matrix."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from bridge.api.files import FileStore
from bridge.calls.conferences import ConferenceRegistry, Member, Room
from bridge.media.recordings import RecordingService, combine
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
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str]] = []

    async def mute(self, channel_id: str, direction: str) -> None:
        self.calls.append(("mute", channel_id, direction))

    async def unmute(self, channel_id: str, direction: str) -> None:
        self.calls.append(("unmute", channel_id, direction))

    def route(self, *_: Any) -> None: ...


def member(uuid: str, **fields: Any) -> Member:
    call = SimpleNamespace(uuid=uuid, channel_id=f"chan-{uuid}")
    return Member(call, Conversation(action="conversation", name="r", **fields))  # type: ignore[arg-type]


async def test_matrix_is_privacy_first_and_follows_the_membership() -> None:
    gateway = FakeGateway()
    room = Room(ConferenceRegistry(gateway), "main", "r")  # type: ignore[arg-type]
    agent, customer = member("agent"), member("customer")
    coach = member("coach", canSpeak=["agent"], canHear=["agent", "customer"])
    quiet = member("quiet", mute=True)
    for m in (agent, coach):
        room.members[m.leg] = m
    await room._apply_matrix()
    assert gateway.calls == []  # two members: the coach may speak to everyone present
    room.members[customer.leg] = customer
    await room._apply_matrix()
    assert gateway.calls == [("mute", "chan-coach", "in")]  # the customer must not hear
    del room.members[customer.leg]
    room.members[quiet.leg] = quiet
    gateway.calls.clear()
    await room._apply_matrix()
    # 'quiet' is not in the coach's lists: still not heard by the room, and now deaf too.
    assert ("mute", "chan-quiet", "in") in gateway.calls
    assert ("mute", "chan-coach", "out") in gateway.calls
    assert ("unmute", "chan-coach", "in") not in gateway.calls


async def test_empty_lists_mute_that_direction() -> None:
    gateway = FakeGateway()
    room = Room(ConferenceRegistry(gateway), "main", "r")  # type: ignore[arg-type]
    alone = member("alone", canSpeak=[], canHear=[])
    other = member("other")
    room.members.update({alone.leg: alone, other.leg: other})
    await room._apply_matrix()
    assert set(gateway.calls) == {("mute", "chan-alone", "in"), ("mute", "chan-alone", "out")}
