"""Identifiers as strings: random (version 4) and name-based (version 5) UUIDs.

The same values ``str(uuid.uuid4())`` and ``str(uuid.uuid5(namespace, name))`` give, without
building ``uuid.UUID`` objects: its constructor checks and converts in Python, and every call
made five of them (its two ids, its two derived playback ids and their namespace).
"""

from __future__ import annotations

import hashlib
import os


def _text(raw: bytes | bytearray) -> str:
    """16 bytes in the canonical 8-4-4-4-12 form."""
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _stamp(raw: bytes, version: int) -> bytearray:
    """Set the version and the RFC 4122 variant bits, as ``uuid.UUID(..., version=)`` does."""
    out = bytearray(raw[:16])
    out[6] = (out[6] & 0x0F) | (version << 4)
    out[8] = (out[8] & 0x3F) | 0x80
    return out


def random_uuid() -> str:
    """A new random UUID (version 4), e.g. a call's uuid or an id we hand to Asterisk."""
    return _text(_stamp(os.urandom(16), 4))


def name_uuid(namespace: str, name: str) -> str:
    """The UUID (version 5) of ``name`` in ``namespace`` (itself a UUID string): the same
    inputs always give the same id, in this process or after a restart."""
    space = bytes.fromhex(namespace.replace("-", ""))
    if len(space) != 16:
        raise ValueError(f"not a UUID: {namespace!r}")
    return _text(_stamp(hashlib.sha1(space + name.encode()).digest(), 5))


__all__ = ["name_uuid", "random_uuid"]
