"""Audio between a call and an application's WebSocket, the way Vonage's endpoint behaves.

Asterisk sends the call's audio to us as RTP (ARI externalMedia, 8 kHz signed linear,
big-endian as RTP's L16 requires) and plays what we send back. The relay opens the
application's WebSocket, sends one text message first (``websocket:connected`` with the
content type and the NCCO's ``headers``), then binary frames of 20 ms little-endian L16 at the
rate the NCCO asked for (8, 16 or 24 kHz) both ways, resampling on the way.

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


def swap16(data: bytes) -> bytes:
    """Big-endian <-> little-endian 16-bit samples."""
    count = len(data) // 2
    return struct.pack(f"<{count}h", *struct.unpack(f">{count}h", data[: count * 2]))


def upsample(samples_le: bytes, factor: int) -> bytes:
    """8 kHz -> 8*factor kHz by linear interpolation (little-endian 16-bit)."""
    if factor == 1:
        return samples_le
    values = struct.unpack(f"<{len(samples_le) // 2}h", samples_le)
    out: list[int] = []
    for index, value in enumerate(values):
        following = values[index + 1] if index + 1 < len(values) else value
        out.extend(value + (following - value) * step // factor for step in range(factor))
    return struct.pack(f"<{len(out)}h", *out)


def downsample(samples_le: bytes, factor: int) -> bytes:
    """8*factor kHz -> 8 kHz by averaging each group of samples (a simple low-pass)."""
    if factor == 1:
        return samples_le
    values = struct.unpack(f"<{len(samples_le) // 2}h", samples_le)
    out = [sum(values[i:i + factor]) // factor for i in range(0, len(values) - factor + 1,
                                                                factor)]
    return struct.pack(f"<{len(out)}h", *out)


class RtpPeer(asyncio.DatagramProtocol):
    """Our end of the externalMedia RTP stream."""

    def __init__(self, rate: int) -> None:
        self.rate = rate  # the WebSocket's rate; Asterisk's side is always 8 kHz
        self.frames: asyncio.Queue[bytes] = asyncio.Queue(maxsize=500)
        self.transport: asyncio.DatagramTransport | None = None
        self.remote: tuple[str, int] | None = None
        self.payload_type = SLIN_PAYLOAD_TYPE
        self.seq = random.randint(0, 0xFFFF)
        self.timestamp = random.randint(0, 0xFFFFFFFF)
        self.ssrc = random.randint(0, 0xFFFFFFFF)
        self.received = 0
        self.sent = 0

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        if len(data) <= 12 or data[0] >> 6 != 2:
            return
        self.remote = (str(addr[0]), int(addr[1]))
        self.payload_type = data[1] & 0x7F
        header = 12 + 4 * (data[0] & 0x0F)
        self.received += 1
        with contextlib.suppress(asyncio.QueueFull):  # a stalled WebSocket drops, never blocks
            self.frames.put_nowait(upsample(swap16(data[header:]), self.rate // ASTERISK_RATE))

    def send(self, samples_le: bytes) -> None:
        """Send one frame of the WebSocket's audio (little-endian, at its rate) to Asterisk."""
        if self.transport is None or self.remote is None:
            return
        narrow = downsample(samples_le, self.rate // ASTERISK_RATE)
        header = struct.pack("!BBHII", 0x80, self.payload_type, self.seq, self.timestamp,
                             self.ssrc)
        self.transport.sendto(header + swap16(narrow), self.remote)
        self.seq = (self.seq + 1) & 0xFFFF
        self.timestamp = (self.timestamp + len(narrow) // 2) & 0xFFFFFFFF
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
    """Pump audio both ways until either side stops. Returns who stopped."""

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
                data = bytes(msg.data)
                for start in range(0, len(data) - frame_bytes + 1, frame_bytes):
                    peer.send(data[start:start + frame_bytes])
            elif msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.ERROR):
                break
        return "application"

    tasks = [asyncio.ensure_future(call_to_app()), asyncio.ensure_future(app_to_call())]
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
