"""The call store in Redis, shared by the bridges of a cluster (``store.backend: redis``).

Same interface and meaning as the SQLite :class:`bridge.calls.store.CallStore`: the live
calls a bridge needs to pick a call up again, and the event outbox. Every operation is one
round trip on a synchronous client, made inline on the event loop like the SQLite writes (a
loopback round trip costs tens of microseconds).

Keys (``{p}`` is ``store.redis_prefix``):

- ``{p}call:{uuid}``: the live call's record as JSON, rewritten whole on every change.
- ``{p}slot:{k}:calls``: SET of the uuids of the live calls in slot ``k`` (0 outside a cluster).
- ``{p}slots``: SET of every slot that has had calls or events (what "all slots" means).
- ``{p}event-seq``: the last event id handed out (``INCR``: ids are unique across bridges and
  grow in the order events are written).
- ``{p}event:{id}``: one pending event as JSON (its fields, ``attempts`` and
  ``next_attempt_at``; the id is in the key).
- ``{p}events:{call_uuid}``: LIST of the call's pending event ids, oldest first.
- ``{p}stream-slots``: HASH call_uuid -> the slot its pending events belong to: the slot of
  the call's record when its first pending event was written, else the slot of its pending
  events already there. A side stream (``<uuid>/passthru``) goes with its call; a stream whose
  call this bridge does not know goes to the lowest slot it serves (0 outside a cluster).
- ``{p}slot:{k}:streams``: ZSET of the calls of slot ``k`` with pending events, scored by their
  oldest pending event's id, so that streams come out in the order their oldest events were
  written (as the SQLite store orders them).
- ``{p}slot:{k}:pending``: the number of pending events of slot ``k``.
- ``{p}health``: written by every readiness check, with a short life.

Writing an event and ending its call is one Lua script: a crash leaves either the live call or
its ``completed`` event, never neither. The scripts build key names from the prefix, so the
store needs one Redis server (with replicas if wanted), not Redis Cluster.

``owned_slots`` is shared with the cluster coordinator: the outbox's view
(:meth:`RedisCallStore.outbox_streams`, ``outbox_count``, ``outbox_oldest_created_at``)
covers only the calls of those slots, as a bridge delivers only its own slots' events;
``None`` covers every slot (a single bridge).

When Redis is away (connection refused, timeout), the call writes (``save``,
``update_progress``, ``mark_answered``, ``delete``) do not raise: they are kept in memory, in
order (at most ``max_deferred``; beyond that the oldest is dropped with an error log), and
replayed by :meth:`RedisCallStore.flush_deferred`, which the cluster's heartbeat calls and
every later write or read calls first. Writing an event raises (the outbox keeps the event in
memory and writes it once Redis is back, see bridge/webhooks/outbox.py), reads raise
:class:`StoreUnavailable`, and so does :meth:`RedisCallStore.check_writable`.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import redis
import structlog
from redis.backoff import NoBackoff
from redis.retry import Retry

from bridge.calls.store import CallRecord
from bridge.webhooks.outbox import NewOutboxEvent, OutboxEvent

log = structlog.get_logger(__name__)

#: Errors that mean "Redis is away for now" (a restart, a network cut, loading its data).
_AWAY = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)

_CALL_FIELDS = frozenset(f.name for f in dataclasses.fields(CallRecord))


class StoreUnavailable(RuntimeError):
    """Redis cannot be reached: the read (or event write) did not happen."""


# ARGV[1]: prefix, ARGV[2]: event JSON, ARGV[3]: call uuid, ARGV[4]: the call's slot as this
# bridge knows it, ARGV[5]: the uuid of the live call to end ('' for none).
_OUTBOX_ADD = """
local p = ARGV[1]
local call = ARGV[3]
local ended = ARGV[5]
-- Every read that can fail comes before the first write: a script is not rolled back.
local ended_slot = nil
if ended ~= '' then
  local record = redis.call('GET', p .. 'call:' .. ended)
  if record then ended_slot = cjson.decode(record).slot or 0 end
end
local slot = redis.call('HGET', p .. 'stream-slots', call)
if not slot then
  slot = ARGV[4]
  redis.call('HSET', p .. 'stream-slots', call, slot)
end
local id = redis.call('INCR', p .. 'event-seq')
redis.call('SET', p .. 'event:' .. id, ARGV[2])
redis.call('RPUSH', p .. 'events:' .. call, id)
redis.call('ZADD', p .. 'slot:' .. slot .. ':streams', 'NX', id, call)
redis.call('INCR', p .. 'slot:' .. slot .. ':pending')
redis.call('SADD', p .. 'slots', slot)
if ended_slot then
  redis.call('SREM', p .. 'slot:' .. ended_slot .. ':calls', ended)
  redis.call('DEL', p .. 'call:' .. ended)
end
return id
"""

# ARGV[1]: prefix, ARGV[2]: event id.
_OUTBOX_DELETE = """
local p = ARGV[1]
local event = redis.call('GET', p .. 'event:' .. ARGV[2])
if not event then return 0 end
local call = cjson.decode(event).call_uuid
local slot = redis.call('HGET', p .. 'stream-slots', call) or '0'
redis.call('DEL', p .. 'event:' .. ARGV[2])
redis.call('LREM', p .. 'events:' .. call, 1, ARGV[2])
redis.call('DECR', p .. 'slot:' .. slot .. ':pending')
local head = redis.call('LINDEX', p .. 'events:' .. call, 0)
if head then
  redis.call('ZADD', p .. 'slot:' .. slot .. ':streams', head, call)
else
  redis.call('ZREM', p .. 'slot:' .. slot .. ':streams', call)
  redis.call('HDEL', p .. 'stream-slots', call)
end
return 1
"""

# ARGV[1]: prefix, ARGV[2]: call uuid. Returns {id, event JSON} or {}.
_OUTBOX_HEAD = """
local p = ARGV[1]
local head = redis.call('LINDEX', p .. 'events:' .. ARGV[2], 0)
if not head then return {} end
return {head, redis.call('GET', p .. 'event:' .. head)}
"""

# ARGV[1]: prefix, ARGV[2]: how many streams per slot (0: all), ARGV[3..]: slots (none: every
# slot). Returns {call uuid, head id, head event JSON, ...}.
_OUTBOX_HEADS = """
local p = ARGV[1]
local last = tonumber(ARGV[2]) - 1
local slots = {}
for i = 3, #ARGV do slots[#slots + 1] = ARGV[i] end
if #slots == 0 then slots = redis.call('SMEMBERS', p .. 'slots') end
local out = {}
for _, slot in ipairs(slots) do
  local streams = redis.call('ZRANGE', p .. 'slot:' .. slot .. ':streams', 0, last)
  for _, call in ipairs(streams) do
    local head = redis.call('LINDEX', p .. 'events:' .. call, 0)
    if head then
      local event = redis.call('GET', p .. 'event:' .. head)
      if event then
        out[#out + 1] = call
        out[#out + 1] = head
        out[#out + 1] = event
      end
    end
  end
end
return out
"""

# ARGV[1]: prefix, ARGV[2..]: slots (none: every slot). Returns the pending event counts.
_OUTBOX_COUNT = """
local p = ARGV[1]
local slots = {}
for i = 2, #ARGV do slots[#slots + 1] = ARGV[i] end
if #slots == 0 then slots = redis.call('SMEMBERS', p .. 'slots') end
local total = 0
for _, slot in ipairs(slots) do
  total = total + (tonumber(redis.call('GET', p .. 'slot:' .. slot .. ':pending')) or 0)
end
return total
"""

# ARGV[1]: prefix, ARGV[2..]: slots (none: every slot). Returns the records' JSON.
_CALLS = """
local p = ARGV[1]
local slots = {}
for i = 2, #ARGV do slots[#slots + 1] = ARGV[i] end
if #slots == 0 then slots = redis.call('SMEMBERS', p .. 'slots') end
local out = {}
for _, slot in ipairs(slots) do
  for _, uuid in ipairs(redis.call('SMEMBERS', p .. 'slot:' .. slot .. ':calls')) do
    local record = redis.call('GET', p .. 'call:' .. uuid)
    if record then out[#out + 1] = record end
  end
end
return out
"""

# ARGV[1]: prefix, ARGV[2]: call uuid, ARGV[3]: the slot this bridge knows ('' if none).
_DELETE_CALL = """
local p = ARGV[1]
local record = redis.call('GET', p .. 'call:' .. ARGV[2])
if record then
  redis.call('SREM', p .. 'slot:' .. (cjson.decode(record).slot or 0) .. ':calls', ARGV[2])
end
if ARGV[3] ~= '' then redis.call('SREM', p .. 'slot:' .. ARGV[3] .. ':calls', ARGV[2]) end
redis.call('DEL', p .. 'call:' .. ARGV[2])
return 1
"""

# ARGV[1]: prefix, ARGV[2]: slot. 1 when the slot has live calls or pending events.
_HAS_DATA = """
local p = ARGV[1]
if redis.call('SCARD', p .. 'slot:' .. ARGV[2] .. ':calls') > 0 then return 1 end
if redis.call('ZCARD', p .. 'slot:' .. ARGV[2] .. ':streams') > 0 then return 1 end
return 0
"""


def _record_json(record: CallRecord) -> str:
    return json.dumps(dataclasses.asdict(record), separators=(",", ":"))


def _record(raw: str) -> CallRecord:
    data = json.loads(raw)
    # Fields a newer bridge wrote are skipped, not fatal (rolling upgrades).
    return CallRecord(**{k: v for k, v in data.items() if k in _CALL_FIELDS})


def _event_json(event: NewOutboxEvent, attempts: int = 0) -> str:
    data = {f.name: getattr(event, f.name) for f in dataclasses.fields(NewOutboxEvent)}
    data["attempts"] = attempts
    return json.dumps(data, separators=(",", ":"), default=str)


def _event(event_id: str | int, raw: str) -> OutboxEvent:
    data = json.loads(raw)
    return OutboxEvent(
        id=int(event_id), call_uuid=data["call_uuid"], application_id=data["application_id"],
        url=data["url"], method="GET" if data["method"] == "GET" else "POST",
        payload=data["payload"], fallback_url=data["fallback_url"], signed=bool(data["signed"]),
        created_at=float(data["created_at"]), attempts=int(data["attempts"]),
        next_attempt_at=float(data["next_attempt_at"]),
    )


@dataclasses.dataclass
class _Deferred:
    """A call write made while Redis was away, replayed in order when it is back."""

    what: str
    uuid: str
    apply: Callable[[], None]


class RedisCallStore:
    """Live calls and the event outbox in Redis (see the module's documentation)."""

    backend = "redis"

    def __init__(self, url: str, prefix: str = "ari-bridge:",
                 owned_slots: set[int] | None = None, max_deferred: int = 100_000,
                 retry_interval_s: float = 0.5) -> None:
        self.url = url
        self.prefix = prefix
        self.owned_slots = owned_slots
        self.max_deferred = max_deferred
        self.retry_interval_s = retry_interval_s
        # One immediate retry (a pooled connection that died with a restarted server), no
        # backoff: the caller is the event loop and must not sleep.
        self._redis: Any = redis.Redis.from_url(
            url, decode_responses=True, socket_timeout=1.0, socket_connect_timeout=1.0,
            health_check_interval=0, retry=Retry(NoBackoff(), 1))
        self._outbox_add = self._redis.register_script(_OUTBOX_ADD)
        self._outbox_delete = self._redis.register_script(_OUTBOX_DELETE)
        self._outbox_head = self._redis.register_script(_OUTBOX_HEAD)
        self._outbox_heads = self._redis.register_script(_OUTBOX_HEADS)
        self._outbox_count = self._redis.register_script(_OUTBOX_COUNT)
        self._calls = self._redis.register_script(_CALLS)
        self._delete_call = self._redis.register_script(_DELETE_CALL)
        self._has_data = self._redis.register_script(_HAS_DATA)
        # The records this process saved or read: a progress update rewrites the whole JSON
        # (which also puts back a key Redis lost).
        self._records: dict[str, CallRecord] = {}
        self._deferred: deque[_Deferred] = deque()
        self._failed_at: float | None = None  # monotonic time of the last failed replay

    def _key(self, *parts: object) -> str:
        return self.prefix + ":".join(str(p) for p in parts)

    def close(self) -> None:
        self._redis.close()

    def check_writable(self) -> None:
        """Make one small write (``GET /readyz``); raises when Redis is away or refuses it
        (read-only replica, out of memory)."""
        try:
            self._redis.set(self._key("health"), str(time.time()), px=10_000)
        except _AWAY as exc:
            raise StoreUnavailable(f"redis is away: {exc}") from exc

    # ------------------------------------------------------------------ live calls
    def save(self, record: CallRecord) -> None:
        old = self._records.get(record.uuid)
        self._records[record.uuid] = dataclasses.replace(record)
        raw = _record_json(record)
        old_slot = old.slot if old is not None and old.slot != record.slot else None

        def apply() -> None:
            pipe = self._redis.pipeline(transaction=True)
            if old_slot is not None:
                pipe.srem(self._key("slot", old_slot, "calls"), record.uuid)
            pipe.set(self._key("call", record.uuid), raw)
            pipe.sadd(self._key("slot", record.slot, "calls"), record.uuid)
            pipe.sadd(self._key("slots"), record.slot)
            pipe.execute()

        self._write("save", record.uuid, apply)

    def update_progress(
        self, uuid: str, ncco: list[dict[str, Any]], position: int, replacements: int
    ) -> None:
        self._change(uuid, "update_progress",
                     {"ncco": ncco, "position": position, "replacements": replacements})

    def mark_answered(self, uuid: str, answered_at: str) -> None:
        self._change(uuid, "mark_answered", {"answered_at": answered_at})

    def delete(self, uuid: str) -> None:
        known = self._records.pop(uuid, None)
        slot = "" if known is None else str(known.slot)

        def apply() -> None:
            self._delete_call(args=[self.prefix, uuid, slot])

        self._write("delete", uuid, apply)

    def all(self, slot: int | None = None) -> list[CallRecord]:
        """The live calls (of every slot, or of ``slot``); raises :class:`StoreUnavailable`
        when Redis is away."""
        self._flush_before_read()
        slots = [] if slot is None else [slot]
        raws = self._read(lambda: self._calls(args=[self.prefix, *slots]))
        records = [_record(raw) for raw in raws]
        for record in records:
            # Calls this bridge adopts: their later updates rewrite the whole record too.
            self._records.setdefault(record.uuid, dataclasses.replace(record))
        return records

    def has_data(self, slot: int) -> bool:
        """True when ``slot`` has live calls or pending events (a slot worth adopting)."""
        self._flush_before_read()
        return bool(self._read(lambda: self._has_data(args=[self.prefix, slot])))

    def _change(self, uuid: str, what: str, fields: dict[str, Any]) -> None:
        known = self._records.get(uuid)
        if known is not None:
            changed = dataclasses.replace(known, **fields)
            self._records[uuid] = changed
            raw = _record_json(changed)

            def apply() -> None:
                pipe = self._redis.pipeline(transaction=True)
                pipe.set(self._key("call", uuid), raw)
                pipe.sadd(self._key("slot", changed.slot, "calls"), uuid)
                pipe.sadd(self._key("slots"), changed.slot)
                pipe.execute()
        else:
            # Not saved or read by this process: change what Redis has (nothing if the call
            # is gone, as an SQL UPDATE of a missing row).
            def apply() -> None:
                key = self._key("call", uuid)
                current = self._redis.get(key)
                if current is None:
                    return
                changed = dataclasses.replace(_record(current), **fields)
                self._records[uuid] = changed
                self._redis.set(key, _record_json(changed), xx=True)

        self._write(what, uuid, apply)

    # ------------------------------------------------------------- deferred writes
    def _write(self, what: str, uuid: str, apply: Callable[[], None]) -> None:
        if self._deferred:
            # Earlier writes wait for Redis: this one goes after them, in order. Redis is not
            # asked again on every write while it is away (a timeout blocks the loop).
            recently_failed = (self._failed_at is not None and
                               time.monotonic() - self._failed_at < self.retry_interval_s)
            if recently_failed or self.flush_deferred():
                self._defer(_Deferred(what, uuid, apply))
                return
        try:
            apply()
        except _AWAY as exc:
            self._failed_at = time.monotonic()
            log.warning("store.write_deferred", backend="redis", op=what, call_uuid=uuid,
                        error=str(exc))
            self._defer(_Deferred(what, uuid, apply))

    def _defer(self, op: _Deferred) -> None:
        if len(self._deferred) >= self.max_deferred:
            dropped = self._deferred.popleft()
            log.error("store.write_dropped", backend="redis", op=dropped.what,
                      call_uuid=dropped.uuid, max_deferred=self.max_deferred)
        self._deferred.append(op)

    def deferred_count(self) -> int:
        """Writes waiting for Redis to come back."""
        return len(self._deferred)

    def flush_deferred(self) -> int:
        """Replay the writes made while Redis was away, in order; returns how many still
        wait (0: all written). Never raises."""
        replayed = 0
        while self._deferred:
            op = self._deferred[0]
            try:
                op.apply()
            except _AWAY:
                self._failed_at = time.monotonic()
                break
            except Exception:
                # A bad write must not block the ones behind it for ever.
                log.exception("store.write_failed", backend="redis", op=op.what,
                              call_uuid=op.uuid)
            self._deferred.popleft()
            replayed += 1
        if not self._deferred and replayed:
            self._failed_at = None
            log.info("store.write_resumed", backend="redis", replayed=replayed)
        return len(self._deferred)

    def _flush_before_read(self) -> None:
        # A read must see this process's own writes: replay them first if Redis is back.
        if self._deferred:
            self.flush_deferred()

    def _read(self, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except _AWAY as exc:
            raise StoreUnavailable(f"redis is away: {exc}") from exc

    # ------------------------------------------------------------ the event outbox
    def outbox_add(self, event: NewOutboxEvent, end_call: str | None = None) -> int:
        """Write an event; returns its id. With ``end_call``, that live call is deleted in
        the same script. Raises :class:`StoreUnavailable` when Redis is away (the event is
        not written and the call stays live)."""
        self._flush_before_read()
        if self._deferred:
            raise StoreUnavailable("redis is away: earlier writes are still waiting")
        slot = self._slot_of_stream(event.call_uuid)
        event_id = int(self._read(lambda: self._outbox_add(
            args=[self.prefix, _event_json(event), event.call_uuid, slot, end_call or ""])))
        if end_call is not None:
            self._records.pop(end_call, None)
        return event_id

    def _slot_of_stream(self, stream: str) -> int:
        """The slot whose bridge delivers a stream's events: its call's. A stream may be a
        call's side stream (``<uuid>/passthru``, Exotel's passthru requests); one whose call
        this bridge does not know goes to the lowest slot it serves (0 outside a cluster)."""
        known = self._records.get(stream) or self._records.get(stream.split("/", 1)[0])
        if known is not None:
            return known.slot
        return min(self.owned_slots) if self.owned_slots else 0

    def outbox_head(self, call_uuid: str) -> OutboxEvent | None:
        found = self._read(lambda: self._outbox_head(args=[self.prefix, call_uuid]))
        if not found or found[1] is None:
            return None
        return _event(found[0], found[1])

    def outbox_events(self) -> list[OutboxEvent]:
        """Every pending event of every slot, oldest first (for tests and inspection)."""
        heads = self._read(lambda: self._outbox_heads(args=[self.prefix, 0]))
        calls = heads[0::3]
        pipe = self._redis.pipeline(transaction=False)
        for call in calls:
            pipe.lrange(self._key("events", call), 0, -1)
        id_lists = self._read(pipe.execute)
        ids = sorted(int(i) for group in id_lists for i in group)
        if not ids:
            return []
        raws = self._read(lambda: self._redis.mget([self._key("event", i) for i in ids]))
        return [_event(i, raw) for i, raw in zip(ids, raws, strict=True) if raw is not None]

    def outbox_delete(self, event_id: int) -> None:
        self._read(lambda: self._outbox_delete(args=[self.prefix, event_id]))

    def outbox_retry_later(self, event_id: int, attempts: int, next_attempt_at: float) -> None:
        key = self._key("event", event_id)
        raw = self._read(lambda: self._redis.get(key))
        if raw is None:
            return
        data = json.loads(raw)
        data["attempts"], data["next_attempt_at"] = attempts, next_attempt_at
        # XX: an event deleted meanwhile is not brought back.
        self._read(lambda: self._redis.set(key, json.dumps(data, separators=(",", ":")),
                                           xx=True))

    def _owned(self) -> list[int] | None:
        """The slots the outbox covers: [] for none owned, None for every slot."""
        return None if self.owned_slots is None else sorted(self.owned_slots)

    def outbox_streams(self) -> list[tuple[str, float]]:
        slots = self._owned()
        if slots == []:
            return []
        heads = self._read(lambda: self._outbox_heads(args=[self.prefix, 0, *(slots or [])]))
        streams = [(int(heads[i + 1]), heads[i], _event(heads[i + 1], heads[i + 2]))
                   for i in range(0, len(heads), 3)]
        streams.sort(key=lambda s: s[0])
        return [(call, event.next_attempt_at) for _, call, event in streams]

    def outbox_count(self) -> int:
        slots = self._owned()
        if slots == []:
            return 0
        return int(self._read(lambda: self._outbox_count(args=[self.prefix, *(slots or [])])))

    def outbox_oldest_created_at(self) -> float | None:
        slots = self._owned()
        if slots == []:
            return None
        # Ids grow with time: the oldest event is the smallest head id of any slot.
        heads = self._read(lambda: self._outbox_heads(args=[self.prefix, 1, *(slots or [])]))
        if not heads:
            return None
        oldest = min(range(0, len(heads), 3), key=lambda i: int(heads[i + 1]))
        return _event(heads[oldest + 1], heads[oldest + 2]).created_at
