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

from tidepost.config.schema import Config
from tidepost.manager.gates import RouteGates
from tidepost.queue.backend import HoldState, QueueRow, open_queue
from tidepost.routing.ledger import last_activations
from tidepost.routing.routes import Router
from tidepost.usage.store import CapHold, current_caps


@dataclass
class Snapshot:
    """The queue rows and hold states of a spool, read once."""

    config: Config
    router: Router
    holds: dict[str, HoldState]
    rows: list[QueueRow]
    now: float
    caps: dict[str, CapHold] = field(default_factory=dict)  # routes at a data cap now

    def is_held(self, name: str) -> bool:
        """A route's state: persisted, else its start_held."""
        state = self.holds.get(name)
        route = self.router.by_name.get(name)
        return state.held if state else bool(route and route.start_held)

    def rows_by_route(self) -> dict[str, list[QueueRow]]:
        """Undelivered recipients grouped by the route serving them."""
        grouped: dict[str, list[QueueRow]] = {}
        for row in self.rows:
            grouped.setdefault(self.router.route_of(row.domain, row.size) or "-", []).append(row)
        return grouped


async def read_snapshot(config: Config) -> Snapshot:
    """Read holds and rows, closing the queue again."""
    queue = open_queue(config.queue.backend, config.spool_path)
    try:
        holds, rows = await queue.holds(), await queue.rows()
    finally:
        await queue.close()
    now = time.time()
    return Snapshot(config, Router(config), holds, rows, now,
                    await asyncio.to_thread(current_caps, config.spool_path, now))


def routes_table(snap: Snapshot) -> Table:
    """ROUTE, KIND, STATE, QUEUED, NEXT RUN, CHANGED, CAUSE."""
    gates = RouteGates(snap.config.route, snap.now)
    by_route = snap.rows_by_route()
    table = Table(title="routes", box=None, header_style="bold", title_justify="left")
    for column in ("ROUTE", "KIND", "STATE", "QUEUED", "NEXT RUN", "CHANGED", "CAUSE"):
        table.add_column(column)
    for name in snap.router.route_names():
        route = snap.router.by_name.get(name)
        state = snap.holds.get(name)
        held = snap.is_held(name)
        kind = "local" if route is None else ("on-demand" if route.on_demand else "always-up")
        cap = snap.caps.get(name)
        table.add_row(name, kind, ("held" if held else "up") + (", capped" if cap else ""),
                      str(len(by_route.get(name, []))),
                      _next_run(snap, name, held, gates, by_route.get(name, [])),
                      _clock(state.changed) if state else "-",
                      cap.cause if cap and not held else
                      state.cause if state else ("start_held" if held else "-"))
    return table


def _next_run(snap: Snapshot, name: str, held: bool, gates: RouteGates,
              rows: list[QueueRow]) -> str:
    """When the route's mail is next tried: schedule, retry time, or never (held)."""
    if held:
        return "when released"
    if name in gates:
        scheduled = gates.next_run(name)
        return _clock(scheduled) if scheduled else "batch rule"
    due = min((r.next_try for r in rows if r.state == "queued"), default=None)
    if due is None:
        return "-"
    return "now" if due <= snap.now else "in " + span(due - snap.now)


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


def span(seconds: float) -> str:
    """A short duration: 45s, 12m, 3h, 2d."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(max(seconds, 0))}s"
