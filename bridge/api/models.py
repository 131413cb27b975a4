"""Request bodies and query strings of the REST API, validated with pydantic.

Field names are Vonage's: request bodies are snake_case (``event_url``, ``stream_url``), NCCOs
inside them camelCase (validated by ``bridge.ncco.models``). Unknown fields are ignored, as
Vonage does; wrong values are rejected with the field's name.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic.json_schema import SkipJsonSchema

from bridge.ncco.models import PhoneEndpoint, SipEndpoint, WebsocketEndpoint

CallStatus = Literal[
    "started", "ringing", "answered", "machine", "completed", "busy", "cancelled", "failed",
    "rejected", "timeout", "unanswered",
]


class ApiError(Exception):
    """An error response in Vonage's format."""

    def __init__(
        self,
        status: int,
        title: str,
        detail: str,
        invalid_parameters: list[dict[str, str]] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.title = title
        self.detail = detail
        self.invalid_parameters = invalid_parameters

    def body(self) -> dict[str, Any]:
        slug = self.title.lower().replace(" ", "-")
        out: dict[str, Any] = {
            "type": f"https://developer.vonage.com/api-errors#{slug}",
            "title": self.title,
            "error_title": self.title,
            "detail": self.detail,
            "instance": str(uuid.uuid4()),
        }
        if self.invalid_parameters is not None:
            out["invalid_parameters"] = self.invalid_parameters
        return out


def bad_request(detail: str, name: str | None = None, reason: str | None = None) -> ApiError:
    params = [{"name": name, "reason": reason or detail}] if name else None
    return ApiError(400, "Bad Request", detail, params)


def _loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("phone", "sip", "websocket") or str(part).startswith(
            ("function-", "literal[")
        ):
            continue
        else:
            out += ("." if out else "") + str(part)
    return out or "body"


def validation_error(exc: ValidationError, prefix: str = "") -> ApiError:
    params = [
        {"name": prefix + _loc(tuple(item["loc"])), "reason": item["msg"]}
        for item in exc.errors(include_url=False)
    ]
    first = params[0]
    return ApiError(400, "Bad Request", f"{first['name']}: {first['reason']}", params)


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True, frozen=True)


def _http_urls(value: list[str] | None) -> list[str] | None:
    for url in value or []:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"must be an http(s) URL, got {url!r}")
    return value


def _upper(value: Any) -> Any:
    return value.upper() if isinstance(value, str) else value


class PhoneFrom(_Body):
    type: Literal["phone"] = "phone"
    number: str = Field(pattern=r"^\+?[0-9]{1,20}$")


ToEndpoint = Annotated[
    PhoneEndpoint | SipEndpoint | WebsocketEndpoint, Field(discriminator="type")
]


class AdvancedMachineDetection(_Body):
    behavior: Literal["continue", "hangup"] | None = None
    mode: Literal["default", "detect", "detect_beep"] | None = None
    beep_timeout: int | None = Field(None, ge=45, le=120)


class CreateCall(_Body):
    to: list[ToEndpoint] = Field(min_length=1, max_length=1)
    from_: PhoneFrom | None = Field(None, alias="from")
    random_from_number: bool | None = None
    ncco: list[Any] | None = None
    answer_url: list[str] | None = Field(None, min_length=1, max_length=1)
    answer_method: Literal["GET", "POST"] = "GET"
    event_url: list[str] | None = Field(None, min_length=1, max_length=1)
    event_method: Literal["GET", "POST"] = "POST"
    machine_detection: Literal["continue", "hangup"] | None = None
    advanced_machine_detection: AdvancedMachineDetection | None = None
    length_timer: int = Field(7200, ge=1, le=86400)
    ringing_timer: int = Field(60, ge=1, le=120)

    @field_validator("from_", mode="before")
    @classmethod
    def _from_string(cls, value: Any) -> Any:
        return {"type": "phone", "number": value} if isinstance(value, str) else value

    @field_validator("answer_url", "event_url", mode="before")
    @classmethod
    def _one_url(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("answer_url", "event_url")
    @classmethod
    def _urls(cls, value: list[str] | None) -> list[str] | None:
        return _http_urls(value)

    @field_validator("answer_method", "event_method", mode="before")
    @classmethod
    def _methods(cls, value: Any) -> Any:
        return _upper(value)


class Destination(_Body):
    type: Literal["ncco"]
    ncco: list[Any] | None = None
    url: list[str] | None = Field(None, min_length=1, max_length=1)

    @field_validator("url", mode="before")
    @classmethod
    def _one_url(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("url")
    @classmethod
    def _urls(cls, value: list[str] | None) -> list[str] | None:
        return _http_urls(value)


class ModifyCall(_Body):
    action: Literal["hangup", "mute", "unmute", "earmuff", "unearmuff", "transfer"]
    destination: Destination | None = None


class StartTalk(_Body):
    text: str = Field(min_length=1, max_length=1500)
    loop: int = Field(1, ge=0, le=100)
    level: float = Field(0.0, ge=-1.0, le=1.0)
    language: str | None = None
    style: int | None = Field(None, ge=0)
    voice_name: str | None = None
    premium: bool = False


class StartStream(_Body):
    stream_url: list[str] = Field(min_length=1, max_length=1)
    loop: int = Field(1, ge=0, le=100)
    level: float = Field(0.0, ge=-1.0, le=1.0)

    @field_validator("stream_url", mode="before")
    @classmethod
    def _one_url(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("stream_url")
    @classmethod
    def _urls(cls, value: list[str]) -> list[str]:
        _http_urls(value)
        return value


class SendDtmf(_Body):
    digits: str = Field(pattern=r"^[0-9*#p]{1,100}$")


class ListCallsQuery(_Body):
    status: CallStatus | None = None
    date_start: datetime | None = None
    date_end: datetime | None = None
    page_size: int = Field(10, ge=1, le=100)
    record_index: int = Field(0, ge=0)
    order: Literal["asc", "desc"] = "asc"
    conversation_uuid: str | None = Field(None, max_length=200)

    @field_validator("date_start", "date_end")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("must carry a time zone, e.g. 2024-01-31T12:00:00Z")
        return value


# ------------------------------------------------------------------------------ responses
# What the routes answer, written down for /openapi.json (bridge.api.openapi builds the
# description from these models). The routes build their bodies as plain dicts; the REST
# tests validate real responses against the description, which keeps the two in step.
# A key that is left out rather than sent as null is typed ``X | Absent = _left_out()``: its
# schema is X's alone, with no null and no default.

Absent = SkipJsonSchema[None]


def _drop_default(schema: dict[str, Any]) -> None:
    schema.pop("default", None)


def _left_out() -> Any:
    return Field(None, json_schema_extra=_drop_default)


class _Response(BaseModel):
    model_config = ConfigDict(populate_by_name=True, frozen=True)


class InvalidParameter(_Response):
    name: str
    reason: str


class Error(_Response):
    """An error in Vonage's format; invalid_parameters names each rejected field."""

    type: str
    title: str
    error_title: str
    detail: str
    instance: str
    invalid_parameters: list[InvalidParameter] | Absent = _left_out()


class Link(_Response):
    href: str


class PhoneParty(_Response):
    """One end of a call on the phone network, as the call resource shows it."""

    type: Literal["phone"]
    number: str


class SipParty(_Response):
    """One end of a call that is a SIP URI."""

    type: Literal["sip"]
    uri: str


class WebsocketParty(_Response):
    """One end of a call that is a WebSocket."""

    type: Literal["websocket"]
    uri: str


Party = Annotated[PhoneParty | SipParty | WebsocketParty, Field(discriminator="type")]


class CallLinks(_Response):
    self_: Link = Field(alias="self")


class Call(_Response):
    """One call, live or recently ended."""

    uuid: str
    conversation_uuid: str
    to: Party
    from_: Party = Field(alias="from")
    status: CallStatus
    direction: Literal["inbound", "outbound"]
    rate: str | None = None  # nothing is billed here: always null
    price: str | None = None
    duration: str | None = None  # whole seconds of conversation, once the call ended
    start_time: str | None = None
    end_time: str | None = None
    network: str | None = None
    links: CallLinks = Field(alias="_links")


class CallListLinks(_Response):
    self_: Link = Field(alias="self")
    first: Link | Absent = _left_out()
    last: Link | Absent = _left_out()
    next: Link | Absent = _left_out()
    prev: Link | Absent = _left_out()


class CallListEmbedded(_Response):
    calls: list[Call]


class CallList(_Response):
    """A page of calls, oldest first unless order=desc."""

    count: int = Field(ge=0)
    page_size: int = Field(ge=1, le=100)
    record_index: int = Field(ge=0)
    links: CallListLinks = Field(alias="_links")
    embedded: CallListEmbedded = Field(alias="_embedded")


class CreateCallResponse(_Response):
    uuid: str
    status: Literal["started"]
    direction: Literal["outbound"]
    conversation_uuid: str


class CallMessage(_Response):
    """What the talk, stream and DTMF routes answer."""

    message: str
    uuid: str
