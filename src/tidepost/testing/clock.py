"""A virtual clock for tests: time moves only when the test says so."""

from __future__ import annotations

import asyncio


class FakeClock:
    """Clock whose `now()` is set by the test; `sleep` yields but takes no time."""

    def __init__(self, start: float = 1_000_000.0):
        self._now = start

    def now(self) -> float:
        """The virtual time."""
        return self._now

    def advance(self, seconds: float) -> None:
        """Move virtual time forward."""
        self._now += seconds

    async def sleep(self, seconds: float) -> None:
        """Advance virtual time by `seconds` and let other tasks run."""
        self._now += max(seconds, 0.0)
        await asyncio.sleep(0)
