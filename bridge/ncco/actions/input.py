"""input (DTMF): collect the caller's key presses, send them to eventUrl, take the reply.

Digits arrive as RFC 4733 events that Asterisk reports as ChannelDtmfReceived. Digits pressed
during a barge-in prompt are kept in the session's buffer and count as input here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bridge.calls import events as ev
from bridge.ncco.models import Action, Input, NccoError

if TYPE_CHECKING:
    from bridge.calls.session import CallSession


def check(action: Input, index: int) -> None:
    if "dtmf" not in action.type:
        raise NccoError("speech input is not supported by this version of ari-bridge",
                        f"[{index}].type")


async def collect(call: CallSession, action: Input) -> tuple[str, bool]:
    """Digits until maxDigits, '#' (submitOnHash) or timeOut seconds without a key."""
    settings = action.dtmf
    digits = ""
    while len(digits) < settings.max_digits:
        digit = await call.dtmf.next(settings.time_out)
        if digit is None:
            return digits, True
        if digit == "#" and settings.submit_on_hash:
            return digits, False
        digits += digit
    return digits, False


async def run(call: CallSession, action: Input) -> list[Action] | None:
    digits, timed_out = await collect(call, action)
    payload: dict[str, Any] = {
        "from": call.record.from_number,
        "to": call.record.to_number,
        "uuid": call.uuid,
        "conversation_uuid": call.conversation_uuid,
        "dtmf": {"digits": digits, "timed_out": timed_out},
        "timestamp": ev.timestamp(),
    }
    url = action.event_url[0] if action.event_url else call.app.event_url
    if url is None:
        call.error("input: no eventUrl on the action and no event_url for the application")
        return None
    method = action.event_method if action.event_url else call.app.event_method
    return await call.ask_for_ncco(url, method, payload)
