"""Errors from ARI that code can act on: status, what was asked, and Asterisk's own words."""

from __future__ import annotations


class AriError(Exception):
    """An ARI request failed. ``status`` is None when no HTTP answer came back."""

    def __init__(self, method: str, path: str, status: int | None, details: str) -> None:
        super().__init__(f"ARI {method} {path} -> {status if status is not None else 'no answer'}: "
                         f"{details}")
        self.method = method
        self.path = path
        self.status = status
        self.details = details


class ChannelGone(AriError):
    """A 404 on a channel: the caller (or callee) hung up. Not a crash, just the end."""


class AriUnavailable(AriError):
    """Asterisk did not answer (connection refused, timeout, websocket down)."""
