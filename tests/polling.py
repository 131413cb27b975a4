"""Waiting in tests for something that happens in the background: poll with a deadline, never
a fixed sleep."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


async def until(predicate: Callable[[], object], what: str, timeout: float = 20.0) -> None:
    """Return once ``predicate()`` is true; fail the test naming ``what`` after ``timeout``
    seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"not in time: {what}"
        await asyncio.sleep(0.02)
