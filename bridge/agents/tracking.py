"""Every call through the bridge marks its remote party busy (an agent who calls in, or whom
a REST outbound call rings), so Connect applets with state management skip them."""

from __future__ import annotations

import asyncio

from bridge.agents.leases import HeldAgents
from bridge.agents.store import AgentStore, agent_key


async def track_call(store: AgentStore, party: str, owner: str, lease_s: float,
                     gone: asyncio.Event) -> None:
    """Hold ``party`` busy until ``gone`` is set; released on every path (a crash lets the
    lease expire)."""
    key = agent_key(party)
    if not key:
        return
    held = HeldAgents(store, owner, lease_s)
    try:
        await held.hold(key)
        refresher = asyncio.create_task(held.refresh_forever())
        try:
            await gone.wait()
        finally:
            refresher.cancel()
    finally:
        await asyncio.shield(held.release_all())
