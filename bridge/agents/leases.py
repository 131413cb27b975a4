"""The agents one call holds, kept alive while it lasts and released on every end path."""

from __future__ import annotations

import asyncio
import contextlib

import structlog

from bridge import metrics
from bridge.agents.store import AgentStore
from bridge.timeline import RECORDER

log = structlog.get_logger(__name__)


class HeldAgents:
    """Leases held by one owner (a call). ``refresh_forever`` runs beside the call and
    extends every lease at a third of its length; ``release_all`` is called in a ``finally``.
    If the bridge dies, the leases simply expire after ``lease_s``."""

    def __init__(self, store: AgentStore, owner: str, lease_s: float) -> None:
        self.store = store
        self.owner = owner
        self.lease_s = lease_s
        self.agents: set[str] = set()

    async def acquire(self, agent: str) -> bool:
        if agent in self.agents:
            return True
        if await self.store.acquire(agent, self.owner, self.lease_s):
            self._add(agent)
            return True
        return False

    async def hold(self, agent: str) -> None:
        # Counted as held before the store answers: a call cancelled while the answer is on
        # its way (Redis) still releases the lease the store has already written.
        self._add(agent)
        await self.store.hold(agent, self.owner, self.lease_s)

    def _add(self, agent: str) -> None:
        if agent not in self.agents:
            self.agents.add(agent)
            metrics.AGENT_LEASES_HELD.inc()
            if RECORDER.on:
                RECORDER.agent(agent, self.owner, busy=True)

    async def release(self, agent: str) -> None:
        if agent in self.agents:
            self.agents.discard(agent)
            metrics.AGENT_LEASES_HELD.dec()
            if RECORDER.on:
                RECORDER.agent(agent, self.owner, busy=False)
            try:
                await self.store.release(agent, self.owner)
            except Exception as exc:  # the lease expires by itself
                log.warning("agents.release_failed", agent=agent, error=str(exc))

    async def release_all(self) -> None:
        for agent in list(self.agents):
            await self.release(agent)

    @property
    def refresh_interval(self) -> float:
        """How often leases are extended: a third of their length."""
        return max(self.lease_s / 3, 0.05)

    async def refresh_forever(self, first_after: float | None = None) -> None:
        """Extend every lease now and then, forever (cancel to stop). ``first_after``: the
        first extension comes after that many seconds instead of one interval."""
        interval = self.refresh_interval
        await asyncio.sleep(interval if first_after is None else first_after)
        while True:
            for agent in list(self.agents):
                with contextlib.suppress(Exception):
                    if not await self.store.refresh(agent, self.owner, self.lease_s):
                        log.warning("agents.lease_lapsed", agent=agent, owner=self.owner)
            await asyncio.sleep(interval)
