"""One log stream: with JSON output every line is a JSON object, whoever logs it, and every
exception carries its traceback text.

Each case runs in a fresh interpreter, since logging set-up is process-wide."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# Lines from structlog, stdlib libraries (aiohttp, aioari, asyncio, warnings), a caught
# exception, an unretrieved task exception and finally an uncaught crash.
EMITTER = textwrap.dedent("""
    import asyncio, gc, logging, sys, warnings
    import structlog
    from bridge.logging import setup_logging

    setup_logging("info", json_output=sys.argv[1] == "json")
    log = structlog.get_logger("bridge.example")
    log.info("example.started", call_uuid="c-1", password="hunter2")
    log.debug("example.hidden")
    logging.getLogger("aiohttp.access").info("127.0.0.1 GET /readyz 200")
    logging.getLogger("aioari").warning("websocket closed %s", "unexpectedly")
    try:
        {}["missing_key_in_handler"]
    except KeyError:
        log.exception("api.crashed", path="/v1/calls")
        logging.getLogger("aiohttp.server").exception("Error handling request")

    async def main():
        async def fails():
            raise RuntimeError("task_failure_marker")
        task = asyncio.ensure_future(fails())
        await asyncio.sleep(0)
        del task
        gc.collect()

    asyncio.run(main())
    warnings.warn("deprecated_option_marker")
    raise SystemError("uncaught_crash_marker")
""")


def _run(mode: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", EMITTER, mode], cwd=REPO, capture_output=True, text=True,
        timeout=60, check=False,
    )


def test_every_line_is_json_and_exceptions_carry_tracebacks() -> None:
    result = _run("json")
    assert result.returncode == 1, result.stderr  # the uncaught crash
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    records = [json.loads(line) for line in lines]  # raises on any line that is not JSON
    assert all(isinstance(r, dict) for r in records)
    by_event = {r["event"].splitlines()[0]: r for r in records}

    started = by_event["example.started"]
    assert started["call_uuid"] == "c-1"
    assert started["password"] == "***"
    assert started["level"] == "info" and started["logger"] == "bridge.example"
    assert "example.hidden" not in by_event  # below the level
    assert by_event["127.0.0.1 GET /readyz 200"]["logger"] == "aiohttp.access"
    assert by_event["websocket closed unexpectedly"]["level"] == "warning"

    for event, logger in (("api.crashed", "bridge.example"),
                          ("Error handling request", "aiohttp.server")):
        crash = by_event[event]
        assert crash["logger"] == logger
        assert "exc_info" not in crash
        assert crash["exception"].startswith("Traceback (most recent call last):")
        assert "KeyError: 'missing_key_in_handler'" in crash["exception"]

    task = by_event["Task exception was never retrieved"]
    assert task["logger"] == "asyncio"
    assert "RuntimeError: task_failure_marker" in task["exception"]

    warning = next(r for r in records if "deprecated_option_marker" in r["event"])
    assert warning["logger"] == "py.warnings"

    crashed = by_event["process.crashed"]
    assert crashed["level"] == "critical"
    assert "SystemError: uncaught_crash_marker" in crashed["exception"]
    assert "Traceback (most recent call last)" in crashed["exception"]


def test_console_lines_show_tracebacks_below_the_line() -> None:
    result = _run("console")
    assert result.returncode == 1
    text = result.stderr
    assert "example.started" in text and "call_uuid=c-1" in text
    assert "hunter2" not in text
    assert "[aiohttp.access]" in text
    assert "KeyError: 'missing_key_in_handler'" in text
    assert "RuntimeError: task_failure_marker" in text
    assert "SystemError: uncaught_crash_marker" in text
    with pytest.raises(json.JSONDecodeError):
        json.loads(text.splitlines()[0])


CONSOLE_EVENTS = [
    {"timestamp": "2026-12-03T10:10:56.289399Z", "level": "info", "event": "call.ended",
     "logger": "bridge.calls.session", "answered": True, "actions_run": 1, "to": "15551230000",
     "reason": "x y", "empty": "", "none": None, "nested": {"k": [1, "a"]}, "eq": "a=b",
     "quote": "it's", "accent": "ünï", "ratio": 1.5},
    {"timestamp": "T", "level": "critical", "event": "an.event.name.longer.than.thirty.chars",
     "logger": "x"},
    {"event": "only.the.event"},
    {"timestamp": "T", "level": "warning", "event": {"not": "a string"}, "logger_name": "y"},
    {"timestamp": "T", "level": "error", "event": "with.text", "logger": "l",
     "exception": "Traceback (most recent call last):\nValueError: v"},
    {"timestamp": "T", "level": "error", "event": "with.stack", "logger": "l",
     "stack": "Stack (most recent call last):\n  here"},
]


@pytest.mark.parametrize("event", CONSOLE_EVENTS, ids=lambda e: str(e.get("event"))[:20])
def test_console_lines_are_those_of_structlogs_console_renderer(event: dict[str, object]) -> None:
    import structlog

    from bridge.logging import render_console

    reference = structlog.dev.ConsoleRenderer(
        colors=False, exception_formatter=structlog.dev.plain_traceback)
    assert render_console(None, "info", dict(event)) == reference(None, "info", dict(event))


def test_console_lines_render_exc_info_like_structlog() -> None:
    import structlog

    from bridge.logging import render_console

    reference = structlog.dev.ConsoleRenderer(
        colors=False, exception_formatter=structlog.dev.plain_traceback)
    try:
        raise KeyError("missing")
    except KeyError:
        for exc_info in (True, sys.exc_info()):
            event = {"timestamp": "T", "level": "error", "event": "api.crashed", "logger": "l",
                     "exc_info": exc_info, "path": "/v1/calls"}
            ours = render_console(None, "error", dict(event))
            assert ours == reference(None, "error", dict(event))
            assert ours.endswith("KeyError: 'missing'")
