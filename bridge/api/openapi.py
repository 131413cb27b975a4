"""The OpenAPI 3.1 description of the REST API, served at ``/openapi.json``.

Request bodies, the list query and the responses take their JSON Schema from the pydantic
models in :mod:`bridge.api.models`, the same models that validate requests, so the
description cannot drift from what the API accepts. OpenAPI 3.1 schemas are plain JSON
Schema (2020-12): a test can validate real responses with any JSON Schema validator.
``tests/unit/test_api.py`` keeps this description and the routes in step: every ``/v1``
route is described and every described operation is routed.
"""

from __future__ import annotations

import copy
import functools
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from bridge.api.models import (
    Call,
    CallList,
    CallMessage,
    CreateCall,
    CreateCallResponse,
    Error,
    ListCallsQuery,
    ModifyCall,
    SendDtmf,
    StartStream,
    StartTalk,
)

REF_TEMPLATE = "#/components/schemas/{model}"

#: Every model the description names; the models they use come along as components.
_MODELS: tuple[type[BaseModel], ...] = (
    CreateCall, ModifyCall, StartTalk, StartStream, SendDtmf,
    Call, CallList, CreateCallResponse, CallMessage, Error,
)
_MODE: JsonSchemaMode = "validation"  # what a request may carry; optional keys not required


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": schema}}}


def _query_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """A query parameter's schema: a parameter is absent or a string, never null."""
    out = {k: v for k, v in schema.items() if k not in ("title", "anyOf")}
    if out.get("default", ...) is None:
        del out["default"]
    branches = [b for b in schema.get("anyOf", []) if b != {"type": "null"}]
    if len(branches) == 1:
        out.update(branches[0])
    elif branches:
        out["anyOf"] = branches
    return out


def _query_parameters(model: type[BaseModel]) -> list[dict[str, Any]]:
    schema = model.model_json_schema(ref_template=REF_TEMPLATE, mode=_MODE)
    if "$defs" in schema:  # a query string holds flat values only
        raise ValueError(f"{model.__name__} nests models: not a query string")
    return [{"name": name, "in": "query", "schema": _query_schema(prop)}
            for name, prop in schema["properties"].items()]


def _build() -> dict[str, Any]:
    refs, top = models_json_schema([(model, _MODE) for model in _MODELS],
                                   ref_template=REF_TEMPLATE)

    def ref(model: type[BaseModel]) -> dict[str, Any]:
        return dict(refs[(model, _MODE)])

    def body(model: type[BaseModel]) -> dict[str, Any]:
        return {"required": True, **_json(ref(model))}

    errors = {
        "400": {"description": "invalid request", **_json(ref(Error))},
        "401": {"description": "missing or invalid JWT", **_json(ref(Error))},
        "404": {"description": "no such call for this application", **_json(ref(Error))},
    }

    def ok(model: type[BaseModel], status: str = "200",
           description: str = "done") -> dict[str, Any]:
        return {status: {"description": description, **_json(ref(model))}, **errors}

    uuid = {"name": "uuid", "in": "path", "required": True, "schema": {"type": "string"}}
    paths: dict[str, Any] = {
        "/v1/calls": {
            "get": {
                "operationId": "listCalls",
                "summary": "Calls of this application: live ones and recently ended ones",
                "parameters": _query_parameters(ListCallsQuery),
                "responses": ok(CallList),
            },
            "post": {
                "operationId": "createCall",
                "summary": "Place an outbound call",
                "requestBody": body(CreateCall),
                "responses": ok(CreateCallResponse, "201", "the call was created"),
            },
        },
        "/v1/calls/{uuid}": {
            "parameters": [uuid],
            "get": {"operationId": "getCall", "summary": "One call", "responses": ok(Call)},
            "put": {
                "operationId": "updateCall",
                "summary": "Hang up, mute, unmute, earmuff, unearmuff or transfer a live call",
                "requestBody": body(ModifyCall),
                "responses": {"204": {"description": "done"}, **errors},
            },
        },
        "/v1/calls/{uuid}/talk": {
            "parameters": [uuid],
            "put": {"operationId": "startTalk", "summary": "Play speech into a live call",
                    "requestBody": body(StartTalk), "responses": ok(CallMessage)},
            "delete": {"operationId": "stopTalk", "summary": "Stop speech started over REST",
                       "responses": ok(CallMessage)},
        },
        "/v1/calls/{uuid}/stream": {
            "parameters": [uuid],
            "put": {"operationId": "startStream",
                    "summary": "Play an audio file into a live call",
                    "requestBody": body(StartStream), "responses": ok(CallMessage)},
            "delete": {"operationId": "stopStream", "summary": "Stop audio started over REST",
                       "responses": ok(CallMessage)},
        },
        "/v1/calls/{uuid}/dtmf": {
            "parameters": [uuid],
            "put": {"operationId": "sendDtmf", "summary": "Send DTMF (RFC 4733) to the call",
                    "requestBody": body(SendDtmf), "responses": ok(CallMessage)},
        },
        "/v1/files/{file_id}": {
            "parameters": [{"name": "file_id", "in": "path", "required": True,
                            "schema": {"type": "string"}}],
            "get": {
                "operationId": "getFile",
                "summary": "Download a recording",
                "responses": {
                    "200": {"description": "the file",
                            "content": {"audio/mpeg": {}, "audio/wav": {}, "audio/ogg": {},
                                        "application/octet-stream": {}}},
                    "401": errors["401"],
                    "404": {"description": "no such file", **_json(ref(Error))},
                },
            },
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "ari-bridge Voice API",
            "version": "1",
            "description": "Vonage-compatible Voice REST API for calls run by ari-bridge. "
                           "Every request carries 'Authorization: Bearer <JWT>' signed (RS256) "
                           "with the application's private key.",
        },
        "components": {
            "schemas": top["$defs"],
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer",
                                               "bearerFormat": "JWT"}},
        },
        "security": [{"bearerAuth": []}],
        "paths": paths,
    }


@functools.cache
def _document() -> dict[str, Any]:
    return _build()


def spec(server_url: str | None = None) -> dict[str, Any]:
    """The description; ``server_url`` (e.g. ``http://host:port``) becomes its one server."""
    out = copy.deepcopy(_document())
    if server_url:
        out["servers"] = [{"url": server_url}]
    return out
