"""structlog set-up: key=value lines for people, JSON for log shippers, one stream either way.

Every log line goes through one handler on the root stdlib logger, whose formatter is
structlog's ``ProcessorFormatter``. structlog's own loggers hand their event dicts to stdlib,
and stdlib records from libraries (aiohttp, aioari, asyncio, ``warnings``) are turned into event
dicts by the same processors, so with ``json_output`` every line on the stream is one JSON
object, whoever wrote it. An exception is rendered as text in the ``exception`` field (JSON) or
below the line (console), never as a bare ``exc_info: true``.

Call ids are bound with ``structlog.contextvars`` by the call session, so every line an action
logs carries ``call_uuid`` without passing it around.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import MutableMapping
from types import TracebackType
from typing import Any, TextIO

import structlog

_SECRET_KEYS = frozenset({"password", "secret", "token", "authorization", "api_key"})
#: The handler ``setup_logging`` puts on the root logger; replaced, not stacked, on a second call.
_HANDLER_NAME = "ari-bridge"


def _redact(_: object, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    # A belt-and-braces guard: no code path should log a secret, but if one ever does, the
    # value never reaches the sink.
    for key in list(event):
        if key.lower() in _SECRET_KEYS:
            event[key] = "***"
    return event


def _drop_stdlib_internals(
    _: object, __: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    # ProcessorFormatter passes the LogRecord along under these keys; they are not output.
    event.pop("_record", None)
    event.pop("_from_structlog", None)
    return event


def setup_logging(
    level: str = "info", json_output: bool = False, stream: TextIO | None = None
) -> None:
    """Route structlog and stdlib logging to ``stream`` (default: stderr) at ``level``."""
    numeric = getattr(logging, level.upper(), logging.INFO)
    # Processors both kinds of line go through before rendering.
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _redact,
    ]
    rendering: list[structlog.types.Processor]
    if json_output:
        rendering = [
            # exc_info (True or a tuple) becomes the formatted traceback in "exception".
            structlog.processors.format_exc_info,
            _drop_stdlib_internals,
            structlog.processors.JSONRenderer(default=str),
        ]
    else:
        rendering = [
            _drop_stdlib_internals,
            structlog.dev.ConsoleRenderer(
                colors=False, exception_formatter=structlog.dev.plain_traceback
            ),
        ]
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *rendering],
    )
    handler = logging.StreamHandler(sys.stderr if stream is None else stream)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(numeric)
    logging.captureWarnings(True)  # warnings.warn(...) lines join the stream as well

    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        cache_logger_on_first_use=True,
    )
    _log_uncaught_exceptions()


def _log_uncaught_exceptions() -> None:
    """A crash that nothing catches is logged like any other line, with its traceback."""
    crash_log = structlog.get_logger("bridge.crash")

    def excepthook(
        kind: type[BaseException], value: BaseException, tb: TracebackType | None
    ) -> None:
        if issubclass(kind, KeyboardInterrupt):
            sys.__excepthook__(kind, value, tb)
            return
        crash_log.critical("process.crashed", exc_info=(kind, value, tb))

    def thread_excepthook(args: threading.ExceptHookArgs) -> None:
        if args.exc_type is SystemExit or args.exc_value is None:
            return
        crash_log.critical(
            "thread.crashed",
            thread=args.thread.name if args.thread else None,
            exc_info=(args.exc_type, args.exc_value, args.exc_traceback),
        )

    sys.excepthook = excepthook
    threading.excepthook = thread_excepthook
