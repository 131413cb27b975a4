"""Audio for test callers and agents: PCMU RTP in a pcap file that sipp replays.

sipp's ``play_pcap_audio`` sends the RTP packets of a capture, with their timing, to the far
end's media address. We write such captures from a tone or a WAV so that a caller or an agent
can speak, and the other side's RtpReceiver can tell that audio crossed the bridge.
"""

from __future__ import annotations

import math
import struct
import wave
from pathlib import Path

_BIAS = 0x84
_CLIP = 32635


def _ulaw(sample: int) -> int:
    sign = 0x80 if sample < 0 else 0
    sample = min(abs(sample), _CLIP) + _BIAS
    exponent = 7
    mask = 0x4000
    while exponent > 0 and not sample & mask:
        exponent -= 1
        mask >>= 1
    mantissa = (sample >> (exponent + 3)) & 0x0F
    return ~(sign | (exponent << 4) | mantissa) & 0xFF


def tone_samples(seconds: float, frequency: float = 440.0, amplitude: int = 8000) -> list[int]:
    """8 kHz linear samples of a sine tone."""
    count = int(seconds * 8000)
    return [int(amplitude * math.sin(2 * math.pi * frequency * n / 8000)) for n in range(count)]


def wav_samples(path: Path) -> list[int]:
    """Samples of an 8 kHz, 16-bit mono WAV (convert with sox first if needed)."""
    with wave.open(str(path), "rb") as wav:
        if (wav.getframerate(), wav.getsampwidth(), wav.getnchannels()) != (8000, 2, 1):
            raise ValueError(f"{path}: need 8 kHz 16-bit mono")
        frames = wav.readframes(wav.getnframes())
    return list(struct.unpack(f"<{len(frames) // 2}h", frames))


def write_rtp_pcap(path: Path, samples: list[int], ssrc: int = 0x1234ABCD) -> Path:
    """Write ``samples`` as 20 ms PCMU RTP packets (payload type 0) in a pcap file."""
    out = bytearray(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
    for index in range(0, len(samples) - 159, 160):
        payload = bytes(_ulaw(s) for s in samples[index:index + 160])
        packet_no = index // 160
        rtp = struct.pack("!BBHII", 0x80, 0, packet_no & 0xFFFF, index, ssrc) + payload
        udp = struct.pack("!HHHH", 40000, 40002, 8 + len(rtp), 0) + rtp
        ip_header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), packet_no & 0xFFFF, 0,
                                64, 17, 0, bytes([127, 0, 0, 1]), bytes([127, 0, 0, 1]))
        checksum = _checksum(ip_header)
        ip_header = ip_header[:10] + struct.pack("!H", checksum) + ip_header[12:]
        frame = b"\x00" * 12 + b"\x08\x00" + ip_header + udp
        micros = packet_no * 20_000
        out += struct.pack("<IIII", micros // 1_000_000, micros % 1_000_000, len(frame),
                           len(frame))
        out += frame
    path.write_bytes(bytes(out))
    return path


def _checksum(header: bytes) -> int:
    total = sum(struct.unpack(f"!{len(header) // 2}H", header))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF
