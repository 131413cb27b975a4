"""The applet's request (query parameters) and its two response dialects.

JSON 1.1 (``exotel-version: 1.1``): a response that is not HTTP 200 within the time limit, not
``application/json``, lacks the mandatory ``destination`` or carries a value out of range is
*invalid*: the Fallback URL is asked (an invalid ``outgoing_phone_number`` is not: the number
the call came in on is used instead). Dial whom (text/plain): only a non-200 status or no
answer in time goes to the fallback; a 200 with no or invalid numbers does not.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal
from urllib.parse import urlparse

from bridge.webhooks import ParseError, WebhookResponse

MAX_RINGING_S = 60
MAX_CONVERSATION_S = 4500
MAX_PARALLEL = 50
EXOTEL_VERSION = "1.1"
#: The constant Exotel documents for EndTime ("1970-01-01 05:30:00").
END_TIME = "1970-01-01 05:30:00"

_NUMBER = re.compile(r"^\+?[0-9]{3,15}$")
_SIP = re.compile(r"^sip:[^\s@;<>\"]+(@[^\s;<>\"]+)?$", re.IGNORECASE)


def contact_kind(contact: str) -> Literal["phone", "sip"] | None:
    """'phone' for an E.164 number, 'sip' for a SIP URI, None when it is neither."""
    value = contact.strip()
    if _NUMBER.match(value.replace(" ", "").replace("-", "")):
        return "phone"
    if _SIP.match(value):
        return "sip"
    return None


def exotel_time(moment: datetime) -> str:
    """Exotel's timestamp format, ``yyyy-mm-dd hh:mm:ss`` (local time of the bridge)."""
    return moment.astimezone().strftime("%Y-%m-%d %H:%M:%S")


@dataclass
class AppletParams:
    """One usable answer from the applet URL (either dialect)."""

    destinations: list[str]
    fetch_after_attempt: bool = False
    state_management: bool = False
    sticky_agent: bool = False
    outgoing_phone_number: str | None = None
    record: bool = False
    record_channels: Literal["single", "dual"] = "single"
    max_ringing_s: int | None = None
    max_conversation_s: int = MAX_CONVERSATION_S
    moh_type: Literal["default_tone", "operator_tone", "custom_tone"] | None = None
    moh_url: str | None = None
    parallel: bool = False
    max_parallel_attempts: int = 1
    passthru_url: str | None = None
    playback_type: Literal["text", "audio_url"] | None = None
    playback_value: str | None = None
    invalid: list[str] = field(default_factory=list)  # dial-whom tokens that were not numbers
    #: outgoing_phone_number as received when it is no valid number (for the log only).
    invalid_outgoing_number: str | None = None


def _http(value: Any, name: str) -> str:
    if not isinstance(value, str) or urlparse(value).scheme not in ("http", "https") \
            or not urlparse(value).netloc:
        raise ParseError(f"{name}: must be an http(s) URL, got {value!r}")
    return value


def _bool(data: dict[str, Any], name: str, default: bool = False) -> bool:
    value = data.get(name, default)
    if not isinstance(value, bool):
        raise ParseError(f"{name}: must be true or false, got {value!r}")
    return value


def _int(value: Any, name: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ParseError(f"{name}: must be a number of seconds, got {value!r}")
    try:
        number = int(value)
    except ValueError:
        raise ParseError(f"{name}: must be a number, got {value!r}") from None
    if number < low or number > high:
        raise ParseError(f"{name}: must be between {low} and {high}, got {number}")
    return number


def parse_json(response: WebhookResponse) -> AppletParams:
    """Validate a 1.1 response; ParseError (the fallback's reason) when it is invalid."""
    if response.content_type != "application/json":
        raise ParseError(f"Content-Type must be application/json, got {response.content_type!r}")
    data = response.json()
    if not isinstance(data, dict):
        raise ParseError("the response must be a JSON object")
    if "destination" not in data:
        raise ParseError("destination: mandatory parameter missing")
    raw = data["destination"]
    if not isinstance(raw, list):
        raise ParseError("destination: must be an array of {\"contact_uri\": ...}")
    destinations: list[str] = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict) or not isinstance(item.get("contact_uri"), str):
            raise ParseError(f"destination[{i}].contact_uri: mandatory string missing")
        destinations.append(item["contact_uri"].strip())
    params = AppletParams(destinations=destinations)
    params.fetch_after_attempt = _bool(data, "fetch_after_attempt")
    params.state_management = _bool(data, "state_management")
    params.sticky_agent = _bool(data, "sticky_agent")
    number = data.get("outgoing_phone_number")
    if number is not None:
        # Exotel: a number that fails validation is replaced by the number the call came in
        # on; it is no reason to use the Fallback URL (the seed's own sample, "90876xxxxx",
        # is such a number). The applet's caller_id() makes the choice and logs it.
        params.outgoing_phone_number = str(number) if isinstance(number, str | int) else None
        if params.outgoing_phone_number is None or contact_kind(str(number)) != "phone":
            params.invalid_outgoing_number = repr(number)[:40]
    if data.get("recording") is not None:
        rec = data["recording"]
        if not isinstance(rec, dict):
            raise ParseError("recording: must be an object")
        params.record = _bool(rec, "record")
        channels = rec.get("channels", "single")
        if channels not in ("single", "dual"):
            raise ParseError(f"recording.channels: must be single or dual, got {channels!r}")
        params.record_channels = channels
    if data.get("max_ringing_duration") is not None:
        params.max_ringing_s = _int(data["max_ringing_duration"], "max_ringing_duration",
                                    1, MAX_RINGING_S)
    if data.get("max_conversation_duration") is not None:
        params.max_conversation_s = _int(data["max_conversation_duration"],
                                         "max_conversation_duration", 1, MAX_CONVERSATION_S)
    if data.get("music_on_hold") is not None:
        moh = data["music_on_hold"]
        kind = moh.get("type") if isinstance(moh, dict) else None
        if kind not in ("default_tone", "operator_tone", "custom_tone"):
            raise ParseError("music_on_hold.type: must be default_tone, operator_tone or "
                             f"custom_tone, got {kind!r}")
        params.moh_type = kind
        if kind == "custom_tone":
            params.moh_url = _http(moh.get("value"), "music_on_hold.value")
    if data.get("parallel_ringing") is not None:
        par = data["parallel_ringing"]
        if not isinstance(par, dict):
            raise ParseError("parallel_ringing: must be an object")
        params.parallel = _bool(par, "activate")
        if params.parallel:
            params.max_parallel_attempts = _int(par.get("max_parallel_attempts", 10),
                                                "parallel_ringing.max_parallel_attempts",
                                                1, MAX_PARALLEL)
    if data.get("call_event_passthru_url") is not None:
        params.passthru_url = _http(data["call_event_passthru_url"], "call_event_passthru_url")
    if data.get("start_call_playback") is not None:
        play = data["start_call_playback"]
        kind = play.get("type") if isinstance(play, dict) else None
        if kind not in ("text", "audio_url"):
            raise ParseError(f"start_call_playback.type: must be text or audio_url, got {kind!r}")
        value = play.get("value")
        if kind == "audio_url":
            value = _http(value, "start_call_playback.value")
        elif not isinstance(value, str) or not value.strip():
            raise ParseError("start_call_playback.value: the text must not be empty")
        params.playback_type, params.playback_value = kind, value
    return params


def parse_dial_whom(response: WebhookResponse) -> AppletParams:
    """A 200 text/plain body of comma-separated numbers. Never raises for the content: per
    Exotel, a 200 with no or invalid numbers does not trigger the fallback."""
    text = response.body.decode("utf-8", errors="replace")
    numbers: list[str] = []
    invalid: list[str] = []
    for token in re.split(r"[,\s]+", text.strip()):
        if not token:
            continue
        if contact_kind(token) == "phone":
            numbers.append(token)
        else:
            invalid.append(token[:40])
    return AppletParams(destinations=numbers, invalid=invalid)


def request_params(
    *, call_sid: str, caller: str, called: str, status: str, created: datetime,
    now: datetime, dial_call_duration: int, call_type: str, dial_whom_number: str,
    dial_call_status: str | None, digits: str | None, custom_field: str | None,
    recording_url: str | None,
) -> dict[str, str]:
    """The documented GET query parameters, in Exotel's spelling."""
    params = {
        "CallSid": call_sid,
        "CallFrom": caller,
        "CallTo": called,
        "CallStatus": status,
        "Direction": "incoming",
        "Created": exotel_time(created),
        "DialCallDuration": str(dial_call_duration),
        "StartTime": exotel_time(created),
        "EndTime": END_TIME,
        "CallType": call_type,
        "DialWhomNumber": dial_whom_number,
        "From": caller,
        "To": called,
        "CurrentTime": exotel_time(now),
    }
    if dial_call_status is not None:
        params["DialCallStatus"] = dial_call_status
    if digits:
        params["digits"] = f'"{digits}"'  # Exotel wraps them in double quotes
    if custom_field:
        params["CustomField"] = custom_field
    if recording_url:
        params["RecordingUrl"] = recording_url
    return params
