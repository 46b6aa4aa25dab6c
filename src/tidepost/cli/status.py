"""`tidepost status`: one screen on routes, queue depth and held customer domains.

Reads the queue and the spool directly, so it works with the daemon down:
- routes: state (held/up), recipients queued, the next attempt due on
  routes that are up (the earliest retry time in the queue);
- customer domains (relay role): for each configured pattern, the
  recipients held, the oldest message's age, and the last release (ETRN or
  ATRN, from SPOOL/customer-releases.json).
"""

from __future__ import annotations

import argparse
import asyncio
import time

from rich.console import Console
from rich.table import Table

from tidepost.cli.common import add_config_option, config_or_exit
from tidepost.config.schema import CUSTOMERS_ROUTE, Config
from tidepost.node_relay import read_releases
from tidepost.queue.backend import QueueRow, open_queue
from tidepost.routing.routes import Router


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Register the subcommand."""
    parser = commands.add_parser("status", help="routes, queue depth, held customer domains")
    add_config_option(parser)
    parser.set_defaults(run=lambda args: asyncio.run(show(config_or_exit(args.config))))


async def show(config: Config) -> int:
    """Print the routes table and, on a relay, the customer domains table."""
    queue = open_queue(config.queue.backend, config.spool_path)
    try:
        holds, rows = await queue.holds(), await queue.rows()
    finally:
        await queue.close()
    router = Router(config)
    console = Console()
    console.print(_routes_table(config, router, holds, rows, time.time()))
    if router.customers:
        console.print(_customers_table(config, router, rows, time.time()))
    return 0


def _routes_table(config: Config, router: Router, holds: dict, rows: list[QueueRow],
                  now: float) -> Table:
    """ROUTE, STATE, QUEUED, NEXT ATTEMPT."""
    by_route: dict[str, list[QueueRow]] = {}
    for row in rows:
        by_route.setdefault(router.route_of(row.domain) or "-", []).append(row)
    table = Table(title="routes", box=None, header_style="bold", title_justify="left")
    for column in ("ROUTE", "STATE", "QUEUED", "NEXT ATTEMPT"):
        table.add_column(column)
    for name in router.route_names():
        route = router.by_name.get(name)
        state = holds.get(name)
        held = state.held if state else bool(route and route.start_held)
        queued = by_route.get(name, [])
        due = min((r.next_try for r in queued if r.state == "queued"), default=None)
        next_attempt = "-" if held or due is None else _when(due, now)
        table.add_row(name, "held" if held else "up", str(len(queued)), next_attempt)
    return table


def _customers_table(config: Config, router: Router, rows: list[QueueRow],
                     now: float) -> Table:
    """DOMAIN, HELD, OLDEST, LAST RELEASE, per customer pattern."""
    releases = read_releases(config)
    held: dict[str, list[QueueRow]] = {}
    for row in rows:
        if router.route_of(row.domain) == CUSTOMERS_ROUTE:
            pattern = router.customers.pattern_for(row.domain) or row.domain
            held.setdefault(pattern, []).append(row)
    table = Table(title="customer domains (held until ETRN/ATRN)", box=None,
                  header_style="bold", title_justify="left")
    for column in ("DOMAIN", "HELD", "OLDEST", "LAST RELEASE"):
        table.add_column(column)
    for pattern in router.customers.patterns:
        waiting = held.get(pattern, [])
        oldest = min((r.arrival for r in waiting), default=None)
        release = releases.get(pattern) or releases.get(pattern.lstrip("."))
        last = (f"{_ago(release['time'], now)} by {release['by']} ({release['count']} sent)"
                if release else "never")
        table.add_row(pattern, str(len(waiting)), _ago(oldest, now) if oldest else "-", last)
    return table


def _when(moment: float, now: float) -> str:
    """`now` or `in 5m`."""
    return "now" if moment <= now else "in " + _span(moment - now)


def _ago(moment: float, now: float) -> str:
    """`3h ago`."""
    return _span(now - moment) + " ago"


def _span(seconds: float) -> str:
    """A short duration: 45s, 12m, 3h, 2d."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(max(seconds, 0))}s"
