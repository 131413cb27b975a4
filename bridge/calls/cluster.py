"""This bridge as a member of a cluster: its slots, its heartbeat, and the adoption of the
slots of bridges that died.

Calls are spread over the bridges by *slots*. Asterisk hands a Stasis application to one
websocket connection only, so each slot is an application of its own (``ari-bridge-1`` ..
``ari-bridge-N``), and the dialplan of every node tries them from a random start until one is
connected (asterisk-config/extensions.conf). A bridge holds one slot: a Redis key with a TTL
of ``cluster.dead_after_s``, renewed every ``cluster.heartbeat_s``; it connects that slot's
application on every node and takes the calls that arrive there.

When a bridge dies its key expires. Every survivor looks for slots that have no owner but
still have calls or events in the shared call store; the first to claim one (``SET NX``, so
exactly one) connects that slot's application on every node and resumes its calls from the
store, as a restarted bridge resumes its own, and delivers its pending events. An adopted slot
takes no new calls (they are sent on to the next slot); once its calls have ended it is given
back, so a restarted bridge finds a free slot again.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

import structlog

from bridge.calls.engine import CallEngine
from bridge.calls.links import AriLink
from bridge.calls.redis_store import RedisCallStore
from bridge.cluster.slots import SlotLeases
from bridge.config import Config

log = structlog.get_logger(__name__)


class ClusterMember:
    def __init__(self, config: Config, engine: CallEngine, store: RedisCallStore,
                 owned_slots: set[int], public_url: Callable[[], str]) -> None:
        self.config = config
        self.engine = engine
        self.store = store
        #: Shared with the call store: the slots whose calls and events this bridge serves.
        self.owned_slots = owned_slots
        self.public_url = public_url
        self.instance = config.cluster.instance()
        cluster = config.cluster
        assert config.store.redis_url is not None  # the configuration requires it
        self.leases = SlotLeases(config.store.redis_url, config.store.redis_prefix,
                                 cluster.slots, self.instance, cluster.dead_after_s)
        self.primary_slot: int | None = None
        self.adopted: set[int] = set()
        self.started_at = time.time()
        #: Adoptions done, for the console and the tests.
        self.adoptions = 0
        self._task: asyncio.Task[None] | None = None
        #: No adoption before this (monotonic): after our own Redis outage, owners need a
        #: beat to re-claim slots whose keys expired meanwhile, which are not orphans.
        self._adopt_after = 0.0

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Claim a slot (waiting while all are held), connect it on every node, start
        delivering its events, and start heartbeating."""
        while True:
            try:
                slot = await self.leases.claim_free(prefer=self.store.has_data)
            except Exception as exc:  # Redis away at start: keep trying, say why
                log.warning("cluster.claim_failed", error=str(exc) or type(exc).__name__)
            else:
                if slot is not None:
                    break
                log.warning("cluster.no_free_slot", slots=self.config.cluster.slots)
            await asyncio.sleep(self.config.cluster.heartbeat_s)
        self.primary_slot = slot
        self.owned_slots.add(slot)
        log.info("cluster.joined", instance=self.instance, slot=slot)
        # Events left in this slot by a previous process go out first.
        await self.engine.events.start()
        await self._connect(slot, adopted=False)
        await self._beat_safely()
        self._task = asyncio.create_task(self._beat_forever(), name="cluster-heartbeat")

    async def stop_beating(self) -> None:
        """Stop heartbeating (and adopting): first step of a shutdown."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
            self._task = None

    async def leave(self) -> None:
        """Give the slots back once no call is driven from here: their calls stay in
        Asterisk and in the store, and a survivor (or the next start) adopts them at once."""
        await self.stop_beating()
        for slot in sorted(self.owned_slots):
            with contextlib.suppress(Exception):
                await self.leases.release(slot)
        with contextlib.suppress(Exception):
            await self.leases.forget_member()
        await self.leases.close()

    def describe(self) -> dict[str, Any]:
        """What ``/readyz`` shows of the membership."""
        return {"instance": self.instance, "primary_slot": self.primary_slot,
                "slots": sorted(self.owned_slots), "adopted": sorted(self.adopted),
                "adoptions": self.adoptions}

    @property
    def held(self) -> set[int]:
        return set(self.owned_slots)

    # ------------------------------------------------------------------ the beat
    async def _beat_forever(self) -> None:
        while True:
            await asyncio.sleep(self.config.cluster.heartbeat_s)
            await self._beat_safely()

    async def _beat_safely(self) -> None:
        try:
            await self._heartbeat()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # Redis away: keep serving what we hold (the calls go on); the keys expire
            # only if the outage outlasts dead_after_s, and then we re-claim or give up
            # each slot on the first beat that reaches Redis again.
            log.warning("cluster.heartbeat_failed", error=str(exc) or type(exc).__name__)
            self._adopt_after = time.monotonic() + self.config.cluster.dead_after_s

    async def _heartbeat(self) -> None:
        self.store.flush_deferred()  # call writes made while Redis was away, in order
        lost = await self.leases.renew(self.held)
        for slot in sorted(lost):
            # Expired while Redis was away: take it again unless another bridge has.
            if not await self.leases.claim(slot):
                await self._give_up(slot)
        await self.leases.heartbeat({
            "instance": self.instance, "slots": sorted(self.owned_slots),
            "primary_slot": self.primary_slot, "url": self.public_url(),
            "started_at": self.started_at, "live_calls": len(self.engine.sessions),
        })
        if self.primary_slot is None:
            await self._rejoin()
        if time.monotonic() >= self._adopt_after:
            for slot in await self.leases.orphaned(self.store.has_data):
                if await self.leases.claim(slot):
                    await self._adopt(slot)
        for slot in sorted(self.adopted):
            await self._release_if_empty(slot)

    async def _rejoin(self) -> None:
        """After losing the primary slot: take a free one and take new calls there."""
        slot = await self.leases.claim_free(prefer=self.store.has_data)
        if slot is None:
            return
        self.primary_slot = slot
        self.owned_slots.add(slot)
        await self._connect(slot, adopted=False)
        log.info("cluster.rejoined", slot=slot)

    # ------------------------------------------------------------------ adoption
    async def _adopt(self, slot: int) -> None:
        """Serve a dead bridge's slot: connect its application on every node (each connect
        reconciles: resumes the slot's calls from the store) and deliver its events."""
        started = time.monotonic()
        self.adopted.add(slot)
        self.owned_slots.add(slot)
        self.adoptions += 1
        links = await self._connect(slot, adopted=True)
        log.info("cluster.adopted", slot=slot, links=[link.name for link in links],
                 seconds=round(time.monotonic() - started, 3))

    async def _connect(self, slot: int, adopted: bool) -> list[AriLink]:
        """Serve ``slot``: its application on every node (each connect reconciles: resumes
        the slot's calls from the store), and its pending events."""
        links = [self.engine.add_link(node, slot, adopted=adopted)
                 for node in self.config.ari.node_configs()]
        self.engine.events.adopt_streams()  # nothing to add before the outbox has started
        for link in links:
            await self.engine.start_link(link)
        return links

    def _links(self, slot: int) -> list[AriLink]:
        return [link for link in self.engine.links if link.slot == slot]

    async def _release_if_empty(self, slot: int) -> None:
        """Give an adopted slot back once its calls have ended and its events are out."""
        links = self._links(slot)
        if any(not link.gateway.connected or not link.reconciled for link in links):
            return  # its calls are not all known yet
        if any(self.engine.sessions_on(link) for link in links) or self.store.has_data(slot):
            return
        for link in links:
            await self.engine.stop_link(link)
        self.adopted.discard(slot)
        self.owned_slots.discard(slot)
        await self.leases.release(slot)
        log.info("cluster.slot_released", slot=slot)

    async def _give_up(self, slot: int) -> None:
        """Another bridge holds a slot we thought ours (we were cut off from Redis for
        longer than dead_after_s): stop driving its calls, without ending them."""
        log.error("cluster.slot_lost", slot=slot)
        for link in self._links(slot):
            await self.engine.stop_link(link)
        self.owned_slots.discard(slot)
        self.adopted.discard(slot)
        if slot == self.primary_slot:
            self.primary_slot = None
