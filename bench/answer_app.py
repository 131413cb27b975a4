"""The benchmark's application server: answer_url returns one ``talk`` action.

Runs in its own process so its CPU is not counted as the bridge's::

    python bench/answer_app.py --port 8000 [--text "Hello there."]

GET|POST /answer  -> [{"action": "talk", "text": ...}], or the NCCO given with --ncco
POST|GET /event   -> 204 (counted by status)
GET /stats        -> {"answers": n, "events": {status: n}}
"""

from __future__ import annotations

import argparse
import json
from collections import Counter

from aiohttp import web


def build_app(text: str, ncco_json: str | None = None) -> web.Application:
    ncco = (ncco_json or json.dumps([{"action": "talk", "text": text}])).encode()
    answers = [0]
    events: Counter[str] = Counter()

    async def answer(request: web.Request) -> web.Response:
        answers[0] += 1
        return web.Response(body=ncco, content_type="application/json")

    async def event(request: web.Request) -> web.Response:
        try:
            data = await request.json() if request.method == "POST" else dict(request.query)
        except ValueError:
            data = {}
        events[str(data.get("status") or data.get("type") or "other")] += 1
        return web.Response(status=204)

    async def stats(request: web.Request) -> web.Response:
        return web.json_response({"answers": answers[0], "events": dict(events)})

    app = web.Application()
    app.router.add_route("*", "/answer", answer)
    app.router.add_route("*", "/event", event)
    app.router.add_get("/stats", stats)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--text", default="Hello there.")
    parser.add_argument("--ncco", help="answer this NCCO (JSON) instead of one talk")
    args = parser.parse_args()
    web.run_app(build_app(args.text, args.ncco), host=args.host, port=args.port, access_log=None,
                print=None)


if __name__ == "__main__":
    main()
