"""REST over the event websocket: requests matched to answers, events in between, timeouts,
errors, a dropped socket; and which transport a given Asterisk gets.

A small aiohttp websocket server plays Asterisk's part with scripted answers; the real
Asterisk is exercised in tests/integration/test_ari_transport.py.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from bridge.ari.errors import AriError, AriUnavailable, ChannelGone
from bridge.ari.rest import (
    WebSocketTransport,
    asterisk_version,
    choose_transport,
    websocket_rest_supported,
)
from bridge.ari.routing import EventRouter
from bridge.lab.ports import free_port

Script = Callable[[web.WebSocketResponse, list[dict[str, Any]]], Awaitable[None]]


class FakeAsterisk:
    """Serves one websocket; ``script`` decides what it answers to the requests it got."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.received: list[dict[str, Any]] = []

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await self.script(ws, self.received)
        return ws


async def _next_requests(ws: web.WebSocketResponse, received: list[dict[str, Any]],
                         count: int) -> list[dict[str, Any]]:
    got = []
    while len(got) < count:
        msg = await ws.receive()
        if msg.type is not aiohttp.WSMsgType.TEXT:
            break
        got.append(json.loads(msg.data))
        received.append(got[-1])
    return got


def _answer(request: dict[str, Any], status: int = 200, body: Any = None,
            reason: str = "OK") -> str:
    message: dict[str, Any] = {"type": "RESTResponse", "transaction_id": "",
                               "request_id": request["request_id"], "status_code": status,
                               "reason_phrase": reason, "uri": request["uri"]}
    if body is not None:
        message["content_type"] = "application/json"
        message["message_body"] = json.dumps(body)
    return json.dumps(message)


class Link:
    """The client side: a transport and a router reading the same socket."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, timeout_s: float) -> None:
        self.transport = WebSocketTransport(ws, timeout_s)
        self.events: list[dict[str, Any]] = []
        self.router = EventRouter("app", self.events.append)
        self.unmatched: list[dict[str, Any]] = []

        def on_response(response: dict[str, Any]) -> None:
            if not self.transport.resolve(response):
                self.unmatched.append(response)

        async def read() -> None:
            await self.router.read(ws, on_response)
            self.transport.fail_all("event websocket closed")

        self.reader = asyncio.create_task(read())


@pytest.fixture
async def connect() -> AsyncIterator[Callable[..., Awaitable[tuple[Link, FakeAsterisk]]]]:
    opened: list[tuple[web.AppRunner, aiohttp.ClientSession, Link]] = []

    async def connect(script: Script, timeout_s: float = 5.0) -> tuple[Link, FakeAsterisk]:
        fake = FakeAsterisk(script)
        app = web.Application()
        app.router.add_get("/ari/events", fake.handle)
        runner = web.AppRunner(app)
        await runner.setup()
        port = free_port(socket.SOCK_STREAM)
        await web.TCPSite(runner, "127.0.0.1", port).start()
        session = aiohttp.ClientSession()
        ws = await session.ws_connect(f"http://127.0.0.1:{port}/ari/events")
        link = Link(ws, timeout_s)
        opened.append((runner, session, link))
        return link, fake

    yield connect
    for runner, session, link in opened:
        await link.transport.ws.close()
        link.reader.cancel()
        await session.close()
        await runner.cleanup()


# ------------------------------------------------------------------ the request
async def test_request_carries_method_uri_query_and_json_body(connect) -> None:
    async def script(ws: web.WebSocketResponse, received: list[dict[str, Any]]) -> None:
        for request in await _next_requests(ws, received, 1):
            await ws.send_str(_answer(request, 200, {"id": "b1"}))
        await ws.receive()

    link, fake = await connect(script)
    result = await link.transport.request(
        "POST", "/channels/create", {"endpoint": "PJSIP/x", "appArgs": ["a", "b"],
                                     "early": True, "skipped": None},
        {"variables": {"X": "1"}}, None)

    assert result == {"id": "b1"}
    sent = fake.received[0]
    assert sent["type"] == "RESTRequest"
    assert sent["method"] == "POST"
    assert sent["uri"] == "channels/create"  # Asterisk answers a leading slash with 405
    assert sent["query_strings"] == [{"name": "endpoint", "value": "PJSIP/x"},
                                     {"name": "appArgs", "value": "a,b"},
                                     {"name": "early", "value": "true"}]
    assert sent["content_type"] == "application/json"
    assert json.loads(sent["message_body"]) == {"variables": {"X": "1"}}
    assert link.transport.pending == 0


async def test_request_without_params_or_body_sends_neither(connect) -> None:
    async def script(ws: web.WebSocketResponse, received: list[dict[str, Any]]) -> None:
        for request in await _next_requests(ws, received, 1):
            await ws.send_str(_answer(request, 204, reason="No Content"))
        await ws.receive()

    link, fake = await connect(script)
    assert await link.transport.request("DELETE", "/bridges/b1", None, None, None) is None
    assert set(fake.received[0]) == {"type", "request_id", "method", "uri"}


async def test_answers_in_any_order_with_events_between_reach_their_requests(connect) -> None:
    async def script(ws: web.WebSocketResponse, received: list[dict[str, Any]]) -> None:
        first, second, third = await _next_requests(ws, received, 3)
        await ws.send_str(json.dumps({"type": "StasisStart", "channel": {"id": "c9"}}))
        await ws.send_str(_answer(third, 200, {"n": 3}))
        await ws.send_str(json.dumps({"type": "ChannelDtmfReceived", "digit": "5",
                                      "channel": {"id": "c1"}}))
        await ws.send_str(_answer(first, 200, {"n": 1}))
        await ws.send_str(_answer(second, 200, {"n": 2}))
        await ws.receive()

    link, _ = await connect(script)
    digits: list[str] = []
    link.router.route("channel:c1", lambda event: digits.append(event["digit"]))
    results = await asyncio.gather(*(
        link.transport.request("GET", f"/things/{n}", None, None, None) for n in (1, 2, 3)))

    assert results == [{"n": 1}, {"n": 2}, {"n": 3}]
    assert digits == ["5"]
    assert [e["channel"]["id"] for e in link.events] == ["c9"]  # the new call's StasisStart
    assert link.unmatched == []


async def test_an_answer_nobody_waits_for_is_set_aside(connect) -> None:
    async def script(ws: web.WebSocketResponse, received: list[dict[str, Any]]) -> None:
        # What Asterisk sends back for a message it could not parse: no request id.
        await ws.send_str(json.dumps({"type": "RESTResponse", "request_id": "",
                                      "status_code": 400, "reason_phrase": "bad"}))
        for request in await _next_requests(ws, received, 1):
            await ws.send_str(_answer(request, 200, {"ping": "pong"}))
        await ws.receive()

    link, _ = await connect(script)
    assert await link.transport.request("GET", "/asterisk/ping", None, None, None) == {
        "ping": "pong"}
    assert [r["status_code"] for r in link.unmatched] == [400]


# ------------------------------------------------------------------- errors
@pytest.mark.parametrize(("status", "message", "channel_id", "error"), [
    (404, "Channel not found", "c1", ChannelGone),
    (409, "Channel not in Stasis application", "c1", ChannelGone),
    (409, "Channel not in Stasis application", None, AriError),
    (404, "Bridge not found", None, AriError),
    (409, "Channel is already bridged", "c1", AriError),
    (500, "Internal Server Error", "c1", AriError),
])
async def test_error_answers_raise_what_http_raises(connect, status: int, message: str,
                                                   channel_id: str | None,
                                                   error: type[AriError]) -> None:
    async def script(ws: web.WebSocketResponse, received: list[dict[str, Any]]) -> None:
        for request in await _next_requests(ws, received, 1):
            await ws.send_str(_answer(request, status, {"message": message}, reason="x"))
        await ws.receive()

    link, _ = await connect(script)
    with pytest.raises(AriError) as caught:
        await link.transport.request("POST", "/channels/c1/answer", None, None, channel_id)

    assert type(caught.value) is error
    assert caught.value.status == status
    assert caught.value.details == message
    assert caught.value.path == "/channels/c1/answer"


async def test_no_answer_within_the_timeout_is_unavailable(connect) -> None:
    async def script(ws: web.WebSocketResponse, received: list[dict[str, Any]]) -> None:
        await _next_requests(ws, received, 1)
        await ws.receive()  # never answers

    link, _ = await connect(script, timeout_s=0.2)
    with pytest.raises(AriUnavailable) as caught:
        await link.transport.request("GET", "/asterisk/ping", None, None, None)

    assert caught.value.status is None
    assert "no answer" in caught.value.details
    assert link.transport.pending == 0


async def test_a_dropped_socket_fails_the_requests_in_flight(connect) -> None:
    async def script(ws: web.WebSocketResponse, received: list[dict[str, Any]]) -> None:
        await _next_requests(ws, received, 2)
        await ws.close()

    link, _ = await connect(script, timeout_s=30)
    requests = [asyncio.ensure_future(
        link.transport.request("POST", f"/channels/c{n}/answer", None, None, f"c{n}"))
        for n in (1, 2)]
    async with asyncio.timeout(5):  # well before the request timeout
        results = await asyncio.gather(*requests, return_exceptions=True)

    assert [type(r) for r in results] == [AriUnavailable, AriUnavailable]
    assert [r.path for r in results] == ["/channels/c1/answer", "/channels/c2/answer"]
    assert all(r.details == "event websocket closed" for r in results)
    # And a request after the drop fails at once, without waiting for its timeout.
    with pytest.raises(AriUnavailable):
        await link.transport.request("GET", "/asterisk/ping", None, None, None)


# -------------------------------------------------------- which transport
@pytest.mark.parametrize(("text", "version"), [
    ("22.10.1+dfsg+~cs6.17.60671434-1", (22, 10)),
    ("20.15.0", (20, 15)),
    ("certified-20.7-cert5", (20, 7)),
    ("GIT-master-0123abc", None),
    ("", None),
])
def test_asterisk_version_is_read_from_the_version_string(text: str, version: Any) -> None:
    assert asterisk_version(text) == version


@pytest.mark.parametrize(("version", "supported"), [
    ((22, 5), True), ((22, 10), True), ((22, 4), False),
    ((21, 10), True), ((21, 9), False),
    ((20, 15), True), ((20, 14), False), ((20, 7), False),
    ((23, 0), True), ((18, 20), False), (None, False),
])
def test_websocket_rest_by_version(version: Any, supported: bool) -> None:
    assert websocket_rest_supported(version) is supported
    assert choose_transport("auto", version) == ("websocket" if supported else "http")


@pytest.mark.parametrize("version", [(22, 10), (18, 20), None])
def test_an_explicit_setting_wins_over_the_version(version: Any) -> None:
    assert choose_transport("http", version) == "http"
    assert choose_transport("websocket", version) == "websocket"


# ------------------------------------------------------------- the gateway's choice
def _gateway(setting: str, info: Any) -> tuple[Any, list[tuple[str, str, Any]]]:
    from bridge.ari.gateway import AriGateway
    from bridge.config import AriConfig

    gateway = AriGateway(AriConfig(rest_transport=setting), lambda event: None)
    asked: list[tuple[str, str, Any]] = []

    async def request(method: str, path: str, params: Any = None, body: Any = None,
                      channel_id: Any = None, transport: Any = None) -> Any:
        asked.append((method, path, transport))
        if isinstance(info, Exception):
            raise info
        return info

    gateway.request = request  # type: ignore[method-assign]
    return gateway, asked


@pytest.mark.parametrize(("version", "expected"), [
    ("22.10.1+dfsg-1", "websocket"), ("21.9.0", "http"), ("GIT-master-abc", "http")])
async def test_auto_asks_asterisk_its_version_over_http(version: str, expected: str) -> None:
    gateway, asked = _gateway("auto", {"system": {"version": version}})
    assert await gateway._choose_transport() == expected
    assert asked == [("GET", "/asterisk/info", "http")]


async def test_auto_uses_http_when_the_version_cannot_be_had() -> None:
    gateway, _ = _gateway("auto", AriError("GET", "/asterisk/info", 403, "forbidden"))
    assert await gateway._choose_transport() == "http"


@pytest.mark.parametrize("setting", ["http", "websocket"])
async def test_an_explicit_setting_does_not_ask_for_the_version(setting: str) -> None:
    gateway, asked = _gateway(setting, {"system": {"version": "22.10.1"}})
    assert await gateway._choose_transport() == setting
    assert asked == []


async def test_the_event_filter_goes_over_http_and_lets_rest_answers_through() -> None:
    """Asterisk's application event filter also filters RESTResponse messages."""
    from bridge.ari.gateway import AriGateway
    from bridge.config import AriConfig

    gateway = AriGateway(AriConfig(), lambda event: None)
    sent: list[tuple[str, Any, Any]] = []

    async def request(method: str, path: str, params: Any = None, body: Any = None,
                      channel_id: Any = None, transport: Any = None) -> Any:
        sent.append((path, body, transport))

    gateway.request = request  # type: ignore[method-assign]
    await gateway._filter_events()
    (path, body, transport), = sent
    assert path == "/applications/ari-bridge/eventFilter"
    assert transport == "http"
    assert {"type": "RESTResponse"} in body["allowed"]
    assert {"type": "StasisStart"} in body["allowed"]


async def test_a_gateway_not_started_refuses_requests() -> None:
    from bridge.ari.gateway import AriGateway
    from bridge.config import AriConfig

    gateway = AriGateway(AriConfig(), lambda event: None)
    with pytest.raises(AriUnavailable, match="gateway not started"):
        await gateway.answer("c1")


async def test_while_the_websocket_is_down_requests_go_over_http() -> None:
    from bridge.ari.gateway import AriGateway
    from bridge.ari.rest import HttpTransport
    from bridge.config import AriConfig

    http_pings: list[str] = []

    async def events(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        for sent in await _next_requests(ws, [], 1):
            await ws.send_str(_answer(sent, 200, {"ping": "websocket"}))
        await ws.close()  # Asterisk goes away
        return ws

    async def ping(request: web.Request) -> web.Response:
        http_pings.append(request.path)
        return web.json_response({"ping": "http"})

    app = web.Application()
    app.router.add_get("/ari/events", events)
    app.router.add_get("/ari/asterisk/ping", ping)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port(socket.SOCK_STREAM)
    await web.TCPSite(runner, "127.0.0.1", port).start()
    session = aiohttp.ClientSession()
    try:
        gateway = AriGateway(AriConfig(url=f"http://127.0.0.1:{port}"), lambda event: None)
        gateway._http = HttpTransport(session, f"http://127.0.0.1:{port}/ari")
        ws = await session.ws_connect(f"http://127.0.0.1:{port}/ari/events")
        gateway._ws_rest = WebSocketTransport(ws, 5.0)

        async def connection() -> None:  # what AriConnection does around the reader
            await gateway._read(ws)
            gateway._closed("event websocket closed")

        reading = asyncio.create_task(connection())
        assert await gateway.request("GET", "/asterisk/ping") == {"ping": "websocket"}
        async with asyncio.timeout(5):
            await reading
        assert await gateway.request("GET", "/asterisk/ping") == {"ping": "http"}
        assert http_pings == ["/ari/asterisk/ping"]
        assert gateway.requests_sent == {"websocket": 1, "http": 1}
    finally:
        await session.close()
        await runner.cleanup()
