"""The link meter: what each route's connections carried, counted as it happens.

Role: the SMTP client side reports to it (delivery/smtp.py, smtp_client/
turn.py) — a connection opened or closed, the bytes a connection carried
since the last report (`traffic`, usage/wire.py), a message
delivered and by whom — and it keeps the sums in memory, per route and
local day, and per envelope sender.  `flush()` adds them to the usage
store (usage/store.py) in one transaction, in a thread; `run()` flushes
every FLUSH_SECONDS, and callers flush once more before they exit.  So
accounting never waits for a disk inside a delivery, and a crash loses at
most the last FLUSH_SECONDS of counts, never mail.

Readers: `totals(route, period)` (the store's sums plus what is not yet
written, for data caps), `round_trip(route)` (the lowest TCP round trip
seen lately on the route's connections, for the connection budget).
Online seconds: from the moment a route has a connection open until it has
none, counted when the last one closes.  Times come from the injected clock.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

from tidepost.clock import Clock
from tidepost.usage.periods import day_of, period_of
from tidepost.usage.store import USAGE_FILE, RouteUsage, UsageStore
from tidepost.usage.wire import WireCounts

log = logging.getLogger("tidepost.usage")

FLUSH_SECONDS = 5.0
RTT_MEMORY = 600.0   # seconds a round-trip sample stays the route's estimate


class LinkMeter:
    """Counts per route and sender, written to the usage store in batches."""

    def __init__(self, store: UsageStore | None, clock: Clock):
        self.store = store
        self._clock = clock
        self._routes: dict[tuple[str, str], RouteUsage] = defaultdict(RouteUsage)
        self._senders: dict[tuple[str, str, str], list[int]] = defaultdict(lambda: [0, 0])
        self._open: dict[str, int] = defaultdict(int)
        self._online_since: dict[str, float] = {}
        self._rtt: dict[str, tuple[float, float]] = {}  # route -> (seconds, when measured)
        self._written: dict[tuple[str, str], RouteUsage] = {}  # (route, period) -> stored sums
        self._lock = asyncio.Lock()
        # Called with the route after its traffic grew (the data caps look at once).
        self.on_traffic: Callable[[str], None] = lambda route: None

    @classmethod
    def for_spool(cls, spool: Path, clock: Clock) -> LinkMeter:
        """A meter writing to SPOOL/usage.sqlite."""
        return cls(UsageStore(Path(spool) / USAGE_FILE), clock)

    # -- what the SMTP client reports (sync, cheap) -------------------------------

    def opened(self, route: str) -> None:
        """A connection on `route` is open (TCP connected)."""
        self._today(route).connections += 1
        if self._open[route] == 0:
            self._online_since[route] = self._clock.now()
        self._open[route] += 1

    def closed(self, route: str) -> None:
        """A connection on `route` is closed; the last one ends the online time."""
        if self._open[route] <= 0:
            return
        self._open[route] -= 1
        if self._open[route] == 0:
            since = self._online_since.pop(route, self._clock.now())
            self._today(route).online += max(self._clock.now() - since, 0.0)

    def traffic(self, route: str, counts: WireCounts) -> None:
        """What a connection on `route` carried since its last report (and its round trip)."""
        today = self._today(route)
        ip_up, ip_down = counts.ip_bytes()
        today.up += counts.sent
        today.down += counts.received
        today.ip_up += ip_up
        today.ip_down += ip_down
        self.round_trip_measured(route, counts.min_rtt)
        if counts.sent or counts.received:
            self.on_traffic(route)

    def delivered(self, route: str, sender: str, size: int, recipients: int) -> None:
        """One message went out on `route` to `recipients` accepted recipients."""
        today = self._today(route)
        today.messages += 1
        today.recipients += recipients
        if sender:
            counts = self._senders[(sender, route, day_of(self._clock.now()))]
            counts[0] += size
            counts[1] += 1

    def round_trip_measured(self, route: str, seconds: float) -> None:
        """A connection on `route` saw `seconds` as its lowest round trip."""
        if seconds <= 0:
            return
        now = self._clock.now()
        known = self._rtt.get(route)
        if known is None or seconds < known[0] or now - known[1] > RTT_MEMORY:
            self._rtt[route] = (seconds, now)

    # -- readers --------------------------------------------------------------------

    def round_trip(self, route: str) -> float | None:
        """The route's round-trip estimate in seconds, None before any measurement."""
        known = self._rtt.get(route)
        return known[0] if known else None

    def online(self, route: str) -> bool:
        """True while `route` has a connection open."""
        return self._open[route] > 0

    async def totals(self, route: str, kind: str) -> RouteUsage:
        """The route's counts in the current day or month (kind), pending ones included."""
        period = period_of(kind, self._clock.now())
        return self._with_pending(route, period, await self._stored(route, period))

    def totals_now(self, route: str, kind: str) -> RouteUsage | None:
        """`totals` without waiting: None until the store's sums for the period are cached."""
        period = period_of(kind, self._clock.now())
        if self.store is not None and (route, period) not in self._written:
            return None
        return self._with_pending(route, period, self._written.get((route, period),
                                                                   RouteUsage()))

    def _with_pending(self, route: str, period: str, stored: RouteUsage) -> RouteUsage:
        """`stored` plus the counts of (route, period) not yet flushed to the store."""
        total = RouteUsage()
        total.add(stored)
        for (name, day), pending in list(self._routes.items()):
            if name == route and day.startswith(period):
                total.add(pending)
        return total

    # -- writing ------------------------------------------------------------------

    async def flush(self) -> None:
        """Add what was counted since the last flush to the store (in a thread)."""
        async with self._lock:
            routes, senders = dict(self._routes), dict(self._senders)
            self._routes.clear()
            self._senders.clear()
            if self.store is None or not (routes or senders):
                return
            try:
                await asyncio.to_thread(self.store.add, routes, {
                    key: (n, m) for key, (n, m) in senders.items()})
            except Exception:  # noqa: BLE001 - counts must not stop delivery
                log.exception("writing link usage failed; these counts are lost")
            self._written.clear()

    async def run(self, stopping: asyncio.Event) -> None:
        """Flush every FLUSH_SECONDS until `stopping`, then once more."""
        while not stopping.is_set():
            try:
                await asyncio.wait_for(stopping.wait(), FLUSH_SECONDS)
            except TimeoutError:
                pass
            await self.flush()

    async def close(self) -> None:
        """Flush and close the store."""
        await self.flush()
        if self.store is not None:
            await asyncio.to_thread(self.store.close)

    def _today(self, route: str) -> RouteUsage:
        """The pending counts of `route` for today."""
        return self._routes[(route, day_of(self._clock.now()))]

    async def _stored(self, route: str, period: str) -> RouteUsage:
        """The store's sums for (route, period), cached until the next flush."""
        key = (route, period)
        if key not in self._written:
            if self.store is None:
                return RouteUsage()
            try:
                self._written[key] = await asyncio.to_thread(self.store.totals, route, period)
            except Exception:  # noqa: BLE001 - a cap cannot be judged; count from zero
                log.exception("reading link usage failed")
                return RouteUsage()
        return self._written[key]
