"""notify: send the application's payload to eventUrl; an NCCO in the reply replaces the rest."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bridge.ncco.models import Action, Notify

if TYPE_CHECKING:
    from bridge.ncco.context import CallContext


async def run(call: CallContext, action: Notify) -> list[Action] | None:
    return await call.ask_for_ncco(action.event_url[0], action.event_method, action.payload)
