"""What an NCCO action (and the Exotel applet, and a WebSocket leg) may use of its call.

:class:`CallContext` is the call as an action sees it: its identity, its events (subscribe
before acting), its DTMF, the status and error events it sends, the tasks it runs beside the
NCCO, and :class:`CallServices`, the bridge's services that actions use (dialler,
recordings, webhooks, agents, ...). ``bridge.calls.session.CallSession`` implements it; an
action never sees the call engine, so actions and the applet do not import ``bridge.calls``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from bridge.agents.store import AgentStore
from bridge.ari.gateway import AriGateway
from bridge.ari.waits import Event, Predicate, Waiter
from bridge.config import ApplicationConfig, Config
from bridge.dial.dialer import Dialer
from bridge.media.asr import AsrProvider
from bridge.media.files import FileStore
from bridge.media.recordings import RecordingService
from bridge.media.store import MediaStore
from bridge.ncco.dtmf import DtmfBuffer
from bridge.ncco.models import Action, parse_ncco
from bridge.webhooks import EventOutbox, Signer, Timeouts, WebhookClient


@dataclass
class CallServices:
    """The bridge's services that calls share; built once by the call engine."""

    gateway: AriGateway
    media: MediaStore
    dialer: Dialer
    webhooks: WebhookClient
    events: EventOutbox  # the durable, ordered outbox of every call's events
    recordings: RecordingService
    agents: AgentStore  # Exotel Connect busy leases and sticky agents
    config: Config
    public_url: Callable[[], str]  # the bridge's own base URL, as Asterisk and apps reach it
    #: Checks an NCCO against what this bridge runs (actions, voices); raises NccoError.
    check_runnable: Callable[[list[Action]], None]
    asr: AsrProvider | None = None  # speech input; None = the embedded default

    def media_uri(self, media_id: str) -> str:
        """What Asterisk plays for a file of our media store: fetched from our HTTP server
        through its media cache (no shared filesystem)."""
        return f"sound:{self.public_url()}/media/{media_id}.wav"

    def file_url(self, file_id: str) -> str:
        """The URL a ``record`` event gives for a stored recording."""
        return FileStore.url(self.public_url(), file_id)

    def timeouts(self, app: ApplicationConfig, event: bool) -> Timeouts:
        """An application's webhook timeouts: its answer read timeout, or with ``event`` its
        event read timeout."""
        read = app.timeouts.event_read_ms if event else app.timeouts.answer_read_ms
        return Timeouts(connect_ms=app.timeouts.connect_ms, read_ms=read)

    def signer(self, app: ApplicationConfig) -> Signer | None:
        """Signs the application's webhooks; None when it has no signature secret."""
        if app.signature_secret is None:
            return None
        return Signer(secret=app.signature_secret.get_secret_value(), application_id=app.id)

    def parse(self, data: Any) -> list[Action]:
        """An NCCO (decoded JSON) that this bridge can run; raises NccoError."""
        actions = parse_ncco(data)
        self.check_runnable(actions)
        return actions


class CallContext(Protocol):
    """One call leg, as its actions see it. Implemented by ``CallSession``."""

    uuid: str
    conversation_uuid: str  # a conversation action moves the call into its room's
    channel_id: str
    app: ApplicationConfig  # with the call's own URLs (a REST-created call's)
    started: datetime
    answered: datetime | None
    gone: asyncio.Event  # set once the channel is gone
    dtmf: DtmfBuffer
    gateway: AriGateway
    media: MediaStore
    services: CallServices
    log: Any  # a structlog logger bound to the call

    @property
    def from_number(self) -> str: ...

    @property
    def to_number(self) -> str: ...

    def on_event(self, event: Event) -> None:
        """Where the call's channel events go (an external media channel routes here)."""

    def expect(self, predicate: Predicate) -> Waiter:
        """Subscribe to a channel event before acting; resolves HANGUP if the call ends."""
        ...

    def stop_waiting(self, waiter: Waiter) -> None:
        """Drop a subscription (idempotent)."""

    def post_event(self, url: str, method: str, payload: dict[str, Any]) -> bool:
        """Queue an event of this call for delivery, in the call's order."""
        ...

    def error(self, reason: str) -> None:
        """Tell the application what went wrong (an error event)."""

    def action_playback_ids(self) -> tuple[str, str]:
        """The playback ids of the running action (stable across a bridge restart)."""
        ...

    async def ensure_answered(self) -> None:
        """Answer the channel once, the first time an action needs media."""

    async def hang_up(self) -> None:
        """End the call from our side."""

    def run_beside(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        """Run part of an action beside the NCCO; cancelled when the call ends."""
        ...

    async def ask_for_ncco(self, url: str, method: str,
                           payload: dict[str, Any]) -> list[Action] | None:
        """Send an event whose reply may carry an NCCO that replaces the running one."""
        ...


#: Runs one action of a call; returns the NCCO that replaces the call's, or None.
Runner = Callable[[CallContext, Any], Coroutine[Any, Any, list[Action] | None]]

__all__ = ["CallContext", "CallServices", "Runner"]
