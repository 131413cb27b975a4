"""Resampling, framing and byte order between Asterisk's 8 kHz RTP and the WebSocket's L16."""

from __future__ import annotations

import asyncio
import itertools
import json
import struct
from types import SimpleNamespace
from typing import Any

import aiohttp
import numpy as np
import pytest

from bridge.media.websocket_relay import (
    ASTERISK_RATE,
    RtpPeer,
    StreamResampler,
    first_message,
    open_rtp,
    relay,
    swap16,
)


def pack(values: list[int]) -> bytes:
    return struct.pack(f"<{len(values)}h", *values)


def tone(freq: float, rate: int, seconds: float, amplitude: float = 10000.0) -> bytes:
    t = np.arange(int(rate * seconds)) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype("<i2").tobytes()


def resample_in_chunks(data: bytes, in_rate: int, out_rate: int) -> list[bytes]:
    """Feed ``data`` in 20 ms chunks, as the relay does, and collect the frames."""
    resampler = StreamResampler(in_rate, out_rate)
    chunk = in_rate * 2 // 50
    frames: list[bytes] = []
    for start in range(0, len(data), chunk):
        frames.extend(resampler.feed(data[start:start + chunk]))
    return frames


def peak_hz_and_rms(frames: list[bytes], rate: int) -> tuple[float, float]:
    samples = np.frombuffer(b"".join(frames), dtype="<i2").astype(np.float64)
    steady = samples[rate // 10:]  # past the resampler's start-up
    spectrum = np.abs(np.fft.rfft(steady * np.hanning(len(steady))))
    peak = float(np.fft.rfftfreq(len(steady), 1 / rate)[int(np.argmax(spectrum))])
    return peak, float(np.sqrt(np.mean(steady ** 2)))


def test_swap16_turns_big_endian_into_little_endian() -> None:
    assert swap16(struct.pack(">2h", 1, -2)) == pack([1, -2])


@pytest.mark.parametrize(("in_rate", "out_rate"), [(8000, 16000), (8000, 24000),
                                                   (16000, 8000), (24000, 8000)])
def test_a_1khz_tone_keeps_its_frequency_and_level(in_rate: int, out_rate: int) -> None:
    frames = resample_in_chunks(tone(1000, in_rate, 1.0), in_rate, out_rate)
    peak, rms = peak_hz_and_rms(frames, out_rate)
    assert abs(peak - 1000) <= 2
    assert rms == pytest.approx(10000 / np.sqrt(2), rel=0.03)


@pytest.mark.parametrize(("in_rate", "out_rate", "frame_bytes"), [
    (8000, 16000, 640), (8000, 24000, 960), (16000, 8000, 320), (24000, 8000, 320),
    (8000, 8000, 320)])
def test_every_frame_is_exactly_20_ms(in_rate: int, out_rate: int, frame_bytes: int) -> None:
    frames = resample_in_chunks(tone(1000, in_rate, 1.0), in_rate, out_rate)
    assert {len(frame) for frame in frames} == {frame_bytes}
    # All but the few milliseconds the filter still holds have come out.
    assert 48 <= len(frames) <= 50


def test_sound_above_4khz_is_filtered_out_not_folded_into_the_call() -> None:
    """A 6 kHz tone cannot exist at 8 kHz: a real low-pass removes it, while naive decimation
    would fold it down to 2 kHz, where the caller hears it."""
    frames = resample_in_chunks(tone(6000, 16000, 1.0), 16000, ASTERISK_RATE)
    _, rms = peak_hz_and_rms(frames, ASTERISK_RATE)
    assert rms < 10000 / np.sqrt(2) * 0.01


def test_chunks_of_any_length_give_whole_frames_and_lose_nothing() -> None:
    """The application may send any number of bytes per message; the remainder waits."""
    resampler = StreamResampler(16000, 16000)
    frames = resampler.feed(bytes(1000)) + resampler.feed(bytes(1000)) + resampler.feed(bytes(560))
    assert [len(f) for f in frames] == [640] * 4


def test_application_audio_is_queued_for_the_call_as_8khz_frames() -> None:
    peer = RtpPeer(24000)
    peer.queue_audio(tone(1000, 24000, 1.0))
    frames = [peer.to_call.get_nowait() for _ in range(peer.to_call.qsize())]
    assert {len(f) for f in frames} == {320}
    peak, _ = peak_hz_and_rms(frames, ASTERISK_RATE)
    assert abs(peak - 1000) <= 2


def test_call_audio_reaches_the_application_as_frames_at_its_rate() -> None:
    peer = RtpPeer(16000)
    narrow = tone(1000, ASTERISK_RATE, 1.0)
    for seq, start in enumerate(range(0, len(narrow), 320)):
        header = struct.pack("!BBHII", 0x80, 10, seq, seq * 160, 1234)
        peer.datagram_received(header + swap16(narrow[start:start + 320]), ("127.0.0.1", 4000))
    frames = [peer.frames.get_nowait() for _ in range(peer.frames.qsize())]
    assert {len(f) for f in frames} == {640}
    peak, rms = peak_hz_and_rms(frames, 16000)
    assert abs(peak - 1000) <= 2
    assert rms == pytest.approx(10000 / np.sqrt(2), rel=0.03)


def test_first_message_carries_content_type_and_headers() -> None:
    message = json.loads(first_message("audio/l16;rate=16000", {"whatever": "metadata"}))
    assert message == {"event": "websocket:connected", "content-type": "audio/l16;rate=16000",
                       "whatever": "metadata"}


class OneBurstSocket:
    """An application that sends ``data`` in one message, then stays connected silently."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.sent: list[bytes] = []

    async def send_bytes(self, data: bytes) -> None:
        self.sent.append(data)

    def __aiter__(self) -> OneBurstSocket:
        self._given = False
        return self

    async def __anext__(self) -> Any:
        if not self._given:
            self._given = True
            return SimpleNamespace(type=aiohttp.WSMsgType.BINARY, data=self.data)
        await asyncio.Event().wait()


async def test_a_burst_from_the_application_reaches_the_call_as_one_continuous_rtp_stream() -> None:
    """Half a second sent at once leaves as consecutive 20 ms RTP packets: sequence numbers
    one apart, timestamps 160 samples apart, every payload 160 samples of slin."""
    loop = asyncio.get_running_loop()
    arrived: asyncio.Queue[bytes] = asyncio.Queue()

    class Asterisk(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: Any) -> None:
            arrived.put_nowait(data)

    asterisk, _ = await loop.create_datagram_endpoint(Asterisk, local_addr=("127.0.0.1", 0))
    peer = await open_rtp(16000)
    peer.remote = asterisk.get_extra_info("sockname")
    socket = OneBurstSocket(tone(1000, 16000, 0.5))
    pump = asyncio.ensure_future(relay(socket, peer, 640))  # type: ignore[arg-type]
    try:
        packets = [await asyncio.wait_for(arrived.get(), 5) for _ in range(20)]
    finally:
        pump.cancel()
        assert peer.transport is not None
        peer.transport.close()
        asterisk.close()
    seqs = [struct.unpack("!H", p[2:4])[0] for p in packets]
    stamps = [struct.unpack("!I", p[4:8])[0] for p in packets]
    assert [(b - a) & 0xFFFF for a, b in itertools.pairwise(seqs)] == [1] * 19
    assert [(b - a) & 0xFFFFFFFF for a, b in itertools.pairwise(stamps)] == [160] * 19
    assert {len(p) - 12 for p in packets} == {320}
