"""Agent busy leases and sticky-agent mappings, in SQLite or Redis.

A *lease* says "this agent is on a call owned by ``owner`` until ``expires``". An agent with
any live lease is busy. :meth:`AgentStore.acquire` takes an exclusive lease atomically: two
calls racing for one free agent never both get it (SQLite: one ``BEGIN IMMEDIATE``
transaction; Redis: one Lua script). :meth:`AgentStore.hold` adds a lease without checking
(an agent who calls in, or is called by any other call, is busy too). Leases are refreshed
while the call lasts and expire on their own when a bridge dies, so a crash never leaves an
agent busy for good. Expiry uses one clock per backend (the SQLite host's wall clock, the
Redis server's ``TIME``), so several bridge instances agree.

Sticky mappings (caller -> the agent who last answered them) carry their own lifetime and live
in the same durable store, so they survive a bridge restart.
"""

from __future__ import annotations

import abc
import re
import sqlite3
import time
from pathlib import Path
from typing import Any

import structlog

log = structlog.get_logger(__name__)


def agent_key(contact: str) -> str:
    """One spelling per agent: a SIP URI in lower case, a number as its digits (no '+',
    spaces or dashes), so '+91 98765-43210' and '919876543210' are the same agent."""
    value = contact.strip()
    if value.lower().startswith("sip:"):
        return value.lower()
    return re.sub(r"[^0-9]", "", value)


class AgentStore(abc.ABC):
    """The interface both backends implement. ``agent`` is an :func:`agent_key`."""

    backend = "abstract"

    @abc.abstractmethod
    async def acquire(self, agent: str, owner: str, lease_s: float) -> bool:
        """Take ``agent`` for ``owner`` if nobody else holds a live lease on it."""

    @abc.abstractmethod
    async def hold(self, agent: str, owner: str, lease_s: float) -> None:
        """Mark ``agent`` busy for ``owner`` whatever else holds it."""

    @abc.abstractmethod
    async def refresh(self, agent: str, owner: str, lease_s: float) -> bool:
        """Extend ``owner``'s lease; False when it had already expired (and is now re-taken
        if the agent is still free, so a late refresh does not double-book)."""

    @abc.abstractmethod
    async def release(self, agent: str, owner: str) -> None:
        """Drop ``owner``'s lease (a lease that is already gone is fine)."""

    @abc.abstractmethod
    async def is_busy(self, agent: str) -> bool:
        """True while any live lease is held on ``agent``."""

    @abc.abstractmethod
    async def set_sticky(self, caller: str, agent: str, ttl_s: float) -> None:
        """Remember that ``agent`` last answered ``caller``, for ``ttl_s`` seconds."""

    @abc.abstractmethod
    async def sticky(self, caller: str) -> str | None:
        """The agent who last answered ``caller``, if the mapping is still alive."""

    @abc.abstractmethod
    async def check_writable(self) -> None:
        """Make one small write (``GET /readyz``); raises when the store cannot take it."""

    async def close(self) -> None:  # noqa: B027 - optional for backends
        """Release connections."""


# --------------------------------------------------------------------------------- SQLite
_SCHEMA = """
CREATE TABLE IF NOT EXISTS agent_leases (
    agent TEXT NOT NULL,
    owner TEXT NOT NULL,
    expires REAL NOT NULL,
    PRIMARY KEY (agent, owner)
);
CREATE TABLE IF NOT EXISTS sticky_agents (
    caller TEXT PRIMARY KEY,
    agent TEXT NOT NULL,
    expires REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS store_health (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    checked_at REAL NOT NULL
);
"""


class SqliteAgentStore(AgentStore):
    """Embedded: one SQLite file in WAL mode. Every statement is a few microseconds, so it
    runs on the event loop; ``BEGIN IMMEDIATE`` makes check-and-take one atomic step, also
    for other processes sharing the file."""

    backend = "sqlite"

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(self.path), isolation_level=None, timeout=5.0,
                                   check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    def _tx(self, fn: Any) -> Any:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            result = fn(db, time.time())
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        return result

    async def acquire(self, agent: str, owner: str, lease_s: float) -> bool:
        def take(db: sqlite3.Connection, now: float) -> bool:
            db.execute("DELETE FROM agent_leases WHERE agent = ? AND expires <= ?", (agent, now))
            others = db.execute("SELECT COUNT(*) FROM agent_leases WHERE agent = ? AND owner != ?",
                                (agent, owner)).fetchone()[0]
            if others:
                return False
            db.execute("INSERT OR REPLACE INTO agent_leases VALUES (?, ?, ?)",
                       (agent, owner, now + lease_s))
            return True

        return bool(self._tx(take))

    async def hold(self, agent: str, owner: str, lease_s: float) -> None:
        # One statement is its own transaction: no BEGIN and COMMIT around it.
        self._db.execute("INSERT OR REPLACE INTO agent_leases VALUES (?, ?, ?)",
                         (agent, owner, time.time() + lease_s))

    async def refresh(self, agent: str, owner: str, lease_s: float) -> bool:
        def extend(db: sqlite3.Connection, now: float) -> bool:
            cur = db.execute(
                "UPDATE agent_leases SET expires = ? WHERE agent = ? AND owner = ? AND expires > ?",
                (now + lease_s, agent, owner, now))
            return cur.rowcount > 0

        if self._tx(extend):
            return True
        await self.acquire(agent, owner, lease_s)
        return False

    async def release(self, agent: str, owner: str) -> None:
        self._db.execute("DELETE FROM agent_leases WHERE agent = ? AND owner = ?", (agent, owner))

    async def is_busy(self, agent: str) -> bool:
        row = self._db.execute("SELECT COUNT(*) FROM agent_leases WHERE agent = ? AND expires > ?",
                               (agent, time.time())).fetchone()
        return bool(row[0])

    async def set_sticky(self, caller: str, agent: str, ttl_s: float) -> None:
        self._db.execute("INSERT OR REPLACE INTO sticky_agents VALUES (?, ?, ?)",
                         (caller, agent, time.time() + ttl_s))

    async def sticky(self, caller: str) -> str | None:
        row = self._db.execute("SELECT agent FROM sticky_agents WHERE caller = ? AND expires > ?",
                               (caller, time.time())).fetchone()
        return str(row[0]) if row else None

    async def check_writable(self) -> None:
        self._db.execute("INSERT OR REPLACE INTO store_health VALUES (1, ?)", (time.time(),))

    async def close(self) -> None:
        self._db.close()


# ---------------------------------------------------------------------------------- Redis
# Time comes from the Redis server, so bridges with different clocks agree on expiry.
_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
"""
_KEEP_KEY = """
local top = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
if top[2] then
  redis.call('PEXPIRE', KEYS[1], math.ceil((tonumber(top[2]) - now) * 1000) + 1000)
end
"""
_ACQUIRE = _NOW + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if ARGV[3] == '1' then
  local holders = redis.call('ZRANGE', KEYS[1], 0, -1)
  for _, h in ipairs(holders) do
    if h ~= ARGV[1] then return 0 end
  end
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
""" + _KEEP_KEY + "\nreturn 1\n"
_REFRESH = _NOW + """
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score or tonumber(score) <= now then return 0 end
redis.call('ZADD', KEYS[1], 'XX', now + tonumber(ARGV[2]), ARGV[1])
""" + _KEEP_KEY + "\nreturn 1\n"
_BUSY = _NOW + """
return redis.call('ZCOUNT', KEYS[1], '(' .. now, '+inf')
"""


class RedisAgentStore(AgentStore):
    """Shared: one sorted set of ``owner -> expiry`` per agent, changed only by Lua scripts
    (atomic on the server), and one key with a TTL per sticky mapping."""

    backend = "redis"

    def __init__(self, url: str, prefix: str = "ari-bridge:", max_connections: int = 32) -> None:
        import redis.asyncio as aioredis  # optional dependency, only for this backend

        self.url = url
        self.prefix = prefix
        # A blocking pool: a burst of calls waits for a connection instead of failing.
        pool = aioredis.BlockingConnectionPool.from_url(
            url, decode_responses=True, max_connections=max_connections, timeout=5)
        self._redis: Any = aioredis.Redis(connection_pool=pool)
        self._acquire = self._redis.register_script(_ACQUIRE)
        self._refresh = self._redis.register_script(_REFRESH)
        self._busy = self._redis.register_script(_BUSY)

    def _lease_key(self, agent: str) -> str:
        return f"{self.prefix}agent:{agent}"

    async def acquire(self, agent: str, owner: str, lease_s: float) -> bool:
        result = await self._acquire(keys=[self._lease_key(agent)], args=[owner, lease_s, "1"])
        return bool(int(result))

    async def hold(self, agent: str, owner: str, lease_s: float) -> None:
        await self._acquire(keys=[self._lease_key(agent)], args=[owner, lease_s, "0"])

    async def refresh(self, agent: str, owner: str, lease_s: float) -> bool:
        if int(await self._refresh(keys=[self._lease_key(agent)], args=[owner, lease_s])):
            return True
        await self.acquire(agent, owner, lease_s)
        return False

    async def release(self, agent: str, owner: str) -> None:
        await self._redis.zrem(self._lease_key(agent), owner)

    async def is_busy(self, agent: str) -> bool:
        return int(await self._busy(keys=[self._lease_key(agent)], args=[])) > 0

    async def set_sticky(self, caller: str, agent: str, ttl_s: float) -> None:
        await self._redis.set(f"{self.prefix}sticky:{caller}", agent,
                              px=max(1, int(ttl_s * 1000)))

    async def sticky(self, caller: str) -> str | None:
        value = await self._redis.get(f"{self.prefix}sticky:{caller}")
        return str(value) if value else None

    async def check_writable(self) -> None:
        # A key of its own with a short life: nothing to clean up, and a read-only replica
        # or an out-of-memory server refuses it.
        await self._redis.set(f"{self.prefix}health", str(time.time()), px=60_000)

    async def close(self) -> None:
        await self._redis.aclose()


def open_agent_store(backend: str, path: Path, redis_url: str | None,
                     prefix: str = "ari-bridge:") -> AgentStore:
    """The configured backend (see ``agents`` in the configuration)."""
    if backend == "redis":
        if not redis_url:
            raise ValueError("agents.redis_url is required for the redis backend")
        return RedisAgentStore(redis_url, prefix)
    return SqliteAgentStore(path)
