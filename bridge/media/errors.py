"""The media layer's single error type.

It lives in its own module so that the TTS providers, the audio helpers and the
store can all raise it without importing each other.
"""

from __future__ import annotations


class MediaError(Exception):
    """Producing a playable file failed.

    Attributes:
        cause: Short machine-friendly reason for call-flow decisions and metrics,
            e.g. ``"http 404"``, ``"unreachable"``, ``"timeout"``, ``"not audio"``,
            ``"too large"``, ``"transcode failed"``, ``"tts failed"``.
        url: The source URL when the media came from a download, else ``None``.

    ``str(error)`` is a human message naming the URL (or the TTS voice) and the
    detail, for logs and webhook error reports.
    """

    def __init__(self, cause: str, message: str, *, url: str | None = None) -> None:
        super().__init__(message)
        self.cause = cause
        self.url = url

    def __repr__(self) -> str:
        return f"MediaError(cause={self.cause!r}, message={str(self)!r})"
