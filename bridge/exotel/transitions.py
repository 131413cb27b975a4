"""The applet's three transitions: after the conversation, nobody answered, nobody dialled
(unset: nobody answered, as Exotel does). Each gives an NCCO, inline or from a URL, or
nothing (the call is hung up)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from bridge.config import AppletTransition, ConnectAppletConfig
from bridge.exotel.recording import ConversationRecording
from bridge.ncco.context import CallContext
from bridge.ncco.models import Action, NccoError
from bridge.ncco.replies import reply_ncco
from bridge.webhooks import ParseError, WebhookRequest, WebhookResponse

Outcome = Literal["after_conversation", "nobody_answered", "nobody_dialled"]


async def transition_ncco(call: CallContext, applet: ConnectAppletConfig, outcome: Outcome,
                          request_params: Callable[[], dict[str, str]],
                          recording: ConversationRecording | None) -> list[Action] | None:
    """The NCCO of the transition taken (given, or asked of its URL with the applet's
    request parameters and ``Outcome``), or None (hang up)."""
    if call.gone.is_set():
        return None
    chosen: AppletTransition | None = getattr(applet, outcome)
    if outcome == "nobody_dialled" and chosen is None:
        chosen = applet.nobody_answered
    if chosen is None or (chosen.ncco is None and chosen.url is None):
        return None
    try:
        if chosen.ncco is not None:
            return call.services.parse(chosen.ncco)
        assert chosen.url is not None
        if recording is not None:
            await recording.wait_stored()  # so RecordingUrl can be sent
        data = request_params()
        data["Outcome"] = outcome
        response = await call.services.webhooks.send(
            WebhookRequest(url=chosen.url, method="GET", data=data),
            call.services.timeouts(call.app, event=False), kind="exotel")
        return _reply_ncco(call, response)
    except NccoError as exc:
        call.error(f"connect applet: {outcome} transition: invalid NCCO: {exc}")
    except ParseError as exc:
        call.error(f"connect applet: {outcome} transition: {exc}")
    return None


def _reply_ncco(call: CallContext, response: WebhookResponse) -> list[Action]:
    if not response.ok:
        raise ParseError(f"{response.error or response.status}")
    return reply_ncco(response, call.services.check_runnable)
