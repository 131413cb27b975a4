"""Webhook client tests against real aiohttp servers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import base64
import gzip
import hashlib
import hmac
import importlib
import json
import logging
import socket
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import pytest
import structlog
from aiohttp import web

import bridge
from bridge.webhooks import (
    ParseError,
    Signer,
    Timeouts,
    WebhookClient,
    WebhookRequest,
    WebhookResponse,
    encode_query,
    redact_url,
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

FAST = Timeouts(connect_ms=300, read_ms=300)
NORMAL = Timeouts(connect_ms=300, read_ms=3000)
SECRET = "a-very-secret-signature-key-0123456789"


@dataclass
class Seen:
    method: str
    path: str
    query: dict[str, str]
    body: bytes
    headers: dict[str, str]

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Server:
    """A real HTTP server that records every request and dispatches by path."""

    base: str = ""
    seen: list[Seen] = field(default_factory=list)
    handlers: dict[str, Handler] = field(default_factory=dict)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    def url(self, path: str) -> str:
        return self.base + path

    def on(self, path: str, handler: Handler) -> str:
        self.handlers[path] = handler
        return self.url(path)

    def hits(self, path: str) -> list[Seen]:
        return [s for s in self.seen if s.path == path]

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.seen.append(
            Seen(request.method, request.path, dict(request.query), body, dict(request.headers))
        )
        handler = self.handlers.get(request.path)
        if handler is None:
            return web.json_response({})
        return await handler(request)


def respond(status: int = 200, body: Any = None, raw: bytes | None = None) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        if raw is not None:
            return web.Response(status=status, body=raw, content_type="application/json")
        return web.json_response([] if body is None else body, status=status)

    return handler


def sequence(*handlers: Handler) -> Handler:
    """The n-th call uses the n-th handler; the last one repeats."""
    calls = 0

    async def handler(request: web.Request) -> web.StreamResponse:
        nonlocal calls
        h = handlers[min(calls, len(handlers) - 1)]
        calls += 1
        return await h(request)

    return handler


def hang(server: Server) -> Handler:
    """Never answers until the test ends (or the client gives up)."""

    async def handler(request: web.Request) -> web.StreamResponse:
        await server.release.wait()
        return web.json_response([])

    return handler


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    srv = Server()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", srv.dispatch)
    runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    srv.base = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        yield srv
    finally:
        srv.release.set()
        await runner.cleanup()


@pytest.fixture
async def client() -> AsyncIterator[WebhookClient]:
    async with WebhookClient() as c:
        yield c


def closed_port_url(path: str = "/answer") -> str:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}{path}"


def parse_ncco(resp: WebhookResponse) -> list[Any]:
    value = resp.json()
    if not isinstance(value, list):
        raise ParseError("invalid ncco: expected a JSON array of actions")
    for i, action in enumerate(value):
        if not isinstance(action, dict) or "action" not in action:
            raise ParseError(f"invalid ncco: [{i}].action: field required")
    return value


def b64url_decode(seg: str) -> bytes:
    return base64.urlsafe_b64decode(seg + "=" * (-len(seg) % 4))


def verify_jwt(token: str, secret: str) -> dict[str, Any]:
    header_b64, claims_b64, sig_b64 = token.split(".")
    expected = hmac.new(
        secret.encode(), f"{header_b64}.{claims_b64}".encode(), hashlib.sha256
    ).digest()
    assert hmac.compare_digest(expected, b64url_decode(sig_b64))
    assert json.loads(b64url_decode(header_b64)) == {"alg": "HS256", "typ": "JWT"}
    claims: dict[str, Any] = json.loads(b64url_decode(claims_b64))
    return claims


# --- methods and encoding -------------------------------------------------------------


async def test_get_answer_sends_query_params(server: Server, client: WebhookClient) -> None:
    url = server.on("/answer", respond(body=[{"action": "talk", "text": "hi"}]))
    data = {"to": "447700900000", "from": "447700900001", "uuid": "u-1", "region_url": None}
    resp = await client.send(WebhookRequest(url + "?app=1", "GET", data), NORMAL)

    assert resp.ok and resp.error is None
    assert resp.status == 200 and resp.attempts == 1
    assert resp.content_type == "application/json"
    assert resp.json() == [{"action": "talk", "text": "hi"}]
    [seen] = server.seen
    assert seen.method == "GET" and seen.body == b""
    assert seen.query == {"app": "1", "to": "447700900000", "from": "447700900001", "uuid": "u-1"}
    assert seen.headers["User-Agent"] == f"ari-bridge/{bridge.__version__}"
    assert "Content-Type" not in seen.headers
    assert "Authorization" not in seen.headers


def test_the_version_is_the_distribution_s_or_a_placeholder(monkeypatch) -> None:
    assert bridge.__version__ == metadata.version("ari-bridge")

    def not_installed(name: str) -> str:
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "version", not_installed)
    try:
        importlib.reload(bridge)
        assert bridge.__version__ == "0+unknown"
    finally:
        monkeypatch.undo()
        importlib.reload(bridge)
    assert bridge.__version__ == metadata.version("ari-bridge")


async def test_post_sends_json_body(server: Server, client: WebhookClient) -> None:
    url = server.on("/answer", respond(body=[]))
    data = {"to": "447700900000", "custom_data": {"k": [1, 2]}}
    resp = await client.send(WebhookRequest(url, "POST", data), NORMAL)

    assert resp.ok
    [seen] = server.seen
    assert seen.method == "POST" and seen.query == {}
    assert seen.headers["Content-Type"] == "application/json"
    assert seen.json() == data


async def test_get_event_json_encodes_nested_values(server: Server, client: WebhookClient) -> None:
    url = server.on("/event", respond(body={}))
    data = {
        "status": "completed",
        "duration": 12,
        "rate": 0.5,
        "flag": True,
        "gone": None,
        "headers": {"X-A": "1"},
        "list": [1, "two"],
    }
    resp = await client.send(WebhookRequest(url, "GET", data), NORMAL)

    assert resp.ok
    q = server.seen[0].query
    assert q == {
        "status": "completed",
        "duration": "12",
        "rate": "0.5",
        "flag": "true",
        "headers": '{"X-A":"1"}',
        "list": '[1,"two"]',
    }
    assert json.loads(q["headers"]) == {"X-A": "1"}
    assert encode_query({"a": None}) == []


# --- retry rule -------------------------------------------------------------------------


@pytest.mark.parametrize("status", [429, 503, 504])
async def test_retries_once_on_retryable_status(
    server: Server, client: WebhookClient, status: int
) -> None:
    url = server.on("/answer", sequence(respond(status), respond(body=[])))
    resp = await client.send(WebhookRequest(url, "GET", {}), NORMAL)

    assert resp.ok and resp.attempts == 2
    assert len(server.hits("/answer")) == 2


async def test_retry_gives_up_after_second_failure(server: Server, client: WebhookClient) -> None:
    url = server.on("/answer", respond(503))
    resp = await client.send(WebhookRequest(url, "POST", {"a": 1}), NORMAL)

    assert not resp.ok
    assert resp.status == 503 and resp.error == "http 503" and resp.attempts == 2
    assert len(server.hits("/answer")) == 2
    assert [s.body for s in server.seen] == [b'{"a":1}', b'{"a":1}']


@pytest.mark.parametrize("status", [400, 404, 500, 502])
async def test_no_retry_on_other_errors(server: Server, client: WebhookClient, status: int) -> None:
    url = server.on("/answer", respond(status))
    resp = await client.send(WebhookRequest(url, "GET", {}), NORMAL)

    assert not resp.ok
    assert resp.status == status and resp.error == f"http {status}" and resp.attempts == 1
    assert len(server.hits("/answer")) == 1


async def test_retries_once_on_read_timeout(server: Server, client: WebhookClient) -> None:
    url = server.on("/answer", hang(server))
    resp = await client.send(WebhookRequest(url, "GET", {}), FAST)

    assert not resp.ok
    assert resp.status is None and resp.error == "read timeout" and resp.attempts == 2
    assert len(server.hits("/answer")) == 2
    assert 500 <= resp.elapsed_ms < 3000


async def test_read_timeout_then_success(server: Server, client: WebhookClient) -> None:
    url = server.on("/answer", sequence(hang(server), respond(body=[{"action": "talk"}])))
    resp = await client.send(WebhookRequest(url, "GET", {}), FAST)

    assert resp.ok and resp.attempts == 2
    assert resp.json() == [{"action": "talk"}]


async def test_retries_once_on_connection_refused(client: WebhookClient) -> None:
    resp = await client.send(WebhookRequest(closed_port_url(), "GET", {}), FAST)

    assert not resp.ok
    assert resp.status is None and resp.error == "connection refused" and resp.attempts == 2


async def test_invalid_url_is_not_retried(client: WebhookClient) -> None:
    resp = await client.send(WebhookRequest("ftp://example.invalid/x", "GET", {}), FAST)
    assert resp.error == "invalid url" and resp.attempts == 1


async def test_send_requires_start() -> None:
    c = WebhookClient()
    with pytest.raises(RuntimeError, match="not started"):
        await c.send(WebhookRequest("http://127.0.0.1/", "GET", {}), FAST)


# --- body cap ---------------------------------------------------------------------------


async def test_body_over_cap_with_content_length(server: Server) -> None:
    url = server.on("/answer", respond(raw=b"x" * 5000))
    async with WebhookClient(max_body_bytes=1000) as c:
        resp = await c.send(WebhookRequest(url, "GET", {}), NORMAL)
    assert not resp.ok
    assert resp.status == 200 and resp.error == "body exceeds 1000 bytes"
    assert resp.body == b"" and resp.attempts == 1


async def test_body_over_cap_streamed(server: Server) -> None:
    async def chunked(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for _ in range(20):
            await resp.write(b"y" * 500)
        await resp.write_eof()
        return resp

    url = server.on("/answer", chunked)
    async with WebhookClient(max_body_bytes=1000) as c:
        resp = await c.send(WebhookRequest(url, "GET", {}), NORMAL)
    assert resp.error == "body exceeds 1000 bytes" and resp.attempts == 1


async def test_a_small_compressed_body_that_inflates_past_the_cap_is_refused(
        server: Server) -> None:
    inflated = b"[" + b" " * 50_000 + b"]"
    packed = gzip.compress(inflated)
    assert len(packed) < 1000  # its Content-Length is within the cap

    async def compressed(request: web.Request) -> web.StreamResponse:
        return web.Response(body=packed, content_type="application/json",
                            headers={"Content-Encoding": "gzip"})

    url = server.on("/answer", compressed)
    async with WebhookClient(max_body_bytes=1000) as c:
        resp = await c.send(WebhookRequest(url, "GET", {}), NORMAL)
        assert resp.error == "body exceeds 1000 bytes" and resp.attempts == 1
        # Within the cap once inflated, it is read and decoded.
        small = b"[" + b" " * 500 + b"]"
        server.on("/small", lambda request: _gzipped(small))
        ok = await c.send(WebhookRequest(server.url("/small"), "GET", {}), NORMAL)
    assert ok.ok and ok.body == small


async def _gzipped(body: bytes) -> web.StreamResponse:
    return web.Response(body=gzip.compress(body), content_type="application/json",
                        headers={"Content-Encoding": "gzip"})


async def test_body_at_cap_is_accepted(server: Server) -> None:
    url = server.on("/answer", respond(raw=b"[" + b" " * 998 + b"]"))
    async with WebhookClient(max_body_bytes=1000) as c:
        resp = await c.send(WebhookRequest(url, "GET", {}), NORMAL)
    assert resp.ok and resp.json() == [] and len(resp.body) == 1000


def test_json_errors_are_clear() -> None:
    req = WebhookRequest("http://127.0.0.1/", "GET", {})
    empty = WebhookResponse(req, 200, b"", None, 1, 1.0, None)
    broken = WebhookResponse(req, 200, b"[{", "application/json", 1, 1.0, None)
    with pytest.raises(ValueError, match="empty"):
        empty.json()
    with pytest.raises(ValueError, match="not valid JSON"):
        broken.json()


# --- fallback ---------------------------------------------------------------------------


async def test_fallback_get_gets_reason_and_original_request(
    server: Server, client: WebhookClient
) -> None:
    primary = server.on("/answer", respond(500))
    fallback = server.on("/fallback", respond(body=[{"action": "talk", "text": "fb"}]))
    req = WebhookRequest(primary, "GET", {"to": "447700900000", "uuid": "u-1"})
    result = await client.send_with_fallback(req, fallback, parse_ncco, NORMAL)

    assert result.source == "fallback" and result.ok
    assert result.value == [{"action": "talk", "text": "fb"}]
    assert result.reason == "http 500" and result.error is None
    assert result.primary.status == 500 and result.fallback is not None
    [seen] = server.hits("/fallback")
    assert seen.method == "GET"
    assert seen.query["to"] == "447700900000" and seen.query["uuid"] == "u-1"
    assert seen.query["reason"] == "http 500"
    assert json.loads(seen.query["original_request"]) == {"url": primary, "method": "GET"}


async def test_fallback_post_gets_reason_and_original_request(
    server: Server, client: WebhookClient
) -> None:
    primary = closed_port_url("/event")
    fallback = server.on("/fallback", respond(body={}))
    req = WebhookRequest(primary, "POST", {"status": "answered", "uuid": "u-1"})
    result = await client.send_with_fallback(req, fallback, lambda r: None, FAST)

    assert result.source == "fallback" and result.reason == "connection refused"
    assert result.primary.attempts == 2
    [seen] = server.hits("/fallback")
    assert seen.method == "POST"
    assert seen.json() == {
        "status": "answered",
        "uuid": "u-1",
        "reason": "connection refused",
        "original_request": {"url": primary, "method": "POST"},
    }


async def test_fallback_after_read_timeout(server: Server, client: WebhookClient) -> None:
    primary = server.on("/answer", hang(server))
    fallback = server.on("/fallback", respond(body=[{"action": "hangup"}]))
    result = await client.send_with_fallback(
        WebhookRequest(primary, "GET", {}), fallback, parse_ncco, FAST
    )
    assert result.source == "fallback" and result.reason == "read timeout"
    assert result.value == [{"action": "hangup"}]
    assert server.hits("/fallback")[0].query["reason"] == "read timeout"


async def test_parser_rejection_goes_to_fallback_without_retry(
    server: Server, client: WebhookClient
) -> None:
    primary = server.on("/answer", respond(body=[{"text": "no action"}]))
    fallback = server.on("/fallback", respond(body=[{"action": "talk"}]))
    result = await client.send_with_fallback(
        WebhookRequest(primary, "GET", {}), fallback, parse_ncco, NORMAL
    )

    assert len(server.hits("/answer")) == 1
    assert result.primary.ok and result.primary.attempts == 1
    assert result.source == "fallback" and result.value == [{"action": "talk"}]
    assert result.reason == "invalid ncco: [0].action: field required"
    assert server.hits("/fallback")[0].query["reason"] == result.reason


async def test_invalid_json_goes_to_fallback(server: Server, client: WebhookClient) -> None:
    primary = server.on("/answer", respond(raw=b"<html>"))
    fallback = server.on("/fallback", respond(body=[{"action": "talk"}]))
    result = await client.send_with_fallback(
        WebhookRequest(primary, "POST", {}), fallback, parse_ncco, NORMAL
    )
    assert result.source == "fallback"
    assert result.reason is not None
    assert result.reason.startswith("invalid response: response body is not valid JSON")
    assert server.hits("/fallback")[0].json()["reason"] == result.reason


async def test_primary_success_does_not_touch_fallback(
    server: Server, client: WebhookClient
) -> None:
    primary = server.on("/answer", respond(body=[{"action": "talk"}]))
    fallback = server.on("/fallback", respond(body=[]))
    result = await client.send_with_fallback(
        WebhookRequest(primary, "GET", {}), fallback, parse_ncco, NORMAL
    )
    assert result.source == "primary" and result.reason is None and result.fallback is None
    assert server.hits("/fallback") == []


async def test_both_failing(server: Server, client: WebhookClient) -> None:
    primary = server.on("/answer", respond(500))
    fallback = server.on("/fallback", respond(body={"not": "ncco"}))
    result = await client.send_with_fallback(
        WebhookRequest(primary, "GET", {}), fallback, parse_ncco, NORMAL
    )
    assert result.value is None and result.source is None and not result.ok
    assert result.reason == "http 500"
    assert result.error == (
        "primary: http 500; fallback: invalid ncco: expected a JSON array of actions"
    )
    assert len(server.hits("/fallback")) == 1


async def test_failure_without_fallback(server: Server, client: WebhookClient) -> None:
    primary = server.on("/answer", respond(404))
    result = await client.send_with_fallback(
        WebhookRequest(primary, "GET", {}), None, parse_ncco, NORMAL
    )
    assert result.value is None and result.fallback is None
    assert result.reason == result.error == "http 404"


# --- signing ----------------------------------------------------------------------------


async def test_signed_post_and_get(server: Server, client: WebhookClient) -> None:
    url = server.on("/event", respond(body={}))
    signer = Signer(secret=SECRET, application_id="app-123")
    await client.send(WebhookRequest(url, "POST", {"status": "ringing"}), NORMAL, signer)
    await client.send(WebhookRequest(url, "GET", {"status": "ringing"}), NORMAL, signer)

    post, get = server.seen
    jtis = set()
    for seen in (post, get):
        scheme, token = seen.headers["Authorization"].split(" ", 1)
        assert scheme == "Bearer"
        claims = verify_jwt(token, SECRET)
        assert claims["payload_hash"] == hashlib.sha256(seen.body).hexdigest()
        assert claims["iss"] == "ari-bridge"
        assert claims["application_id"] == "app-123"
        assert isinstance(claims["iat"], int)
        jtis.add(claims["jti"])
    assert post.body == b'{"status":"ringing"}'
    assert get.body == b""
    assert len(jtis) == 2

    assert SECRET not in repr(signer)
    with pytest.raises(AssertionError):
        verify_jwt(post.headers["Authorization"][7:], "wrong-secret")


def test_a_short_secret_still_signs_without_a_warning_per_token() -> None:
    signer = Signer(secret="short", application_id="app-1")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        token = signer.token(b"{}")
    claims = verify_jwt(token, "short")  # also checks the header is exactly HS256/JWT
    assert claims["payload_hash"] == hashlib.sha256(b"{}").hexdigest()
    with pytest.raises(ValueError, match="empty"):
        Signer(secret="", application_id="app-1")


async def test_each_retry_gets_a_fresh_token(server: Server, client: WebhookClient) -> None:
    url = server.on("/answer", sequence(respond(503), respond(body=[])))
    signer = Signer(secret=SECRET, application_id="app-1", issuer="my-pbx")
    await client.send(WebhookRequest(url, "GET", {}), NORMAL, signer)
    claims = [verify_jwt(s.headers["Authorization"][7:], SECRET) for s in server.seen]
    assert len(claims) == 2 and claims[0]["jti"] != claims[1]["jti"]
    assert {c["iss"] for c in claims} == {"my-pbx"}


async def test_log_lines_hide_query_token_and_secret(server: Server, client: WebhookClient) -> None:
    url = server.on("/event", respond(500))
    signer = Signer(secret=SECRET, application_id="app-1")
    with structlog.testing.capture_logs() as logs:
        await client.send(WebhookRequest(url + "?token=abc", "GET", {"to": "4477"}), FAST, signer)
    [line] = [e for e in logs if e["event"] == "webhook request"]
    assert line["url"] == server.url("/event")
    assert line["status"] == 500 and line["error"] == "http 500" and line["attempts"] == 1
    text = repr(logs)
    assert SECRET not in text and "Bearer" not in text and "4477" not in text
    assert redact_url("https://u:p@h.example/p?q=1#f") == "https://h.example/p"


async def test_a_successful_request_is_a_debug_line_not_built_at_info(
        server: Server, client: WebhookClient) -> None:
    url = server.on("/answer", respond(body=[]))
    saved = structlog.get_config()
    try:
        for level, expected in ((logging.INFO, 0), (logging.DEBUG, 1)):
            structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(level))
            with structlog.testing.capture_logs() as logs:
                resp = await client.send(WebhookRequest(url, "GET", {}), NORMAL)
            assert resp.ok
            lines = [e for e in logs if e["event"] == "webhook request"]
            assert len(lines) == expected, (level, logs)
        assert lines[0]["log_level"] == "debug" and lines[0]["status"] == 200
    finally:
        structlog.configure(**saved)
