"""A small Vonage-style application, bundled for the demo and as a starting point.

It answers every call with a greeting, sends a ``notify`` whose reply replaces the rest of the
NCCO (the same mechanism an IVR uses), and prints every event it receives.
"""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Callable
from typing import Any

from aiohttp import web

EVENTS_KEY = web.AppKey("events", list)
PRINT_KEY = web.AppKey("printer", object)


def answer_ncco(base_url: str) -> list[dict[str, Any]]:
    return [
        {
            "action": "talk",
            "text": "Hello from ari bridge. This call runs a Vonage call control object "
                    "on your own Asterisk.",
            "voiceName": "Amy",
        },
        {
            "action": "notify",
            "payload": {"step": "greeted"},
            "eventUrl": [f"{base_url}/notify"],
        },
        {"action": "talk", "text": "You should not hear this: the notify reply replaces it."},
    ]


def create_app(printer: Callable[[str], None] = print) -> web.Application:
    app = web.Application()
    app[EVENTS_KEY] = []
    app[PRINT_KEY] = printer

    async def answer(request: web.Request) -> web.Response:
        base = f"{request.scheme}://{request.host}"
        printer(f"answer  {dict(request.query)}")
        return web.json_response(answer_ncco(base))

    async def notify(request: web.Request) -> web.Response:
        printer(f"notify  {await request.json()}")
        return web.json_response([{"action": "talk", "text": "Goodbye.", "voiceName": "Brian"}])

    async def event(request: web.Request) -> web.Response:
        body = await request.json()
        app[EVENTS_KEY].append(body)
        status = body.get("status")
        label = f"error: {body.get('reason')}" if status in (None, "error") else status
        printer(f"event   {label:<10} {json.dumps(body, sort_keys=True)}")
        return web.Response(status=204)

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app.router.add_get("/answer", answer)
    app.router.add_get("/healthz", healthz)  # for a container health check
    app.router.add_post("/notify", notify)
    app.router.add_post("/event", event)
    return app


async def serve(host: str, port: int, printer: Callable[[str], None] = print) -> web.AppRunner:
    runner = web.AppRunner(create_app(printer), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner


def main(argv: list[str] | None = None) -> None:
    """``python -m bridge.examples.welcome [--host H] [--port P]``: serve until stopped."""
    import argparse

    parser = argparse.ArgumentParser(description="the bundled example application")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)

    async def run() -> None:
        runner = await serve(args.host, args.port, lambda line: print(line, flush=True))
        print(f"example application on http://{args.host}:{args.port}/answer", flush=True)
        # As a container's PID 1, SIGTERM does nothing unless handled.
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        await stop.wait()
        await runner.cleanup()

    asyncio.run(run())


if __name__ == "__main__":  # pragma: no cover - manual use and the compose "example" service
    main()
