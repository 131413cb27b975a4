"""Slot leases: which bridge serves which slot of a cluster, held in Redis.

Calls are spread over bridges by *slots*: the dialplan tries the Stasis applications
``<ari.app>-1`` .. ``<ari.app>-N``, and the bridge that holds slot ``k`` connects application
``<ari.app>-k`` to every Asterisk node. A slot is held by a key with a time to live that the
holder renews on every heartbeat; when a bridge dies its keys expire, and a survivor claims the
slot and resumes its calls from the shared call store.

Keys (``{p}`` is the Redis prefix):

- ``{p}slot:{k}:owner``: the instance id holding slot ``k`` (1 ..  N), with a time to live of
  ``ttl_s``. Taken with ``SET NX``; renewed and released only by its holder (Lua scripts that
  compare the value first), so two bridges never hold one slot.
- ``{p}member:{instance}``: a bridge's heartbeat (JSON: instance, slots held, HTTP URL, start
  time, as the caller gives it), with the same time to live.

Expiry is measured by the Redis server's clock, so bridges with different clocks agree.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable
from typing import Any

# KEYS: owner keys in the order to try; ARGV[1]: instance, ARGV[2]: ttl ms. Returns the index
# (1-based) of the key taken, 0 when every one is held.
_CLAIM_FIRST = """
for i, key in ipairs(KEYS) do
  if redis.call('SET', key, ARGV[1], 'NX', 'PX', ARGV[2]) then return i end
end
return 0
"""

# KEYS: owner keys; ARGV[1]: instance, ARGV[2]: ttl ms. Returns the indexes (1-based) of the
# keys no longer held by the instance (expired, or taken by another).
_RENEW = """
local lost = {}
for i, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[1] then
    redis.call('PEXPIRE', key, ARGV[2])
  else
    lost[#lost + 1] = i
  end
end
return lost
"""

# KEYS[1]: owner key; ARGV[1]: instance.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class SlotLeases:
    """This instance's view of the slot leases of a cluster of ``slots`` slots (1 ..
    ``slots``). Every method is one round trip; each check-and-set is one Lua script."""

    def __init__(self, url: str, prefix: str, slots: int, instance: str, ttl_s: float) -> None:
        import redis.asyncio as aioredis

        if slots < 1:
            raise ValueError("slots must be at least 1")
        self.url = url
        self.prefix = prefix
        self.slots = slots
        self.instance = instance
        self.ttl_ms = max(1, int(ttl_s * 1000))
        self._redis: Any = aioredis.Redis.from_url(url, decode_responses=True)
        self._claim_first = self._redis.register_script(_CLAIM_FIRST)
        self._renew = self._redis.register_script(_RENEW)
        self._release = self._redis.register_script(_RELEASE)

    def owner_key(self, slot: int) -> str:
        return f"{self.prefix}slot:{slot}:owner"

    def _member_key(self, instance: str) -> str:
        return f"{self.prefix}member:{instance}"

    def _check(self, slot: int) -> None:
        if not 1 <= slot <= self.slots:
            raise ValueError(f"slot {slot} is not in 1..{self.slots}")

    async def claim(self, slot: int) -> bool:
        """Take ``slot`` if nobody holds it."""
        self._check(slot)
        return bool(await self._redis.set(self.owner_key(slot), self.instance, nx=True,
                                          px=self.ttl_ms))

    async def claim_free(self, prefer: Callable[[int], bool] | None = None) -> int | None:
        """Take one slot nobody holds: first one for which ``prefer`` is true, then any other,
        each group tried from a random place so that bridges starting together spread. None
        when every slot is held."""
        start = random.randrange(self.slots)
        order = [(start + i) % self.slots + 1 for i in range(self.slots)]
        if prefer is not None:
            preferred = [k for k in order if prefer(k)]
            order = preferred + [k for k in order if k not in preferred]
        taken = int(await self._claim_first(keys=[self.owner_key(k) for k in order],
                                            args=[self.instance, self.ttl_ms]))
        return order[taken - 1] if taken else None

    async def renew(self, held: set[int]) -> set[int]:
        """Extend the lease of every slot in ``held`` this instance still holds; returns the
        ones it lost (expired, or held by another): the caller must stop serving those."""
        if not held:
            return set()
        slots = sorted(held)
        lost = await self._renew(keys=[self.owner_key(k) for k in slots],
                                 args=[self.instance, self.ttl_ms])
        return {slots[int(i) - 1] for i in lost}

    async def release(self, slot: int) -> None:
        """Give ``slot`` up, if this instance holds it (another holder's lease is kept)."""
        self._check(slot)
        await self._release(keys=[self.owner_key(slot)], args=[self.instance])

    async def owners(self) -> dict[int, str]:
        """Slot -> instance, for the slots someone holds."""
        values = await self._redis.mget([self.owner_key(k) for k in range(1, self.slots + 1)])
        return {k: str(v) for k, v in zip(range(1, self.slots + 1), values, strict=True)
                if v is not None}

    async def orphaned(self, store_has_data: Callable[[int], bool]) -> list[int]:
        """Slots nobody holds that still have calls or events in the store (a survivor
        adopts these)."""
        held = await self.owners()
        return [k for k in range(1, self.slots + 1) if k not in held and store_has_data(k)]

    async def heartbeat(self, info: dict[str, Any]) -> None:
        """Say this instance is alive, with ``info`` (slots held, HTTP URL, start time...),
        for the lease's time to live."""
        record = {"instance": self.instance, **info}
        await self._redis.set(self._member_key(self.instance),
                              json.dumps(record, separators=(",", ":"), default=str),
                              px=self.ttl_ms)

    async def members(self) -> list[dict[str, Any]]:
        """The live instances' heartbeats, by instance id."""
        pattern = re.sub(r"([*?\[\]\\])", r"\\\1", self.prefix) + "member:*"
        keys = sorted([key async for key in self._redis.scan_iter(match=pattern, count=100)])
        if not keys:
            return []
        values = await self._redis.mget(keys)
        return [json.loads(v) for v in values if v is not None]

    async def forget_member(self) -> None:
        """Remove this bridge's heartbeat at once (a clean stop), not at its expiry."""
        await self._redis.delete(self._member_key(self.instance))

    async def close(self) -> None:
        await self._redis.aclose()
