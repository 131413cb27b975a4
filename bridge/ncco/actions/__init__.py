"""One module per NCCO action. Each has ``run(call, action)`` returning a replacement NCCO or
None, and may have ``check(action, index)`` for rules that need the bridge (voices, support)."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from bridge.connect import applet as exotel_connect
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
from bridge.ncco.models import Action, NccoError

RUNNERS: dict[str, Callable[[Any, Any], Coroutine[Any, Any, list[Action] | None]]] = {
    "talk": talk.run,
    "stream": stream.run,
    "wait": wait.run,
    "notify": notify.run,
    "input": input.run,
    "connect": connect.run,
    "record": record.run,
    "conversation": conversation.run,
    # Internal: an inbound number's Exotel Connect applet (never accepted in an NCCO).
    "exotel_connect": exotel_connect.run,
}
_CHECKS: dict[str, Callable[[Any, int], None]] = {
    "talk": talk.check,
    "input": input.check,
    "connect": connect.check,
}


def check(actions: list[Action]) -> None:
    """Reject, before anything runs, what this bridge cannot run."""
    for index, action in enumerate(actions):
        if action.action not in RUNNERS:
            raise NccoError(
                f"the {action.action!r} action is not supported by this version of ari-bridge",
                f"[{index}].action",
            )
        checker = _CHECKS.get(action.action)
        if checker is not None:
            checker(action, index)
