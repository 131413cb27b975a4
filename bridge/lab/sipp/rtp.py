"""The RTP a lab caller, agent or device receives, kept in this process so that tests can
measure what reached the far end: packets, seconds of audio, seconds of sound."""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass

_ULAW = []
for _byte in range(256):
    _u = ~_byte & 0xFF
    _t = ((_u & 0x0F) << 3) + 0x84
    _t <<= (_u & 0x70) >> 4
    _ULAW.append((0x84 - _t) if _u & 0x80 else (_t - 0x84))


@dataclass
class RtpPacket:
    arrived: float
    payload_type: int
    seq: int
    payload: bytes


class RtpReceiver(asyncio.DatagramProtocol):
    """Listens where the caller's SDP says media goes; keeps every packet."""

    def __init__(self) -> None:
        self.packets: list[RtpPacket] = []
        self.transport: asyncio.DatagramTransport | None = None
        self.port = 0

    @classmethod
    async def open(cls, host: str = "127.0.0.1") -> RtpReceiver:
        loop = asyncio.get_running_loop()
        receiver = cls()
        transport, _ = await loop.create_datagram_endpoint(lambda: receiver, local_addr=(host, 0))
        receiver.transport = transport
        receiver.port = int(transport.get_extra_info("sockname")[1])
        return receiver

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        if len(data) < 12 or data[0] >> 6 != 2:
            return
        header_len = 12 + 4 * (data[0] & 0x0F)
        self.packets.append(RtpPacket(
            arrived=time.monotonic(),
            payload_type=data[1] & 0x7F,
            seq=int.from_bytes(data[2:4], "big"),
            payload=data[header_len:],
        ))

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def audio_packets(self) -> list[RtpPacket]:
        return [p for p in self.packets if p.payload_type == 0]

    def audio_seconds(self) -> float:
        """Seconds of PCMU received (8000 samples per second, one byte per sample)."""
        return sum(len(p.payload) for p in self.audio_packets()) / 8000.0

    def last_voiced(self, threshold: float = 500.0) -> float:
        """When audio above silence last arrived (monotonic seconds; 0 if never)."""
        for packet in reversed(self.audio_packets()):
            samples = [_ULAW[b] for b in packet.payload]
            if samples and math.sqrt(sum(s * s for s in samples) / len(samples)) > threshold:
                return packet.arrived
        return 0.0

    def voiced_seconds(self, threshold: float = 500.0) -> float:
        """Seconds of 20 ms frames whose RMS level exceeds ``threshold`` (not silence)."""
        voiced = 0.0
        for packet in self.audio_packets():
            samples = [_ULAW[b] for b in packet.payload]
            if samples:
                rms = math.sqrt(sum(s * s for s in samples) / len(samples))
                if rms > threshold:
                    voiced += len(samples) / 8000.0
        return voiced
