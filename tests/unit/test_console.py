"""The console's routes and their authentication, served by a real aiohttp server (the call
engine is absent here; the integration tests run the console against real calls)."""

from __future__ import annotations

import asyncio
import base64
import contextvars
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from bridge.api.routes import api_errors
from bridge.config import ConfigError, load_config
from bridge.console import register_console
from bridge.timeline import RECORDER

TOKEN = "console-token-0123456789"


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


async def serve(console: dict[str, Any]) -> TestServer:
    # With the REST API's error middleware in front, as in the bridge: /v1/console answers
    # in its JSON format and must keep the basic-auth challenge.
    app = web.Application(middlewares=[api_errors])
    register_console(app, load_config(None, environ={}, overrides={"console": console}),
                     lambda: None, lambda: None)
    server = TestServer(app)
    await server.start_server()
    return server


@pytest.fixture
async def console() -> AsyncIterator[TestServer]:
    server = await serve({"enabled": True, "token": TOKEN, "users": {"ops": "pw-ops-1"}})
    yield server
    await server.close()


@pytest.mark.parametrize("path", ["/console", "/v1/console/state", "/v1/console/calls",
                                  "/v1/console/events", "/v1/console/calls/x"])
async def test_without_credentials_every_console_route_answers_401(console, path):
    async with aiohttp.ClientSession() as http:
        for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789"},
                        {"Authorization": basic("ops", "wrong")},
                        {"Authorization": basic("nobody", "pw-ops-1")}):
            async with http.get(console.make_url(path), headers=headers) as resp:
                assert resp.status == 401
                assert resp.headers["WWW-Authenticate"].startswith("Basic realm=")


async def test_a_token_or_a_user_opens_the_console(console):
    async with aiohttp.ClientSession() as http:
        for kwargs in ({"headers": {"Authorization": f"Bearer {TOKEN}"}},
                       {"params": {"token": TOKEN}},
                       {"headers": {"Authorization": basic("ops", "pw-ops-1")}}):
            async with http.get(console.make_url("/v1/console/state"), **kwargs) as resp:
                assert resp.status == 200
                state = await resp.json()
                assert set(state) >= {"ari", "calls", "ended", "agents", "webhooks"}
        async with http.get(console.make_url("/console"), params={"token": TOKEN}) as resp:
            assert resp.status == 200
            page = await resp.text()
            assert "<script>" in page and "EventSource" in page
            assert "http://" not in page and "https://" not in page  # nothing from elsewhere


async def test_the_event_stream_starts_with_the_whole_state(console):
    contextvars.copy_context().run(  # as a session's own task would
        RECORDER.call_started, "c1", "ch1", "15550001111", "15550002222", "main", "inbound")
    async with aiohttp.ClientSession() as http, http.get(
            console.make_url("/v1/console/events"), params={"token": TOKEN}) as resp:
        assert resp.headers["Content-Type"] == "text/event-stream"
        assert (await resp.content.readline()) == b"event: state\n"
        data = (await resp.content.readline()).decode()
        state = json.loads(data.removeprefix("data: "))
        assert [c["uuid"] for c in state["calls"]] == ["c1"]


async def test_a_disabled_console_has_no_routes():
    server = await serve({})
    try:
        assert RECORDER.on is False
        async with aiohttp.ClientSession() as http:
            for path in ("/console", "/v1/console/state"):
                async with http.get(server.make_url(path), params={"token": TOKEN}) as resp:
                    assert resp.status == 404
    finally:
        await server.close()


@pytest.mark.parametrize(("console", "message"), [
    ({"enabled": True}, "needs console.token or console.users"),
    ({"enabled": True, "token": "short"}, "at least 16 characters"),
    ({"enabled": True, "users": {"ops": ""}}, "must not be empty"),
])
def test_an_unusable_console_configuration_fails_at_start(console, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, environ={}, overrides={"console": console})


def test_the_token_may_come_from_the_environment():
    config = load_config(None, environ={"ARI_BRIDGE_CONSOLE__ENABLED": "true",
                                        "ARI_BRIDGE_CONSOLE__TOKEN": TOKEN})
    assert config.console.enabled
    assert config.console.token is not None
    assert config.console.token.get_secret_value() == TOKEN


async def test_stopping_the_server_ends_open_event_streams():
    server = await serve({"enabled": True, "token": TOKEN})
    async with aiohttp.ClientSession() as http, http.get(
            server.make_url("/v1/console/events"), params={"token": TOKEN}) as resp:
        assert (await resp.content.readline()) == b"event: state\n"
        # Without the close signal the server would wait for the stream's handler to end.
        await asyncio.wait_for(server.close(), 30)
        rest = await asyncio.wait_for(resp.content.read(), 30)
        assert b"event: update" not in rest
    assert RECORDER.on is False


class _Link:
    def __init__(self, name: str, connected: bool, adopted: bool = False) -> None:
        self.name, self.connected, self.adopted = name, connected, adopted

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "connected": self.connected, "adopted": self.adopted}


class _Gateway:
    connected, last_error, connects, events_routed = True, None, 1, 0


def test_the_ari_state_names_each_link_and_is_down_while_one_is() -> None:
    from bridge.console.views import ConsoleViews

    class Engine:
        links = [_Link("a/slot-1", True), _Link("b/slot-1", False),
                 _Link("a/slot-2", True, adopted=True)]

        def links_down(self) -> list[_Link]:
            return [link for link in self.links if not link.connected]

    views = ConsoleViews(RECORDER, [], lambda: Engine(), lambda: _Gateway())  # type: ignore[arg-type,return-value]
    state = views.ari()
    assert state["connected"] is False
    assert state["last_error"] == "not connected: b/slot-1"
    assert [link["name"] for link in state["links"]] == ["a/slot-1", "b/slot-1", "a/slot-2"]
    Engine.links[1].connected = True
    assert views.ari()["connected"] is True and views.ari()["last_error"] is None

    class OneLink:
        links = [_Link("asterisk", True)]

    assert "links" not in ConsoleViews(RECORDER, [], lambda: OneLink(), lambda: _Gateway()).ari()  # type: ignore[arg-type,return-value]
