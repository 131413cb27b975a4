"""wait: hold the call (answered, silent) for ``timeout`` seconds, or until it ends."""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

from bridge.ncco.models import Action, Wait

if TYPE_CHECKING:
    from bridge.ncco.context import CallContext


async def run(call: CallContext, action: Wait) -> list[Action] | None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(call.gone.wait(), action.timeout)
    return None
