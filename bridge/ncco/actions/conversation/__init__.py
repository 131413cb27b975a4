"""conversation: put the call in a named room (see rooms.py beside this for the room,
the audio matrix and what Asterisk's mixing bridge allows).

Synchronous: the NCCO goes on when the caller leaves the room, which only happens when the
call ends or the room is ended by a member with ``endOnExit`` (every member is hung up). A
caller who finds the room full (50 members; 10 in a room where anyone uses ``canSpeak`` or
``canHear``, each listener having its own bridge fed by snoops) gets an error event and the
NCCO goes on.

Events: joining sends Vonage's ``transfer`` event (the leg moves from its own conversation to
the room's: ``conversation_uuid_from``/``conversation_uuid_to``) to the action's eventUrl, or
the application's event_url; from then on the call's events carry the room's conversation_uuid.
A room recording (``record: true``) sends a ``record`` event there too.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

from bridge.ari.errors import AriError
from bridge.ncco.actions.conversation.rooms import RoomFull, RoomRegistry
from bridge.ncco.models import Action, Conversation
from bridge.webhooks import payloads as ev

if TYPE_CHECKING:
    from bridge.ncco.context import CallContext, Runner

#: Seconds a member of a room ended by endOnExit waits for its own hangup.
HANGUP_WAIT_S = 5.0


def runner(rooms: RoomRegistry) -> Runner:
    """The conversation action's runner, with the bridge's rooms."""
    async def run_in_rooms(call: CallContext, action: Conversation) -> list[Action] | None:
        return await run(call, action, rooms)
    return run_in_rooms


async def run(call: CallContext, action: Conversation,
              registry: RoomRegistry) -> list[Action] | None:
    try:
        room, member = await registry.join(call, action)
    except RoomFull as exc:
        call.error(f"conversation: {exc}; continuing the NCCO")
        return None
    except AriError as exc:
        if not call.gone.is_set():
            call.error(f"conversation: Asterisk refused to join the room: {exc}")
        return None
    url, method = ((action.event_url[0], action.event_method) if action.event_url
                   else (call.app.event_url, call.app.event_method))
    if url is not None:
        call.post_event(url, method, {
            "conversation_uuid_from": call.conversation_uuid,
            "conversation_uuid_to": room.conversation_uuid,
            "uuid": call.uuid,
            "timestamp": ev.timestamp(),
        })
    call.conversation_uuid = room.conversation_uuid
    waits = [asyncio.ensure_future(call.gone.wait()), asyncio.ensure_future(room.ended.wait())]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        if room.ended.is_set() and not call.gone.is_set():
            # Ended by a member's endOnExit: this call is being hung up; do not start the
            # next action meanwhile.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(call.gone.wait(), HANGUP_WAIT_S)
    finally:
        for w in waits:
            w.cancel()
        await asyncio.shield(room.leave(member))
    return None
