"""The digits a caller pressed that no input action has consumed yet."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field


@dataclass
class DtmfBuffer:
    """Digits in the order pressed; a digit pressed during a barge-in prompt waits here for
    the next input action."""

    digits: list[str] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def push(self, digit: str) -> None:
        self.digits.append(digit)
        self.changed.set()

    def take(self) -> str | None:
        return self.digits.pop(0) if self.digits else None

    async def next(self, timeout: float) -> str | None:
        """The next digit, waiting at most ``timeout`` seconds (0 = only what is buffered)."""
        if self.digits:
            return self.digits.pop(0)
        self.changed.clear()
        try:
            await asyncio.wait_for(self.changed.wait(), timeout)
        except TimeoutError:
            return None
        return self.take()
