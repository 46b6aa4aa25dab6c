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

from rich.console import Console
from rich.table import Table

from tidepost.cli.common import add_config_option, config_or_exit
from tidepost.config.schema import CUSTOMERS_ROUTE, Config
from tidepost.node_relay import read_releases
from tidepost.queue.backend import QueueRow
from tidepost.resolver.cache import CACHE_FILE, read_statistics
from tidepost.cli.routes_view import ledger_table, read_snapshot, routes_table, span
from tidepost.routing.routes import Router


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Register the subcommand."""
    parser = commands.add_parser("status", help="routes, queue depth, held customer domains")
    add_config_option(parser)
    parser.set_defaults(run=lambda args: asyncio.run(show(config_or_exit(args.config))))


async def show(config: Config) -> int:
    """Routes, customer domains (on a relay), the DNS cache and the ledger."""
    snap = await read_snapshot(config)
    console = Console()
    console.print(routes_table(snap))
    if snap.router.customers:
        console.print(_customers_table(config, snap.router, snap.rows, snap.now))
    cache = read_statistics(config.spool_path / CACHE_FILE, snap.now)
    console.print(f"DNS cache: {cache['valid']} valid answers ({cache['negative']} negative) "
                  f"of {cache['entries']} stored, {cache['bytes'] // 1024} KiB")
    console.print(ledger_table(config, per_route=3))
    return 0


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


def _ago(moment: float, now: float) -> str:
    """`3h ago`."""
    return span(now - moment) + " ago"
