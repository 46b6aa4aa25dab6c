"""ETRN/ATRN budgets shared by the nodes of a cluster (queue backend postgresql).

`ClusterRateLimiter` answers `allow(client)` as RateLimiter does (at most
`limit` requests per client address in `window` seconds, a refused one not
counted) but counts the requests every node of the cluster granted: each
granted request is written to the database in the background, and `run()`
reads the other nodes' counts every `REFRESH` seconds.  So a client that
spreads its ETRNs over three nodes gets the budget once, not three times;
requests granted elsewhere in the last second may not be counted yet (the
budget is a flood guard, not an exact quota).  `allow` never waits for the
database: a session's ETRN reply does not depend on it.

The store is the PostgreSQL queue (`note_turn`, `turn_counts`); with any
other store the node keeps the plain RateLimiter (smtp_server/ratelimit.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import Any

log = logging.getLogger("tidepost.smtp")

REFRESH = 1.0  # seconds between reads of the other nodes' counts


class ClusterRateLimiter:
    """At most `limit` requests per client in `window` seconds, across the cluster."""

    def __init__(self, store: Any, kind: str, limit: int, window: float = 60.0):
        self.limit = limit
        self.window = window
        self._store = store
        self._kind = kind
        self._mine: dict[str, deque[float]] = {}
        self._others: dict[str, int] = {}
        self._writes: set[asyncio.Task] = set()
        self._failing = False  # the database is away: warned once, until a refresh works

    def allow(self, client: str) -> bool:
        """Count one request for `client`; False (not counted) over the cluster's budget."""
        now = time.time()
        mine = self._mine.setdefault(client, deque())
        while mine and mine[0] <= now - self.window:
            mine.popleft()
        if len(mine) + self._others.get(client, 0) >= self.limit:
            return False
        mine.append(now)
        task = asyncio.get_running_loop().create_task(self._note(client, now))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)
        return True

    async def _note(self, client: str, at: float) -> None:
        try:
            await self._store.note_turn(self._kind, client, at)
        except Exception as exc:  # noqa: BLE001 - the budget stays local meanwhile
            self._warn(exc)

    async def refresh(self) -> None:
        """Read what the other nodes granted inside the window."""
        now = time.time()
        self._others = await self._store.turn_counts(self._kind, now - self.window)
        self._mine = {c: d for c, d in self._mine.items() if d and d[-1] > now - self.window}

    async def run(self) -> None:
        """Refresh every REFRESH seconds until cancelled."""
        while True:
            try:
                await self.refresh()
            except Exception as exc:  # noqa: BLE001 - keep counting what we know
                self._warn(exc)
            else:
                if self._failing:
                    log.info("the cluster's %s budget is shared again", self._kind)
                self._failing = False
            await asyncio.sleep(REFRESH)

    def _warn(self, error: Exception) -> None:
        """Once per outage of the database, not every second or request."""
        if not self._failing:
            log.warning("cannot share the cluster's %s budget (counting this node's "
                        "until it can): %s", self._kind, error)
        self._failing = True

    def __len__(self) -> int:
        """Client addresses remembered now."""
        return len(self._mine)
