"""Who may see the console: a bearer token, or basic auth with ``console.users``.

The token is accepted in the ``Authorization: Bearer`` header or as ``?token=`` (the page passes
it on to its own requests, since a browser's ``EventSource`` cannot set headers). Every
comparison runs in constant time. Failures answer 401; with users configured the answer asks
the browser for basic auth.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Awaitable, Callable

from aiohttp import web

from bridge.config import ConsoleConfig

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
REALM = "ari-bridge console"


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


class ConsoleAuth:
    def __init__(self, config: ConsoleConfig) -> None:
        self._token = config.token.get_secret_value() if config.token is not None else None
        self._users = {name: secret.get_secret_value() for name, secret in config.users.items()}

    def allows(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization", "")
        scheme, _, credentials = header.partition(" ")
        credentials = credentials.strip()
        if self._token is not None:
            if scheme.lower() == "bearer" and _same(credentials, self._token):
                return True
            query_token = request.query.get("token")
            if query_token is not None and _same(query_token, self._token):
                return True
        if self._users and scheme.lower() == "basic":
            try:
                name, _, password = base64.b64decode(credentials, validate=True).decode(
                    "utf-8").partition(":")
            except (binascii.Error, UnicodeDecodeError):
                return False
            expected = self._users.get(name)
            # Compared even for an unknown name, so timing does not tell names apart.
            return _same(password, expected if expected is not None else "\0" * 16) \
                and expected is not None
        return False

    def challenge(self) -> web.HTTPUnauthorized:
        headers = {"WWW-Authenticate": f'Basic realm="{REALM}", charset="UTF-8"'} \
            if self._users else {}
        return web.HTTPUnauthorized(
            text='{"error": "console credentials required"}', content_type="application/json",
            headers=headers)

    def protect(self, handler: Handler) -> Handler:
        async def guarded(request: web.Request) -> web.StreamResponse:
            if not self.allows(request):
                raise self.challenge()
            return await handler(request)
        return guarded
