"""Intake paced by delivery when the queue falls behind (Postfix's in_flow_delay).

When the daemon's delivery slots are full and due mail is still waiting
(`behind()`, asked of the manager), each new SMTP transaction waits at
MAIL FROM for a token, and the manager gives one token per job it records:
intake then runs at the rate delivery achieves instead of piling up a
queue.  Nobody waits longer than `queue.in_flow_delay`, so a stuck
delivery slows clients down but never refuses them.  The pause comes
before the message is stored, never between its commit and its 250 (that
would widen the window in which a client sends a second copy).  Mail for
held routes, and retries not yet due, never count as behind.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Callable

TOKEN_CAP = 64  # tokens saved up while nobody waits


class InFlow:
    """Tokens from delivery, taken by intake while the queue is behind."""

    def __init__(self, delay: float, behind: Callable[[], bool] = lambda: False):
        self.delay = delay
        self.behind = behind
        self._tokens = 0
        self._delivered = asyncio.Event()
        self.paused = 0.0  # seconds intake waited in all, for tests and status

    def delivered(self, jobs: int = 1) -> None:
        """The manager recorded `jobs` deliveries: as many messages may come in."""
        self._tokens = min(self._tokens + jobs, TOKEN_CAP)
        self._delivered.set()

    async def pace(self) -> None:
        """Wait (at most `delay`) for a token while the queue is behind delivery."""
        if self.delay <= 0 or not self.behind():
            return
        loop = asyncio.get_running_loop()
        start = loop.time()
        try:
            while self._tokens <= 0:
                remaining = start + self.delay - loop.time()
                if remaining <= 0 or not self.behind():
                    return
                self._delivered.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._delivered.wait(), remaining)
            self._tokens -= 1
        finally:
            self.paused += loop.time() - start
