"""Masking for what the console shows: secrets out, long bodies cut.

A value is a secret when its key names one (``token``, ``secret``, ``password``,
``authorization``, ``api_key``, ``jwt``, ``signature``, ``cookie``, in any case and spelling:
``X-Api-Key``, ``signature_secret``); in free text JWTs, ``Bearer``/``Basic`` credentials and
``"key": "value"`` or ``key=value`` pairs with such keys are masked too. Bodies are cut at
4 KB. Imports nothing of the bridge, so any layer may use it.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

#: Request and response bodies are cut to this many characters.
MAX_BODY_CHARS = 4096
MASK = "***"
#: A key whose name contains one of these holds a secret (``api_token``, ``Password``, ...).
_SECRET_WORDS = ("token", "secret", "password", "passwd", "authorization", "apikey", "jwt",
                 "signature", "cookie")
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*")
_BEARER = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]+")
#: ``"api_token": "..."`` and ``password=...`` in text that is not (or no longer) valid JSON.
_KEYED = re.compile(r'(?i)("[^"]*(?:token|secret|passw|authorization|api.?key|jwt|signature)'
                    r'[^"]*"\s*:\s*)"[^"]*"|\b([\w.-]*(?:token|secret|passw|api.?key)[\w.-]*=)'
                    r'[^&\s"]+')


@functools.lru_cache(maxsize=4096)
def is_secret_key(key: str) -> bool:
    lowered = key.lower().replace("-", "").replace("_", "")  # X-Api-Key, api_key
    return any(word in lowered for word in _SECRET_WORDS)


def mask_text(text: str) -> str:
    """JWTs, ``Bearer``/``Basic`` credentials and secret ``key: value`` pairs in free text."""
    text = _BEARER.sub(lambda m: f"{m.group(1)} {MASK}", _JWT.sub(MASK, text))
    return _KEYED.sub(lambda m: f'{m.group(1)}"{MASK}"' if m.group(1) else f"{m.group(2)}{MASK}",
                      text)


def mask(value: Any, depth: int = 0) -> Any:
    """A copy of JSON-like ``value`` with secret keys' values and JWTs masked."""
    if depth > 20:
        return MASK
    if isinstance(value, Mapping):
        return {str(k): MASK if is_secret_key(str(k)) and v not in (None, "")
                else mask(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [mask(v, depth + 1) for v in value]
    if isinstance(value, str):
        return mask_text(value)
    return value


def mask_url(url: str) -> str:
    """The URL without credentials, with secret query parameters masked."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<invalid url>"
    netloc = parts.netloc.rpartition("@")[2]
    query = urlencode([(k, MASK if is_secret_key(k) else mask_text(v))
                       for k, v in parse_qsl(parts.query, keep_blank_values=True)])
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


@functools.lru_cache(maxsize=1024)
def health_key(url: str) -> str:
    """Webhook health is kept per URL without its query string (one row per endpoint)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<invalid url>"
    return urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, "", ""))


def cut(text: str, limit: int = MAX_BODY_CHARS) -> str:
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text) - limit} more characters cut)"


def body_text(body: bytes | str | None) -> str:
    """A response body as masked text of at most 4 KB (JSON bodies masked key by key)."""
    if not body:
        return ""
    raw = body if isinstance(body, str) else body[:MAX_BODY_CHARS * 4].decode("utf-8", "replace")
    stripped = raw.lstrip()
    if stripped[:1] in ("{", "[") and len(raw) <= MAX_BODY_CHARS * 4:
        try:
            return cut(json.dumps(mask(json.loads(raw)), ensure_ascii=False))
        except ValueError:
            pass
    return cut(mask_text(raw))


def cut_json(value: Any) -> Any:
    """``value`` itself when its JSON is at most 4 KB, else the JSON text cut."""
    if value is None:
        return None
    text = json.dumps(value, ensure_ascii=False, default=str)
    return value if len(text) <= MAX_BODY_CHARS else cut(text)
