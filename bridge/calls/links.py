"""The engine's ARI links: one ARI connection of this bridge (an Asterisk node and one Stasis
application) and what is bound to it.

A single bridge has one link per Asterisk node (``ari.nodes``; one node by default). In a
cluster each slot this bridge holds is a Stasis application of its own on every node, so a link
is a (node, slot) pair (bridge/calls/cluster.py). A call lives on one link: its channel, its
callee legs, its bridges and its recordings are on that node, in that application.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bridge.agents.devices import DeviceProvisioner
from bridge.ari.gateway import AriGateway
from bridge.exotel import applet as exotel_applet
from bridge.media.recordings import RecordingService
from bridge.ncco import actions as action_modules
from bridge.ncco.actions.conversation.rooms import RoomRegistry
from bridge.ncco.context import CallServices, Runner


@dataclass
class AriLink:
    """One ARI connection of this bridge, and what is bound to it: the calls' services with
    this connection's gateway (dialler, recordings), its conversation rooms and the agents'
    devices of its node."""

    node: str
    slot: int  # 0 outside a cluster
    gateway: AriGateway
    services: CallServices
    rooms: RoomRegistry
    runners: dict[str, Runner]
    devices: DeviceProvisioner
    #: A dead bridge's slot taken over: its calls are resumed here, new calls are sent on to
    #: the next slot (so the slot empties and is given back).
    adopted: bool = False
    #: Set once a reconciliation after a connect has run: the link's calls are all known.
    reconciled: bool = False
    calls_started: int = 0  # new calls and resumed ones

    def describe(self) -> dict[str, Any]:
        """What ``/readyz`` shows of the link."""
        return {"name": self.name, "node": self.node, "app": self.gateway.app,
                "slot": self.slot, "adopted": self.adopted,
                "connected": self.gateway.connected, "calls_started": self.calls_started}

    @property
    def recordings(self) -> RecordingService:
        return self.services.recordings

    @property
    def name(self) -> str:
        return f"{self.node}/slot-{self.slot}" if self.slot else self.node

    @classmethod
    def around(cls, services: CallServices, node: str, slot: int, adopted: bool) -> AriLink:
        """A link for ``services`` (built on its gateway): its rooms, its runners and its
        node's agent devices."""
        rooms = RoomRegistry(services)  # named conversation rooms
        return cls(
            node=node, slot=slot, gateway=services.gateway, services=services, rooms=rooms,
            # Action name -> runner: the NCCO actions, and an applet number's Exotel Connect.
            runners={**action_modules.runners(rooms), exotel_applet.ACTION: exotel_applet.run},
            # Agents' SIP devices (agents.devices), created in Asterisk after every connect.
            devices=DeviceProvisioner(services.gateway, services.config.agents.devices),
            adopted=adopted,
        )
