"""NCCO models: one per action, discriminated on ``action``, validated before anything runs.

Both generations of the Vonage reference are accepted: the 2017 seed writes numbers and
booleans as strings (``"timeout": "10"``, ``"record": "true"``) and puts input's options at the
top level; the current API uses typed values and nests them under ``dtmf``/``speech``. Pydantic's
lax mode converts the string forms; everything else (unknown fields, out-of-range values, wrong
types) is rejected with an error that names the action's index and the field.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

MAX_NCCO_ACTIONS = 100
#: Deepest nesting of arrays and objects accepted in an NCCO (the array itself is level 1).
#: Real NCCOs nest about 5 levels; far deeper documents pass json.loads but break pydantic's
#: serialiser (when the call is stored) or exhaust the stack, so they are refused up front.
MAX_JSON_DEPTH = 64


class NccoError(ValueError):
    """An NCCO that cannot run. ``field`` is a path such as ``[1].loop``."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.reason = message


class _Action(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)

    #: Whether the action needs an answered channel (media). Answering is deferred until the
    #: first such action, so a call that is only routed (notify, a webhook decision) is not
    #: billed as answered upstream.
    NEEDS_MEDIA: ClassVar[bool] = True


def _one_url(value: Any) -> Any:
    # Vonage documents eventUrl/streamUrl as an array with one URL; some apps send a string.
    return [value] if isinstance(value, str) else value


class _WithEventUrl(_Action):
    event_url: list[str] | None = Field(None, alias="eventUrl", min_length=1, max_length=1)
    event_method: Literal["GET", "POST"] = Field("POST", alias="eventMethod")

    @field_validator("event_url", mode="before")
    @classmethod
    def _event_url(cls, value: Any) -> Any:
        return _one_url(value)

    @field_validator("event_url")
    @classmethod
    def _http(cls, value: list[str] | None) -> list[str] | None:
        for url in value or []:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"must be an http(s) URL, got {url!r}")
        return value

    @field_validator("event_method", mode="before")
    @classmethod
    def _method(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value


class Talk(_Action):
    action: Literal["talk"]
    text: str = Field(min_length=1, max_length=1500)
    barge_in: bool = Field(False, alias="bargeIn")
    loop: int = Field(1, ge=0, le=100, description="times to play; 0 = until the call ends")
    level: float = Field(0.0, ge=-1.0, le=1.0)
    language: str | None = None
    style: int | None = Field(None, ge=0)
    voice_name: str | None = Field(None, alias="voiceName")
    premium: bool = False


class Stream(_Action):
    action: Literal["stream"]
    stream_url: list[str] = Field(alias="streamUrl", min_length=1, max_length=1)
    barge_in: bool = Field(False, alias="bargeIn")
    loop: int = Field(1, ge=0, le=100, description="times to play; 0 = until the call ends")
    level: float = Field(0.0, ge=-1.0, le=1.0)

    @field_validator("stream_url", mode="before")
    @classmethod
    def _url(cls, value: Any) -> Any:
        return _one_url(value)

    @field_validator("stream_url")
    @classmethod
    def _http(cls, value: list[str]) -> list[str]:
        if not value[0].startswith(("http://", "https://")):
            raise ValueError(f"must be an http(s) URL, got {value[0]!r}")
        return value


class Wait(_Action):
    action: Literal["wait"]
    timeout: float = Field(10.0, ge=0.1, le=7200, description="seconds")


class Notify(_WithEventUrl):
    action: Literal["notify"]
    payload: dict[str, Any]
    event_url: list[str] = Field(alias="eventUrl", min_length=1, max_length=1)
    NEEDS_MEDIA: ClassVar[bool] = False


class DtmfSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)
    time_out: float = Field(3, alias="timeOut", ge=0, le=10, description="seconds after a digit")
    max_digits: int = Field(4, alias="maxDigits", ge=1, le=20)
    submit_on_hash: bool = Field(False, alias="submitOnHash")


class SpeechSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)
    uuid: list[str] | None = None
    end_on_silence: float = Field(2.0, alias="endOnSilence", ge=0.4, le=10)
    language: str = "en-US"
    context: list[str] = []
    start_timeout: float = Field(10, alias="startTimeout", ge=1, le=60)
    max_duration: float = Field(60, alias="maxDuration", ge=1, le=60)
    save_audio: bool = Field(False, alias="saveAudio")
    sensitivity: int | None = Field(None, ge=0, le=100)


class Input(_WithEventUrl):
    action: Literal["input"]
    type: list[Literal["dtmf", "speech"]] = ["dtmf"]
    dtmf: DtmfSettings = DtmfSettings()
    speech: SpeechSettings | None = None

    @model_validator(mode="before")
    @classmethod
    def _legacy_top_level(cls, data: Any) -> Any:
        # The 2017 reference puts timeOut/maxDigits/submitOnHash directly on the action.
        if isinstance(data, dict) and any(
            k in data for k in ("timeOut", "maxDigits", "submitOnHash")
        ):
            data = dict(data)
            dtmf = dict(data.get("dtmf") or {})
            for key in ("timeOut", "maxDigits", "submitOnHash"):
                if key in data:
                    dtmf.setdefault(key, data.pop(key))
            data["dtmf"] = dtmf
        return data


class Record(_WithEventUrl):
    action: Literal["record"]
    format: Literal["mp3", "wav", "ogg"] = "mp3"
    split: Literal["conversation"] | None = None
    channels: int | None = Field(None, ge=1, le=32)
    end_on_silence: int | None = Field(None, alias="endOnSilence", ge=3, le=10)
    end_on_key: Literal["0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "*", "#"] | None = (
        Field(None, alias="endOnKey")
    )
    time_out: int = Field(7200, alias="timeOut", ge=3, le=7200)
    beep_start: bool = Field(False, alias="beepStart")


class Conversation(_WithEventUrl):
    action: Literal["conversation"]
    name: str = Field(min_length=1, max_length=200)
    music_on_hold_url: list[str] | None = Field(None, alias="musicOnHoldUrl", max_length=1)
    start_on_enter: bool = Field(True, alias="startOnEnter")
    end_on_exit: bool = Field(False, alias="endOnExit")
    record: bool = False
    mute: bool = False
    can_speak: list[str] | None = Field(None, alias="canSpeak")
    can_hear: list[str] | None = Field(None, alias="canHear")

    @field_validator("music_on_hold_url", mode="before")
    @classmethod
    def _url(cls, value: Any) -> Any:
        return _one_url(value)


class PhoneEndpoint(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)
    type: Literal["phone"]
    number: str = Field(pattern=r"^\+?[0-9]{2,20}$")
    dtmf_answer: str | None = Field(None, alias="dtmfAnswer", pattern=r"^[0-9*#p]{1,100}$")
    on_answer: dict[str, Any] | None = Field(None, alias="onAnswer")
    shaken: str | None = None


class SipEndpoint(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)
    type: Literal["sip"]
    uri: str = Field(pattern=r"^sips?:.+")
    headers: dict[str, str] = {}
    standard_headers: dict[str, str] = Field({}, alias="standardHeaders")


class WebsocketEndpoint(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)
    type: Literal["websocket"]
    uri: str = Field(pattern=r"^wss?://.+")
    content_type: Literal["audio/l16;rate=8000", "audio/l16;rate=16000", "audio/l16;rate=24000"] = (
        Field("audio/l16;rate=16000", alias="content-type")
    )
    headers: dict[str, Any] = {}


class AppEndpoint(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)
    type: Literal["app"]
    user: str


Endpoint = Annotated[
    PhoneEndpoint | SipEndpoint | WebsocketEndpoint | AppEndpoint, Field(discriminator="type")
]


class Connect(_WithEventUrl):
    action: Literal["connect"]
    endpoint: list[Endpoint] = Field(min_length=1, max_length=1)
    from_: str | None = Field(None, alias="from")
    random_from_number: bool = Field(False, alias="randomFromNumber")
    event_type: Literal["synchronous", "asynchronous"] = Field("asynchronous", alias="eventType")
    timeout: int = Field(60, ge=3, le=7200, description="seconds of ringing")
    limit: int = Field(7200, ge=1, le=7200, description="seconds of call")
    machine_detection: Literal["continue", "hangup"] | None = Field(
        None, alias="machineDetection"
    )
    ringback_tone: str | None = Field(None, alias="ringbackTone")
    NEEDS_MEDIA: ClassVar[bool] = False


Action = Annotated[
    Talk | Stream | Wait | Notify | Input | Record | Conversation | Connect,
    Field(discriminator="action"),
]
ACTION_NAMES = ("talk", "stream", "wait", "notify", "input", "record", "conversation", "connect")

_adapter: TypeAdapter[list[Action]] = TypeAdapter(list[Action])


def _loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ACTION_NAMES or part in ("phone", "sip", "websocket", "app"):
            continue  # the union tag pydantic adds; the index already says which action
        else:
            out += f".{part}"
    return out or "ncco"


def json_depth(value: Any, stop_at: int = MAX_JSON_DEPTH + 1) -> int:
    """How deeply arrays and objects nest in a decoded JSON value (a scalar is 0), counted
    without recursion and no further than ``stop_at``."""
    deepest = 0
    pending: list[tuple[Any, int]] = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, depth)
        if deepest >= stop_at:
            return deepest
        pending.extend((child, depth + 1) for child in children)
    return deepest


def parse_ncco(data: Any, shallow: bool = False) -> list[Action]:
    """Validate a decoded NCCO document. Raises NccoError naming the first bad field.
    ``shallow``: the caller has proved it nests no deeper than allowed."""
    if not shallow and json_depth(data) > MAX_JSON_DEPTH:
        raise NccoError(f"an NCCO may nest arrays and objects at most {MAX_JSON_DEPTH} levels "
                        "deep")
    if not isinstance(data, list):
        raise NccoError(f"an NCCO must be a JSON array of actions, got {_kind(data)}")
    if len(data) > MAX_NCCO_ACTIONS:
        raise NccoError(f"an NCCO may hold at most {MAX_NCCO_ACTIONS} actions, got {len(data)}")
    for index, item in enumerate(data):
        if not isinstance(item, dict):
            raise NccoError(f"an action must be a JSON object, got {_kind(item)}", f"[{index}]")
        name = item.get("action")
        if name not in ACTION_NAMES:
            raise NccoError(
                f"unknown action {name!r}; expected one of {', '.join(ACTION_NAMES)}",
                f"[{index}].action",
            )
    try:
        actions = _adapter.validate_python(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise NccoError(first["msg"], _loc(tuple(first["loc"]))) from None
    _check_barge_in(actions)
    return actions


def _check_barge_in(actions: list[Action]) -> None:
    # The reference: "If you set bargeIn to true you must set an input action later in the
    # NCCO stack" (a key press must have somewhere to go).
    for index, action in enumerate(actions):
        if isinstance(action, Talk | Stream) and action.barge_in and not any(
            isinstance(later, Input) for later in actions[index + 1 :]
        ):
            raise NccoError(
                "bargeIn=true requires an input action later in the NCCO", f"[{index}].bargeIn"
            )


def parse_ncco_bytes(body: bytes) -> list[Action]:
    """Decode and validate an NCCO received over HTTP."""
    try:
        data = json.loads(body)
    except UnicodeDecodeError:
        raise NccoError("the body is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise NccoError(
            f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except RecursionError:
        # e.g. 100,000 "[": the decoder runs out of stack, which is no JSONDecodeError.
        raise NccoError("not usable JSON: it is nested too deeply") from None
    # Nothing nests deeper than the brackets the text opens (those inside strings only add
    # to the count): for the usual NCCO two byte counts stand in for walking the document.
    shallow = body.count(b"[") + body.count(b"{") <= MAX_JSON_DEPTH
    return parse_ncco(data, shallow)


def dump_ncco(actions: list[Action]) -> list[dict[str, Any]]:
    """The JSON form of validated actions (camelCase, as received), for the call store."""
    return [a.model_dump(by_alias=True, exclude_none=True, mode="json") for a in actions]


def _kind(value: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
            type(None): "null"}.get(type(value), "a number")
