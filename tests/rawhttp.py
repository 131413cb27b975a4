"""A raw TCP "HTTP server" for tests that need one misbehaving the way real ones do.

An HTTP framework always answers; this one reads whole requests (head and Content-Length
body) and then either writes canned bytes or closes the socket without a word.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit


@dataclass
class RawRequest:
    method: str
    path: str
    query: dict[str, str]
    body: bytes

    def data(self) -> dict[str, Any]:
        """The webhook's data: the JSON body of a POST, the query of a GET."""
        if self.body:
            loaded = json.loads(self.body)
            return loaded if isinstance(loaded, dict) else {}
        return dict(self.query)


@dataclass
class RawServer:
    """``answer``: bytes written back for each request, or None to close the connection
    without answering. ``close_after_answer``: close the connection once the answer is written
    (a keep-alive connection the server drops between two requests)."""

    answer: bytes | None = None
    close_after_answer: bool = False
    raw: list[bytes] = field(default_factory=list)
    requests: list[RawRequest] = field(default_factory=list)
    connections: int = 0
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    port: int = 0
    _server: asyncio.Server | None = None

    def url(self, path: str = "/answer") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def of(self, path: str) -> list[RawRequest]:
        return [r for r in self.requests if r.path == path]

    async def start(self) -> RawServer:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def __aenter__(self) -> RawServer:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                    return  # the client closed the connection
                length = 0
                for line in head.split(b"\r\n"):
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value.strip())
                body = await reader.readexactly(length) if length else b""
                self.raw.append(head + body)
                method, target = head.split(b" ", 2)[:2]
                url = urlsplit(target.decode())
                self.requests.append(RawRequest(method.decode(), url.path,
                                                dict(parse_qsl(url.query)), body))
                if self.answer is None:
                    return  # read the request, then hang up without a word
                writer.write(self.answer)
                await writer.drain()
                if self.close_after_answer:
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        finally:
            writer.close()
            self.closed.set()
