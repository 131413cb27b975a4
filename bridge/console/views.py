"""The console's data: the recorder's calls and webhooks, plus state the bridge already keeps
(the ARI connection, the live session count, the agents' devices as Asterisk sees them)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from bridge.ari.errors import AriError
from bridge.timeline import Timeline

if TYPE_CHECKING:
    from bridge.ari.gateway import AriGateway
    from bridge.calls.engine import CallEngine

#: Seconds a device's registration state is reused before Asterisk is asked again.
DEVICE_STATE_TTL_S = 5.0


class ConsoleViews:
    def __init__(self, recorder: Timeline, device_names: list[str],
                 engine: Callable[[], CallEngine | None],
                 gateway: Callable[[], AriGateway | None]) -> None:
        self.recorder = recorder
        self.device_names = device_names
        self._engine = engine
        self._gateway = gateway
        self._devices: dict[str, str] = {}
        self._devices_at = 0.0

    def ari(self) -> dict[str, Any]:
        gateway = self._gateway()
        if gateway is None:
            return {"connected": False, "last_error": "the bridge is starting", "connects": 0}
        state: dict[str, Any] = {
            "connected": gateway.connected, "last_error": gateway.last_error,
            "connects": gateway.connects, "events_routed": gateway.events_routed}
        engine = self._engine()
        if engine is not None and len(engine.links) > 1:
            # Several nodes, or a cluster's slots: each connection, and all of them up.
            links = [link.describe() for link in engine.links]
            down = [link.name for link in engine.links_down()]
            state.update(links=links, connected=not down,
                         last_error=f"not connected: {', '.join(down)}" if down else None)
        return state

    def counts(self) -> dict[str, Any]:
        engine = self._engine()
        return {"live_sessions": len(engine.sessions) if engine is not None else 0,
                "calls_started": engine.calls_started if engine is not None else 0,
                "untracked_calls": self.recorder.untracked_calls}

    async def device_states(self, force: bool = False) -> dict[str, str]:
        """``online``/``offline`` (or ``unknown``) per configured device, cached a few
        seconds so that many open pages do not multiply the ARI requests."""
        gateway = self._gateway()
        if not self.device_names or gateway is None:
            return {}
        if not force and time.monotonic() - self._devices_at < DEVICE_STATE_TTL_S:
            return self._devices
        self._devices_at = time.monotonic()

        async def one(name: str) -> tuple[str, str]:
            if not gateway.connected:
                return name, "unknown"
            try:
                state = await gateway.endpoint_state("PJSIP", name)
            except AriError:
                return name, "unknown"
            return name, str((state or {}).get("state") or "offline")

        self._devices = dict(await asyncio.gather(*(one(n) for n in self.device_names)))
        return self._devices

    async def agents(self, force: bool = False) -> list[dict[str, Any]]:
        """Every agent seen in a lease or a sticky mapping, and every configured device."""
        rows = self.recorder.agent_rows()
        devices = await self.device_states(force)
        for name, state in devices.items():
            key = f"sip:{name.lower()}"
            row = rows.setdefault(key, {"agent": key, "busy": False, "calls": [],
                                        "since": None, "sticky_callers": []})
            row["device"] = name
            row["registered"] = state
        return sorted(rows.values(), key=lambda r: (not r["busy"], r["agent"]))

    async def state(self) -> dict[str, Any]:
        return {
            "now": time.time(),
            "ari": self.ari(),
            "counts": self.counts(),
            "calls": self.recorder.live_calls(),
            "ended": self.recorder.ended_calls(),
            "agents": await self.agents(),
            "webhooks": self.recorder.webhook_health(),
        }
