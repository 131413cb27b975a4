"""Reading sipp's message traces (``-trace_msg``): when each SIP message was sent or received,
and what an agent's trace says about overlapping calls (double bookings)."""

from __future__ import annotations

import itertools
import re
from datetime import datetime

_STAMP = re.compile(r"^-{10,} (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+)", re.M)


def messages(trace: str) -> list[tuple[float, str]]:
    """(wall-clock time, text) of every message in a sipp -trace_msg file."""
    parts = _STAMP.split(trace)
    return [(datetime.strptime(parts[i], "%Y-%m-%d %H:%M:%S.%f").timestamp(), parts[i + 1])
            for i in range(1, len(parts) - 1, 2)]


def start_lines(text: str) -> tuple[str, str]:
    """(the 'UDP message sent/received' line, the SIP start line) of one traced message."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return (lines[0], lines[1]) if len(lines) > 1 else ("", "")


def header(text: str, name: str) -> str | None:
    match = re.search(rf"^\s*{name}:\s*(.+?)\s*$", text, re.M | re.I)
    return match.group(1) if match else None


def double_bookings(trace: str) -> tuple[int, list[tuple[str, float]]]:
    """Overlapping calls of one agent (an INVITE received while an earlier call of it is not
    yet ended by a BYE), and (X-Exotel-CallSid, time) of each INVITE it received."""
    starts: dict[str, float] = {}
    ends: dict[str, float] = {}
    invites = []
    for stamp, text in messages(trace):
        direction, first = start_lines(text)
        call_id = header(text, "Call-ID") or ""
        if "received" in direction and first.startswith("INVITE "):
            if call_id not in starts:
                starts[call_id] = stamp
                invites.append((header(text, "X-Exotel-CallSid") or "", stamp))
        elif first.startswith("BYE ") or (first.startswith("SIP/2.0 ") and
                                          "CSeq: 2 BYE" in text):
            ends.setdefault(call_id, stamp)
    intervals = sorted((starts[c], ends.get(c, float("inf"))) for c in starts)
    overlaps = sum(1 for a, b in itertools.pairwise(intervals) if b[0] < a[1])
    return overlaps, invites
