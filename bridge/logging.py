"""structlog set-up: key=value lines for people, JSON for log shippers, one stream either way.

Two paths lead to the one stream, through the same processors and the same renderer, so with
``json_output`` every line on the stream is one JSON object, whoever wrote it:

- structlog's own loggers render their lines themselves and write them to the stream under the
  stdlib handler's lock. They do not go through stdlib logging: a LogRecord, the handler chain
  and a second pass of processors cost more than the rest of the line (``bench/instructions.py``
  measured the bridge's one line per call at about a tenth of its work per call that way).
- stdlib records from libraries (aiohttp, aioari, asyncio, ``warnings``) go through one handler
  on the root logger, whose formatter is structlog's ``ProcessorFormatter``.

An exception is rendered as text in the ``exception`` field (JSON) or below the line (console),
never as a bare ``exc_info: true``.

Call ids are bound with ``structlog.contextvars`` by the call session, so every line an action
logs carries ``call_uuid`` without passing it around.
"""

from __future__ import annotations

import logging
import sys
import threading
import traceback
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


#: What ConsoleRenderer pads the level and the event to, so that columns line up.
_LEVEL_WIDTH = 9
_EVENT_WIDTH = 30
#: A string value containing one of these is shown quoted (repr), as ConsoleRenderer does.
_NEEDS_QUOTES = frozenset(" \t=\r\n\"'")


def _value(value: Any) -> str:
    if isinstance(value, str) and not _NEEDS_QUOTES.intersection(value):
        return value
    return repr(value)


def render_console(_: object, __: str, event: MutableMapping[str, Any]) -> str:
    """``timestamp [level    ] event    [logger] key=value ...``, keys sorted, a traceback or
    stack below the line: the line structlog's ConsoleRenderer (without colours) writes, at a
    third of its cost (its column machinery is generic; ours is one format)."""
    stack = event.pop("stack", None)
    exception = event.pop("exception", None)
    exc_info = event.pop("exc_info", None)
    head: list[str] = []
    if "timestamp" in event:
        head.append(str(event.pop("timestamp")))
    if "level" in event:
        head.append(f"[{event.pop('level'):<{_LEVEL_WIDTH}}]")
    if "event" in event:
        head.append(f"{event.pop('event')!s:<{_EVENT_WIDTH}}")
    for key in ("logger", "logger_name"):
        if key in event:
            head.append(f"[{event.pop(key)}]")
    line = " ".join(head + [f"{key}={_value(event[key])}" for key in sorted(event)]).rstrip()
    if stack is not None:
        line += "\n" + str(stack)
    if exc_info:
        if not isinstance(exc_info, tuple):
            exc_info = sys.exc_info()
        if exc_info[0] is not None:
            line += "\n" + "".join(traceback.format_exception(*exc_info)).rstrip("\n")
    elif exception is not None:
        line += "\n" + str(exception)
    return line


class _StreamLogger:
    """What structlog's bound loggers hand their rendered line to: the stream, under the same
    lock as the stdlib handler writing to it, so lines never interleave."""

    def __init__(self, handler: logging.StreamHandler[TextIO], name: str) -> None:
        self.name = name  # read by structlog.stdlib.add_logger_name
        self._handler = handler

    def msg(self, line: str) -> None:
        handler = self._handler
        handler.acquire()
        try:
            handler.stream.write(line + "\n")
            handler.stream.flush()
        except (OSError, ValueError):
            pass  # a closed or broken stream must not fail the call that logged
        finally:
            handler.release()

    log = debug = info = warn = warning = msg
    fatal = failure = err = error = critical = exception = msg


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
        rendering = [_drop_stdlib_internals, render_console]
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

    def stream_logger(*args: Any) -> _StreamLogger:
        return _StreamLogger(handler, str(args[0]) if args else "")

    structlog.configure(
        processors=[*shared, *rendering],
        logger_factory=stream_logger,
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
