"""Exactly one retry, against raw TCP servers that misbehave the way real ones do, and the
webhook metrics.

The servers here are plain asyncio sockets (tests/rawhttp.py), not aiohttp: they must be able
to read a request and close the connection without answering, which a framework never does.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from prometheus_client import REGISTRY

from bridge.webhooks import (
    JSON_NESTING_ERROR,
    ParseError,
    Timeouts,
    WebhookClient,
    WebhookRequest,
    WebhookResponse,
    require_json_content_type,
)
from tests.rawhttp import RawServer

TIMEOUTS = Timeouts(connect_ms=500, read_ms=3000)
OK_RESPONSE = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
               b"Content-Length: 2\r\n\r\n[]")


@pytest.fixture
async def raw_server() -> AsyncIterator[RawServer]:
    async with RawServer() as server:
        yield server


@pytest.fixture
async def client() -> AsyncIterator[WebhookClient]:
    async with WebhookClient() as c:
        yield c


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_server_closing_without_answer_gets_exactly_two_requests(
        raw_server: RawServer, client: WebhookClient, method: str) -> None:
    raw_server.answer = None

    resp = await client.send(
        WebhookRequest(raw_server.url(), method, {"uuid": "u1"}), TIMEOUTS)  # type: ignore[arg-type]

    assert resp.error == "connection reset"
    assert resp.attempts == 2
    assert len(raw_server.raw) == 2
    assert all(r.startswith(method.encode() + b" /answer") for r in raw_server.raw)


async def test_fallback_also_gets_exactly_two_requests(
        raw_server: RawServer, client: WebhookClient) -> None:
    raw_server.answer = None

    result = await client.send_with_fallback(
        WebhookRequest(raw_server.url("/answer"), "GET", {"uuid": "u1"}),
        raw_server.url("/fallback"), lambda r: r.json(), TIMEOUTS, kind="answer")

    assert not result.ok
    assert result.error == "primary: connection reset; fallback: connection reset"
    paths = [r.split(b" ", 2)[1].split(b"?")[0] for r in raw_server.raw]
    assert paths == [b"/answer", b"/answer", b"/fallback", b"/fallback"]


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_keep_alive_connection_closed_between_two_calls(
        raw_server: RawServer, client: WebhookClient, method: str) -> None:
    raw_server.answer = OK_RESPONSE
    raw_server.close_after_answer = True  # but without "Connection: close": aiohttp pools it
    request = WebhookRequest(raw_server.url(), method, {"uuid": "u1"})  # type: ignore[arg-type]

    first = await client.send(request, TIMEOUTS)
    async with asyncio.timeout(5):
        await raw_server.closed.wait()  # the server dropped the idle connection
    second = await client.send(request, TIMEOUTS)

    assert first.ok and second.ok, (first.error, second.error)
    assert first.json() == [] and second.json() == []
    # Each call reached the application once; the second one on a new connection. (When the
    # client had not yet seen the close, its first try on the dead connection is the one
    # retry: the application still gets the request once.)
    assert len(raw_server.raw) == 2
    assert raw_server.connections == 2
    assert second.attempts in (1, 2)


async def test_failures_and_durations_are_counted_by_kind_and_reason(
        raw_server: RawServer, client: WebhookClient) -> None:
    raw_server.answer = None
    resets = sample("ari_bridge_webhook_failures_total", kind="exotel", reason="reset")
    timed = sample("ari_bridge_webhook_duration_seconds_count", kind="exotel")

    await client.send(WebhookRequest(raw_server.url(), "GET", {}), TIMEOUTS, kind="exotel")

    assert sample("ari_bridge_webhook_failures_total", kind="exotel", reason="reset") \
        == resets + 1
    assert sample("ari_bridge_webhook_duration_seconds_count", kind="exotel") == timed + 1


async def test_status_failure_and_success_are_told_apart(
        raw_server: RawServer, client: WebhookClient) -> None:
    raw_server.answer = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"
    statuses = sample("ari_bridge_webhook_failures_total", kind="event", reason="status")
    timed = sample("ari_bridge_webhook_duration_seconds_count", kind="event")

    resp = await client.send(WebhookRequest(raw_server.url(), "POST", {}), TIMEOUTS)
    assert resp.error == "http 404"
    raw_server.answer = OK_RESPONSE
    ok = await client.send(WebhookRequest(raw_server.url(), "POST", {}), TIMEOUTS)
    assert ok.ok

    assert sample("ari_bridge_webhook_failures_total", kind="event", reason="status") \
        == statuses + 1  # the 200 added no failure
    assert sample("ari_bridge_webhook_duration_seconds_count", kind="event") == timed + 2


async def test_parser_rejection_counts_as_invalid_ncco_for_primary_and_fallback(
        raw_server: RawServer, client: WebhookClient) -> None:
    raw_server.answer = OK_RESPONSE
    answer = sample("ari_bridge_webhook_failures_total", kind="answer", reason="invalid_ncco")
    fallback = sample("ari_bridge_webhook_failures_total", kind="fallback",
                      reason="invalid_ncco")

    def reject(resp: WebhookResponse) -> None:
        raise ParseError("invalid NCCO: an NCCO must not be empty")

    result = await client.send_with_fallback(
        WebhookRequest(raw_server.url(), "GET", {}), raw_server.url("/fallback"), reject,
        TIMEOUTS, kind="answer")

    assert result.reason == "invalid NCCO: an NCCO must not be empty"
    assert sample("ari_bridge_webhook_failures_total", kind="answer",
                  reason="invalid_ncco") == answer + 1
    assert sample("ari_bridge_webhook_failures_total", kind="fallback",
                  reason="invalid_ncco") == fallback + 1


async def test_deeply_nested_json_body_is_a_clear_parse_error(
        raw_server: RawServer, client: WebhookClient) -> None:
    body = b"[" * 100_000
    raw_server.answer = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                         + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)

    result = await client.send_with_fallback(
        WebhookRequest(raw_server.url(), "GET", {}), None, lambda r: r.json(), TIMEOUTS)

    assert not result.ok
    assert result.reason == f"invalid response: response body is not usable: {JSON_NESTING_ERROR}"


@pytest.mark.parametrize(("header", "media_type", "accepted"), [
    (b"Content-Type: application/json; charset=utf-8\r\n", "application/json", True),
    (b"Content-Type: application/vnd.example+json\r\n", "application/vnd.example+json", True),
    (b"", None, True),  # no Content-Type: the body must parse, the caller's parser checks
    (b"Content-Type: text/html\r\n", "text/html", False),
    (b"Content-Type: text/plain\r\n", "text/plain", False),
])
async def test_answer_content_type_must_be_json_or_absent(
        raw_server: RawServer, client: WebhookClient, header: bytes, media_type: str | None,
        accepted: bool) -> None:
    raw_server.answer = b"HTTP/1.1 200 OK\r\n" + header + b"Content-Length: 2\r\n\r\n[]"

    resp = await client.send(WebhookRequest(raw_server.url(), "GET", {}), TIMEOUTS)

    assert resp.ok and resp.content_type == media_type
    if accepted:
        require_json_content_type(resp, "answer_url")
        assert resp.json() == []
    else:
        with pytest.raises(ParseError) as caught:
            require_json_content_type(resp, "answer_url")
        assert str(caught.value) == (
            f"answer_url returned content type {media_type}, expected application/json")
