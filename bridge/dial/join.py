"""Joining a caller and an answered leg: the part NCCO connect and Exotel Connect share."""

from __future__ import annotations

import asyncio
import contextlib

from bridge.ari.errors import AriError
from bridge.ari.gateway import AriGateway
from bridge.dial.dialer import Leg


async def join_until_one_leaves(
    gateway: AriGateway,
    bridge_id: str,
    name: str,
    caller_channel: str,
    caller_gone: asyncio.Event,
    leg: Leg,
    limit_s: float,
) -> bool:
    """Put both channels in a new mixing bridge and wait until either side hangs up.

    Returns True when ``limit_s`` seconds passed first (the caller decides what that ends);
    the bridge is left for the caller to tear down, whatever happened."""
    await gateway.create_bridge(bridge_id, "mixing", name)
    await gateway.add_to_bridge(bridge_id, caller_channel)
    await gateway.add_to_bridge(bridge_id, leg.channel_id)
    waits = [asyncio.ensure_future(leg.ended.wait()), asyncio.ensure_future(caller_gone.wait())]
    try:
        done, _ = await asyncio.wait(waits, timeout=limit_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()
    return not done


async def tear_down_join(gateway: AriGateway, bridge_id: str, caller_channel: str,
                         caller_gone: asyncio.Event, leg: Leg) -> None:
    """Undo :func:`join_until_one_leaves`: hang the leg up, take the caller (still there)
    out of the bridge, destroy the bridge."""
    if not leg.ended.is_set():
        await gateway.hangup(leg.channel_id)
    if not caller_gone.is_set():
        await gateway.remove_from_bridge(bridge_id, caller_channel)
    with contextlib.suppress(AriError):
        await gateway.destroy_bridge(bridge_id)
