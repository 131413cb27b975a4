"""The Vonage-compatible Voice REST API: ``/v1/calls``, ``/v1/files`` and ``/openapi.json``.

Every ``/v1`` request is authenticated (``bridge.api.auth``) and answers errors in Vonage's
format (``type``, ``title``/``error_title``, ``detail``, ``invalid_parameters``). A call is
only visible to the application it belongs to: any other application gets 404, as for a call
that does not exist. All Asterisk work goes through the engine's ARI gateway.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import random
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlencode

import structlog
from aiohttp import web
from pydantic import BaseModel, ValidationError

import bridge.api.models as m
from bridge import metrics
from bridge.api.auth import AuthError, KeyRing, Principal
from bridge.api.models import ApiError, bad_request
from bridge.api.openapi import spec
from bridge.ari.errors import AriError, ChannelGone
from bridge.calls.history import CallEntry
from bridge.calls.outbound import Draining, OutboundCall
from bridge.calls.session import CallSession, CallState
from bridge.config import Config
from bridge.media import MediaError, resolve_voice
from bridge.media.files import FileStore
from bridge.ncco.actions._playback import play
from bridge.ncco.models import MAX_JSON_DEPTH, Action, NccoError, json_depth
from bridge.ncco.replies import reply_ncco
from bridge.webhooks import (
    JSON_NESTING_ERROR,
    WebhookRequest,
    WebhookResponse,
)

if TYPE_CHECKING:
    from bridge.calls.engine import CallEngine

log = structlog.get_logger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
T = TypeVar("T", bound=BaseModel)
#: Deepest nesting accepted in a request body: an NCCO's limit plus the object around it.
_MAX_BODY_DEPTH = MAX_JSON_DEPTH + 1
_principal: contextvars.ContextVar[Principal] = contextvars.ContextVar("api_principal")


def problem(err: ApiError) -> web.Response:
    return web.json_response(err.body(), status=err.status)


_TITLES = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
           405: "Method Not Allowed", 413: "Payload Too Large", 415: "Unsupported Media Type",
           500: "Internal Server Error", 503: "Service Unavailable"}


def _is_api(path: str) -> bool:
    return path == "/v1" or path.startswith("/v1/") or path == "/openapi.json"


@web.middleware
async def access_log(request: web.Request, handler: Handler) -> web.StreamResponse:
    """One line and one ``rest_requests_total`` count per REST API request. Outermost, so it
    sees the status the client gets. It logs the method, the path (no query string) and the
    application, never a header: the token stays out of the logs. The application is the
    one ``_auth`` verified: the handler runs in this task, so its context is this one."""
    if not _is_api(request.path):
        return await handler(request)
    started = time.perf_counter()
    status = 500  # what aiohttp answers when a handler raises anything else
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    except asyncio.CancelledError:
        status = 499  # the client went away before the answer (nginx's code for it)
        raise
    finally:
        metrics.REST_REQUESTS.labels(status=str(status)).inc()
        log.info("api.request", method=request.method, path=request.path, status=status,
                 duration_ms=round((time.perf_counter() - started) * 1000, 1),
                 application_id=_application_id())


@web.middleware
async def api_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Errors under /v1 in Vonage's JSON format, whatever raised them (routing, body size)."""
    if not _is_api(request.path):
        return await handler(request)
    try:
        return await handler(request)
    except ApiError as err:
        return problem(err)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        title = _TITLES.get(exc.status, exc.reason)
        detail = {404: "no such resource", 405: f"{request.method} is not allowed here",
                  413: "the request body is too large"}.get(exc.status, exc.reason)
        response = problem(ApiError(exc.status, title, detail))
        # Headers that belong to the status: what a 405 allows, how a 401 wants credentials
        # (a browser prompts for basic auth only when it sees the challenge).
        for header in ("Allow", "WWW-Authenticate"):
            if header in exc.headers:
                response.headers[header] = exc.headers[header]
        return response
    except Exception:
        log.exception("api.crashed", method=request.method, path=request.path)
        return problem(ApiError(500, "Internal Server Error", "an internal error occurred"))


def _application_id() -> str | None:
    principal = _principal.get(None)
    return principal.application_id if principal is not None else None


class RestApi:
    """The API's state: keys, files, playbacks started over REST, and the engine."""

    def __init__(
        self, config: Config, files: FileStore, engine: Callable[[], CallEngine | None]
    ) -> None:
        self.config = config
        self.keys = KeyRing(config)
        self.files = files
        self._engine = engine
        self._playing: dict[tuple[str, str], asyncio.Task[Any]] = {}

    def register(self, app: web.Application) -> None:
        app.middlewares.append(access_log)
        app.middlewares.append(api_errors)
        r = app.router
        r.add_get("/openapi.json", self.openapi)
        r.add_get("/v1/calls", self._auth(self.list_calls))
        r.add_post("/v1/calls", self._auth(self.create_call))
        r.add_get("/v1/calls/{uuid}", self._auth(self.get_call))
        r.add_put("/v1/calls/{uuid}", self._auth(self.modify_call))
        r.add_put("/v1/calls/{uuid}/talk", self._auth(self.start_talk))
        r.add_delete("/v1/calls/{uuid}/talk", self._auth(self.stop_talk))
        r.add_put("/v1/calls/{uuid}/stream", self._auth(self.start_stream))
        r.add_delete("/v1/calls/{uuid}/stream", self._auth(self.stop_stream))
        r.add_put("/v1/calls/{uuid}/dtmf", self._auth(self.send_dtmf))
        r.add_get("/v1/files/{file_id}", self._auth(self.get_file))

    # ------------------------------------------------------------------ plumbing
    def _auth(self, handler: Handler) -> Handler:
        async def wrapped(request: web.Request) -> web.StreamResponse:
            try:
                principal = self.keys.verify_header(request.headers.get("Authorization"))
            except AuthError as exc:
                log.info("api.unauthorized", method=request.method, path=request.path,
                         reason=str(exc))
                raise ApiError(401, "Unauthorized", str(exc)) from None
            _principal.set(principal)  # each request runs in its own task and context
            return await handler(request)

        return wrapped

    @property
    def engine(self) -> CallEngine:
        engine = self._engine()
        if engine is None:
            raise ApiError(503, "Service Unavailable", "the bridge is starting")
        return engine

    @staticmethod
    def _principal(request: web.Request) -> Principal:
        return _principal.get()

    @staticmethod
    async def _body(request: web.Request) -> dict[str, Any]:
        raw = await request.read()
        try:
            data = json.loads(raw) if raw else None
        except (ValueError, UnicodeDecodeError):
            raise bad_request("the body is not valid JSON") from None
        except RecursionError:
            # A body such as 100,000 "[" exhausts the decoder's recursion, which is no
            # JSONDecodeError: without this it would be a 500.
            raise bad_request(f"the body is not usable: {JSON_NESTING_ERROR}") from None
        # One level more than an NCCO may have: the body's object holds the NCCO.
        if json_depth(data, _MAX_BODY_DEPTH + 1) > _MAX_BODY_DEPTH:
            raise bad_request(f"the body is not usable: {JSON_NESTING_ERROR} (at most "
                              f"{_MAX_BODY_DEPTH} levels of arrays and objects)")
        if not isinstance(data, dict):
            raise bad_request("the body must be a JSON object")
        return data

    @staticmethod
    def _validate(model: type[T], data: Any, prefix: str = "") -> T:
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            raise m.validation_error(exc, prefix) from None

    def _live(self, request: web.Request) -> CallSession:
        """The live call named in the path, owned by the caller's application."""
        call_uuid = request.match_info["uuid"]
        app_id = self._principal(request).application_id
        session = self.engine.sessions.get(call_uuid)
        if session is not None and session.record.application_id == app_id:
            if session.state in (CallState.ENDING, CallState.ENDED) or session.gone.is_set():
                raise bad_request(f"call {call_uuid} is ending")
            return session
        entry = self.engine.history.get(call_uuid)
        if entry is not None and entry.application_id == app_id:
            raise bad_request(f"call {call_uuid} has ended", "uuid", "the call has ended")
        raise ApiError(404, "Not Found", f"no call {call_uuid}")

    @staticmethod
    def _origin(request: web.Request) -> str:
        return f"{request.scheme}://{request.host}"

    def _call_json(self, request: web.Request, entry: CallEntry) -> dict[str, Any]:
        body = entry.to_json()
        body["_links"] = {"self": {"href": f"{self._origin(request)}/v1/calls/{entry.uuid}"}}
        return body

    @staticmethod
    def _message(message: str, call_uuid: str) -> web.Response:
        return web.json_response({"message": message, "uuid": call_uuid})

    # ----------------------------------------------------------------- handlers
    async def openapi(self, request: web.Request) -> web.Response:
        return web.json_response(spec(self._origin(request)))

    async def list_calls(self, request: web.Request) -> web.Response:
        query = self._validate(m.ListCallsQuery, dict(request.query))
        app_id = self._principal(request).application_id
        engine = self.engine
        entries = engine.history.query(
            engine.sessions.values(), application_id=app_id, status=query.status,
            conversation_uuid=query.conversation_uuid, date_start=query.date_start,
            date_end=query.date_end, order=query.order,
        )
        start, size, total = query.record_index, query.page_size, len(entries)
        page = entries[start:start + size]
        base = f"{self._origin(request)}/v1/calls"
        params = {k: v for k, v in request.query.items() if k not in ("record_index",)}

        def link(index: int) -> dict[str, str]:
            return {"href": f"{base}?{urlencode({**params, 'record_index': index})}"}

        links: dict[str, Any] = {"self": link(start), "first": link(0)}
        last = max(0, ((total - 1) // size) * size) if total else 0
        links["last"] = link(last)
        if start + size < total:
            links["next"] = link(start + size)
        if start > 0:
            links["prev"] = link(max(0, start - size))
        return web.json_response({
            "count": total,
            "page_size": size,
            "record_index": start,
            "_links": links,
            "_embedded": {"calls": [self._call_json(request, e) for e in page]},
        })

    async def get_call(self, request: web.Request) -> web.Response:
        call_uuid = request.match_info["uuid"]
        engine = self.engine
        entry = engine.history.get(call_uuid, engine.sessions.values())
        if entry is None or entry.application_id != self._principal(request).application_id:
            raise ApiError(404, "Not Found", f"no call {call_uuid}")
        return web.json_response(self._call_json(request, entry))

    async def modify_call(self, request: web.Request) -> web.Response:
        body = self._validate(m.ModifyCall, await self._body(request))
        session = self._live(request)
        gateway = session.gateway  # the node the call is on
        channel = session.channel_id
        try:
            if body.action == "hangup":
                session.log.info("api.hangup")
                await session.hang_up()
            elif body.action in ("mute", "earmuff"):
                await gateway.mute(channel, "in" if body.action == "mute" else "out")
            elif body.action in ("unmute", "unearmuff"):
                await gateway.unmute(channel, "in" if body.action == "unmute" else "out")
            else:
                await self._transfer(session, body.destination)
        except ChannelGone:
            raise bad_request(f"call {session.uuid} has ended") from None
        except AriError as exc:
            raise ApiError(500, "Internal Server Error", f"Asterisk refused: {exc.details}"
                           ) from None
        return web.Response(status=204)

    async def _transfer(self, session: CallSession, destination: m.Destination | None) -> None:
        if destination is None:
            raise bad_request("transfer needs a destination", "destination", "required")
        if (destination.ncco is None) == (destination.url is None):
            raise bad_request("destination needs exactly one of ncco and url",
                              "destination", "exactly one of ncco and url")
        if session.state is not CallState.RUNNING:
            raise bad_request(f"call {session.uuid} is not running an NCCO yet")
        if destination.ncco is not None:
            try:
                actions = self.engine.parse(destination.ncco)
            except NccoError as exc:
                name = f"destination.ncco{exc.field or ''}"
                raise bad_request(f"{name}: {exc.reason}", name, exc.reason) from None
        else:
            assert destination.url is not None
            actions = await self._fetch_ncco(session, destination.url[0])
        session.log.info("api.transfer", actions=len(actions))
        session.transfer(actions)

    async def _fetch_ncco(self, session: CallSession, url: str) -> list[Action]:
        engine = self.engine
        services = session.services

        def parse(response: WebhookResponse) -> list[Action]:
            return reply_ncco(response, engine.check_runnable, json_field="destination.url")

        params = {"to": session.record.to_number, "from": session.record.from_number,
                  "uuid": session.uuid, "conversation_uuid": session.conversation_uuid}
        result = await engine.webhooks.send_with_fallback(
            WebhookRequest(url=url, method="GET", data=params), None, parse,
            services.timeouts(session.app, event=False), services.signer(session.app),
            kind="answer",
        )
        if result.value is None:
            reason = result.error or "no NCCO"
            raise bad_request(f"destination.url: {reason}", "destination.url", reason)
        return result.value

    def _start_playback(self, session: CallSession, kind: str, uri: str, loop: int,
                        duration_s: float) -> None:
        key = (session.uuid, kind)
        previous = self._playing.pop(key, None)
        if previous is not None:
            previous.cancel()
        task = session.run_beside(play(session, uri, loop, duration_s, False), f"api-{kind}")
        self._playing[key] = task

        def done(t: asyncio.Task[Any]) -> None:
            if self._playing.get(key) is t:
                del self._playing[key]

        task.add_done_callback(done)

    def playing(self, call_uuid: str) -> list[str]:
        """What the API is playing on a call ('talk', 'stream')."""
        return sorted(kind for (uuid_, kind) in self._playing if uuid_ == call_uuid)

    async def _stop_playback(self, session_uuid: str, kind: str) -> None:
        task = self._playing.pop((session_uuid, kind), None)
        if task is not None:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task

    def _require_answered(self, session: CallSession) -> None:
        if session.answered is None:
            raise bad_request(f"call {session.uuid} has not been answered")

    async def start_talk(self, request: web.Request) -> web.Response:
        body = self._validate(m.StartTalk, await self._body(request))
        session = self._live(request)
        try:
            voice = resolve_voice(body.voice_name, body.language, body.style)
        except ValueError as exc:
            field = next((name for prefix, name in (("style", "style"),
                          ("language", "language"), ("voiceName", "voice_name"))
                          if str(exc).startswith(prefix)), "language")
            raise bad_request(str(exc), field, str(exc)) from None
        self._require_answered(session)
        try:
            item = await session.media.tts(body.text, voice, body.level)
        except MediaError as exc:
            raise ApiError(500, "Internal Server Error", f"speech synthesis failed: {exc}"
                           ) from None
        uri = session.services.media_uri(item.media_id)
        self._start_playback(session, "talk", uri, body.loop, item.duration_s)
        return self._message("Talk started", session.uuid)

    async def stop_talk(self, request: web.Request) -> web.Response:
        session = self._live(request)
        await self._stop_playback(session.uuid, "talk")
        return self._message("Talk stopped", session.uuid)

    async def start_stream(self, request: web.Request) -> web.Response:
        body = self._validate(m.StartStream, await self._body(request))
        session = self._live(request)
        self._require_answered(session)
        url = body.stream_url[0]
        try:
            item = await session.media.fetch(url, body.level)
        except MediaError as exc:
            reason = f"cannot play {url}: {exc.cause}"
            raise bad_request(reason, "stream_url", reason) from None
        uri = session.services.media_uri(item.media_id)
        self._start_playback(session, "stream", uri, body.loop, item.duration_s)
        return self._message("Stream started", session.uuid)

    async def stop_stream(self, request: web.Request) -> web.Response:
        session = self._live(request)
        await self._stop_playback(session.uuid, "stream")
        return self._message("Stream stopped", session.uuid)

    async def send_dtmf(self, request: web.Request) -> web.Response:
        body = self._validate(m.SendDtmf, await self._body(request))
        session = self._live(request)
        self._require_answered(session)
        try:
            # Vonage's 'p' is a 500 ms pause; Asterisk's is 'w'.
            await session.gateway.send_dtmf(session.channel_id, body.digits.replace("p", "w"))
        except ChannelGone:
            raise bad_request(f"call {session.uuid} has ended") from None
        except AriError as exc:
            raise ApiError(500, "Internal Server Error", f"Asterisk refused: {exc.details}"
                           ) from None
        return self._message("DTMF sent", session.uuid)

    async def get_file(self, request: web.Request) -> web.StreamResponse:
        file_id = request.match_info["file_id"]
        path = self.files.path_for(file_id, self._principal(request).application_id)
        if path is None:
            raise ApiError(404, "Not Found", f"no file {file_id}")
        return web.FileResponse(path, headers={"Content-Type": self.files.content_type(path)})

    async def create_call(self, request: web.Request) -> web.Response:
        body = self._validate(m.CreateCall, await self._body(request))
        app_id = self._principal(request).application_id
        engine = self.engine
        if (body.ncco is None) == (body.answer_url is None):
            raise bad_request("exactly one of ncco and answer_url is required", "ncco",
                              "exactly one of ncco and answer_url")
        if body.from_ is not None and body.random_from_number:
            raise bad_request("from and random_from_number cannot be used together",
                              "random_from_number", "not with from")
        if body.from_ is not None:
            from_number = body.from_.number
        elif body.random_from_number:
            mine = [n for n, a in self.config.numbers.items() if a == app_id and n != "*"]
            if not mine:
                raise bad_request("no number is linked to this application",
                                  "random_from_number", "no number is linked to this application")
            from_number = random.choice(mine)
        else:
            raise bad_request("from or random_from_number is required", "from", "required")
        ncco: list[Action] | None = None
        if body.ncco is not None:
            try:
                ncco = engine.parse(body.ncco)
            except NccoError as exc:
                name = f"ncco{exc.field or ''}"
                raise bad_request(f"{name}: {exc.reason}", name, exc.reason) from None
        machine = body.machine_detection
        if body.advanced_machine_detection is not None and \
                body.advanced_machine_detection.behavior is not None:
            machine = body.advanced_machine_detection.behavior
        call = OutboundCall(
            application_id=app_id,
            to=body.to[0],
            from_number=from_number,
            ncco=ncco,
            answer_url=body.answer_url[0] if body.answer_url else None,
            answer_method=body.answer_method,
            event_url=body.event_url[0] if body.event_url else None,  # None: the app's
            event_method=body.event_method,
            ringing_timer_s=body.ringing_timer,
            length_timer_s=body.length_timer,
            machine_detection=machine,
        )
        try:
            session: CallSession = await engine.place_call(call)
        except Draining as exc:
            raise ApiError(503, "Service Unavailable", str(exc)) from None
        except ValueError as exc:
            raise bad_request(str(exc), "to", str(exc)) from None
        except AriError as exc:
            raise ApiError(500, "Internal Server Error", f"Asterisk refused: {exc.details}"
                           ) from None
        return web.json_response({
            "uuid": session.uuid,
            "status": "started",
            "direction": "outbound",
            "conversation_uuid": session.conversation_uuid,
        }, status=201)
