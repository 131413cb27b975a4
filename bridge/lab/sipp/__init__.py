"""Real SIP callers for the lab, the demo, the tests and the benchmarks: sipp, driven from Python.

A caller is a sipp UAC scenario built here (so each test says what its caller does: wait, press
keys, hang up after a while). Its SDP advertises a media port owned by an ``RtpReceiver`` in
this process, so what reached the caller can be measured: packets, duration, loudness.

The package is split by role: ``scenarios`` (the sipp XML), ``rtp`` (what reached a peer),
``runner`` (starting sipp, placing a call) and ``peers`` (agents and devices). Every name is
importable from ``bridge.lab.sipp`` as well.
"""

from __future__ import annotations

from bridge.lab.ports import free_media_port, free_port
from bridge.lab.sipp.peers import Agent, Device
from bridge.lab.sipp.rtp import _ULAW, RtpPacket, RtpReceiver
from bridge.lab.sipp.runner import (
    START_ATTEMPTS,
    START_TIMEOUT_S,
    SippResult,
    SippStartError,
    _start_listening,
    place_call,
    sipp_binary,
)
from bridge.lab.sipp.scenarios import (
    PCAP_DIR,
    Audio,
    Dtmf,
    HangUp,
    Pause,
    Step,
    register_scenario,
    uac_scenario,
    uas_scenario,
)

__all__ = [
    "PCAP_DIR",
    "START_ATTEMPTS",
    "START_TIMEOUT_S",
    "_ULAW",
    "Agent",
    "Audio",
    "Device",
    "Dtmf",
    "HangUp",
    "Pause",
    "RtpPacket",
    "RtpReceiver",
    "SippResult",
    "SippStartError",
    "Step",
    "_start_listening",
    "free_media_port",
    "free_port",
    "place_call",
    "register_scenario",
    "sipp_binary",
    "uac_scenario",
    "uas_scenario",
]
