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
    refresher: asyncio.Task[None] | None = None

    def start_refreshing() -> None:
        nonlocal refresher
        refresher = asyncio.create_task(held.refresh_forever(first_after=0.0))

    try:
        await held.hold(key)
        # Most calls end before their lease needs extending: until then a timer stands in
        # for the refreshing task (every call would otherwise start and cancel one).
        timer = asyncio.get_running_loop().call_later(held.refresh_interval, start_refreshing)
        try:
            await gone.wait()
        finally:
            timer.cancel()
            if refresher is not None:
                refresher.cancel()
    except BaseException:
        # Cancelled (shutdown) or failed: release even if cancelled again meanwhile.
        await asyncio.shield(held.release_all())
        raise
    # The call ended: nothing cancels this task now but a shutdown at this very moment,
    # which leaves the lease to expire, as a crash does.
    await held.release_all()
