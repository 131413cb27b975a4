"""Signed webhooks: a minimal HS256 JWT encoder.

Every request to a customer's application carries ``Authorization: Bearer <JWT>`` when
the application has a signature secret.  The token is an HS256 JWT with the claims

* ``iat``: issue time, integer seconds since the Unix epoch,
* ``jti``: a random UUID4 (fresh for every HTTP attempt, retries included),
* ``iss``: the issuer (``"ari-bridge"`` unless configured otherwise),
* ``application_id``: the application the call belongs to,
* ``payload_hash``: SHA-256 hex digest of the exact body bytes sent (``b""`` for GET).

The receiving application verifies the signature with the shared secret and compares
``payload_hash`` with the hash of the body it received.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Signer", "encode_hs256", "payload_hash"]

_HEADER = {"alg": "HS256", "typ": "JWT"}


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _json_segment(obj: Any) -> str:
    return _b64url(json.dumps(obj, separators=(",", ":"), sort_keys=True).encode("utf-8"))


def encode_hs256(claims: dict[str, Any], secret: str | bytes) -> str:
    """Encode ``claims`` as a compact HS256-signed JWT."""
    key = secret.encode("utf-8") if isinstance(secret, str) else secret
    signing_input = f"{_json_segment(_HEADER)}.{_json_segment(claims)}"
    signature = hmac.new(key, signing_input.encode("ascii"), hashlib.sha256).digest()
    return f"{signing_input}.{_b64url(signature)}"


def payload_hash(body: bytes) -> str:
    """SHA-256 hex digest of the body bytes (the ``payload_hash`` claim)."""
    return hashlib.sha256(body).hexdigest()


@dataclass(frozen=True)
class Signer:
    """Signs webhook requests for one application.

    ``secret`` is the shared signature secret; it never appears in ``repr()`` or logs.
    """

    secret: str = field(repr=False)
    application_id: str
    issuer: str = "ari-bridge"

    def __post_init__(self) -> None:
        if not self.secret:
            raise ValueError("signature secret must not be empty")

    def claims(self, body: bytes, *, now: float | None = None) -> dict[str, Any]:
        """The JWT claims for a request whose body is ``body`` (``now`` in epoch seconds)."""
        issued = int(time.time() if now is None else now)
        return {
            "iat": issued,
            "jti": str(uuid.uuid4()),
            "iss": self.issuer,
            "application_id": self.application_id,
            "payload_hash": payload_hash(body),
        }

    def token(self, body: bytes) -> str:
        """A fresh HS256 JWT for a request carrying exactly ``body`` (``b""`` for GET)."""
        return encode_hs256(self.claims(body), self.secret)
