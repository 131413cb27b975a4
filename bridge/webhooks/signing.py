"""Signed webhooks: HS256 JWTs in ``Authorization: Bearer <JWT>``.

Every request to a customer's application carries ``Authorization: Bearer <JWT>`` when
the application has a signature secret.  The token is an HS256 JWT (header
``{"alg": "HS256", "typ": "JWT"}``) with the claims

* ``iat``: issue time, integer seconds since the Unix epoch,
* ``jti``: a random UUID4 (fresh for every HTTP attempt, retries included),
* ``iss``: the issuer (``"ari-bridge"`` unless configured otherwise),
* ``application_id``: the application the call belongs to,
* ``payload_hash``: SHA-256 hex digest of the exact body bytes sent (``b""`` for GET).

The receiving application verifies the signature with the shared secret and compares
``payload_hash`` with the hash of the body it received.
"""

from __future__ import annotations

import hashlib
import time
import uuid
import warnings
from dataclasses import dataclass, field
from typing import Any

import jwt
from jwt.warnings import InsecureKeyLengthWarning

__all__ = ["Signer", "payload_hash"]

# RFC 7518 section 3.2: an HS256 key should have at least 256 bits.  PyJWT warns below that.
_MIN_HS256_KEY_BYTES = 32


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
        claims = self.claims(body)
        if len(self.secret.encode("utf-8")) >= _MIN_HS256_KEY_BYTES:
            return jwt.encode(claims, self.secret, algorithm="HS256")
        # The secret is the one the application's owner configured and shares with their
        # receiver: a shorter one is their choice, and PyJWT's warning on every token would
        # only repeat it on stderr.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", InsecureKeyLengthWarning)
            return jwt.encode(claims, self.secret, algorithm="HS256")
