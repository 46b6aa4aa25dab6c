"""Per-client event budgets: at most N events per address in a sliding window.

`RateLimiter(limit, window, now)` keeps the times of each client's recent
events; `allow(client)` counts one event and answers False once the client
has used its budget, without counting the refused event (a refused request
costs the client nothing more).  One limiter per kind of request: the
connection rate (listeners), ETRN and ATRN (turn.py) each have their own, so
one budget spent never refuses another kind.  Memory stays bounded: past
`MAX_CLIENTS` addresses, those with no event inside the window are
forgotten (again each time the table has doubled since, so the sweep costs
O(1) per event amortised); forgetting can only give a client back budget,
never take it away.
Pure policy: the caller passes a monotonic clock (default time.monotonic).
"""

from __future__ import annotations

import time
from collections import deque
from typing import Callable

MAX_CLIENTS = 10000  # addresses remembered before idle ones are dropped


class RateLimiter:
    """At most `limit` events per client address in a sliding window (seconds)."""

    def __init__(self, limit: int, window: float = 60.0,
                 now: Callable[[], float] | None = None):
        self.limit = limit
        self.window = window
        self._now = now or time.monotonic  # intervals only: no wall clock
        self._events: dict[str, deque[float]] = {}
        self._sweep_at = MAX_CLIENTS  # table size that triggers the next sweep

    def allow(self, client: str) -> bool:
        """Count one event for `client`; False (not counted) when over the limit."""
        now = self._now()
        events = self._events.get(client)
        if events is None:
            if len(self._events) >= self._sweep_at:
                self._forget_idle(now)
                self._sweep_at = max(MAX_CLIENTS, 2 * len(self._events))
            events = self._events[client] = deque()
        while events and events[0] <= now - self.window:
            events.popleft()
        if len(events) >= self.limit:
            return False
        events.append(now)
        return True

    def _forget_idle(self, now: float) -> None:
        """Drop the clients whose last event left the window."""
        horizon = now - self.window
        self._events = {client: events for client, events in self._events.items()
                        if events and events[-1] > horizon}

    def __len__(self) -> int:
        """Client addresses remembered now."""
        return len(self._events)
