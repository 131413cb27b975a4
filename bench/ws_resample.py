"""CPU cost of the WebSocket relay's resampling, per second of call audio.

Feeds 20 ms chunks of a speech-band signal through ``StreamResampler`` in each direction the
relay uses (8 kHz call audio up to the WebSocket's rate, and back down), on one core, and
prints the CPU time spent per second of audio as JSON. Nothing else is measured: no sockets,
no event loop.

    .venv/bin/python bench/ws_resample.py --seconds 600
"""

from __future__ import annotations

import argparse
import json
import math
import struct
import time

from bridge.media.websocket_relay import ASTERISK_RATE, FRAME_MS, StreamResampler


def chunks(rate: int, seconds: int) -> list[bytes]:
    """``seconds`` of a 440 + 1000 + 2500 Hz mix at ``rate``, cut into 20 ms chunks."""
    size = rate * FRAME_MS // 1000
    one_second = [int(6000 * (math.sin(2 * math.pi * 440 * i / rate)
                              + math.sin(2 * math.pi * 1000 * i / rate)
                              + 0.5 * math.sin(2 * math.pi * 2500 * i / rate)))
                  for i in range(rate)]
    data = struct.pack(f"<{rate}h", *one_second)
    per_second = [data[2 * i:2 * (i + size)] for i in range(0, rate, size)]
    return per_second * seconds


def cpu_per_audio_second(in_rate: int, out_rate: int, seconds: int) -> float:
    """Microseconds of CPU per second of audio through one direction."""
    work = chunks(in_rate, seconds)
    resampler = StreamResampler(in_rate, out_rate)
    started = time.process_time()
    for chunk in work:
        resampler.feed(chunk)
    return (time.process_time() - started) / seconds * 1e6


def held_ms(in_rate: int, out_rate: int) -> float:
    """Milliseconds of audio still inside the resampler after one second went in: the delay
    it adds to the call."""
    resampler = StreamResampler(in_rate, out_rate)
    out = sum(len(frame) for chunk in chunks(in_rate, 1) for frame in resampler.feed(chunk))
    return round(1000 - out / 2 / out_rate * 1000, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=600, help="audio seconds per direction")
    args = parser.parse_args()
    cpu: dict[str, int] = {}
    held: dict[str, float] = {}
    for rate in (16000, 24000):
        for a, b in ((ASTERISK_RATE, rate), (rate, ASTERISK_RATE)):
            cpu[f"{a}->{b}"] = round(cpu_per_audio_second(a, b, args.seconds))
            held[f"{a}->{b}"] = held_ms(a, b)
    print(json.dumps({"cpu_us_per_audio_second": cpu, "held_ms_incl_framing": held,
                      "seconds": args.seconds}, indent=2))


if __name__ == "__main__":
    main()
