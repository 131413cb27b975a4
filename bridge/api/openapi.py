"""The OpenAPI 3.1 description of the REST API, served at ``/openapi.json``.

Schemas are plain JSON Schema (OpenAPI 3.1), so a test can validate real responses with any
JSON Schema validator. ``tests/unit/test_api_openapi.py`` keeps this description and the
routes in step: every ``/v1`` route is described and every described operation is routed.
"""

from __future__ import annotations

import copy
from typing import Any

_REF = "#/components/schemas/"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": _REF + name}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": schema}}}


_ERRORS = {
    "400": {"description": "invalid request", **_json(_ref("Error"))},
    "401": {"description": "missing or invalid JWT", **_json(_ref("Error"))},
    "404": {"description": "no such call for this application", **_json(_ref("Error"))},
}

_STR_OR_NULL = {"type": ["string", "null"]}

_ENDPOINT = {
    "type": "object",
    "required": ["type"],
    "properties": {
        "type": {"enum": ["phone", "sip", "websocket"]},
        "number": {"type": "string"},
        "uri": {"type": "string"},
        "dtmfAnswer": {"type": "string"},
        "headers": {"type": "object"},
        "standard_headers": {"type": "object"},
        "content-type": {"type": "string"},
    },
}

_SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["type", "title", "detail"],
        "properties": {
            "type": {"type": "string"},
            "title": {"type": "string"},
            "error_title": {"type": "string"},
            "detail": {"type": "string"},
            "instance": {"type": "string"},
            "invalid_parameters": {
                "type": "array",
                "items": {"type": "object", "required": ["name", "reason"],
                          "properties": {"name": {"type": "string"},
                                         "reason": {"type": "string"}}},
            },
        },
    },
    "Endpoint": _ENDPOINT,
    "Link": {"type": "object", "required": ["href"], "properties": {"href": {"type": "string"}}},
    "Call": {
        "type": "object",
        "required": ["uuid", "conversation_uuid", "to", "from", "status", "direction",
                     "_links"],
        "properties": {
            "uuid": {"type": "string"},
            "conversation_uuid": {"type": "string"},
            "to": _ref("Endpoint"),
            "from": _ref("Endpoint"),
            "status": {"enum": ["started", "ringing", "answered", "machine", "completed",
                                "busy", "cancelled", "failed", "rejected", "timeout",
                                "unanswered"]},
            "direction": {"enum": ["inbound", "outbound"]},
            "rate": _STR_OR_NULL,
            "price": _STR_OR_NULL,
            "duration": _STR_OR_NULL,
            "start_time": _STR_OR_NULL,
            "end_time": _STR_OR_NULL,
            "network": _STR_OR_NULL,
            "_links": {"type": "object", "required": ["self"],
                       "properties": {"self": _ref("Link")}},
        },
    },
    "CallList": {
        "type": "object",
        "required": ["count", "page_size", "record_index", "_links", "_embedded"],
        "properties": {
            "count": {"type": "integer", "minimum": 0},
            "page_size": {"type": "integer", "minimum": 1, "maximum": 100},
            "record_index": {"type": "integer", "minimum": 0},
            "_links": {
                "type": "object", "required": ["self"],
                "properties": {k: _ref("Link") for k in ("self", "first", "last", "next",
                                                         "prev")},
            },
            "_embedded": {
                "type": "object", "required": ["calls"],
                "properties": {"calls": {"type": "array", "items": _ref("Call")}},
            },
        },
    },
    "CreateCallRequest": {
        "type": "object",
        "required": ["to"],
        "properties": {
            "to": {"type": "array", "minItems": 1, "maxItems": 1, "items": _ref("Endpoint")},
            "from": {"type": "object", "required": ["type", "number"],
                     "properties": {"type": {"const": "phone"}, "number": {"type": "string"}}},
            "random_from_number": {"type": "boolean"},
            "ncco": {"type": "array", "items": {"type": "object"}},
            "answer_url": {"type": "array", "items": {"type": "string"}, "maxItems": 1},
            "answer_method": {"enum": ["GET", "POST"]},
            "event_url": {"type": "array", "items": {"type": "string"}, "maxItems": 1},
            "event_method": {"enum": ["GET", "POST"]},
            "machine_detection": {"enum": ["continue", "hangup"]},
            "advanced_machine_detection": {"type": "object"},
            "length_timer": {"type": "integer", "minimum": 1, "maximum": 86400},
            "ringing_timer": {"type": "integer", "minimum": 1, "maximum": 120},
        },
    },
    "CreateCallResponse": {
        "type": "object",
        "required": ["uuid", "status", "direction", "conversation_uuid"],
        "properties": {
            "uuid": {"type": "string"},
            "status": {"const": "started"},
            "direction": {"const": "outbound"},
            "conversation_uuid": {"type": "string"},
        },
    },
    "ModifyCallRequest": {
        "type": "object",
        "required": ["action"],
        "properties": {
            "action": {"enum": ["hangup", "mute", "unmute", "earmuff", "unearmuff",
                                "transfer"]},
            "destination": {
                "type": "object", "required": ["type"],
                "properties": {
                    "type": {"const": "ncco"},
                    "ncco": {"type": "array", "items": {"type": "object"}},
                    "url": {"type": "array", "items": {"type": "string"}, "maxItems": 1},
                },
            },
        },
    },
    "TalkRequest": {
        "type": "object",
        "required": ["text"],
        "properties": {
            "text": {"type": "string", "minLength": 1, "maxLength": 1500},
            "loop": {"type": "integer", "minimum": 0, "maximum": 100},
            "level": {"type": "number", "minimum": -1, "maximum": 1},
            "language": {"type": "string"},
            "style": {"type": "integer", "minimum": 0},
            "voice_name": {"type": "string"},
            "premium": {"type": "boolean"},
        },
    },
    "StreamRequest": {
        "type": "object",
        "required": ["stream_url"],
        "properties": {
            "stream_url": {"type": "array", "minItems": 1, "maxItems": 1,
                           "items": {"type": "string"}},
            "loop": {"type": "integer", "minimum": 0, "maximum": 100},
            "level": {"type": "number", "minimum": -1, "maximum": 1},
        },
    },
    "DtmfRequest": {
        "type": "object",
        "required": ["digits"],
        "properties": {"digits": {"type": "string", "pattern": "^[0-9*#p]{1,100}$"}},
    },
    "CallMessage": {
        "type": "object",
        "required": ["message", "uuid"],
        "properties": {"message": {"type": "string"}, "uuid": {"type": "string"}},
    },
}

_UUID = {"name": "uuid", "in": "path", "required": True, "schema": {"type": "string"}}


def _body(name: str) -> dict[str, Any]:
    return {"required": True, **_json(_ref(name))}


def _ok(name: str, status: str = "200", description: str = "done") -> dict[str, Any]:
    return {status: {"description": description, **_json(_ref(name))}, **_ERRORS}


_PATHS: dict[str, Any] = {
    "/v1/calls": {
        "get": {
            "operationId": "listCalls",
            "summary": "Calls of this application: live ones and recently ended ones",
            "parameters": [
                {"name": "status", "in": "query",
                 "schema": _SCHEMAS["Call"]["properties"]["status"]},
                {"name": "date_start", "in": "query",
                 "schema": {"type": "string", "format": "date-time"}},
                {"name": "date_end", "in": "query",
                 "schema": {"type": "string", "format": "date-time"}},
                {"name": "page_size", "in": "query",
                 "schema": {"type": "integer", "minimum": 1, "maximum": 100, "default": 10}},
                {"name": "record_index", "in": "query",
                 "schema": {"type": "integer", "minimum": 0, "default": 0}},
                {"name": "order", "in": "query",
                 "schema": {"enum": ["asc", "desc"], "default": "asc"}},
                {"name": "conversation_uuid", "in": "query", "schema": {"type": "string"}},
            ],
            "responses": _ok("CallList"),
        },
        "post": {
            "operationId": "createCall",
            "summary": "Place an outbound call",
            "requestBody": _body("CreateCallRequest"),
            "responses": _ok("CreateCallResponse", "201", "the call was created"),
        },
    },
    "/v1/calls/{uuid}": {
        "parameters": [_UUID],
        "get": {"operationId": "getCall", "summary": "One call",
                "responses": _ok("Call")},
        "put": {
            "operationId": "updateCall",
            "summary": "Hang up, mute, unmute, earmuff, unearmuff or transfer a live call",
            "requestBody": _body("ModifyCallRequest"),
            "responses": {"204": {"description": "done"}, **_ERRORS},
        },
    },
    "/v1/calls/{uuid}/talk": {
        "parameters": [_UUID],
        "put": {"operationId": "startTalk", "summary": "Play speech into a live call",
                "requestBody": _body("TalkRequest"), "responses": _ok("CallMessage")},
        "delete": {"operationId": "stopTalk", "summary": "Stop speech started over REST",
                   "responses": _ok("CallMessage")},
    },
    "/v1/calls/{uuid}/stream": {
        "parameters": [_UUID],
        "put": {"operationId": "startStream", "summary": "Play an audio file into a live call",
                "requestBody": _body("StreamRequest"), "responses": _ok("CallMessage")},
        "delete": {"operationId": "stopStream", "summary": "Stop audio started over REST",
                   "responses": _ok("CallMessage")},
    },
    "/v1/calls/{uuid}/dtmf": {
        "parameters": [_UUID],
        "put": {"operationId": "sendDtmf", "summary": "Send DTMF (RFC 4733) to the call",
                "requestBody": _body("DtmfRequest"), "responses": _ok("CallMessage")},
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
                "401": _ERRORS["401"],
                "404": {"description": "no such file", **_json(_ref("Error"))},
            },
        },
    },
}

_SPEC: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "ari-bridge Voice API",
        "version": "1",
        "description": "Vonage-compatible Voice REST API for calls run by ari-bridge. Every "
                       "request carries 'Authorization: Bearer <JWT>' signed (RS256) with the "
                       "application's private key.",
    },
    "components": {
        "schemas": _SCHEMAS,
        "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer",
                                           "bearerFormat": "JWT"}},
    },
    "security": [{"bearerAuth": []}],
    "paths": _PATHS,
}


def spec(server_url: str | None = None) -> dict[str, Any]:
    out = copy.deepcopy(_SPEC)
    if server_url:
        out["servers"] = [{"url": server_url}]
    return out
