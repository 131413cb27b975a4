"""REST over the event websocket against the lab's Asterisk (22.10): the requests of a call
really travel on the websocket, errors come back as they do over HTTP, and 'http' keeps
everything on HTTP."""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY

from bridge.app import BridgeService
from bridge.ari.errors import AriError, ChannelGone
from bridge.ari.gateway import SUBSCRIBED_EVENTS
from tests.integration.conftest import bridge_config
from tests.integration.harness import new_number

pytestmark = pytest.mark.integration

_COUNT = "ari_bridge_ari_request_duration_seconds_count"


def _observed(method: str, transport: str) -> float:
    return REGISTRY.get_sample_value(_COUNT, {"method": method, "transport": transport}) or 0.0


async def _call(webhooks, dial) -> None:
    number = new_number()
    webhooks.answer(number, [{"action": "talk", "text": "One two three.", "voiceName": "Amy"}])
    call = await dial(number)
    assert call.sip.ok, call.sip.errors
    await webhooks.wait_completed(number)
    assert webhooks.statuses(number) == ["started", "ringing", "answered", "completed"]


@pytest.mark.parametrize("setting", ["auto", "websocket"])
async def test_a_calls_requests_travel_on_the_websocket(lab, webhooks, tmp_path, dial,
                                                       setting: str) -> None:
    service = BridgeService(bridge_config(lab, webhooks, tmp_path, rest_transport=setting))
    await service.start()
    try:
        assert await service.gateway.wait_connected(20), service.gateway.last_error
        gateway = service.gateway
        assert gateway.rest_transport == "websocket"  # the lab runs Asterisk 22.10
        ws_before = gateway.requests_sent["websocket"]
        before = {(method, transport): _observed(method, transport)
                  for method in ("POST", "DELETE") for transport in ("http", "websocket")}
        events_before = REGISTRY.get_sample_value("ari_bridge_ari_events_total") or 0.0

        await _call(webhooks, dial)

        # Events are counted: a talk call brings at least StasisStart, PlaybackStarted,
        # PlaybackFinished and StasisEnd.
        events = (REGISTRY.get_sample_value("ari_bridge_ari_events_total") or 0.0) - events_before
        assert events >= 4

        # Answer, play, hangup and the rest: none of them over HTTP. (GETs are left out: the
        # reconciliation after the connect lists the application's channels over HTTP.)
        assert _observed("POST", "http") == before["POST", "http"]
        assert _observed("DELETE", "http") == before["DELETE", "http"]
        assert _observed("POST", "websocket") - before["POST", "websocket"] >= 2
        assert gateway.requests_sent["websocket"] - ws_before >= 3
    finally:
        await service.stop()


async def test_http_setting_keeps_every_request_on_http(lab, webhooks, tmp_path, dial) -> None:
    service = BridgeService(bridge_config(lab, webhooks, tmp_path, rest_transport="http"))
    await service.start()
    try:
        assert await service.gateway.wait_connected(20), service.gateway.last_error
        gateway = service.gateway
        assert gateway.rest_transport == "http"
        http_before = gateway.requests_sent["http"]

        await _call(webhooks, dial)

        assert gateway.requests_sent["websocket"] == 0
        assert gateway.requests_sent["http"] - http_before >= 3
    finally:
        await service.stop()


@pytest.mark.parametrize("bridge", ["websocket"], indirect=True)
async def test_errors_over_the_websocket_are_the_ones_http_gives(bridge) -> None:
    gateway = bridge.gateway
    assert gateway.rest_transport == "websocket"
    sent_before = gateway.requests_sent["websocket"]

    with pytest.raises(ChannelGone) as gone:
        await gateway.answer("no-such-channel")
    assert gone.value.status == 404
    assert gone.value.details == "Channel not found"
    with pytest.raises(AriError) as missing:
        await gateway.request("GET", "/bridges/no-such-bridge")
    assert type(missing.value) is AriError and missing.value.status == 404
    # What callers treat as "already done" still is.
    assert await gateway.stop_playback("no-such-playback") is False
    await gateway.hangup("no-such-channel")
    await gateway.destroy_bridge("no-such-bridge")
    # A request with query parameters and a JSON body, and its answer.
    await gateway.create_bridge("transport-test", name="a name & more")
    try:
        info = await gateway.request("GET", "/bridges/transport-test")
        assert info["name"] == "a name & more"
    finally:
        await gateway.destroy_bridge("transport-test")
    # A JSON body: the event filter, set again as the gateway set it at connect.
    allowed = [{"type": kind} for kind in (*SUBSCRIBED_EVENTS, "RESTResponse")]
    app = await gateway.request("PUT", f"/applications/{gateway.app}/eventFilter",
                                body={"allowed": allowed})
    assert app["events_allowed"] == allowed
    assert gateway.requests_sent["websocket"] - sent_before == 9
