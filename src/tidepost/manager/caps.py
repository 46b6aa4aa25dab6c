"""Data caps at work: a route at its cap holds itself; urgent mail still goes.

`CapKeeper.check()` runs whenever the meter counts traffic on a capped
route, at least every CHECK_SECONDS in the daemon (and once before a flush
pass): it compares each capped route's counts in the link meter
(usage/meter.py) with its `cap_day` and `cap_month` (usage/caps.py).
- At a cap, the hold is written to SPOOL/usage.sqlite with its period and
  cause ("data cap: 20.1 MiB of 20.0 MiB this day"), `on_change(route,
  True)` makes the manager park the route's mail, and the postmaster gets
  one notice per route and period (the store remembers it was sent).
- When the route is under its caps again (a new day or month, or a raised
  cap), the hold ends: `on_change(route, False)`, and its mail is due.
- While a route is at its cap, `admit(job)` refuses each job that is not
  urgent as not attempted (4.4.0: no backoff, no attempt counted), which
  stops what was already claimed or waiting for a connection;
  `urgent_entries()` finds the urgent mail among the route's parked entries
  (a message's headers and sender are looked at once), for the manager to
  send anyway.
Caps count what our SMTP client's connections carried on the route (ETRN
included); mail that upstreams deliver to us is not in them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence

from tidepost.address import Address
from tidepost.clock import Clock
from tidepost.config.schema import RouteConfig
from tidepost.manager.notices import Notices
from tidepost.model import DeliveryJob, ScheduleEntry
from tidepost.outcomes import Outcome, not_attempted
from tidepost.queue.backend import QueueBackend
from tidepost.sizes import human_bytes
from tidepost.submission.headers import header_section
from tidepost.usage.caps import CapReached, cap_reached, has_caps, is_urgent
from tidepost.usage.meter import LinkMeter
from tidepost.usage.periods import DAY, MONTH, period_of
from tidepost.usage.store import CapHold

log = logging.getLogger("tidepost.manager.caps")

CHECK_SECONDS = 5.0


class CapKeeper:
    """Holds routes at their data caps and lets urgent mail through."""

    def __init__(self, routes: Sequence[RouteConfig], meter: LinkMeter | None, clock: Clock,
                 queue: QueueBackend, notices: Notices,
                 on_change: Callable[[str, bool], None] = lambda route, capped: None):
        self._routes = {r.name: r for r in routes if has_caps(r)}
        self._meter = meter
        self._clock = clock
        self._queue = queue
        self._notices = notices
        self.on_change = on_change
        self._held: dict[str, CapHold] = {}
        self._urgent: dict[int, bool] = {}  # message id -> urgent, for parked mail
        self._poked = asyncio.Event()
        if meter is not None and self._routes:
            meter.on_traffic = self.poke

    def poke(self, route: str) -> None:
        """The meter counted traffic on `route`: check its caps now, not in CHECK_SECONDS."""
        if route in self._routes:
            self._poked.set()

    def holds(self, route: str) -> CapHold | None:
        """The cap hold `route` is under now, if any."""
        return self._held.get(route)

    async def load(self) -> None:
        """Take up the cap holds of the current periods from the usage store."""
        store = self._meter.store if self._meter is not None else None
        if store is None or not self._routes:
            return
        now = self._clock.now()
        current = {period_of(DAY, now), period_of(MONTH, now)}
        for hold in await asyncio.to_thread(store.caps):
            if hold.route in self._routes and hold.period in current:
                self._held[hold.route] = hold
                self.on_change(hold.route, True)
        await self.check()

    async def check(self) -> None:
        """Hold the routes that reached a cap, free those back under theirs."""
        if self._meter is None:
            return
        for name, route in self._routes.items():
            day = (await self._meter.totals(name, DAY)).billed
            month = (await self._meter.totals(name, MONTH)).billed
            reached = cap_reached(route, day, month)
            held = self._held.get(name)
            if reached is not None and (held is None or held.period != self._period(reached)):
                await self._hold(name, reached)
            elif reached is None and held is not None:
                self._release(name, held)

    def admit(self, job: DeliveryJob) -> list[Outcome] | None:
        """None when `job` may go now; else its outcomes: not attempted, held at the cap."""
        held = self._held.get(job.route)
        cause = held.cause if held is not None else self._reached_now(job.route)
        if cause is None or self._job_is_urgent(job):
            return None
        return [not_attempted(r.recipient_id, "4.4.0", f"route {job.route} is held at its "
                              f"{cause}") for r in job.recipients]

    async def run(self, stopping: asyncio.Event,
                  parked_on: Callable[[str], list[ScheduleEntry]],
                  send: Callable[[list[ScheduleEntry], str], Awaitable[None]]) -> None:
        """Daemon: check the caps every CHECK_SECONDS; send the urgent mail parked at one."""
        while not stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._poked.wait(), CHECK_SECONDS)
            self._poked.clear()
            try:
                await self.check()
                for route in list(self._held):
                    urgent = await self.urgent_entries(route, parked_on(route))
                    if urgent:
                        await send(urgent, "urgent, past the data cap")
            except Exception:  # noqa: BLE001 - the caps must go on being kept
                log.exception("checking data caps failed")

    async def urgent_entries(self, route: str,
                             entries: list[ScheduleEntry]) -> list[ScheduleEntry]:
        """The entries among `entries` (parked on capped `route`) whose message is urgent."""
        config = self._routes.get(route)
        if config is None or route not in self._held:
            return []
        urgent = []
        for entry in entries:
            if entry.message_id not in self._urgent:
                self._urgent[entry.message_id] = await self._message_is_urgent(
                    config, entry.message_id)
            if self._urgent[entry.message_id]:
                urgent.append(entry)
        return urgent

    # -- internals ------------------------------------------------------------

    def _reached_now(self, route: str) -> str | None:
        """The cap `route` reached by the meter's counts this moment, before `check()`
        has held it: jobs pipelined on an open connection must not run past the cap."""
        config = self._routes.get(route)
        if config is None or self._meter is None:
            return None
        day, month = self._meter.totals_now(route, DAY), self._meter.totals_now(route, MONTH)
        if day is None or month is None:
            return None
        reached = cap_reached(config, day.billed, month.billed)
        if reached is None:
            return None
        self.poke(route)
        return reached.describe()

    def _period(self, reached: CapReached) -> str:
        """The day or month a reached cap belongs to."""
        return period_of(reached.kind, self._clock.now())

    async def _hold(self, route: str, reached: CapReached) -> None:
        """Hold `route` at its cap for the period, durably; tell the postmaster once."""
        assert self._meter is not None and self._meter.store is not None
        hold = CapHold(route, self._period(reached), self._clock.now(), reached.describe(),
                       False)
        known = {(h.route, h.period): h for h in await asyncio.to_thread(self._meter.store.caps)}
        earlier = known.get((route, hold.period))
        hold = earlier or hold
        await asyncio.to_thread(self._meter.store.set_cap, hold)
        self._held[route] = hold
        log.warning("route %s held at its %s (urgent mail still goes)", route, hold.cause)
        self.on_change(route, True)
        if not hold.told:
            self._tell_postmaster(route, hold, reached)
            told = CapHold(hold.route, hold.period, hold.since, hold.cause, True)
            await asyncio.to_thread(self._meter.store.set_cap, told)
            self._held[route] = told

    def _release(self, route: str, held: CapHold) -> None:
        """The route is under its caps again: its mail may go."""
        del self._held[route]
        self._urgent.clear()
        log.info("route %s is under its data caps again (held since %s for %s)", route,
                 held.period, held.cause)
        self.on_change(route, False)

    def _tell_postmaster(self, route: str, hold: CapHold, reached: CapReached) -> None:
        """One notice a route and period."""
        postmaster = Address("postmaster", self._notices.hostname)
        kind = "today" if reached.kind == DAY else "this month"
        self._notices.send(postmaster, f"Route {route} reached its data cap {kind}", (
            f"The route {route} has used {human_bytes(reached.used)} {kind} "
            f"(up and down, as the link meters it); its cap is "
            f"{human_bytes(reached.limit)}.\n\n"
            f"Mail on {route} is held until the {reached.kind} is over ({hold.period} ends),\n"
            "except urgent mail: marked `X-Tidepost-Urgent: yes` or `Priority: urgent`\n"
            "(unless the route sets urgent_headers = false), or from a sender in the\n"
            "route's urgent_senders.  Raise cap_day / cap_month and restart to send now.\n\n"
            "`tidepost link usage` shows what each route carried; `tidepost link plan "
            f"{route}` what is waiting."))

    def _job_is_urgent(self, job: DeliveryJob) -> bool:
        """A job passes the cap when its message is urgent (its body is loaded)."""
        config = self._routes.get(job.route)
        urgent = config is not None and is_urgent(config, str(job.message.sender),
                                                  header_section(job.body))
        self._urgent[job.message.message_id] = urgent
        return urgent

    async def _message_is_urgent(self, config: RouteConfig, message_id: int) -> bool:
        """Look at a parked message's sender and headers."""
        info = await self._queue.message_by_id(message_id)
        if info is None:
            return False
        try:
            body = await self._queue.load_body(message_id)
        except Exception:  # noqa: BLE001 - gone meanwhile: not urgent now
            return False
        return is_urgent(config, str(info.sender), header_section(body))
