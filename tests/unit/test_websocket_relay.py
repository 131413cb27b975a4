"""Resampling and byte order between Asterisk's 8 kHz RTP and the WebSocket's L16 frames."""

from __future__ import annotations

import json
import struct

from bridge.media.websocket_relay import downsample, first_message, swap16, upsample


def pack(values: list[int]) -> bytes:
    return struct.pack(f"<{len(values)}h", *values)


def test_swap16_turns_big_endian_into_little_endian() -> None:
    assert swap16(struct.pack(">2h", 1, -2)) == pack([1, -2])


def test_upsample_interpolates_and_downsample_returns_the_original() -> None:
    narrow = pack([0, 100, 200, -300])
    wide = upsample(narrow, 2)
    assert struct.unpack("<8h", wide) == (0, 50, 100, 150, 200, -50, -300, -300)
    steady = pack([1000] * 160)
    assert downsample(upsample(steady, 3), 3) == steady  # a steady level survives the trip
    assert len(upsample(bytes(320), 2)) == 640  # 20 ms at 8 kHz -> 20 ms at 16 kHz


def test_first_message_carries_content_type_and_headers() -> None:
    message = json.loads(first_message("audio/l16;rate=16000", {"whatever": "metadata"}))
    assert message == {"event": "websocket:connected", "content-type": "audio/l16;rate=16000",
                       "whatever": "metadata"}
