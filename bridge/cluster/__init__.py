"""Several bridges as one cluster: slot leases and membership in Redis (see ``slots``)."""

from __future__ import annotations

from bridge.cluster.slots import SlotLeases

__all__ = ["SlotLeases"]
