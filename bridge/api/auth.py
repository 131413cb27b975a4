"""REST API authentication: an RS256 JWT per request, as Vonage's SDKs send it.

The token names its application in the ``application_id`` claim; it must be signed with that
application's private key and verify with the public key configured for it (``public_key`` or
``public_key_path``). ``iat`` is required and may not lie in the future; ``exp`` defaults to
``iat`` + 15 minutes (as Vonage's) and may be at most 24 hours after ``iat``. Clocks may differ
by ``LEEWAY_S``. Nothing about a token or a key is ever logged: failures carry a short
reason for the response only.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from bridge.config import ApplicationConfig, Config, ConfigError

LEEWAY_S = 30
DEFAULT_TTL_S = 900
MAX_TTL_S = 86_400


class AuthError(Exception):
    """The request is not authenticated; the message is safe to return to the client."""


@dataclass(frozen=True)
class Principal:
    application_id: str
    claims: dict[str, Any]


def load_public_key(app: ApplicationConfig) -> Any | None:
    """The application's public key, or None when it has none; ConfigError names the key."""
    pem: bytes | None = None
    if app.public_key:
        pem = app.public_key.encode()
    elif app.public_key_path is not None:
        try:
            pem = app.public_key_path.read_bytes()
        except OSError as exc:
            raise ConfigError(
                f"applications.{app.id}.public_key_path: cannot read: {exc.strerror}"
            ) from None
    if pem is None:
        return None
    try:
        return load_pem_public_key(pem)
    except (ValueError, TypeError):
        field = "public_key" if app.public_key else "public_key_path"
        raise ConfigError(
            f"applications.{app.id}.{field}: not a PEM public key"
        ) from None


class KeyRing:
    """Public keys by application id, loaded once at start."""

    def __init__(self, config: Config) -> None:
        self._keys: dict[str, Any] = {}
        for app in config.applications:
            key = load_public_key(app)
            if key is not None:
                self._keys[app.id] = key

    def __contains__(self, application_id: str) -> bool:
        return application_id in self._keys

    def verify_header(self, header: str | None, now: float | None = None) -> Principal:
        if not header:
            raise AuthError("missing Authorization header")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthError("Authorization must be 'Bearer <JWT>'")
        return self.verify(token.strip(), now)

    def verify(self, token: str, now: float | None = None) -> Principal:
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise AuthError("malformed token") from None
        if header.get("alg") != "RS256":
            raise AuthError("token must be signed with RS256")
        app_id = unverified.get("application_id")
        if not isinstance(app_id, str) or app_id not in self._keys:
            raise AuthError("invalid token")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                self._keys[app_id],
                algorithms=["RS256"],
                leeway=LEEWAY_S,
                options={"require": ["iat"], "verify_exp": False, "verify_iat": False},
            )
        except jwt.PyJWTError:
            raise AuthError("invalid token") from None
        now = time.time() if now is None else now
        iat = claims.get("iat")
        exp = claims.get("exp", iat + DEFAULT_TTL_S if isinstance(iat, int | float) else None)
        if not isinstance(iat, int | float) or isinstance(iat, bool):
            raise AuthError("invalid iat claim")
        if not isinstance(exp, int | float) or isinstance(exp, bool):
            raise AuthError("invalid exp claim")
        if iat > now + LEEWAY_S:
            raise AuthError("token issued in the future")
        if exp <= now - LEEWAY_S:
            raise AuthError("token expired")
        if exp - iat > MAX_TTL_S:
            raise AuthError("token lifetime longer than 24 hours")
        return Principal(application_id=app_id, claims=claims)
