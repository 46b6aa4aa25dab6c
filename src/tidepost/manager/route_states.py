"""Route states of the queue manager: operator holds, data caps, and what waits.

A mixin of `Manager` (manager.py), kept apart because it is one concern:
`hold`/`release` persist the operator's state (`tidepost link down|up`, flag
files) and park or free the route's entries in the scheduler; a route at its
data cap stays parked whatever the operator does (caps.py: only urgent mail
goes); `due_on` tells the hang-up signal (hangup.py) what is still to go on a
route; `_waits` tells the size notices (notices.py) whether a route's mail
waits now.  The state lives on the Manager: `_operator_held`, `scheduler`,
`gates`, `caps`, `drains`.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Callable

from tidepost.clock import Clock
from tidepost.config.schema import Config
from tidepost.manager.caps import CapKeeper
from tidepost.manager.dispatch import Dispatcher
from tidepost.manager.gates import RouteGates
from tidepost.manager.hangup import DrainWatch
from tidepost.model import ScheduleEntry
from tidepost.queue.backend import QueueBackend
from tidepost.scheduler.ramqueue import RamQueue

log = logging.getLogger("tidepost.manager")


class RouteStates:
    """Holds, releases, caps and waiting, for the Manager that mixes this in."""

    # Set by Manager.__init__ (manager.py), named here for the reader.
    _config: Config
    _queue: QueueBackend
    _clock: Clock
    _operator_held: set[str]
    _route_cause: dict[str, tuple[float, str]]
    _dispatcher: Dispatcher | None
    _loaded: bool
    _wake: asyncio.Event
    scheduler: RamQueue
    gates: RouteGates
    caps: CapKeeper
    drains: DrainWatch
    on_release: Callable[[str, str], None]

    async def held_routes(self) -> set[str]:
        """Routes held now: persisted states, else each route's start_held."""
        states = await self._queue.holds()
        held = {name for name, state in states.items() if state.held}
        for route in self._config.route:
            if route.name not in states and route.start_held:
                held.add(route.name)
        return held

    def is_held(self, route: str) -> bool:
        """True while the operator holds `route` (a gated route between runs is not held)."""
        return route in self._operator_held

    async def hold(self, route: str, cause: str) -> None:
        """Hold `route`: nothing new starts on it; deliveries in flight finish."""
        await self._queue.set_hold(route, True, self._clock.now(), cause)
        self._operator_held.add(route)
        self.scheduler.hold(route)
        self.drains.stopped(route)
        log.info("route %s held (%s)", route, cause)

    async def release(self, route: str, cause: str) -> int:
        """Release `route`: its held recipients become due at once."""
        await self._queue.set_hold(route, False, self._clock.now(), cause)
        self._operator_held.discard(route)
        self._route_cause[route] = (self._clock.now(), f"released: {cause}")
        await self.catch_up()
        if route in self.gates:
            count = await self._run_gated(route, f"released: {cause}")
        else:
            count = self.scheduler.release(route, self._clock.now())
            if self.caps.holds(route):
                self.scheduler.hold(route)  # at its data cap: only urgent mail goes
            self.drains.started(route, f"release ({cause})")
            self.on_release(route, cause)
        log.info("route %s released (%s): %d recipients due", route, cause, count)
        self._wake.set()
        return count

    async def follow_holds(self) -> None:
        """Apply the route holds another node of a cluster stored (its NOTIFY said so).

        Only this node's scheduler changes: the store already holds the state.
        """
        held = await self.held_routes()
        for route in held - self._operator_held:
            self._operator_held.add(route)
            self.scheduler.hold(route)
            log.info("route %s held by another node", route)
        for route in self._operator_held - held:
            self._operator_held.discard(route)
            if route not in self.gates and not self.caps.holds(route):
                self.scheduler.release(route, self._clock.now())
            log.info("route %s released by another node", route)
        self._wake.set()

    def due_on(self, route: str) -> int:
        """Mail on `route` that goes as soon as it can: due, claimed or in delivery."""
        if self.caps.holds(route) or route in self._operator_held:
            return 0  # what waits there waits for a cap or a release, not for this drain
        now = self._clock.now()
        due = sum(1 for e in self.scheduler.entries_of_route(route) if e.next_try <= now)
        busy = self._dispatcher.busy(route) if self._dispatcher is not None else 0
        return due + busy

    def _parked_on(self, route: str) -> list[ScheduleEntry]:
        """A capped route's parked entries (none while the operator holds it)."""
        return [] if route in self._operator_held else self.scheduler.entries_of_route(route)

    async def _send_anyway(self, entries: list[ScheduleEntry], cause: str) -> None:
        """Take `entries` out of the scheduler and deliver them now."""
        for entry in entries:
            self.scheduler.remove(entry.recipient_id)
        await self._claim_and_dispatch(entries, force=False, cause=cause)

    def _waits(self, route: str) -> bool:
        """True when `route`'s mail waits now: held, gated, or at its data cap."""
        held = self._operator_held if self._loaded else \
            {r.name for r in self._config.route if r.start_held}  # not known yet: as configured
        return route in held or route in self.gates or self.caps.holds(route) is not None

    def _capped(self, route: str, capped: bool) -> None:
        """CapKeeper: park a route's mail at its cap, or let it go again."""
        if capped:
            self.scheduler.hold(route)
        elif route not in self._operator_held and route not in self.gates:
            self.scheduler.release(route, self._clock.now())
            self._wake.set()

