"""Outbound HTTP to customers' applications: answer/event webhooks, fallbacks, signing."""

from bridge.webhooks.client import DEFAULT_MAX_BODY_BYTES, WebhookClient
from bridge.webhooks.failures import FAILURE_REASONS, RETRY_STATUSES
from bridge.webhooks.messages import (
    JSON_NESTING_ERROR,
    KINDS,
    FallbackResult,
    Kind,
    Method,
    ParseError,
    Timeouts,
    WebhookRequest,
    WebhookResponse,
    encode_body,
    encode_query,
    is_json_media_type,
    redact_url,
    require_json_content_type,
)
from bridge.webhooks.outbox import EventOutbox
from bridge.webhooks.signing import Signer, payload_hash

__all__ = [
    "DEFAULT_MAX_BODY_BYTES",
    "FAILURE_REASONS",
    "JSON_NESTING_ERROR",
    "KINDS",
    "RETRY_STATUSES",
    "EventOutbox",
    "FallbackResult",
    "Kind",
    "Method",
    "ParseError",
    "Signer",
    "Timeouts",
    "WebhookClient",
    "WebhookRequest",
    "WebhookResponse",
    "encode_body",
    "encode_query",
    "is_json_media_type",
    "payload_hash",
    "redact_url",
    "require_json_content_type",
]
