"""Asking the applet's URLs whom to dial: the Primary URL, then the Fallback URL."""

from __future__ import annotations

import asyncio
from typing import Any

from bridge import metrics
from bridge.config import ConnectAppletConfig
from bridge.exotel.params import EXOTEL_VERSION, AppletParams, parse_dial_whom, parse_json
from bridge.media.errors import MediaError
from bridge.ncco.context import CallContext
from bridge.webhooks import ParseError, Timeouts, WebhookRequest


async def fetch_params(call: CallContext, applet: ConnectAppletConfig, data: dict[str, str],
                       log: Any) -> AppletParams | None:
    """Ask the Primary URL, then the Fallback URL; None when neither gave parameters. Each
    failure is reported to the application as an error event."""
    params, reason = await ask(call, applet, applet.primary_url, data)
    if params is not None:
        return params
    log.warning("connect.primary_failed", reason=reason)
    if applet.fallback_url is None:
        call.error(f"connect applet: primary URL failed ({reason}); no fallback URL")
        return None
    params, fb_reason = await ask(call, applet, applet.fallback_url, data)
    if params is not None:
        call.error(f"connect applet: primary URL failed ({reason}); used fallback URL")
        return params
    call.error(f"connect applet: primary URL failed ({reason}); "
               f"fallback URL failed ({fb_reason})")
    return None


async def ask(call: CallContext, applet: ConnectAppletConfig, url: str,
              data: dict[str, str]) -> tuple[AppletParams | None, str]:
    """One URL's parameters, or None and why not (by the dialect's rules)."""
    limit = applet.timeout_s
    json_dialect = applet.dialect == "1.1"
    headers = {"exotel-version": EXOTEL_VERSION} if json_dialect else None
    request = WebhookRequest(url=url, method="GET", data=data, headers=headers)
    timeouts = Timeouts(connect_ms=int(min(1.0, limit) * 1000), read_ms=int(limit * 1000))
    try:
        async with asyncio.timeout(limit):
            response = await call.services.webhooks.send(request, timeouts, kind="exotel")
    except TimeoutError:
        # send() was cancelled before it could count this failure.
        metrics.WEBHOOK_FAILURES.labels(kind="exotel", reason="timeout").inc()
        return None, f"no answer within {limit:g} s"
    if response.status != 200 or response.error is not None:
        return None, response.error or f"http {response.status}"
    try:
        if json_dialect:
            params = parse_json(response)
            await check_media(call, params)
        else:
            params = parse_dial_whom(response)
    except (ParseError, ValueError) as exc:
        metrics.WEBHOOK_FAILURES.labels(kind="exotel", reason="invalid_response").inc()
        return None, f"invalid response: {exc}"
    return params, ""

async def check_media(call: CallContext, params: AppletParams) -> None:
    """audio_url must be http(s) and answer 200 with audio: fetched (and cached) now."""
    for url in (params.playback_value if params.playback_type == "audio_url" else None,
                params.moh_url):
        if url is None:
            continue
        try:
            await call.media.fetch(url)
        except MediaError as exc:
            raise ParseError(f"audio {url}: {exc}") from None
