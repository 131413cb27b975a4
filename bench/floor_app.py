"""The floor under the bridge's CPU per call: the same ARI and webhook traffic, and nothing else.

``bench/callrate.py --quick --floor`` runs this in place of ``ari-bridge serve`` for one more
step. Per call it does exactly what the bridge does on the wire for an answer_url that returns
one ``talk``, with the same libraries (aiohttp for the event WebSocket and the webhook, orjson,
uvloop) and the same ARI transport (REST requests on the event WebSocket), and nothing more:

    StasisStart -> GET answer_url, POST answer, POST play, PlaybackFinished,
                   DELETE the channel

and ``POST ring`` as well, while answer_url is asked, when it takes longer than
``--ring-after-ms`` (200, the bridge's default), or at once when that is 0.

No validation, no call store, no log line, no metrics, no timeouts, no error handling beyond
giving up on the call. Its CPU per call is what any Python ARI application built on these
libraries pays for this traffic; the bridge's figure minus this one is what the bridge's own
work costs (NCCO validation, the call store, busy tracking, logging, metrics, deadlines).

Run by the benchmark, never by pytest::

    python bench/floor_app.py --ari-url URL --username U --app APP --answer-url URL
                              --media-file FILE --port PORT      (the password: $ARI_PASSWORD)
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import uvloop
from aiohttp import web

#: The event types the bridge's application filter lets through (bridge/ari/routing.py), so
#: that Asterisk sends this client the same events per call.
from bridge.ari.routing import SUBSCRIBED_EVENTS


class Floor:
    def __init__(self, args: argparse.Namespace, media_url: str) -> None:
        self.args = args
        self.media_url = media_url
        self.ids = itertools.count(1)
        self.answers: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self.finished: dict[str, asyncio.Future[None]] = {}
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.session: aiohttp.ClientSession | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    async def rest(self, method: str, uri: str, query: dict[str, str] | None = None) -> int:
        assert self.ws is not None
        request_id = str(next(self.ids))
        message: dict[str, Any] = {"type": "RESTRequest", "request_id": request_id,
                                   "method": method, "uri": uri}
        if query:
            message["query_strings"] = [{"name": k, "value": v} for k, v in query.items()]
        answer = asyncio.get_running_loop().create_future()
        self.answers[request_id] = answer
        await self.ws.send_str(orjson.dumps(message).decode())
        response = await answer
        return int(response.get("status_code") or 0)

    async def call(self, channel_id: str) -> None:
        assert self.session is not None
        ringing: list[asyncio.Task[int]] = []

        def ring() -> None:
            ringing.append(asyncio.ensure_future(self.rest("POST", f"channels/{channel_id}/ring")))

        if self.args.ring_after_ms <= 0:
            ring()
            timer = None
        else:
            timer = asyncio.get_running_loop().call_later(self.args.ring_after_ms / 1000, ring)
        async with self.session.get(self.args.answer_url) as resp:
            orjson.loads(await resp.read())
        if timer is not None:
            timer.cancel()
        for task in ringing:
            await task
        await self.rest("POST", f"channels/{channel_id}/answer")
        playback_id = f"floor-{channel_id}"
        done = asyncio.get_running_loop().create_future()
        self.finished[playback_id] = done
        if await self.rest("POST", f"channels/{channel_id}/play/{playback_id}",
                           {"media": self.media_url}) < 300:
            await done
        self.finished.pop(playback_id, None)
        await self.rest("DELETE", f"channels/{channel_id}", {"reason": "normal"})

    def on_message(self, data: str) -> None:
        event = orjson.loads(data)
        kind = event.get("type")
        if kind == "RESTResponse":
            waiter = self.answers.pop(str(event.get("request_id")), None)
            if waiter is not None and not waiter.done():
                waiter.set_result(event)
        elif kind == "StasisStart":
            task = asyncio.ensure_future(self.call(event["channel"]["id"]))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        elif kind == "PlaybackFinished":
            done = self.finished.get(event["playback"]["id"])
            if done is not None and not done.done():
                done.set_result(None)

    async def run(self) -> None:
        auth = aiohttp.BasicAuth(self.args.username, os.environ["ARI_PASSWORD"])
        base = self.args.ari_url.rstrip("/") + "/ari"
        async with aiohttp.ClientSession(auth=auth) as ari, aiohttp.ClientSession() as hooks:
            self.session = hooks
            self.ws = await ari.ws_connect(f"{base}/events",
                                           params={"app": self.args.app}, heartbeat=None)
            allowed = [{"type": kind} for kind in (*SUBSCRIBED_EVENTS, "RESTResponse")]
            async with ari.put(f"{base}/applications/{self.args.app}/eventFilter",
                               json={"allowed": allowed}) as resp:
                resp.raise_for_status()
            async for message in self.ws:
                if message.type is aiohttp.WSMsgType.TEXT:
                    self.on_message(message.data)
                elif message.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                    break


async def main(args: argparse.Namespace, media_bytes: bytes) -> None:
    media = Path(args.media_file)

    async def serve_media(request: web.Request) -> web.Response:
        # The same headers as the bridge's media route: Asterisk's media cache keeps it.
        return web.Response(body=media_bytes, headers={
            "Content-Type": "audio/wav", "Cache-Control": "public, max-age=31536000, immutable"})

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"live_calls": len(floor.tasks)})

    app = web.Application()
    app.router.add_get(f"/media/{media.name}", serve_media)
    app.router.add_get("/healthz", health)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", args.port).start()
    floor = Floor(args, f"sound:http://127.0.0.1:{args.port}/media/{media.name}")
    await floor.run()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ari-url", required=True)
    parser.add_argument("--username", required=True)
    parser.add_argument("--app", required=True)
    parser.add_argument("--answer-url", required=True)
    parser.add_argument("--media-file", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--ring-after-ms", type=int, default=200)
    arguments = parser.parse_args()
    uvloop.run(main(arguments, Path(arguments.media_file).read_bytes()))
