"""Ports for the lab and its SIP peers, handed out so that two users never get the same one.

The usual trick, bind to port 0 and read the number back, returns a port of the kernel's
ephemeral range (32768-60999 on Linux). Between our close and the real user's bind, any socket
bound to port 0 (Asterisk's RTP, aiohttp's client connections, an RTP receiver of the test) may
take it, and the peer then fails to start. That race made the suite fail now and then.

So ports come from fixed ranges below the ephemeral range, where a bind to port 0 never lands:

- ``SERVICE_PORTS``: SIP, ARI and HTTP listeners (Asterisk's, sipp's, the tests' servers);
- ``MEDIA_PORTS``: sipp's media, an even port P with P+2 also free (sipp binds both);
- the lab's RTP range is given to Asterisk by its caller (12000-19600 in the tests).

Within this process a port is not handed out again for ``REUSE_AFTER_S`` seconds, so that
two users who asked a moment apart never get the same port before the first one binds it (a
bound port then fails the bind check by itself). Another process
on the machine (a second suite) may still pick the same free port; that cannot be ruled out
without holding the socket, which a child process cannot inherit. Users that start a child on
a port therefore check that it started and retry on a new port when the bind failed
(:class:`bridge.lab.sipp.Agent` does).
"""

from __future__ import annotations

import random
import socket
import threading
import time
from collections.abc import Callable

__all__ = ["MEDIA_PORTS", "REUSE_AFTER_S", "SERVICE_PORTS", "free_media_port", "free_port"]

#: Listeners: above sipp's media range, below the kernel's ephemeral range.
SERVICE_PORTS = range(30000, 32760)

#: sipp's media ports (P and P+2).
MEDIA_PORTS = range(21000, 29998, 4)

#: Seconds before this process hands a port out again (its user has bound it long before).
REUSE_AFTER_S = 60.0

_handed_out: dict[int, float] = {}  # port -> when (monotonic seconds)
_lock = threading.Lock()  # tests run servers in threads too


def _bindable(port: int, kind: int, host: str) -> bool:
    with socket.socket(socket.AF_INET, kind) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _pick(candidates: range, fits: Callable[[int], bool]) -> int:
    with _lock:
        now = time.monotonic()
        for port, when in list(_handed_out.items()):
            if now - when > REUSE_AFTER_S:
                del _handed_out[port]
        for _ in range(500):
            port = random.choice(candidates)
            if port in _handed_out or not fits(port):
                continue
            _handed_out[port] = now
            return port
    raise RuntimeError(
        f"no free port in {candidates.start}-{candidates.stop - 1} after 500 tries")


def free_port(kind: int = socket.SOCK_DGRAM, host: str = "127.0.0.1") -> int:
    """A port free on ``host`` for UDP and TCP alike (SIP listens on both), not handed out
    lately by this process, outside the range where binds to port 0 land. ``kind`` is kept
    for callers that name the one they need; both are checked."""
    del kind
    return _pick(SERVICE_PORTS, lambda port: (
        _bindable(port, socket.SOCK_DGRAM, host) and _bindable(port, socket.SOCK_STREAM, host)))


def free_media_port(host: str = "127.0.0.1") -> int:
    """An even port P with P and P+2 free for UDP (sipp binds both for its pcap audio)."""
    return _pick(MEDIA_PORTS, lambda port: (
        _bindable(port, socket.SOCK_DGRAM, host) and _bindable(port + 2, socket.SOCK_DGRAM, host)))

