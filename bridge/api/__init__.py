"""The Vonage-compatible Voice REST API (``/v1/calls``, ``/v1/files``) and its pieces."""

from bridge.api.auth import AuthError, KeyRing, Principal
from bridge.api.routes import RestApi
from bridge.media.files import FileStore

__all__ = ["AuthError", "FileStore", "KeyRing", "Principal", "RestApi"]
