"""What `tidepost link status` and `tidepost status` both show about routes.

Reads the queue, the hold states, the schedules and the link ledger
straight from the spool, so it works with the daemon down and sends nothing
anywhere.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from rich.table import Table

from tidepost.cli.queue_view import QueueView, size_bounds, span
from tidepost.config.schema import CUSTOMERS_ROUTE, Config
from tidepost.manager.gates import RouteGates
from tidepost.queue.backend import HoldState, open_configured_queue
from tidepost.queue.directory import shared_directory
from tidepost.queue.selection import Selection, Tally
from tidepost.routing.ledger import last_activations
from tidepost.routing.releases import release_book
from tidepost.routing.routes import Router
from tidepost.usage.store import CapHold, current_caps


@dataclass(frozen=True)
class Waiting:
    """How many recipients wait somewhere, since when, and the earliest next try."""

    recipients: int = 0
    oldest: float | None = None     # earliest arrival
    next_try: float | None = None   # earliest next try of a queued one

    def __add__(self, tally: Tally) -> Waiting:
        return Waiting(self.recipients + tally.recipients, _least(self.oldest, tally.oldest),
                       _least(self.next_try, tally.next_try))


def _least(a: float | None, b: float | None) -> float | None:
    """The smaller of two optional times."""
    return b if a is None else a if b is None else min(a, b)


@dataclass
class Snapshot:
    """The hold states of a spool and its recipients counted by domain, read once.

    Counts, not rows (QueueBackend.tally): one grouped query, whatever the
    queue's size.
    """

    config: Config
    router: Router
    holds: dict[str, HoldState]
    tallies: list[Tally]
    now: float
    caps: dict[str, CapHold] = field(default_factory=dict)  # routes at a data cap now
    releases: dict[str, dict] = field(default_factory=dict)  # routing/releases.py's

    def __post_init__(self) -> None:
        self.view = QueueView(self.config, self.router, self.holds, self.now)

    def is_held(self, name: str) -> bool:
        """A route's state: persisted, else its start_held."""
        return name in self.view.held_routes

    def by_route(self) -> dict[str, Waiting]:
        """Undelivered recipients per route serving them now."""
        routes: dict[str, Waiting] = {}
        for tally in self.tallies:
            route = self.view.route_of(tally.key, self.view.size_in(tally.size_class))
            routes[route] = routes.get(route, Waiting()) + tally
        return routes

    def by_customer(self) -> dict[str, Waiting]:
        """Recipients held for each customer-domain pattern (relay role)."""
        patterns: dict[str, Waiting] = {}
        for tally in self.tallies:
            if self.router.route_of(tally.key) == CUSTOMERS_ROUTE:
                pattern = self.router.customers.pattern_for(tally.key) or tally.key
                patterns[pattern] = patterns.get(pattern, Waiting()) + tally
        return patterns


async def read_snapshot(config: Config) -> Snapshot:
    """Read holds, per-domain counts and the customers' releases, closing the queue again."""
    router = Router(config)
    queue = open_configured_queue(config)
    try:
        directory = shared_directory(queue)
        if directory is not None:  # a cluster: its customer domains are in the database
            router.set_shared_customers(tuple(await directory.customer_domains()))
        holds = await queue.holds()
        tallies = await queue.tally(Selection(), "domain", size_bounds(config))
        releases = await release_book(config, directory).read()
    finally:
        await queue.close()
    now = time.time()
    return Snapshot(config, router, holds, tallies, now,
                    await asyncio.to_thread(current_caps, config.spool_path, now), releases)


def route_states(snap: Snapshot) -> list[dict]:
    """Per route: name, kind, held, queued, next run, last change and its cause."""
    gates = RouteGates(snap.config.route, snap.now)
    waiting = snap.by_route()
    states = []
    for name in snap.router.route_names():
        route = snap.router.by_name.get(name)
        state = snap.holds.get(name)
        held = snap.is_held(name)
        here = waiting.get(name, Waiting())
        next_run, next_run_text = _next_run(snap, name, held, gates, here)
        states.append({
            "route": name,
            "kind": "local" if route is None else ("on-demand" if route.on_demand
                                                   else "always-up"),
            "held": held, "queued": here.recipients,
            "next_run": next_run, "next_run_text": next_run_text,
            "changed": state.changed if state else None,
            "capped": name in snap.caps,
            "cause": (snap.caps[name].cause if name in snap.caps and not held else
                      state.cause if state else ("start_held" if held else None))})
    return states


def routes_table(snap: Snapshot) -> Table:
    """ROUTE, KIND, STATE, QUEUED, NEXT RUN, CHANGED, CAUSE."""
    table = Table(title="routes", box=None, header_style="bold", title_justify="left")
    for column in ("ROUTE", "KIND", "STATE", "QUEUED", "NEXT RUN", "CHANGED", "CAUSE"):
        table.add_column(column)
    for route in route_states(snap):
        state = ("held" if route["held"] else "up") + (", capped" if route["capped"] else "")
        table.add_row(route["route"], route["kind"], state,
                      str(route["queued"]), route["next_run_text"],
                      _clock(route["changed"]) if route["changed"] else "-",
                      route["cause"] or "-")
    return table


def _next_run(snap: Snapshot, name: str, held: bool, gates: RouteGates,
              waiting: Waiting) -> tuple[float | None, str]:
    """When the route's mail is next tried (Unix time or None), and how to say it."""
    if held:
        return None, "when released"
    if name in gates:
        scheduled = gates.next_run(name)
        return scheduled, _clock(scheduled) if scheduled else "batch rule"
    due = waiting.next_try
    if due is None:
        return None, "-"
    return due, "now" if due <= snap.now else "in " + span(due - snap.now)


def ledger_table(config: Config, per_route: int = 5) -> Table:
    """The last activations of on-demand routes and what caused them."""
    table = Table(title="last activations of on-demand routes (link ledger)", box=None,
                  header_style="bold", title_justify="left")
    for column in ("ROUTE", "STARTED", "CAUSE", "FIRST TRAFFIC", "MESSAGE", "RECORDS"):
        table.add_column(column, overflow="fold")
    for route, bursts in sorted(last_activations(config.spool_path, per_route).items()):
        for burst in bursts:
            table.add_row(route, _clock(burst["time"]), burst["cause"] or "-", burst["what"],
                          burst["queue_id"] or "-", str(burst["records"]))
    return table


def _clock(moment: float) -> str:
    """Local date and time."""
    return time.strftime("%m-%d %H:%M:%S", time.localtime(moment))
