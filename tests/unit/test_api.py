"""The REST API against a fake engine: authentication, validation, error format, call history,
files and the OpenAPI description. (The real thing, with the official SDK and the lab, is in
tests/integration/test_rest_api.py.)"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import jsonschema
import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.api import FileStore, KeyRing, RestApi
from bridge.api.auth import AuthError
from bridge.api.openapi import spec
from bridge.calls.history import CallEntry, CallHistory
from bridge.calls.session import CallState
from bridge.calls.store import CallRecord
from bridge.config import ConfigError, load_config
from bridge.media import MediaError
from bridge.ncco.models import parse_ncco
from tests.keys import new_keypair

PRIVATE, PUBLIC = new_keypair()
OTHER_PRIVATE, OTHER_PUBLIC = new_keypair()


def token(app_id: str = "app-a", key: str = PRIVATE, **claims: Any) -> str:
    now = int(time.time())
    body = {"application_id": app_id, "iat": now, "jti": str(uuid.uuid4()), "exp": now + 900}
    body.update(claims)
    body = {k: v for k, v in body.items() if v is not None}
    return jwt.encode(body, key, algorithm="RS256")


def auth(app_id: str = "app-a", **claims: Any) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(app_id, **claims)}"}


def config(tmp: Path, **extra: Any) -> Any:
    key_file = tmp / "b.pem"
    key_file.write_text(OTHER_PUBLIC)
    return load_config(None, environ={}, overrides={
        "applications": [
            {"id": "app-a", "answer_url": "http://127.0.0.1:1/a", "public_key": PUBLIC},
            {"id": "app-b", "answer_url": "http://127.0.0.1:1/b",
             "public_key_path": str(key_file)},
            {"id": "app-nokey", "answer_url": "http://127.0.0.1:1/c"},
        ],
        "numbers": {"15550001000": "app-a", "*": "app-b"},
        "recordings": {"path": str(tmp / "recordings")},
        "http": {"max_body_bytes": 4096},
        **extra,
    })


# ----------------------------------------------------------------------------- fakes
@dataclass
class FakeGateway:
    calls: list[tuple[str, ...]] = field(default_factory=list)

    async def hangup(self, channel_id: str, reason: str = "normal") -> None:
        self.calls.append(("hangup", channel_id))

    async def mute(self, channel_id: str, direction: str) -> None:
        self.calls.append(("mute", channel_id, direction))

    async def unmute(self, channel_id: str, direction: str) -> None:
        self.calls.append(("unmute", channel_id, direction))

    async def send_dtmf(self, channel_id: str, digits: str, between_ms: int = 100) -> None:
        self.calls.append(("dtmf", channel_id, digits))


class FakeMedia:
    async def tts(self, text: str, voice: Any, level: float = 0.0) -> Any:
        return SimpleNamespace(media_id="speech", duration_s=1.0)

    async def fetch(self, url: str, level: float = 0.0) -> Any:
        if url.endswith("/missing.mp3"):
            raise MediaError("http 404", f"{url} answered 404", url=url)
        return SimpleNamespace(media_id="file", duration_s=2.0)


class FakeSession:
    def __init__(self, app_id: str, number: str, answered: bool = True) -> None:
        self.uuid = str(uuid.uuid4())
        self.conversation_uuid = "CON-" + str(uuid.uuid4())
        self.channel_id = "chan-" + self.uuid[:8]
        self.record = CallRecord(
            uuid=self.uuid, conversation_uuid=self.conversation_uuid,
            channel_id=self.channel_id, application_id=app_id, direction="inbound",
            from_number="15550001111", to_number=number, started_at="", answered_at=None,
            ncco=[], position=0)
        self.started = datetime.now(UTC)
        self.answered = self.started if answered else None
        self.state = CallState.RUNNING
        self.gone = asyncio.Event()
        self.disconnected_by = "platform"
        self.final_status = "completed"
        self.hung_up = False
        self.transferred: list[Any] = []
        self.spawned: list[str] = []
        self.media = FakeMedia()
        import structlog
        self.log = structlog.get_logger("fake")

    def transfer(self, actions: list[Any]) -> None:
        self.transferred.append(actions)

    async def hang_up(self) -> None:
        self.hung_up = True

    def run_beside(self, coro: Any, name: str) -> asyncio.Task[Any]:
        coro.close()  # nothing plays here: no Asterisk behind the fake
        self.spawned.append(name)
        return asyncio.ensure_future(asyncio.sleep(0))


class FakeEngine:
    def __init__(self) -> None:
        self.sessions: dict[str, Any] = {}
        self.history = CallHistory(limit=50)
        self.gateway = FakeGateway()

    def add(self, session: FakeSession) -> FakeSession:
        # A session reaches Asterisk through its own link's gateway and services.
        session.gateway = self.gateway  # type: ignore[attr-defined]
        session.services = self  # type: ignore[attr-defined]
        self.sessions[session.uuid] = session
        return session

    def parse(self, data: Any) -> list[Any]:
        return parse_ncco(data)

    def public_url(self) -> str:
        return "http://127.0.0.1:1"

    def media_uri(self, media_id: str) -> str:
        return f"sound:{self.public_url()}/media/{media_id}.wav"

    @property
    def services(self) -> FakeEngine:
        """The shared services the API uses (here: the media URIs above)."""
        return self


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[tuple[TestClient[Any, Any], FakeEngine]]:
    cfg = config(tmp_path)
    engine = FakeEngine()
    app = web.Application(client_max_size=cfg.http.max_body_bytes)
    rest = RestApi(cfg, FileStore(cfg.recordings.path), lambda: engine)  # type: ignore[arg-type,return-value]
    rest.register(app)
    client = TestClient(TestServer(app))
    await client.start_server()
    yield client, engine
    await client.close()


def _error_shape(body: dict[str, Any]) -> None:
    assert set(body) >= {"type", "title", "error_title", "detail"}
    assert body["type"].startswith("https://")


# -------------------------------------------------------------------------------- auth
def test_keyring_accepts_sdk_style_token_and_rejects_the_rest(tmp_path):
    keys = KeyRing(config(tmp_path))
    assert keys.verify(token()).application_id == "app-a"
    assert keys.verify(token("app-b", OTHER_PRIVATE)).application_id == "app-b"
    now = time.time()
    bad = {
        "forged": token("app-a", OTHER_PRIVATE),
        "other app's key": token("app-b", PRIVATE),
        "unknown app": token("nobody"),
        "app without key": token("app-nokey"),
        "expired": token(iat=int(now) - 2000, exp=int(now) - 100),
        "issued in the future": token(iat=int(now) + 300, exp=int(now) + 900),
        "no iat": token(iat=None),
        "too long-lived": token(exp=int(now) + 3 * 86400),
        "hs256": jwt.encode({"application_id": "app-a", "iat": int(now)}, "secret" * 6,
                            algorithm="HS256"),
        "garbage": "not.a.jwt",
    }
    for name, value in bad.items():
        with pytest.raises(AuthError):
            keys.verify(value)
        assert name
    # Skew within 30 s is accepted both ways; no exp means iat + 15 minutes.
    assert keys.verify(token(iat=int(now) + 20)).application_id == "app-a"
    assert keys.verify(token(iat=int(now) - 940, exp=int(now) - 10)).application_id == "app-a"
    assert keys.verify(token(exp=None)).application_id == "app-a"
    with pytest.raises(AuthError):
        keys.verify(token(iat=int(now) - 1000, exp=None))


def test_bad_public_key_config_names_the_key(tmp_path):
    cfg = load_config(None, environ={}, overrides={"applications": [
        {"id": "x", "answer_url": "http://127.0.0.1:1/a", "public_key": "nope"}]})
    with pytest.raises(ConfigError, match=r"applications\.x\.public_key"):
        KeyRing(cfg)
    cfg = load_config(None, environ={}, overrides={"applications": [
        {"id": "x", "answer_url": "http://127.0.0.1:1/a",
         "public_key_path": str(tmp_path / "missing.pem")}]})
    with pytest.raises(ConfigError, match=r"applications\.x\.public_key_path"):
        KeyRing(cfg)


@pytest.mark.parametrize("headers", [
    {},
    {"Authorization": "Basic abc"},
    {"Authorization": "Bearer "},
    {"Authorization": "Bearer x.y.z"},
    {"Authorization": f"Bearer {token('app-a', OTHER_PRIVATE)}"},
    {"Authorization": f"Bearer {token(iat=1, exp=2)}"},
])
async def test_every_v1_route_needs_a_valid_token(api, headers, caplog):
    client, engine = api
    session = engine.add(FakeSession("app-a", "1555"))
    for method, path in [("GET", "/v1/calls"), ("POST", "/v1/calls"),
                         ("GET", f"/v1/calls/{session.uuid}"),
                         ("PUT", f"/v1/calls/{session.uuid}"),
                         ("PUT", f"/v1/calls/{session.uuid}/talk"),
                         ("DELETE", f"/v1/calls/{session.uuid}/stream"),
                         ("PUT", f"/v1/calls/{session.uuid}/dtmf"),
                         ("GET", f"/v1/files/{uuid.uuid4()}")]:
        resp = await client.request(method, path, headers=headers, json={"action": "hangup"})
        assert resp.status == 401, (method, path)
        body = await resp.json()
        _error_shape(body)
        assert body["title"] == "Unauthorized"
    assert engine.gateway.calls == []
    token_text = headers.get("Authorization", "").partition(" ")[2]
    if len(token_text) > 10:
        assert token_text not in caplog.text


async def test_a_call_of_another_application_is_not_found(api):
    client, engine = api
    session = engine.add(FakeSession("app-a", "1555"))
    other = auth("app-b", key=OTHER_PRIVATE)
    resp = await client.get(f"/v1/calls/{session.uuid}", headers=other)
    assert resp.status == 404
    _error_shape(await resp.json())
    resp = await client.put(f"/v1/calls/{session.uuid}", headers=other, json={"action": "hangup"})
    assert resp.status == 404
    resp = await client.get("/v1/calls", headers=other)
    assert (await resp.json())["count"] == 0
    assert engine.gateway.calls == []


# --------------------------------------------------------------------- live-call actions
async def test_put_actions_reach_the_gateway(api):
    client, engine = api
    s = engine.add(FakeSession("app-a", "1555"))
    for action in ("mute", "unmute", "earmuff", "unearmuff", "hangup"):
        resp = await client.put(f"/v1/calls/{s.uuid}", headers=auth(), json={"action": action})
        assert resp.status == 204, await resp.text()
    assert engine.gateway.calls == [
        ("mute", s.channel_id, "in"), ("unmute", s.channel_id, "in"),
        ("mute", s.channel_id, "out"), ("unmute", s.channel_id, "out")]
    assert s.hung_up  # through the session, so the hangup is reported as the platform's
    resp = await client.put(f"/v1/calls/{s.uuid}/dtmf", headers=auth(), json={"digits": "12p#"})
    assert resp.status == 200
    assert await resp.json() == {"message": "DTMF sent", "uuid": s.uuid}
    assert engine.gateway.calls[-1] == ("dtmf", s.channel_id, "12w#")


async def test_talk_and_stream_start_and_stop(api):
    client, engine = api
    s = engine.add(FakeSession("app-a", "1555"))
    resp = await client.put(f"/v1/calls/{s.uuid}/talk", headers=auth(),
                            json={"text": "hello", "loop": 0, "language": "en-GB"})
    assert await resp.json() == {"message": "Talk started", "uuid": s.uuid}
    resp = await client.delete(f"/v1/calls/{s.uuid}/talk", headers=auth())
    assert await resp.json() == {"message": "Talk stopped", "uuid": s.uuid}
    resp = await client.put(f"/v1/calls/{s.uuid}/stream", headers=auth(),
                            json={"stream_url": ["http://127.0.0.1:1/a.mp3"]})
    assert await resp.json() == {"message": "Stream started", "uuid": s.uuid}
    resp = await client.delete(f"/v1/calls/{s.uuid}/stream", headers=auth())
    assert await resp.json() == {"message": "Stream stopped", "uuid": s.uuid}
    assert s.spawned == ["api-talk", "api-stream"]
    resp = await client.put(f"/v1/calls/{s.uuid}/stream", headers=auth(),
                            json={"stream_url": "http://127.0.0.1:1/missing.mp3"})
    body = await resp.json()
    assert resp.status == 400 and "http 404" in body["detail"]
    unanswered = engine.add(FakeSession("app-a", "1556", answered=False))
    resp = await client.put(f"/v1/calls/{unanswered.uuid}/talk", headers=auth(),
                            json={"text": "hello"})
    assert resp.status == 400


async def test_transfer_validates_the_ncco_and_names_the_field(api):
    client, engine = api
    s = engine.add(FakeSession("app-a", "1555"))
    good = {"action": "transfer",
            "destination": {"type": "ncco", "ncco": [{"action": "talk", "text": "hi"}]}}
    resp = await client.put(f"/v1/calls/{s.uuid}", headers=auth(), json=good)
    assert resp.status == 204
    assert [a.action for a in s.transferred[0]] == ["talk"]
    bad = {"action": "transfer",
           "destination": {"type": "ncco", "ncco": [{"action": "talk", "text": "hi",
                                                     "loop": 500}]}}
    resp = await client.put(f"/v1/calls/{s.uuid}", headers=auth(), json=bad)
    body = await resp.json()
    assert resp.status == 400
    assert body["invalid_parameters"][0]["name"] == "destination.ncco[0].loop"
    for destination in (None, {"type": "ncco"}, {"type": "url", "ncco": []}):
        resp = await client.put(f"/v1/calls/{s.uuid}", headers=auth(),
                                json={"action": "transfer", "destination": destination})
        assert resp.status == 400
    assert len(s.transferred) == 1


async def test_ended_and_unknown_calls(api):
    client, engine = api
    s = FakeSession("app-a", "1555")
    engine.history.record_ended(s)  # type: ignore[arg-type]
    resp = await client.put(f"/v1/calls/{s.uuid}", headers=auth(), json={"action": "hangup"})
    assert resp.status == 400
    assert "ended" in (await resp.json())["detail"]
    resp = await client.get(f"/v1/calls/{s.uuid}", headers=auth())
    body = await resp.json()
    assert body["status"] == "completed" and body["end_time"]
    resp = await client.put(f"/v1/calls/{uuid.uuid4()}/talk", headers=auth(),
                            json={"text": "x"})
    assert resp.status == 404


@pytest.mark.parametrize(("path", "body", "field"), [
    ("/v1/calls/{u}", {"action": "explode"}, "action"),
    ("/v1/calls/{u}/talk", {"text": ""}, "text"),
    ("/v1/calls/{u}/talk", {"text": "x", "loop": -1}, "loop"),
    ("/v1/calls/{u}/talk", {"text": "x", "level": 2}, "level"),
    ("/v1/calls/{u}/talk", {"text": "x", "language": "not a language!"}, "language"),
    ("/v1/calls/{u}/talk", {"text": "x", "voice_name": "Nobody"}, "voice_name"),
    ("/v1/calls/{u}/stream", {"stream_url": ["ftp://x/y.mp3"]}, "stream_url"),
    ("/v1/calls/{u}/stream", {}, "stream_url"),
    ("/v1/calls/{u}/dtmf", {"digits": "12x"}, "digits"),
])
async def test_bodies_are_validated_with_the_field_named(api, path, body, field):
    client, engine = api
    s = engine.add(FakeSession("app-a", "1555"))
    resp = await client.put(path.format(u=s.uuid), headers=auth(), json=body)
    assert resp.status == 400
    payload = await resp.json()
    _error_shape(payload)
    assert payload["invalid_parameters"][0]["name"] == field
    assert engine.gateway.calls == []


@pytest.mark.parametrize(("body", "field"), [
    ({"to": [{"type": "phone", "number": "15551230000"}]}, "ncco"),
    ({"to": [{"type": "phone", "number": "abc"}], "ncco": [], "from": "1555"}, "to[0].number"),
    ({"to": [{"type": "vbc", "extension": "1"}], "ncco": [], "from": "1555"}, "to[0]"),
    ({"to": [{"type": "phone", "number": "15551230000"}], "ncco": [{"action": "talk"}],
      "from": {"type": "phone", "number": "15550001000"}}, "ncco[0].text"),
    ({"to": [{"type": "phone", "number": "15551230000"}], "answer_url": ["x"],
      "from": "1555"}, "answer_url"),
    ({"to": [{"type": "phone", "number": "15551230000"}], "answer_url": ["http://a/b"]},
     "from"),
    ({"to": [{"type": "phone", "number": "15551230000"}], "answer_url": ["http://a/b"],
      "from": "1555", "length_timer": 0}, "length_timer"),
])
async def test_create_call_validation(api, body, field):
    client, _ = api
    resp = await client.post("/v1/calls", headers=auth(), json=body)
    assert resp.status == 400, await resp.text()
    payload = await resp.json()
    assert payload["invalid_parameters"][0]["name"].startswith(field), payload


async def test_malformed_and_oversized_bodies(api):
    client, engine = api
    s = engine.add(FakeSession("app-a", "1555"))
    for raw in (b"{", b"[]", b"\xff\xfe", b"null", b'"text"'):
        resp = await client.put(f"/v1/calls/{s.uuid}", headers={**auth(),
                                "Content-Type": "application/json"}, data=raw)
        assert resp.status == 400
        _error_shape(await resp.json())
    resp = await client.put(f"/v1/calls/{s.uuid}/talk", headers=auth(),
                            json={"text": "x" * 10_000})
    assert resp.status == 413
    _error_shape(await resp.json())
    resp = await client.patch(f"/v1/calls/{s.uuid}", headers=auth(), json={})
    assert resp.status == 405
    resp = await client.get("/v1/nothing", headers=auth())
    assert resp.status == 404
    _error_shape(await resp.json())


# ---------------------------------------------------------------------------- history
async def test_list_calls_filters_pages_and_links(api):
    client, engine = api
    ended = []
    for i in range(5):
        s = FakeSession("app-a", f"1555000{i}")
        s.started = datetime(2024, 1, 1, 12, i, tzinfo=UTC)
        s.answered = s.started
        engine.history.record_ended(s)  # type: ignore[arg-type]
        ended.append(s)
    live = engine.add(FakeSession("app-a", "15559999"))
    engine.add(FakeSession("app-b", "15558888"))
    resp = await client.get("/v1/calls", headers=auth(), params={"page_size": "2"})
    body = await resp.json()
    assert body["count"] == 6 and body["page_size"] == 2 and body["record_index"] == 0
    assert [c["uuid"] for c in body["_embedded"]["calls"]] == [ended[0].uuid, ended[1].uuid]
    assert "record_index=2" in body["_links"]["next"]["href"]
    assert "prev" not in body["_links"]
    resp = await client.get("/v1/calls", headers=auth(),
                            params={"page_size": "2", "record_index": "4"})
    body = await resp.json()
    assert [c["uuid"] for c in body["_embedded"]["calls"]] == [ended[4].uuid, live.uuid]
    assert "next" not in body["_links"] and "prev" in body["_links"]
    resp = await client.get("/v1/calls", headers=auth(), params={"status": "answered"})
    assert [c["uuid"] for c in (await resp.json())["_embedded"]["calls"]] == [live.uuid]
    resp = await client.get("/v1/calls", headers=auth(), params={
        "date_start": "2024-01-01T12:01:00Z", "date_end": "2024-01-01T12:03:00Z",
        "order": "desc"})
    assert [c["uuid"] for c in (await resp.json())["_embedded"]["calls"]] == [
        ended[3].uuid, ended[2].uuid, ended[1].uuid]
    resp = await client.get("/v1/calls", headers=auth(),
                            params={"conversation_uuid": ended[2].conversation_uuid})
    assert (await resp.json())["count"] == 1
    for bad in ({"page_size": "0"}, {"page_size": "101"}, {"order": "up"},
                {"status": "dancing"}, {"date_start": "yesterday"},
                {"date_start": "2024-01-01T00:00:00"}, {"record_index": "-1"}):
        resp = await client.get("/v1/calls", headers=auth(), params=bad)
        assert resp.status == 400, bad
        assert (await resp.json())["invalid_parameters"][0]["name"] == next(iter(bad))


async def test_responses_match_the_openapi_description_and_sdk_models(api):
    from vonage_voice.models.responses import CallInfo, CallList

    client, engine = api
    s = FakeSession("app-a", "15550000")
    engine.history.record_ended(s)  # type: ignore[arg-type]
    engine.add(FakeSession("app-a", "sip:alice@example.org", answered=False))
    document = spec()
    resp = await client.get("/v1/calls", headers=auth())
    body = await resp.json()
    _validate(document, "CallList", body)
    assert len(CallList(**body).embedded.calls) == 2
    resp = await client.get(f"/v1/calls/{s.uuid}", headers=auth())
    body = await resp.json()
    _validate(document, "Call", body)
    info = CallInfo(**body)
    assert info.link == f"http://{client.host}:{client.port}/v1/calls/{s.uuid}"
    resp = await client.get("/v1/calls", headers=auth(), params={"page_size": "x"})
    _validate(document, "Error", await resp.json())
    live = engine.add(FakeSession("app-a", "15550000"))
    resp = await client.put(f"/v1/calls/{live.uuid}/dtmf", headers=auth(), json={"digits": "1"})
    _validate(document, "CallMessage", await resp.json())


def _validate(document: dict[str, Any], name: str, instance: Any) -> None:
    schema = {**document["components"]["schemas"][name],
              "components": document["components"]}
    jsonschema.validate(instance, schema)


def test_history_is_bounded_and_live_sessions_win():
    history = CallHistory(limit=3)
    sessions = [FakeSession("a", str(i)) for i in range(5)]
    for s in sessions:
        history.record_ended(s)  # type: ignore[arg-type]
    assert len(history) == 3
    assert history.get(sessions[0].uuid) is None
    entry = history.get(sessions[4].uuid)
    assert isinstance(entry, CallEntry) and entry.status == "completed"
    live = history.get(sessions[4].uuid, [sessions[4]])  # type: ignore[list-item]
    assert live is not None and live.status == "answered"


# ------------------------------------------------------------------------------ files
async def test_files_are_served_by_opaque_id_and_nothing_else(api, tmp_path):
    client, _ = api
    store = FileStore(tmp_path / "recordings")
    src = tmp_path / "rec.mp3"
    src.write_bytes(b"ID3 fake mp3")
    file_id = store.add(src)
    owned_src = tmp_path / "b.wav"
    owned_src.write_bytes(b"RIFF")
    owned = store.add(owned_src, application_id="app-b")
    resp = await client.get(f"/v1/files/{file_id}", headers=auth())
    assert resp.status == 200
    assert await resp.read() == b"ID3 fake mp3"
    assert resp.headers["Content-Type"] == "audio/mpeg"
    assert not src.exists()
    resp = await client.get(f"/v1/files/{owned}", headers=auth())
    assert resp.status == 404  # another application's recording
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET-CONTENT")
    for probe in ("../secret.txt", "..%2Fsecret.txt", "%2e%2e%2fsecret.txt",
                  file_id + ".mp3", str(uuid.uuid4()), file_id.upper(), "..", "."):
        resp = await client.get(f"/v1/files/{probe}", headers=auth())
        assert resp.status == 404, probe
        assert b"TOP-SECRET-CONTENT" not in await resp.read()
    (store.root / f"{uuid.uuid4()}.wav").symlink_to(secret)
    for link in store.root.glob("*.wav"):
        if link.is_symlink():
            assert store.path_for(link.stem) is None
    assert FileStore.url("http://h:1/", file_id) == f"http://h:1/v1/files/{file_id}"


# ---------------------------------------------------------------------- property-based
_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**12, 10**12) | st.floats(allow_nan=False)
    | st.text(max_size=30),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.sampled_from(["action", "destination", "ncco", "url", "type", "text",
                                       "loop", "level", "digits", "stream_url", "to", "from",
                                       "number", "answer_url", "language", "style", "x"]),
                      children, max_size=5),
    max_leaves=20,
)


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    method_path=st.sampled_from([("PUT", ""), ("PUT", "/talk"), ("PUT", "/stream"),
                                 ("PUT", "/dtmf"), ("POST", "!"), ("GET", "!")]),
    body=_json_values,
    query=st.dictionaries(st.sampled_from(["page_size", "record_index", "order", "status",
                                           "date_start", "date_end", "conversation_uuid"]),
                          st.text(max_size=12), max_size=4),
)
def test_no_malformed_request_gets_a_5xx(tmp_path_factory, method_path, body, query):
    tmp = tmp_path_factory.mktemp("fuzz")

    async def run() -> None:
        cfg = config(tmp)
        engine = FakeEngine()
        app = web.Application(client_max_size=cfg.http.max_body_bytes)
        RestApi(cfg, FileStore(cfg.recordings.path), lambda: engine).register(app)  # type: ignore[arg-type,return-value]
        s = engine.add(FakeSession("app-a", "1555"))
        async with TestClient(TestServer(app)) as client:
            method, suffix = method_path
            path = "/v1/calls" if suffix == "!" else f"/v1/calls/{s.uuid}{suffix}"
            resp = await client.request(method, path, headers=auth(), json=body,
                                        params=query if method == "GET" else None)
            assert resp.status < 500, await resp.text()
            payload = await resp.json()
            if resp.status >= 400:
                _error_shape(payload)

    asyncio.run(run())


def test_openapi_describes_exactly_the_routes(tmp_path):
    app = web.Application()
    RestApi(config(tmp_path), FileStore(tmp_path), lambda: None).register(app)
    routed = {
        (route.method.lower(), route.resource.canonical)
        for route in app.router.routes()
        if route.resource is not None and route.resource.canonical.startswith("/v1")
        and route.method != "HEAD"
    }
    document = spec()
    described = {
        (method, path) for path, item in document["paths"].items()
        for method in item if method in ("get", "put", "post", "delete", "patch")
    }
    assert routed == described
    jsonschema.Draft202012Validator.check_schema(
        {"$defs": document["components"]["schemas"]})


# ------------------------------------------------------------------ deeply nested JSON
@pytest.fixture
async def roomy_api(tmp_path: Path) -> AsyncIterator[tuple[TestClient[Any, Any], FakeEngine]]:
    """The API with a 1 MiB body limit: a body of 100,000 "[" must reach the JSON parser."""
    cfg = config(tmp_path, http={"max_body_bytes": 1 << 20})
    engine = FakeEngine()
    app = web.Application(client_max_size=cfg.http.max_body_bytes)
    rest = RestApi(cfg, FileStore(cfg.recordings.path), lambda: engine)  # type: ignore[arg-type,return-value]
    rest.register(app)
    client = TestClient(TestServer(app))
    await client.start_server()
    yield client, engine
    await client.close()


JSON_ENDPOINTS = [("POST", "/v1/calls"), ("PUT", "/v1/calls/{u}"), ("PUT", "/v1/calls/{u}/talk"),
                  ("PUT", "/v1/calls/{u}/stream"), ("PUT", "/v1/calls/{u}/dtmf")]


@pytest.mark.parametrize(("method", "path"), JSON_ENDPOINTS)
@pytest.mark.parametrize("body", [b"[" * 100_000, b'{"a":' * 50_000, b"[" * 500 + b"]" * 500],
                         ids=["100k [", "50k objects", "500 closed arrays"])
async def test_deeply_nested_json_is_a_400_naming_the_cause(roomy_api, method, path, body):
    client, engine = roomy_api
    s = engine.add(FakeSession("app-a", "1555"))
    resp = await client.request(method, path.format(u=s.uuid), data=body, headers={
        **auth(), "Content-Type": "application/json"})
    assert resp.status == 400, await resp.text()
    payload = await resp.json()
    _error_shape(payload)
    assert "nested too deeply" in payload["detail"]
    assert engine.gateway.calls == [] and s.transferred == []


async def test_an_ncco_nested_beyond_the_limit_is_refused_with_its_cause(roomy_api):
    """Nesting that json.loads accepts but nothing after it could store: a clear 400."""
    client, engine = roomy_api
    s = engine.add(FakeSession("app-a", "1555"))
    deep: Any = "x"
    for _ in range(70):
        deep = [deep]
    ncco = [{"action": "notify", "eventUrl": ["http://127.0.0.1:1/n"], "payload": {"d": deep}}]
    resp = await client.put(f"/v1/calls/{s.uuid}", headers=auth(), json={
        "action": "transfer", "destination": {"type": "ncco", "ncco": ncco}})
    assert resp.status == 400
    assert "nested too deeply" in (await resp.json())["detail"]
    shallow = [{"action": "notify", "eventUrl": ["http://127.0.0.1:1/n"],
                "payload": {"d": [[["x"]]]}}]
    resp = await client.put(f"/v1/calls/{s.uuid}", headers=auth(), json={
        "action": "transfer", "destination": {"type": "ncco", "ncco": shallow}})
    assert resp.status == 204
    assert len(s.transferred) == 1
