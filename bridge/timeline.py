"""What every call did, kept in memory for the operator console (``bridge/console``).

One recorder per process (:data:`RECORDER`). The call path reports to it through hooks of the
form ``if RECORDER.on: RECORDER.something(...)``: while the console is off that attribute check
is all a hook costs, and nothing is kept. This module sits at the bottom of the layering (of
the bridge it imports only bridge.masking), so the ARI gateway, the webhook client, the dialer
and the agent leases can all report to it.

Everything is bounded: entries per call (the oldest go first, and the call says how many were
dropped), live calls followed at once, ended calls kept (by count and by age), webhook URLs.
Secrets never leave it: request data, headers and response bodies are masked
(``Authorization``, JWTs, and any ``token``/``secret``/``password`` key) and cut at 4 KB the
first time a timeline is read; until then an entry holds the request's data and at most 16 KB
of the body, since masking every exchange of every call would cost the call path for views
that are mostly never opened.

The console's live view reads summaries of the calls that changed (:meth:`Timeline.take_dirty`)
and fans one serialised message out to every subscriber (:meth:`Timeline.publish`). Each
subscriber has a bounded queue: a browser that does not keep up loses its queue and is told to
resync, so it can neither hold the publisher up nor make memory grow.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import wraps
from typing import Any, ParamSpec

import structlog

from bridge.masking import (
    MASK,
    MAX_BODY_CHARS,
    body_text,
    cut,
    cut_json,
    health_key,
    is_secret_key,
    mask,
    mask_text,
    mask_url,
)

log = structlog.get_logger(__name__)
P = ParamSpec("P")

#: Signalled to a subscriber whose queue overflowed: fetch the whole state again.
RESYNC = "resync"
#: ARI event fields worth keeping in a timeline (the rest of an event is not).
_ARI_FIELDS = ("dialstatus", "cause", "cause_txt", "digit", "duration_ms", "args")

#: The call the running task belongs to: set by the session's task, inherited by its children.
current_call: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "timeline_current_call", default=None)


def _hook(method: Callable[P, None]) -> Callable[P, None]:
    """A hook called from the call path: a bug in the recorder is logged, never raised into
    the call that reported."""
    @wraps(method)
    def guarded(*args: P.args, **kwargs: P.kwargs) -> None:
        try:
            method(*args, **kwargs)
        except Exception:
            log.exception("timeline.hook_failed", hook=method.__name__)
    return guarded


@dataclass
class CallView:
    """One call as the console shows it."""

    uuid: str
    started: float = field(default_factory=time.time)
    channel_id: str | None = None
    from_: str | None = None
    to: str | None = None
    application: str | None = None
    direction: str | None = None
    state: str = "ringing"
    action: str | None = None
    position: int | None = None
    ended: float | None = None
    final_status: str | None = None
    hangup_cause: str | None = None
    end_reason: str | None = None  # why the call went to ending: ncco_done, hangup, no_ncco...
    legs: dict[str, dict[str, Any]] = field(default_factory=dict)
    entries: deque[dict[str, Any]] = field(default_factory=deque)
    dropped: int = 0
    seq: int = 0  # grows with every entry: the page refreshes an open timeline when it moves

    def summary(self, now: float | None = None) -> dict[str, Any]:
        end = self.ended if self.ended is not None else (now or time.time())
        return {
            "uuid": self.uuid, "from": self.from_, "to": self.to,
            "application": self.application, "direction": self.direction,
            "state": self.state, "action": self.action, "position": self.position,
            "started": self.started, "ended": self.ended,
            "duration_s": round(max(0.0, end - self.started), 1),
            "final_status": self.final_status, "hangup_cause": self.hangup_cause,
            "end_reason": self.end_reason,
            "legs": list(self.legs.values()), "seq": self.seq,
        }

    def detail(self) -> dict[str, Any]:
        out = self.summary()
        out["channel_id"] = self.channel_id
        out["entries_dropped"] = self.dropped
        out["timeline"] = [_render(entry) for entry in self.entries]
        return out


class Subscription:
    """One live view's bounded queue of serialised messages."""

    def __init__(self, maxsize: int) -> None:
        self.queue: asyncio.Queue[str] = asyncio.Queue(maxsize)
        self.resyncs = 0

    def offer(self, message: str) -> None:
        try:
            self.queue.put_nowait(message)
        except asyncio.QueueFull:
            # Too slow to follow: what it has not read is worthless now. Empty the queue and
            # tell it to fetch the whole state again, so memory stays bounded.
            while not self.queue.empty():
                self.queue.get_nowait()
            self.queue.put_nowait(RESYNC)
            self.resyncs += 1

    async def next(self, timeout: float) -> str | None:
        """The next message, or None after ``timeout`` seconds without one."""
        try:
            return await asyncio.wait_for(self.queue.get(), timeout)
        except TimeoutError:
            return None


class Timeline:
    """The recorder; see the module's docstring. Off (and empty) until :meth:`enable`."""

    def __init__(self) -> None:
        self.on = False
        self.configure()

    def configure(self, *, max_entries_per_call: int = 500, max_live_calls: int = 5000,
                  keep_ended: int = 200, keep_ended_s: float = 1800.0,
                  max_webhooks: int = 500, queue_size: int = 256) -> None:
        self.max_entries_per_call = max_entries_per_call
        self.max_live_calls = max_live_calls
        self.keep_ended = keep_ended
        self.keep_ended_s = keep_ended_s
        self.max_webhooks = max_webhooks
        self.queue_size = queue_size
        self.clear()

    def clear(self) -> None:
        self.live: dict[str, CallView] = {}
        self.ended: OrderedDict[str, CallView] = OrderedDict()
        self.aliases: dict[str, str] = {}  # channel id or leg uuid -> call uuid
        self.pending: OrderedDict[str, dict[str, Any]] = OrderedDict()  # StasisStart by channel
        self.webhooks: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self.agents: dict[str, dict[str, Any]] = {}
        self.sticky_of: dict[str, str] = {}  # caller -> agent, as applets set it
        self.untracked_calls = 0
        self.subscribers: set[Subscription] = set()
        self._dirty_calls: set[str] = set()
        self._removed: list[str] = []
        self._dirty_webhooks: set[str] = set()
        self._dirty_agents = False

    def enable(self) -> None:
        self.on = True

    def disable(self) -> None:
        self.on = False
        self.clear()

    # ------------------------------------------------------------------- hooks: calls
    @_hook
    def call_started(self, uuid: str, channel_id: str, from_: str, to: str,
                     application: str, direction: str) -> None:
        """A session's task begins (new or resumed call); the task's children inherit it."""
        current_call.set(uuid)
        call = self.live.get(uuid)
        if call is None:
            if len(self.live) >= self.max_live_calls:
                self.untracked_calls += 1
                return
            call = self.live[uuid] = CallView(uuid)
        call.channel_id, call.from_, call.to = channel_id, from_, to
        call.application, call.direction = application, direction
        self.aliases[channel_id] = uuid
        first = self.pending.pop(channel_id, None)
        if first is not None:  # the call began when Asterisk handed it over
            call.started = min(call.started, first["t"])
            self._add(call, first)
        self._changed(call)

    @_hook
    def call_state(self, uuid: str, state: str, why: str, final_status: str | None = None,
                   hangup_cause: str | None = None) -> None:
        call = self.live.get(uuid)
        if call is None:
            return
        previous, call.state = call.state, state
        if state == "ending":
            call.end_reason = why
        self._add(call, {"kind": "state", "from": previous, "to": state, "why": why})
        if state == "ended":
            call.ended = time.time()
            call.final_status, call.hangup_cause = final_status, hangup_cause
            call.action = None
            del self.live[uuid]
            self.ended[uuid] = call
            self._prune_ended()
        self._changed(call)

    @_hook
    def action_started(self, uuid: str, name: str, position: int, action: Any) -> None:
        call = self.live.get(uuid)
        if call is None:
            return
        call.action, call.position = name, position
        self._add(call, {"kind": "action", "phase": "start", "action": name,
                         "position": position, "_action": action})  # dumped by _render
        self._changed(call)

    @_hook
    def action_ended(self, uuid: str, name: str, position: int, gone: bool,
                     replaced: bool) -> None:
        """``replaced``: a reply or a transfer brought a new NCCO; ``gone``: the call hung up."""
        call = self.live.get(uuid)
        if call is None:
            return
        outcome = ("replaced by a new NCCO" if replaced
                   else "ended by hangup" if gone else "finished")
        self._add(call, {"kind": "action", "phase": "end", "action": name,
                         "position": position, "outcome": outcome})
        self._changed(call)

    @_hook
    def note(self, uuid: str, level: str, text: str) -> None:
        """Something the call reported (an error sent to event_url, a fallback used)."""
        call = self._find(uuid)
        if call is not None:
            self._add(call, {"kind": "note", "level": level, "text": cut(mask_text(text))})
            self._changed(call)

    # -------------------------------------------------------------------- hooks: legs
    @_hook
    def leg_started(self, leg_uuid: str, channel_id: str, to: str) -> None:
        """A leg is being dialled by the current call's task."""
        call = self._find(current_call.get() or leg_uuid)
        if call is None:
            return
        self.aliases[channel_id] = call.uuid
        if leg_uuid != call.uuid:
            self.aliases[leg_uuid] = call.uuid
        call.legs[channel_id] = {"uuid": leg_uuid, "to": to, "status": "dialling",
                                 "channel_id": channel_id}
        self._add(call, {"kind": "leg", "leg": leg_uuid, "to": to, "status": "dialling"})
        self._changed(call)

    @_hook
    def leg_status(self, channel_id: str, status: str) -> None:
        call = self._find(self.aliases.get(channel_id))
        if call is None or channel_id not in call.legs:
            return
        leg = call.legs[channel_id]
        leg["status"] = status
        self._add(call, {"kind": "leg", "leg": leg["uuid"], "to": leg["to"], "status": status})
        self._changed(call)

    # --------------------------------------------------------------------- hooks: ARI
    @_hook
    def ari_event(self, event: Mapping[str, Any]) -> None:
        channel = event.get("channel") or event.get("peer")
        channel_id = channel.get("id") if isinstance(channel, dict) else None
        if channel_id is None:  # a playback or recording names its channel as its target
            target = (event.get("playback") or event.get("recording") or {})
            uri = str(target.get("target_uri", "")) if isinstance(target, dict) else ""
            channel_id = uri.partition(":")[2] if uri.startswith("channel:") else None
        if channel_id is None:
            return  # bridge events reach calls through their channels' own events
        entry: dict[str, Any] = {"kind": "ari", "type": event.get("type"),
                                 "channel": channel_id}
        if isinstance(channel, dict) and channel.get("state"):
            entry["state"] = channel["state"]
        for name in _ARI_FIELDS:
            if name in event:
                entry[name] = event[name]
        for name in ("playback", "recording", "bridge"):
            obj = event.get(name)
            if isinstance(obj, dict):
                entry[name] = obj.get("id") or obj.get("name")
        call = self._find(self.aliases.get(channel_id))
        if call is not None:
            self._add(call, entry)
            self._changed(call)
        elif entry["type"] == "StasisStart":
            # An inbound call's first event arrives before its session exists.
            entry["t"] = time.time()
            self.pending[channel_id] = entry
            while len(self.pending) > 1000:
                self.pending.popitem(last=False)

    # ---------------------------------------------------------------- hooks: webhooks
    @_hook
    def webhook(self, request: Any, response: Any, kind: str, signed: bool) -> None:
        """One webhook exchange, after its retry if one happened (``WebhookRequest`` and
        ``WebhookResponse`` of bridge.webhooks, read by attribute)."""
        url = str(request.url)
        key = health_key(url)
        health = self.webhooks.pop(key, None) or {
            "url": key, "kind": kind, "requests": 0, "failures": 0, "total_ms": 0.0}
        self.webhooks[key] = health  # most recent last, for the bound below
        health["requests"] += 1
        health["total_ms"] += float(response.elapsed_ms)
        ok = response.error is None and response.status is not None \
            and 200 <= response.status < 300
        if not ok:
            health["failures"] += 1
            health["last_error"] = response.error
            health["last_failure_at"] = time.time()
        health.update(kind=kind, last_status=response.status, last_at=time.time(),
                      last_latency_ms=round(float(response.elapsed_ms), 1),
                      avg_latency_ms=round(health["total_ms"] / health["requests"], 1))
        self._dirty_webhooks.add(key)
        while len(self.webhooks) > self.max_webhooks:
            self.webhooks.popitem(last=False)
        data = request.data if isinstance(request.data, Mapping) else {}
        call = self._find(current_call.get() or _str(data.get("uuid"))
                          or _str(data.get("CallSid")))
        if call is None:
            return
        body = response.body
        self._add(call, {
            "kind": "webhook", "webhook": kind, "method": request.method,
            # Masked and cut when first read (_render): most timelines are never opened.
            "_raw": (url, dict(data), dict(request.headers or {}), signed,
                     body[:MAX_BODY_CHARS * 4] if body else b""),
            "response": {"status": response.status, "error": response.error,
                         "content_type": response.content_type,
                         "attempts": response.attempts,
                         "elapsed_ms": round(float(response.elapsed_ms), 1)},
        })
        self._changed(call)

    # ------------------------------------------------------------------ hooks: agents
    @_hook
    def agent(self, agent: str, owner: str, busy: bool) -> None:
        """An agent's lease was taken (``busy``) or released by ``owner`` (``call:<uuid>``,
        ``applet:<uuid>``, ``leg:<uuid>``)."""
        row = self.agents.setdefault(agent, {"agent": agent, "owners": {}})
        if busy:
            ref = owner.partition(":")[2]
            row["owners"][owner] = self.aliases.get(ref, ref)
            row["since"] = row.get("since") if len(row["owners"]) > 1 else time.time()
        else:
            row["owners"].pop(owner, None)
            row["free_since"] = time.time()
        self._dirty_agents = True
        if len(self.agents) > 10_000:  # a flood of one-off callers: forget the free ones
            for key in [k for k, r in self.agents.items() if not r["owners"]][:5000]:
                del self.agents[key]

    @_hook
    def sticky(self, caller: str, agent: str) -> None:
        self.sticky_of[caller] = agent
        if len(self.sticky_of) > 10_000:
            self.sticky_of.pop(next(iter(self.sticky_of)))
        self._dirty_agents = True

    # ----------------------------------------------------------------------- reading
    def call(self, uuid: str) -> CallView | None:
        self._prune_ended()
        return self._find(uuid)

    def live_calls(self) -> list[dict[str, Any]]:
        now = time.time()
        return [c.summary(now) for c in self.live.values()]

    def ended_calls(self) -> list[dict[str, Any]]:
        self._prune_ended()
        return [c.summary() for c in reversed(self.ended.values())]

    def webhook_health(self) -> list[dict[str, Any]]:
        return [{k: v for k, v in h.items() if k != "total_ms"}
                for h in reversed(self.webhooks.values())]

    def agent_rows(self) -> dict[str, dict[str, Any]]:
        """Agents seen in leases: busy (with the calls holding them) or free."""
        sticky_for: dict[str, list[str]] = {}
        for caller, agent in self.sticky_of.items():
            sticky_for.setdefault(agent, []).append(caller)
        out = {}
        for key, row in self.agents.items():
            out[key] = {"agent": key, "busy": bool(row["owners"]),
                        "calls": sorted(set(row["owners"].values())),
                        "since": row.get("since") if row["owners"] else row.get("free_since"),
                        "sticky_callers": sticky_for.get(key, [])[-5:]}
        for key, callers in sticky_for.items():
            out.setdefault(key, {"agent": key, "busy": False, "calls": [], "since": None,
                                 "sticky_callers": callers[-5:]})
        return out

    # ----------------------------------------------------------------- live fan-out
    def subscribe(self) -> Subscription:
        sub = Subscription(self.queue_size)
        self.subscribers.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self.subscribers.discard(sub)

    def publish(self, message: str) -> None:
        for sub in list(self.subscribers):
            sub.offer(message)

    def take_dirty(self) -> dict[str, Any]:
        """What changed since the last call: summaries of changed calls, uuids forgotten, and
        whether webhooks or agents changed. Cheap when nothing did."""
        self._prune_ended()
        now = time.time()
        calls = []
        for uuid in self._dirty_calls:
            call = self.live.get(uuid) or self.ended.get(uuid)
            if call is not None:
                calls.append(call.summary(now))
        webhooks = [{k: v for k, v in self.webhooks[key].items() if k != "total_ms"}
                    for key in self._dirty_webhooks if key in self.webhooks]
        out = {"calls": calls, "removed": self._removed, "webhooks": webhooks,
               "agents_changed": self._dirty_agents}
        self._dirty_calls, self._removed, self._dirty_webhooks = set(), [], set()
        self._dirty_agents = False
        return out

    # -------------------------------------------------------------------- internals
    def _find(self, uuid: str | None) -> CallView | None:
        if not uuid:
            return None
        uuid = self.aliases.get(uuid, uuid)
        return self.live.get(uuid) or self.ended.get(uuid)

    def _add(self, call: CallView, entry: dict[str, Any]) -> None:
        entry.setdefault("t", time.time())
        call.seq += 1
        entry["seq"] = call.seq
        if len(call.entries) >= self.max_entries_per_call:
            call.entries.popleft()
            call.dropped += 1
        call.entries.append(entry)

    def _changed(self, call: CallView) -> None:
        if self.subscribers:
            self._dirty_calls.add(call.uuid)

    def _prune_ended(self) -> None:
        horizon = time.time() - self.keep_ended_s
        while self._oldest_expired(horizon):
            _, call = self.ended.popitem(last=False)
            self._forget(call)

    def _oldest_expired(self, horizon: float) -> bool:
        if not self.ended:
            return False
        if len(self.ended) > self.keep_ended:
            return True
        oldest = next(iter(self.ended.values()))
        return (oldest.ended or 0.0) < horizon

    def _forget(self, call: CallView) -> None:
        for key in [call.channel_id, *call.legs, *(leg["uuid"] for leg in call.legs.values())]:
            if key is not None and self.aliases.get(key) == call.uuid:
                del self.aliases[key]
        self._dirty_calls.discard(call.uuid)
        if self.subscribers:
            self._removed.append(call.uuid)


def _render(entry: dict[str, Any]) -> dict[str, Any]:
    """An entry as it is shown: a webhook's request and response masked and cut, an action's
    NCCO dumped and masked. Done once, in place, the first time the entry is read."""
    raw = entry.pop("_raw", None)
    if raw is not None:
        url, data, headers, signed, body = raw
        shown = {str(k): MASK if is_secret_key(str(k)) else mask_text(str(v))
                 for k, v in headers.items()}
        if signed:
            shown["Authorization"] = f"Bearer {MASK}"
        entry["url"] = mask_url(url)
        entry["request"] = {"headers": shown, "data": cut_json(mask(data))}
        entry["response"]["body"] = body_text(body)
    if "_action" in entry:
        action = entry.pop("_action")
        dump = getattr(action, "model_dump", None)
        entry["ncco"] = cut_json(mask(dump(by_alias=True, exclude_none=True))
                                  if callable(dump) else None)
    return entry


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


#: The process's recorder: the console enables it, hooks check ``RECORDER.on``.
RECORDER = Timeline()
