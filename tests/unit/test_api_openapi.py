"""The OpenAPI description (/openapi.json) is valid OpenAPI 3.1 and says what the API does:
request bodies and responses are the pydantic models' schemas. (That every route is described
is checked in test_api.py; real responses are validated there and in the REST integration
tests.)"""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest
from openapi_spec_validator import validate as validate_openapi
from pydantic import BaseModel, ValidationError

from bridge.api import models as m
from bridge.api.openapi import REF_TEMPLATE, spec


def _component(document: dict[str, Any], ref: str) -> dict[str, Any]:
    name = ref.removeprefix("#/components/schemas/")
    return {**document["components"]["schemas"][name], "components": document["components"]}


def _request_schema(document: dict[str, Any], path: str, method: str) -> dict[str, Any]:
    ref = document["paths"][path][method]["requestBody"]["content"]["application/json"][
        "schema"]["$ref"]
    return _component(document, ref)


def _schema_accepts(schema: dict[str, Any], instance: Any) -> bool:
    try:
        jsonschema.validate(instance, schema)
    except jsonschema.ValidationError:
        return False
    return True


def _model_accepts(model: type[BaseModel], instance: Any) -> bool:
    try:
        model.model_validate(instance)
    except ValidationError:
        return False
    return True


def test_the_description_is_valid_openapi_3_1():
    document = spec("http://127.0.0.1:8080")
    assert document["openapi"] == "3.1.0"
    assert document["servers"] == [{"url": "http://127.0.0.1:8080"}]
    validate_openapi(document)  # raises, naming the place, on an invalid description


@pytest.mark.parametrize(("path", "method", "model"), [
    ("/v1/calls", "post", m.CreateCall),
    ("/v1/calls/{uuid}", "put", m.ModifyCall),
    ("/v1/calls/{uuid}/talk", "put", m.StartTalk),
    ("/v1/calls/{uuid}/stream", "put", m.StartStream),
    ("/v1/calls/{uuid}/dtmf", "put", m.SendDtmf),
])
def test_each_request_body_is_the_schema_of_the_model_that_validates_it(path, method, model):
    document = spec()
    schema = _request_schema(document, path, method)
    own = model.model_json_schema(ref_template=REF_TEMPLATE)
    own.pop("$defs", None)
    assert {k: v for k, v in schema.items() if k != "components"} == own


@pytest.mark.parametrize(("path", "model", "body"), [
    ("/v1/calls", m.CreateCall, {"to": [{"type": "phone", "number": "15551230000"}],
                                 "from": {"type": "phone", "number": "15550001000"},
                                 "ncco": [{"action": "talk", "text": "hi"}]}),
    ("/v1/calls", m.CreateCall, {"to": [{"type": "sip", "uri": "sip:a@example.org"}],
                                 "random_from_number": True,
                                 "answer_url": ["http://a.example/answer"]}),
    ("/v1/calls", m.CreateCall, {"to": [{"type": "phone", "number": "abc"}]}),
    ("/v1/calls", m.CreateCall, {"to": [{"type": "vbc", "extension": "1"}]}),
    ("/v1/calls", m.CreateCall, {"to": [{"type": "phone", "number": "1555"}],
                                 "length_timer": 0}),
    ("/v1/calls/{uuid}", m.ModifyCall, {"action": "earmuff"}),
    ("/v1/calls/{uuid}", m.ModifyCall, {"action": "explode"}),
    ("/v1/calls/{uuid}", m.ModifyCall, {"action": "transfer",
                                        "destination": {"type": "ncco", "url": ["http://a/"]}}),
    ("/v1/calls/{uuid}/talk", m.StartTalk, {"text": "hello", "loop": 0, "level": -1}),
    ("/v1/calls/{uuid}/talk", m.StartTalk, {"text": ""}),
    ("/v1/calls/{uuid}/talk", m.StartTalk, {"text": "x", "loop": 101}),
    ("/v1/calls/{uuid}/stream", m.StartStream, {"stream_url": ["http://a/b.mp3"]}),
    ("/v1/calls/{uuid}/stream", m.StartStream, {}),
    ("/v1/calls/{uuid}/dtmf", m.SendDtmf, {"digits": "12p#"}),
    ("/v1/calls/{uuid}/dtmf", m.SendDtmf, {"digits": "12x"}),
])
def test_the_description_accepts_and_refuses_bodies_as_the_api_does(path, model, body):
    schema = _request_schema(spec(), path, "post" if path == "/v1/calls" else "put")
    assert _schema_accepts(schema, body) == _model_accepts(model, body), body


def test_the_list_query_parameters_are_the_query_model_s_fields():
    [operation] = [spec()["paths"]["/v1/calls"]["get"]]
    params = {p["name"]: p for p in operation["parameters"]}
    assert set(params) == set(m.ListCallsQuery.model_fields)
    assert all(p["in"] == "query" for p in params.values())
    # A query string carries no null: the optional parameters are plain strings.
    assert params["date_start"]["schema"] == {"type": "string", "format": "date-time"}
    assert params["page_size"]["schema"] == {"type": "integer", "minimum": 1, "maximum": 100,
                                             "default": 10}
    assert set(params["status"]["schema"]["enum"]) >= {"answered", "completed", "unanswered"}


def test_the_error_description_is_what_every_error_answers():
    document = spec()
    ref = document["paths"]["/v1/calls"]["post"]["responses"]["400"]["content"][
        "application/json"]["schema"]["$ref"]
    schema = _component(document, ref)
    named = m.bad_request("to[0].number: bad", "to[0].number", "bad").body()
    plain = m.ApiError(404, "Not Found", "no call x").body()
    assert "invalid_parameters" not in plain
    for body in (named, plain):
        jsonschema.validate(body, schema)
    assert not _schema_accepts(schema, {k: v for k, v in plain.items() if k != "detail"})
    assert not _schema_accepts(schema, {**plain, "invalid_parameters": None})


def test_a_call_entry_as_the_routes_answer_it_matches_the_call_description():
    document = spec()
    schema = _component(document, document["paths"]["/v1/calls/{uuid}"]["get"]["responses"][
        "200"]["content"]["application/json"]["schema"]["$ref"])
    call = {"uuid": "u-1", "conversation_uuid": "CON-1",
            "to": {"type": "sip", "uri": "sip:alice@example.org"},
            "from": {"type": "phone", "number": "15550001000"},
            "status": "completed", "direction": "inbound", "rate": None, "price": None,
            "duration": "3", "start_time": "2026-01-01T00:00:00.000Z",
            "end_time": "2026-01-01T00:00:03.000Z", "network": "ari-bridge",
            "_links": {"self": {"href": "http://h/v1/calls/u-1"}}}
    jsonschema.validate(call, schema)
    assert not _schema_accepts(schema, {**call, "status": "dancing"})
    assert not _schema_accepts(schema, {**call, "to": {"type": "phone"}})
    assert not _schema_accepts(schema, {k: v for k, v in call.items() if k != "_links"})
