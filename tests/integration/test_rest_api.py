"""The Vonage-compatible REST API driven by the official ``vonage`` SDK, against a running bridge
and real calls in the lab; and signed webhooks, verified as an application would.

The SDK is synchronous (requests), so every SDK call runs in a thread while the bridge keeps
serving on the test's event loop. The SDK always builds ``https://{api_host}{path}``; an adapter
mounted on its session sends those requests over plain HTTP to the bridge on loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import jwt
import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from requests.adapters import HTTPAdapter
from vonage import Auth, HttpClientOptions, Vonage
from vonage_http_client.errors import AuthenticationError, FileStreamingError, NotFoundError
from vonage_voice.models.ncco import Notify, Talk, Wait
from vonage_voice.models.requests import (
    AudioStreamOptions,
    CreateCallRequest,
    ListCallsFilter,
    TtsStreamOptions,
)

from bridge.api.auth import LEEWAY_S
from bridge.app import API_KEY, BridgeService
from bridge.calls.session import CallSession
from bridge.config import ApplicationConfig, RecordingsConfig
from bridge.lab import LabInfo
from bridge.lab.sipp import Agent, RtpReceiver, SippResult, place_call
from bridge.webhooks import encode_body, payload_hash
from tests.integration.conftest import bridge_config
from tests.integration.harness import Recorded, Reply, WebhookApp, new_number
from tests.keys import new_keypair
from tests.polling import until

pytestmark = pytest.mark.integration

API_APP = "api-app"
OTHER_APP = "api-other"
SIGNED_APP = "signed-app"
SECRET = "a-webhook-signature-secret-of-32-chars!"


@pytest.fixture(scope="module")
def keys() -> dict[str, tuple[str, str]]:
    return {API_APP: new_keypair(), OTHER_APP: new_keypair(), "stranger": new_keypair()}


async def _start_bridge(lab: LabInfo, webhooks: WebhookApp, tmp: Path,
                        keys: dict[str, tuple[str, str]], default_app: str,
                        routes: dict[str, int] | None = None) -> BridgeService:
    base = bridge_config(lab, webhooks, tmp, routes=routes)
    template = base.application("main")
    assert template is not None
    key_file = tmp / "other.pem"
    key_file.write_text(keys[OTHER_APP][1])
    apps = [
        *base.applications,
        template.model_copy(update={"id": API_APP, "public_key": keys[API_APP][1]}),
        template.model_copy(update={"id": OTHER_APP, "public_key_path": key_file}),
        ApplicationConfig.model_validate({
            **template.model_dump(exclude={"id", "signature_secret"}),
            "id": SIGNED_APP, "signature_secret": SECRET}),
    ]
    config = base.model_copy(update={
        "applications": apps,
        "numbers": {**base.numbers, "*": default_app},
        "recordings": RecordingsConfig(path=tmp / "recordings"),
    })
    service = BridgeService(config)
    await service.start()
    assert await service.gateway.wait_connected(20), service.gateway.last_error
    return service


@pytest.fixture
async def api_bridge(lab, webhooks, tmp_path, keys) -> AsyncIterator[BridgeService]:
    from tests.integration.conftest import _hang_up_leftovers

    service = await _start_bridge(lab, webhooks, tmp_path, keys, API_APP)
    yield service
    await service.stop()
    await _hang_up_leftovers(lab)


class _PlainHttp(HTTPAdapter):
    """The SDK speaks https only; the bridge under test listens on plain HTTP on loopback."""

    def send(self, request: Any, *args: Any, **kwargs: Any) -> Any:
        request.url = "http://" + request.url.removeprefix("https://")
        return super().send(request, *args, **kwargs)


def sdk(service: BridgeService, app_id: str, private_key: str) -> Vonage:
    client = Vonage(Auth(application_id=app_id, private_key=private_key),
                    HttpClientOptions(api_host=f"127.0.0.1:{service.port}", max_retries=0,
                                      timeout=30))
    client.http_client._session.mount("https://", _PlainHttp())
    return client


async def in_thread(fn: Callable[..., Any], *args: Any) -> Any:
    return await asyncio.to_thread(fn, *args)


class LiveCall:
    """A sipp caller kept up while the test works on the call through the API."""

    def __init__(self, receiver: RtpReceiver, task: asyncio.Task[SippResult]) -> None:
        self.audio = receiver
        self.task = task

    def last_voiced(self) -> float:
        voiced = [p.arrived for p in self.audio.audio_packets() if _loud(p.payload)]
        return voiced[-1] if voiced else 0.0

    async def hears_audio(self, what: str) -> None:
        start = self.audio.voiced_seconds()
        await until(lambda: self.audio.voiced_seconds() > start + 1.0, what)

    async def goes_quiet(self, what: str, quiet_s: float = 1.5) -> None:
        """No voiced audio for ``quiet_s`` seconds (polled, with a deadline)."""
        await until(lambda: time.monotonic() - self.last_voiced() > quiet_s, what)


def _loud(payload: bytes) -> bool:
    from bridge.lab.sipp import _ULAW

    samples = [_ULAW[b] for b in payload]
    return bool(samples) and (sum(s * s for s in samples) / len(samples)) ** 0.5 > 500


async def dial_and_hold(lab: LabInfo, number: str) -> LiveCall:
    receiver = await RtpReceiver.open()
    task = asyncio.create_task(place_call(lab.sip_host, lab.sip_port, number,
                                          rtp_port=receiver.port, timeout_s=120))
    return LiveCall(receiver, task)


async def live_session(service: BridgeService, number: str) -> CallSession:
    def find() -> CallSession | None:
        return next((s for s in service.engine.sessions.values()
                     if s.record.to_number == number and s.answered is not None), None)

    await until(lambda: find() is not None, f"an answered call to {number}")
    session = find()
    assert session is not None
    return session


HOLD = [{"action": "wait", "timeout": 120}]
SPEECH = "one two three four five six seven eight nine ten eleven twelve thirteen fourteen"


# ------------------------------------------------------------------ the live-call tour
async def test_sdk_controls_a_live_inbound_call(api_bridge, webhooks, lab, keys):
    number = new_number()
    webhooks.answer(number, HOLD)
    client = sdk(api_bridge, API_APP, keys[API_APP][0])
    call = await dial_and_hold(lab, number)
    try:
        session = await live_session(api_bridge, number)
        call_uuid = session.uuid

        # list and get
        calls, _ = await in_thread(client.voice.list_calls, ListCallsFilter(status="answered"))
        assert call_uuid in [c.uuid for c in calls]
        info = await in_thread(client.voice.get_call, call_uuid)
        assert info.status == "answered" and info.direction == "inbound"
        assert info.to.number == number and info.from_.number == "15550001111"
        assert info.conversation_uuid == session.conversation_uuid
        assert info.link.endswith(f"/v1/calls/{call_uuid}")

        # talk beside the NCCO, then stop it
        message = await in_thread(client.voice.play_tts_into_call, call_uuid,
                                  TtsStreamOptions(text=SPEECH, loop=0, language="en-GB"))
        assert message.message == "Talk started" and message.uuid == call_uuid
        await call.hears_audio("REST talk heard")
        message = await in_thread(client.voice.stop_tts, call_uuid)
        assert message.message == "Talk stopped"
        await call.goes_quiet("talk stopped")
        api = api_bridge.app[API_KEY]
        assert api.playing(call_uuid) == []

        # earmuff: a prompt played while earmuffed is not heard; after unearmuff it is.
        # (Asterisk applies mute commands between playbacks, not during one.)
        await in_thread(client.voice.earmuff, call_uuid)
        heard = call.audio.voiced_seconds()
        await in_thread(client.voice.play_tts_into_call, call_uuid,
                        TtsStreamOptions(text="earmuffed " + SPEECH))
        await until(lambda: api.playing(call_uuid) == [], "earmuffed talk finished", 60)
        assert call.audio.voiced_seconds() - heard < 0.2
        await in_thread(client.voice.unearmuff, call_uuid)
        await in_thread(client.voice.play_tts_into_call, call_uuid,
                        TtsStreamOptions(text=SPEECH))
        await call.hears_audio("talk heard after unearmuff")
        await in_thread(client.voice.stop_tts, call_uuid)
        await call.goes_quiet("talk stopped again")

        # stream, then stop it
        message = await in_thread(
            client.voice.play_audio_into_call, call_uuid,
            AudioStreamOptions(stream_url=[f"{webhooks.url}/audio/tone.wav"], loop=0))
        assert message.message == "Stream started"
        await call.hears_audio("REST stream heard")
        await in_thread(client.voice.stop_audio_stream, call_uuid)
        await call.goes_quiet("stream stopped")

        # mute / unmute: Asterisk accepts both directions on the live channel
        await in_thread(client.voice.mute, call_uuid)
        await in_thread(client.voice.unmute, call_uuid)

        # DTMF reaches the caller as RFC 4733 events (payload type 101)
        message = await in_thread(client.voice.play_dtmf_into_call, call_uuid, "12#")
        assert message.message == "DTMF sent"

        def events() -> set[int]:
            return {p.payload[0] for p in call.audio.packets
                    if p.payload_type == 101 and p.payload}

        await until(lambda: events() >= {1, 2, 11}, "RFC 4733 events 1, 2, #")

        # transfer to an NCCO: its notify runs, and the call stays up on its wait
        moved = webhooks.hook(f"moved-{number}", {})
        await in_thread(client.voice.transfer_call_ncco, call_uuid, [
            Notify(payload={"moved": "ncco"}, eventUrl=[moved]), Wait(timeout=120)])
        await webhooks.wait_for(lambda: len(webhooks.of(f"/hook/moved-{number}")) == 1)
        assert webhooks.of(f"/hook/moved-{number}")[0].json == {"moved": "ncco"}

        # transfer to an answer URL: the bridge fetches the NCCO from it
        again = webhooks.hook(f"again-{number}", {})
        ncco_url = webhooks.hook(f"ncco-{number}", [
            {"action": "notify", "payload": {"moved": "url"}, "eventUrl": [again]}, *HOLD])
        await in_thread(client.voice.transfer_call_answer_url, call_uuid, ncco_url)
        await webhooks.wait_for(lambda: len(webhooks.of(f"/hook/again-{number}")) == 1)
        [fetched] = webhooks.of(f"/hook/ncco-{number}")
        assert fetched.method == "GET" and fetched.query["uuid"] == call_uuid

        # hang up
        await in_thread(client.voice.hangup, call_uuid)
        await webhooks.wait_completed(number)
        result = await asyncio.wait_for(call.task, 30)
        assert result.ok, result.errors
        info = await in_thread(client.voice.get_call, call_uuid)
        assert info.status == "completed" and info.end_time and info.duration is not None
        calls, _ = await in_thread(client.voice.list_calls,
                                   ListCallsFilter(conversation_uuid=session.conversation_uuid))
        assert [c.uuid for c in calls] == [call_uuid]
        assert webhooks.errors(number) == []
    finally:
        if not call.task.done():
            await api_bridge.gateway.hangup(session.channel_id)
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(call.task, 30)
        call.audio.close()


async def test_auth_failures_and_foreign_calls(api_bridge, webhooks, lab, keys):
    number = new_number()
    webhooks.answer(number, HOLD)
    call = await dial_and_hold(lab, number)
    try:
        session = await live_session(api_bridge, number)
        forged = sdk(api_bridge, API_APP, keys["stranger"][0])
        unknown = sdk(api_bridge, "no-such-app", keys[API_APP][0])
        for client in (forged, unknown):
            with pytest.raises(AuthenticationError) as info:
                await in_thread(client.voice.get_call, session.uuid)
            body = info.value.response.json()
            assert body["title"] == "Unauthorized" and body["type"].startswith("https://")
            with pytest.raises(AuthenticationError):
                await in_thread(client.voice.hangup, session.uuid)
        # Another configured application does not see this application's call.
        other = sdk(api_bridge, OTHER_APP, keys[OTHER_APP][0])
        with pytest.raises(NotFoundError):
            await in_thread(other.voice.get_call, session.uuid)
        with pytest.raises(NotFoundError):
            await in_thread(other.voice.hangup, session.uuid)
        calls, _ = await in_thread(other.voice.list_calls)
        assert session.uuid not in [c.uuid for c in calls]
        # Expired, future and missing tokens, sent by hand.
        url = f"http://127.0.0.1:{api_bridge.port}/v1/calls/{session.uuid}"
        now = int(time.time())
        private = keys[API_APP][0]
        for claims in ({"iat": now - 2000, "exp": now - LEEWAY_S - 5},
                       {"iat": now + LEEWAY_S + 60, "exp": now + 900}):
            token = jwt.encode({"application_id": API_APP, "jti": str(uuid.uuid4()), **claims},
                               private, algorithm="RS256")
            resp = await in_thread(lambda t=token: requests.get(
                url, headers={"Authorization": f"Bearer {t}"}, timeout=10))
            assert resp.status_code == 401
        resp = await in_thread(lambda: requests.get(url, timeout=10))
        assert resp.status_code == 401 and resp.json()["title"] == "Unauthorized"
        # None of that touched the call.
        assert session.uuid in api_bridge.engine.sessions and not session.gone.is_set()
    finally:
        await api_bridge.gateway.hangup(session.channel_id)
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(call.task, 30)
        call.audio.close()


async def test_files_download_with_the_sdk(api_bridge, keys, tmp_path):
    source = tmp_path / "recording.wav"
    source.write_bytes(b"RIFF" + bytes(range(256)) * 8)
    expected = source.read_bytes()
    file_id = api_bridge.app[API_KEY].files.add(source)
    client = sdk(api_bridge, API_APP, keys[API_APP][0])
    url = f"https://127.0.0.1:{api_bridge.port}/v1/files/{file_id}"
    target = tmp_path / "downloaded.wav"
    await in_thread(client.http_client.download_file_stream, url, str(target))
    assert target.read_bytes() == expected
    with pytest.raises(FileStreamingError):
        await in_thread(client.http_client.download_file_stream,
                        f"https://127.0.0.1:{api_bridge.port}/v1/files/{uuid.uuid4()}",
                        str(tmp_path / "nothing"))
    stranger = sdk(api_bridge, API_APP, keys["stranger"][0])
    with pytest.raises(FileStreamingError):
        await in_thread(stranger.http_client.download_file_stream, url,
                        str(tmp_path / "nothing"))


async def test_openapi_is_served_and_describes_the_sdk_responses(api_bridge, keys, webhooks,
                                                                 lab):
    import jsonschema

    document = (await in_thread(lambda: requests.get(
        f"http://127.0.0.1:{api_bridge.port}/openapi.json", timeout=10))).json()
    assert document["openapi"].startswith("3.")
    assert "/v1/calls/{uuid}/dtmf" in document["paths"]
    number = new_number()
    webhooks.answer(number, [{"action": "talk", "text": "short"}])
    call = await dial_and_hold(lab, number)
    await asyncio.wait_for(call.task, 60)
    call.audio.close()
    await webhooks.wait_completed(number)
    client = sdk(api_bridge, API_APP, keys[API_APP][0])
    await in_thread(client.voice.list_calls)
    raw = client.http_client.last_response.json()
    schema = {**document["components"]["schemas"]["CallList"],
              "components": document["components"]}
    jsonschema.validate(raw, schema)
    assert raw["count"] >= 1


# ------------------------------------------------------------------ outbound calls
async def test_sdk_creates_an_outbound_call(lab, webhooks, tmp_path, keys):
    from tests.integration.conftest import _hang_up_leftovers

    async with Agent(200) as agent:
        service = await _start_bridge(lab, webhooks, tmp_path, keys, API_APP,
                                      routes={"44": agent.port})
        try:
            client = sdk(service, API_APP, keys[API_APP][0])
            number = "44" + new_number()
            created = await in_thread(client.voice.create_call, CreateCallRequest(
                to=[{"type": "phone", "number": number}],
                from_={"number": "15550001111"},
                ncco=[Talk(text="This call was placed with the REST API.")],
                ringing_timer=30, length_timer=60,
            ))
            assert created.status == "started" and created.direction == "outbound"
            assert created.conversation_uuid.startswith("CON-")
            await webhooks.wait_completed(number)
            assert webhooks.statuses(number) == ["started", "ringing", "answered", "completed"]
            assert {e["uuid"] for e in webhooks.events(number)} == {created.uuid}
            assert agent.receiver is not None and agent.receiver.voiced_seconds() > 1.0
            info = await in_thread(client.voice.get_call, created.uuid)
            assert info.direction == "outbound" and info.status == "completed"
            assert info.to.number == number and info.from_.number == "15550001111"

            # answer_url instead of an NCCO, and a per-call event_url
            other = "44" + new_number()
            webhooks.answer(other, [{"action": "talk", "text": "Fetched for the REST call."}])
            created = await in_thread(client.voice.create_call, CreateCallRequest(
                to=[{"type": "phone", "number": other}], from_={"number": "15550001111"},
                answer_url=[f"{webhooks.url}/answer"], event_url=[f"{webhooks.url}/event"],
            ))
            await webhooks.wait_completed(other)
            [answer] = [r for r in webhooks.of("/answer") if r.query.get("to") == other]
            assert answer.query["uuid"] == created.uuid

            # invalid bodies name the field
            resp = await in_thread(lambda: requests.post(
                f"http://127.0.0.1:{service.port}/v1/calls",
                headers={"Authorization": client.http_client.auth.create_jwt_auth_string()},
                json={"to": [{"type": "phone", "number": number}], "from": "1555",
                      "ncco": [{"action": "talk", "text": "x", "loop": 1000}]}, timeout=10))
            assert resp.status_code == 400
            assert resp.json()["invalid_parameters"][0]["name"] == "ncco[0].loop"
        finally:
            await service.stop()
            await _hang_up_leftovers(lab)


# --------------------------------------------------------------- malformed requests
_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.sampled_from(["action", "destination", "type", "ncco", "url", "text", "loop",
                         "level", "digits", "stream_url", "to", "from", "number", "language",
                         "answer_url", "x"]), inner, max_size=4),
    max_leaves=15,
)


async def test_malformed_requests_never_get_a_5xx_or_hang_a_call(api_bridge, webhooks, lab,
                                                                 keys):
    number = new_number()
    webhooks.answer(number, HOLD)
    call = await dial_and_hold(lab, number)
    session = await live_session(api_bridge, number)
    base = f"http://127.0.0.1:{api_bridge.port}"
    private = keys[API_APP][0]
    seen: list[int] = []

    def headers() -> dict[str, str]:
        now = int(time.time())
        token = jwt.encode({"application_id": API_APP, "iat": now, "exp": now + 900,
                            "jti": str(uuid.uuid4())}, private, algorithm="RS256")
        return {"Authorization": f"Bearer {token}"}

    @settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
    @given(
        target=st.sampled_from([("PUT", ""), ("PUT", "/talk"), ("PUT", "/stream"),
                                ("PUT", "/dtmf"), ("DELETE", "/talk"), ("POST", "!"),
                                ("GET", "!"), ("PATCH", "")]),
        body=_values | st.binary(max_size=64),
        query=st.dictionaries(st.sampled_from(["page_size", "record_index", "order", "status",
                                               "date_start", "conversation_uuid"]),
                              st.text(max_size=10), max_size=3),
    )
    def fuzz(target: tuple[str, str], body: Any, query: dict[str, str]) -> None:
        method, suffix = target
        path = "/v1/calls" if suffix == "!" else f"/v1/calls/{session.uuid}{suffix}"
        kwargs: dict[str, Any] = {"headers": headers(), "timeout": 30}
        if isinstance(body, bytes):
            kwargs["data"] = body
        else:
            kwargs["json"] = body
        # A 'hangup' or 'transfer' the fuzzer happens to build would end the test's call;
        # those are real features, tested above, so they are kept out of this test.
        if isinstance(body, dict) and body.get("action") in ("hangup", "transfer"):
            return
        resp = requests.request(method, base + path, params=query, **kwargs)
        seen.append(resp.status_code)
        assert resp.status_code < 500, (method, path, body, resp.text)
        if resp.status_code >= 400:
            assert {"type", "title", "detail"} <= set(resp.json())

    try:
        await in_thread(fuzz)
        assert seen and all(code < 500 for code in seen)
        # The call was never disturbed, and still answers to the API.
        assert session.uuid in api_bridge.engine.sessions and not session.gone.is_set()
        client = sdk(api_bridge, API_APP, keys[API_APP][0])
        await in_thread(client.voice.hangup, session.uuid)
        await webhooks.wait_completed(number)
        result = await asyncio.wait_for(call.task, 30)
        assert result.ok, result.errors
        await until(lambda: not api_bridge.engine.sessions, "no session left")
    finally:
        if not call.task.done():
            await api_bridge.gateway.hangup(session.channel_id)
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(call.task, 30)
        call.audio.close()


# ------------------------------------------------------------------- signed webhooks
@pytest.fixture
async def signed_bridge(lab, webhooks, tmp_path, keys) -> AsyncIterator[BridgeService]:
    from tests.integration.conftest import _hang_up_leftovers

    service = await _start_bridge(lab, webhooks, tmp_path, keys, SIGNED_APP)
    yield service
    await service.stop()
    await _hang_up_leftovers(lab)


def _check_signature(request: Recorded) -> dict[str, Any]:
    header = request.headers.get("Authorization", "")
    assert header.startswith("Bearer "), (request.path, request.headers)
    claims: dict[str, Any] = jwt.decode(header[7:], SECRET, algorithms=["HS256"])
    assert set(claims) >= {"iat", "jti", "iss", "application_id", "payload_hash"}
    assert claims["application_id"] == SIGNED_APP
    assert abs(claims["iat"] - time.time()) < 120
    body = b"" if request.method == "GET" else encode_body(request.json)
    assert claims["payload_hash"] == payload_hash(body) == hashlib.sha256(body).hexdigest()
    return claims


async def test_webhooks_of_an_application_with_a_secret_are_signed(signed_bridge, webhooks,
                                                                   lab):
    number = new_number()
    notified = webhooks.hook(f"signed-{number}", {})
    webhooks.answer(number, Reply(status=500))  # not retried: the fallback answers
    webhooks.fallback(number, [
        {"action": "notify", "payload": {"signed": True}, "eventUrl": [notified]},
        {"action": "talk", "text": "signed"}])
    call = await dial_and_hold(lab, number)
    result = await asyncio.wait_for(call.task, 60)
    call.audio.close()
    assert result.ok, result.errors
    await webhooks.wait_completed(number)

    def for_number(path: str) -> list[Recorded]:
        return [r for r in webhooks.of(path)
                if r.query.get("to") == number or (isinstance(r.json, dict) and (
                    r.json.get("to") == number or r.json.get("signed")))]

    answer, fallback = for_number("/answer"), for_number("/fallback")
    events = [r for r in webhooks.of("/event") if isinstance(r.json, dict)
              and r.json.get("uuid") == answer[0].query["uuid"]]
    notify = webhooks.of(f"/hook/signed-{number}")
    assert len(answer) == 1 and len(fallback) == 1 and len(notify) == 1 and len(events) >= 4
    jtis = [_check_signature(r)["jti"] for r in [*answer, *fallback, *notify, *events]]
    assert len(set(jtis)) == len(jtis)  # a fresh token for every request


async def test_webhooks_of_an_application_without_a_secret_are_not_signed(api_bridge,
                                                                          webhooks, lab):
    number = new_number()
    webhooks.answer(number, [{"action": "talk", "text": "plain"}])
    call = await dial_and_hold(lab, number)
    await asyncio.wait_for(call.task, 60)
    call.audio.close()
    await webhooks.wait_completed(number)
    answer = [r for r in webhooks.of("/answer") if r.query.get("to") == number]
    assert answer and "Authorization" not in answer[0].headers
