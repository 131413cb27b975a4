"""NCCOs that arrive in webhook replies: the answer, an event's reply, a transfer's URL,
onAnswer, an applet transition. One parser, so that every place reports a bad NCCO alike."""

from __future__ import annotations

from collections.abc import Callable

from bridge.ncco.models import Action, NccoError, parse_ncco_bytes
from bridge.webhooks import ParseError, WebhookResponse, require_json_content_type

Check = Callable[[list[Action]], None]


def reply_ncco(response: WebhookResponse, check: Check | None = None, *,
               json_field: str | None = None, label: str = "invalid NCCO") -> list[Action]:
    """The NCCO in ``response``'s body. ``check``: what this bridge can run (raises
    NccoError). ``json_field``: the reply must be JSON, named so in the error. Raises
    ParseError (``label: reason``), which makes the webhook client try the fallback."""
    if json_field is not None:
        require_json_content_type(response, json_field)
    try:
        actions = parse_ncco_bytes(response.body)
        if check is not None:
            check(actions)
    except NccoError as exc:
        raise ParseError(f"{label}: {exc}") from None
    return actions


def answer_ncco_parser(check: Check, answer_url: str) -> Callable[[WebhookResponse],
                                                                  list[Action]]:
    """The parser of answer_url's reply and its fallback's (each named in the error)."""
    def parse(response: WebhookResponse) -> list[Action]:
        primary = response.request.url == answer_url
        return reply_ncco(response, check,
                          json_field="answer_url" if primary else "fallback_answer_url")
    return parse


def optional_ncco(response: WebhookResponse) -> list[Action] | None:
    """An event reply: an NCCO replaces the running one; an empty or non-array body does not."""
    body = response.body.strip()
    if not body or not body.startswith(b"["):
        return None
    return reply_ncco(response, label="invalid NCCO in event reply")


__all__ = ["answer_ncco_parser", "optional_ncco", "reply_ncco"]
