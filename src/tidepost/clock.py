"""Time, injected: the only module below `node` that reads the wall clock.

Components take a `Clock`; tests pass `tidepost.testing.FakeClock` so that
timing behaviour (backoff, lifetimes, schedules) is tested instantly.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


class Clock(Protocol):
    """Wall-clock time in seconds since the epoch, and sleeping."""

    def now(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """The real clock."""

    def now(self) -> float:
        """Current Unix time in seconds."""
        return time.time()

    async def sleep(self, seconds: float) -> None:
        """Sleep on the event loop."""
        await asyncio.sleep(seconds)
