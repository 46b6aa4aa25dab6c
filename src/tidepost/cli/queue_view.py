"""What `tidepost queue` says about each recipient, and how its filters become a Selection.

A recipient's state, as an admin reads it, joins its stored state with its
route's:

    in flight            leased to a queue runner (the daemon or a flush)
    held (message)       held by `tidepost queue hold`, whatever the route
    held (route uplink)  waiting on a held route
    scheduled 22:00      waiting for its route's next scheduled run
    retry 14:05          deferred after a failed attempt, until then
    queued               due now

The route is the Router's answer under the configuration in force (routes
are not stored; queue/selection.py says why), the hold states come from
the queue, the run times from the routes' schedules (manager/gates.py).

Filters (`--route`, `--state`, `--domain`, `--sender`, `--older-than`)
become one Selection that the store evaluates in its query.  A route, and
each state that depends on one, becomes places: the domains and message
size classes the queue holds now (one tally), grouped by the route the
Router gives each.  Policy only: the caller reads the queue.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from functools import lru_cache

from tidepost.config.schema import Config
from tidepost.manager.gates import RouteGates
from tidepost.queue.backend import HoldState, QueueRow
from tidepost.queue.selection import CLAIMED, HELD, QUEUED, Condition, Place, Selection, Tally
from tidepost.routing.routes import Router

NO_ROUTE = "-"
_CLAIMED, _HELD = CLAIMED.value, HELD.value  # stored states, compared once per row


class Shown(enum.Enum):
    """The kinds of state `tidepost queue` shows, as `--state` names them."""

    QUEUED = "queued"
    RETRY = "retry"
    SCHEDULED = "scheduled"
    HELD = "held"
    IN_FLIGHT = "in-flight"


@dataclass
class QueueView:
    """Routes, holds and schedules at one moment, for showing and selecting recipients."""

    config: Config
    router: Router
    holds: dict[str, HoldState]
    now: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        self.gates = RouteGates(self.config.route, self.now)
        self.held_routes = {name for name in self.router.route_names() if self._is_held(name)}
        self.size_bounds = size_bounds(self.config)
        self._run_after = lru_cache(maxsize=4096)(self._first_run_after)

    def _is_held(self, name: str) -> bool:
        """A route's state: persisted, else its start_held."""
        state = self.holds.get(name)
        route = self.router.by_name.get(name)
        return state.held if state else bool(route and route.start_held)

    def route_of(self, domain: str, size: int) -> str:
        """The route serving a recipient now, or NO_ROUTE."""
        return self.router.route_of(domain, size) or NO_ROUTE

    def state_of(self, row: QueueRow, route: str | None = None) -> tuple[Shown, str]:
        """The kind of state of a recipient and how the listing says it.

        `route` is the recipient's route when the caller has it already.
        """
        if row.state == _CLAIMED:
            # A cluster's listing names the node delivering it (queue/postgres.py).
            return Shown.IN_FLIGHT, f"in flight ({row.node})" if row.node else "in flight"
        if row.state == _HELD:
            return Shown.HELD, "held (message)"
        route = route or self.route_of(row.domain, row.size)
        if route in self.held_routes:
            return Shown.HELD, f"held (route {route})"
        if route in self.gates:
            return Shown.SCHEDULED, self._scheduled(route, row.next_try)
        if route == NO_ROUTE:
            return Shown.QUEUED, "queued (no route)"
        if row.next_try > self.now:
            return Shown.RETRY, f"retry {self.clock(row.next_try)}"
        return Shown.QUEUED, "queued"

    def _scheduled(self, route: str, next_try: float) -> str:
        """`scheduled 22:00`: the run that will take a recipient due at `next_try`."""
        if not self.gates.is_scheduled(route):
            return "scheduled (batch)"
        run = self.gates.next_run(route) if next_try <= self.now else \
            self._run_after(route, int(next_try // 60))
        return f"scheduled {self.clock(run)}" if run else "scheduled never"

    def _first_run_after(self, route: str, minute: int) -> float | None:
        """The first run of `route` after the minute `minute` (cached: retries cluster)."""
        return self.gates.next_run_after(route, minute * 60.0)

    def clock(self, moment: float) -> str:
        """`14:05` today, `Mon 14:05` within a week, else `12-03 14:05` (local time)."""
        local, today = time.localtime(moment), time.localtime(self.now)
        if local[:3] == today[:3]:
            return time.strftime("%H:%M", local)
        if 0 < moment - self.now < 6 * 86400:
            return time.strftime("%a %H:%M", local)
        return time.strftime("%m-%d %H:%M", local)

    def state_width(self) -> int:
        """Characters the longest state text can take under this configuration."""
        routes = max((len(name) for name in self.router.route_names()), default=0)
        return max(len("held (route )") + routes, len("scheduled Mon 22:00"),
                   len("queued (no route)"))

    # -- selecting --------------------------------------------------------------

    def conditions(self, shown: set[Shown] | None, route: str | None,
                   tallies: list[Tally]) -> tuple[Condition, ...]:
        """Conditions for recipients in the `shown` states (None: any) on `route` (None: any).

        `tallies` (by domain, with `size_bounds`) tell which domains and size
        classes the queue holds; only needed when tallies_needed() says so.
        """
        if route is None and shown is None:
            return (Condition(),)
        shown = set(Shown) if shown is None else shown
        every = set(self.router.route_names()) | {NO_ROUTE}
        wanted = every if route is None else {route}
        gated = {name for name in every if name in self.gates} - self.held_routes
        plain = every - self.held_routes - gated - {NO_ROUTE}

        def at(routes: set[str]) -> tuple[Place, ...] | None:
            if route is None and routes == every:
                return None  # anywhere: no places needed
            return self.places(routes & wanted, tallies)

        conditions = []
        if Shown.IN_FLIGHT in shown:
            conditions.append(Condition(frozenset({CLAIMED}), at(every)))
        if Shown.HELD in shown:
            conditions += [Condition(frozenset({HELD}), at(every)),
                           Condition(frozenset({QUEUED}), at(self.held_routes))]
        if Shown.SCHEDULED in shown:
            conditions.append(Condition(frozenset({QUEUED}), at(gated)))
        if Shown.RETRY in shown:
            conditions.append(Condition(frozenset({QUEUED}), at(plain), due_after=self.now))
        if Shown.QUEUED in shown:
            conditions += [Condition(frozenset({QUEUED}), at(plain), due_by=self.now),
                           Condition(frozenset({QUEUED}), at({NO_ROUTE}))]
        return tuple(conditions)

    @staticmethod
    def tallies_needed(shown: set[Shown] | None, route: str | None) -> bool:
        """True when conditions() needs the queue's tallies: a route decides."""
        return route is not None or (shown is not None and bool(shown - {Shown.IN_FLIGHT}))

    def places(self, routes: set[str], tallies: list[Tally]) -> tuple[Place, ...]:
        """Places of the queue's recipients that `routes` serve now (one per size class)."""
        domains: dict[int, set[str]] = {}
        for tally in tallies:
            if self.route_of(tally.key, self.size_in(tally.size_class)) in routes:
                domains.setdefault(tally.size_class, set()).add(tally.key)
        return tuple(self._place(size_class, frozenset(names))
                     for size_class, names in sorted(domains.items()))

    def size_in(self, size_class: int) -> int:
        """A message size inside `size_class` (each class has one route per domain)."""
        bounds = self.size_bounds
        return bounds[size_class] if size_class < len(bounds) else (bounds[-1] + 1 if bounds
                                                                   else 0)

    def _place(self, size_class: int, domains: frozenset[str]) -> Place:
        """The place of `domains` for the message sizes of `size_class`."""
        bounds = self.size_bounds
        above = bounds[size_class - 1] if size_class > 0 else -1
        up_to = bounds[size_class] if size_class < len(bounds) else None
        return Place(domains, above, up_to)


def size_bounds(config: Config) -> list[int]:
    """Message sizes at which some route's max_message_size changes the route."""
    return sorted({r.max_message_size for r in config.route if r.max_message_size})


def span(seconds: float) -> str:
    """A short duration: 45s, 12m, 3h, 2d."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(max(seconds, 0))}s"


def selection_of(view: QueueView, conditions: tuple[Condition, ...], *,
                 queue_ids: tuple[str, ...] | None = None, sender: str | None = None,
                 domain: str | None = None, older_than: float | None = None) -> Selection:
    """A Selection from parsed filters (`older_than` in seconds)."""
    before = view.now - older_than if older_than is not None else None
    return Selection(conditions, queue_ids, sender, domain, before)
