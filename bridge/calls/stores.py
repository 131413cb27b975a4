"""The configured call store: SQLite (one bridge) or Redis (shared by a cluster)."""

from __future__ import annotations

from bridge.calls.redis_store import RedisCallStore
from bridge.calls.store import CallStorage, CallStore
from bridge.config import Config


def open_call_store(config: Config, owned_slots: set[int] | None = None) -> CallStorage:
    """``store.backend``'s store. ``owned_slots`` (Redis only): the set of slots this bridge
    holds, shared with the cluster coordinator; None: every slot."""
    if config.store.backend == "redis":
        if not config.store.redis_url:
            raise ValueError("store.redis_url is required for the redis backend")
        return RedisCallStore(config.store.redis_url, config.store.redis_prefix, owned_slots)
    return CallStore(config.store.path, write_delay_s=config.store.write_delay_ms / 1000)
