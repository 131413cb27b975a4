"""Audio between a call and an application's WebSocket, the way Vonage's endpoint behaves.

Asterisk sends the call's audio to us as RTP (ARI externalMedia, 8 kHz signed linear,
big-endian as RTP's L16 requires) and plays what we send back. The relay opens the
application's WebSocket, sends one text message first (``websocket:connected`` with the
content type and the NCCO's ``headers``), then binary frames of 20 ms little-endian L16 at the
rate the NCCO asked for (8, 16 or 24 kHz) both ways, resampling on the way.

Resampling is soxr's streaming resampler, one per direction (:class:`StreamResampler`), in
its variable-rate mode: the fixed-rate mode works in blocks of about 100 ms and would hand
the audio on in bursts, 100 ms late; the variable-rate mode gives 20 ms in for 20 ms out,
passes 0-3.8 kHz flat and removes what lies above 4 kHz by more than 100 dB. It costs about
1-2.5 ms of CPU per second of audio and direction (``bench/ws_resample.py``, see
docs/benchmarks.md, "WebSocket resampling"), some 12-50 us per 20 ms frame, so it runs on the
event loop: a worker thread would cost more than the work.

Why RTP rather than chan_websocket or AudioSocket: chan_websocket would connect Asterisk to the
application directly, with Asterisk's own control messages instead of Vonage's, and AudioSocket
is a TCP framing of the same audio with nothing to gain here; RTP externalMedia lets the bridge
speak Vonage's protocol itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import struct
from collections.abc import Mapping
from typing import Any

import aiohttp
import numpy as np
import soxr
import structlog

log = structlog.get_logger(__name__)

#: What Asterisk and the relay exchange: 8 kHz signed linear. Asterisk 22 sends slin16 on
#: externalMedia but does not play slin16 sent back to it (checked on our lab); the caller is on
#: an 8 kHz telephone codec anyway, so the relay resamples to the WebSocket's rate instead,
#: losing nothing the caller could hear.
ASTERISK_FORMAT = "slin"
ASTERISK_RATE = 8000
#: Asterisk's payload type for slin; the relay follows whatever Asterisk actually sends.
SLIN_PAYLOAD_TYPE = 10
#: Length of one frame both ways, in milliseconds (Vonage's WebSocket frames are 20 ms).
FRAME_MS = 20
#: Audio for the call waiting to be paced out: 3000 frames of 20 ms, one minute.
TO_CALL_MAX_FRAMES = 3000
#: A pacer that fell this far behind (a stalled event loop) starts a new schedule instead of
#: sending the missed frames in a burst.
PACE_SLACK_S = 0.06


def swap16(data: bytes) -> bytes:
    """Big-endian <-> little-endian 16-bit samples (a trailing odd byte is dropped)."""
    return np.frombuffer(data, dtype=np.uint16, count=len(data) // 2).byteswap().tobytes()


class StreamResampler:
    """One direction of a call's audio: little-endian 16-bit mono at ``in_rate`` in, exact
    ``frame_ms`` frames at ``out_rate`` out.

    soxr's streaming resampler keeps its filter state from one chunk to the next, so a 20 ms
    packet's edges join the next packet's without a click, and its band-limited filter leaves
    no mirror images above 4 kHz (linear interpolation did: the application heard them as
    hiss). The resampler delays the audio by a few milliseconds; whatever is not yet a whole
    frame waits for the next chunk.
    """

    def __init__(self, in_rate: int, out_rate: int, frame_ms: int = FRAME_MS) -> None:
        self.in_rate = in_rate
        self.out_rate = out_rate
        #: Bytes of one output frame: 320 at 8 kHz, 640 at 16 kHz, 960 at 24 kHz for 20 ms.
        self.frame_bytes = out_rate * 2 * frame_ms // 1000
        self._stream = (None if in_rate == out_rate else
                        soxr.ResampleStream(in_rate, out_rate, 1, dtype="int16", quality="HQ",
                                             vr=True))
        self._pending = bytearray()

    def feed(self, samples_le: bytes) -> list[bytes]:
        """Resample ``samples_le`` and return the whole frames now ready (maybe none)."""
        samples = np.frombuffer(samples_le, dtype="<i2", count=len(samples_le) // 2)
        if self._stream is None:
            self._pending += samples.tobytes()
        else:
            out = self._stream.resample_chunk(samples.astype(np.int16))
            self._pending += out.astype("<i2", copy=False).tobytes()
        size = self.frame_bytes
        ready = len(self._pending) // size
        frames = [bytes(self._pending[i * size:(i + 1) * size]) for i in range(ready)]
        del self._pending[:ready * size]
        return frames


class RtpPeer(asyncio.DatagramProtocol):
    """Our end of the externalMedia RTP stream.

    ``frames`` holds the call's audio for the application, already resampled to the
    WebSocket's rate and cut into 20 ms frames; audio for the call goes through
    :meth:`queue_audio` and leaves one 8 kHz frame every 20 ms (see :func:`relay`).
    """

    def __init__(self, rate: int) -> None:
        self.rate = rate  # the WebSocket's rate; Asterisk's side is always 8 kHz
        self.frames: asyncio.Queue[bytes] = asyncio.Queue(maxsize=500)
        #: 20 ms frames at 8 kHz waiting for their turn to be sent to Asterisk.
        self.to_call: asyncio.Queue[bytes] = asyncio.Queue(maxsize=TO_CALL_MAX_FRAMES)
        self.transport: asyncio.DatagramTransport | None = None
        self.remote: tuple[str, int] | None = None
        self.payload_type = SLIN_PAYLOAD_TYPE
        self.seq = random.randint(0, 0xFFFF)
        self.timestamp = random.randint(0, 0xFFFFFFFF)
        self.ssrc = random.randint(0, 0xFFFFFFFF)
        self.received = 0
        self.sent = 0
        self._to_app = StreamResampler(ASTERISK_RATE, rate)
        self._from_app = StreamResampler(rate, ASTERISK_RATE)

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        if len(data) <= 12 or data[0] >> 6 != 2:
            return
        self.remote = (str(addr[0]), int(addr[1]))
        self.payload_type = data[1] & 0x7F
        header = 12 + 4 * (data[0] & 0x0F)
        self.received += 1
        for frame in self._to_app.feed(swap16(data[header:])):
            with contextlib.suppress(asyncio.QueueFull):  # a stalled WebSocket drops, never blocks
                self.frames.put_nowait(frame)

    def queue_audio(self, samples_le: bytes) -> None:
        """Queue the application's audio (little-endian, at the WebSocket's rate, any length)
        for the call. An application that sends faster than real time is buffered up to
        ``TO_CALL_MAX_FRAMES``; beyond that its newest audio is dropped."""
        for frame in self._from_app.feed(samples_le):
            with contextlib.suppress(asyncio.QueueFull):
                self.to_call.put_nowait(frame)

    def send_frame(self, narrow_le: bytes) -> None:
        """Send one 8 kHz little-endian frame to Asterisk as RTP, now."""
        if self.transport is None or self.remote is None:
            return
        header = struct.pack("!BBHII", 0x80, self.payload_type, self.seq, self.timestamp,
                             self.ssrc)
        self.transport.sendto(header + swap16(narrow_le), self.remote)
        self.seq = (self.seq + 1) & 0xFFFF
        self.timestamp = (self.timestamp + len(narrow_le) // 2) & 0xFFFFFFFF
        self.sent += 1


async def open_rtp(rate: int, host: str = "127.0.0.1") -> RtpPeer:
    loop = asyncio.get_running_loop()
    peer = RtpPeer(rate)
    transport, _ = await loop.create_datagram_endpoint(lambda: peer, local_addr=(host, 0))
    peer.transport = transport
    return peer


async def relay(
    ws: aiohttp.ClientWebSocketResponse, peer: RtpPeer, frame_bytes: int
) -> str:
    """Pump audio both ways until either side stops. Returns who stopped.

    The call's audio reaches the application as it arrives from Asterisk (every 20 ms), in
    frames of ``frame_bytes``. The application's audio is paced: one 20 ms frame to
    Asterisk every 20 ms, however fast the application sends, because Asterisk plays RTP
    as it comes and a burst would be squeezed or dropped by its jitter handling.
    """
    loop = asyncio.get_running_loop()

    async def call_to_app() -> str:
        pending = b""
        while True:
            pending += await peer.frames.get()
            while len(pending) >= frame_bytes:
                await ws.send_bytes(pending[:frame_bytes])
                pending = pending[frame_bytes:]

    async def app_to_call() -> str:
        async for msg in ws:
            if msg.type is aiohttp.WSMsgType.BINARY:
                peer.queue_audio(bytes(msg.data))
            elif msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.ERROR):
                break
        return "application"

    async def pace_to_call() -> str:
        period = FRAME_MS / 1000
        due = loop.time()
        while True:
            frame = await peer.to_call.get()
            now = loop.time()
            if due < now - PACE_SLACK_S:  # idle or stalled: start a fresh schedule
                due = now
            if due > now:
                await asyncio.sleep(due - now)
            peer.send_frame(frame)
            due += period

    tasks = [asyncio.ensure_future(call_to_app()), asyncio.ensure_future(app_to_call()),
             asyncio.ensure_future(pace_to_call())]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        return str(done.pop().result())
    finally:
        for task in tasks:
            task.cancel()


def first_message(content_type: str, headers: Mapping[str, Any]) -> str:
    """The text frame Vonage sends before any audio."""
    return json.dumps({"event": "websocket:connected", "content-type": content_type,
                       **dict(headers)})
