"""Helpers shared by the integration tests and their fixtures: the scripted webhook
application's state, reply scripts, and numbers."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

_numbers = iter(range(15550100000, 15559999999))


def new_number() -> str:
    """A number no other test dials."""
    return str(next(_numbers))


POST_NUMBER = "15550009991"
UNREACHABLE_NUMBER = "15550009992"
LEGACY_NUMBER = "15550009993"  # an application that wants the 2017 input payload
MAIN_NUMBER = "15550009994"  # the main application's own number (its randomFromNumber pool)


@dataclass
class Reply:
    """What a scripted URL answers."""

    json: Any = None
    status: int = 200
    body: bytes | None = None
    content_type: str = "application/json"
    delay_s: float = 0.0


@dataclass
class Recorded:
    path: str
    method: str
    query: dict[str, str]
    json: Any
    headers: dict[str, str]
    at: float


@dataclass
class WebhookApp:
    url: str = ""
    requests: list[Recorded] = field(default_factory=list)
    answers: dict[str, list[Reply]] = field(default_factory=dict)
    fallbacks: dict[str, list[Reply]] = field(default_factory=dict)
    hooks: dict[str, list[Reply]] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)

    def answer(self, number: str, *replies: Reply | list[Any]) -> None:
        """Script answer_url for calls to ``number`` (one reply per request, the last repeats)."""
        self.answers[number] = [r if isinstance(r, Reply) else Reply(json=r) for r in replies]

    def fallback(self, number: str, *replies: Reply | list[Any]) -> None:
        self.fallbacks[number] = [r if isinstance(r, Reply) else Reply(json=r) for r in replies]

    def hook(self, name: str, *replies: Reply | list[Any] | dict[str, Any]) -> str:
        """A URL for an NCCO eventUrl; returns it."""
        self.hooks[name] = [r if isinstance(r, Reply) else Reply(json=r) for r in replies]
        return f"{self.url}/hook/{name}"

    def of(self, path: str) -> list[Recorded]:
        return [r for r in self.requests if r.path == path]

    def events(self, number: str) -> list[dict[str, Any]]:
        """Everything event_url received for calls to ``number``, in arrival order (error
        events carry no ``to``; they are matched by the call's uuid)."""
        received = [r.json for r in self.of("/event") if isinstance(r.json, dict)]
        uuids = {e.get("uuid") for e in received if e.get("to") == number}
        return [e for e in received if e.get("to") == number or e.get("uuid") in uuids]

    def statuses(self, number: str) -> list[str]:
        """The call's status events; error events (``status: "error"``) are in errors()."""
        return [e["status"] for e in self.events(number)
                if "status" in e and e["status"] != "error"]

    def errors(self, number: str) -> list[str]:
        """The ``reason`` of every error event of the call."""
        return [e["reason"] for e in self.events(number) if e.get("status") == "error"]

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError("condition not met in time; requests seen:\n" + "\n".join(
                    f"  {r.method} {r.path} {r.query or ''} {json.dumps(r.json)[:300]}"
                    for r in self.requests[-30:]))
            await asyncio.sleep(0.05)

    async def wait_completed(self, number: str, timeout: float = 30.0) -> None:
        await self.wait_for(lambda: "completed" in self.statuses(number), timeout)


def _pick(replies: list[Reply], count: int) -> Reply:
    return replies[min(count, len(replies) - 1)]


async def _respond(reply: Reply) -> web.Response:
    if reply.delay_s:
        await asyncio.sleep(reply.delay_s)
    body = reply.body if reply.body is not None else (
        b"" if reply.json is None else json.dumps(reply.json).encode())
    return web.Response(status=reply.status, body=body, content_type=reply.content_type)


