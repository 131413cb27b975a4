"""A call's requests to its application whose reply is an NCCO: answer_url (and its
fallback) when the call starts, and event webhooks that may answer with a new NCCO."""

from __future__ import annotations

from typing import Any

from bridge.ncco.context import CallContext
from bridge.ncco.models import Action, NccoError
from bridge.ncco.replies import answer_ncco_parser, optional_ncco
from bridge.webhooks import FallbackResult, WebhookRequest


async def fetch_answer_ncco(call: CallContext) -> list[Action] | None:
    """The NCCO from answer_url (or its fallback); None, reported, when there is none."""
    params = {
        "to": call.to_number,
        "from": call.from_number,
        "uuid": call.uuid,
        "conversation_uuid": call.conversation_uuid,
    }
    request = WebhookRequest(
        url=call.app.answer_url, method=call.app.answer_method, data=params
    )
    services = call.services
    result = await services.webhooks.send_with_fallback(
        request,
        call.app.fallback_answer_url,
        answer_ncco_parser(services.check_runnable, call.app.answer_url),
        services.timeouts(call.app, event=False),
        services.signer(call.app),
        kind="answer",
    )
    if result.value is not None:
        if result.source == "fallback":
            call.error(f"answer_url failed ({result.reason}); used fallback_answer_url")
        return result.value
    call.error(f"no NCCO: {result.error}")
    return None


async def ask_for_ncco(call: CallContext, url: str, method: str,
                       payload: dict[str, Any]) -> list[Action] | None:
    """Send an event whose reply may carry an NCCO (notify, input, synchronous connect).

    Returns the new NCCO, or None when the reply carries none (the flow continues). A reply
    that is not a valid NCCO is reported as an error and the flow continues too; so does
    a failing URL after its fallback (Vonage's rule for event hooks)."""
    services = call.services
    result: FallbackResult[list[Action] | None] = await services.webhooks.send_with_fallback(
        WebhookRequest(url=url, method=method, data=payload),  # type: ignore[arg-type]
        call.app.fallback_answer_url,
        optional_ncco,
        services.timeouts(call.app, event=True),
        services.signer(call.app),
    )
    if result.error:
        call.error(f"event webhook {url} failed: {result.error}; continuing the NCCO")
        return None
    if result.reason and result.source == "fallback":
        call.log.info("call.event_fallback_used", reason=result.reason)
    if result.value is not None:
        try:
            services.check_runnable(result.value)
        except NccoError as exc:
            call.error(f"invalid NCCO in reply from {url}: {exc}; continuing the NCCO")
            return None
    return result.value
