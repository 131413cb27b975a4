"""One module per NCCO action. Each has ``run(call, action)`` returning a replacement NCCO or
None, and may have ``check(action, index)`` for rules that need the bridge (voices, support).

The call engine builds the table it runs from (:func:`runners`), adding what is not an NCCO
action (an inbound number's Exotel Connect applet).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bridge.ncco.actions import (
    connect,
    conversation,
    input,
    notify,
    record,
    stream,
    talk,
    wait,
)
from bridge.ncco.actions.conversation.rooms import RoomRegistry
from bridge.ncco.context import Runner
from bridge.ncco.models import Action, NccoError


def runners(rooms: RoomRegistry) -> dict[str, Runner]:
    """The runner of every NCCO action this bridge runs; ``rooms``: the conversation rooms."""
    return {
        "talk": talk.run,
        "stream": stream.run,
        "wait": wait.run,
        "notify": notify.run,
        "input": input.run,
        "connect": connect.run,
        "record": record.run,
        "conversation": conversation.runner(rooms),
    }


#: The NCCO actions this bridge runs.
SUPPORTED = frozenset(
    ("talk", "stream", "wait", "notify", "input", "connect", "record", "conversation"))
_CHECKS: dict[str, Callable[[Any, int], None]] = {
    "talk": talk.check,
    "input": input.check,
    "connect": connect.check,
}


def check(actions: list[Action]) -> None:
    """Reject, before anything runs, what this bridge cannot run."""
    for index, action in enumerate(actions):
        if action.action not in SUPPORTED:
            raise NccoError(
                f"the {action.action!r} action is not supported by this version of ari-bridge",
                f"[{index}].action",
            )
        checker = _CHECKS.get(action.action)
        if checker is not None:
            checker(action, index)
