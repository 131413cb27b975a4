"""Outbound HTTP to customers' applications: answer/event webhooks, fallbacks, signing."""

from bridge.webhooks.client import (
    DEFAULT_MAX_BODY_BYTES,
    RETRY_STATUSES,
    FallbackResult,
    Method,
    ParseError,
    Timeouts,
    WebhookClient,
    WebhookRequest,
    WebhookResponse,
    encode_body,
    encode_query,
    redact_url,
)
from bridge.webhooks.outbox import EventOutbox
from bridge.webhooks.signing import Signer, encode_hs256, payload_hash

__all__ = [
    "DEFAULT_MAX_BODY_BYTES",
    "RETRY_STATUSES",
    "EventOutbox",
    "FallbackResult",
    "Method",
    "ParseError",
    "Signer",
    "Timeouts",
    "WebhookClient",
    "WebhookRequest",
    "WebhookResponse",
    "encode_body",
    "encode_hs256",
    "encode_query",
    "payload_hash",
    "redact_url",
]
