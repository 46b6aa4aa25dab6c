"""`tidepost status [--json]`: one screen on routes, queue depth and held customer domains.

Reads the queue and the spool directly, so it works with the daemon down:
- routes: state (held/up), recipients queued, the next attempt due on
  routes that are up (the earliest retry time in the queue);
- customer domains (relay role): for each configured pattern, the
  recipients held, the oldest message's age, and the last release (ETRN or
  ATRN, routing/releases.py: SPOOL/customer-releases.json, or in a cluster
  the database, with the node that answered it);
- the DNS cache and the last activations of on-demand routes.

The queue is read as counts per recipient domain (one grouped query,
routes_view.py), never row by row, so the screen comes at once however
long the queue.  `--json` prints the same as one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json

from rich.console import Console
from rich.table import Table

from tidepost.cli.cluster_view import nodes_table, read_nodes
from tidepost.cli.common import add_config_option, config_or_exit, spool_owner_or_exit, \
    subcommand
from tidepost.cli.queue_view import span
from tidepost.cli.routes_view import (Snapshot, Waiting, ledger_table, read_snapshot,
                                      route_states, routes_table)
from tidepost.config.schema import Config
# The default store, loaded now: after a change of account (root -> the
# spool's) the Python installation need not be readable any more.
from tidepost.queue import sqlite as _default_store  # noqa: F401
from tidepost.resolver.cache_file import CACHE_FILE, read_statistics
from tidepost.routing.ledger import last_activations


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Register the subcommand."""
    parser = subcommand(commands, "status", "routes, queue depth, held customer domains",
                        "One screen, read from the spool (the daemon need not run): each "
                        "route's state,\nqueue and next run, the customer domains a relay "
                        "holds mail for, the DNS\ncache, and the last activations of "
                        "on-demand routes with their causes.")
    add_config_option(parser)
    parser.add_argument("--json", action="store_true", help="print the same as one JSON object")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Load the configuration, become the spool's account if root, show."""
    config = config_or_exit(args.config)
    spool_owner_or_exit(config)
    return asyncio.run(show(config, args.json))


async def show(config: Config, as_json: bool = False) -> int:
    """Routes, customer domains (on a relay), the DNS cache and the ledger."""
    snap = await read_snapshot(config)
    cache = read_statistics(config.spool_path / CACHE_FILE, snap.now)
    nodes = await read_nodes(config) if config.queue.backend == "postgresql" else []
    if as_json:
        print(json.dumps({**status_document(config, snap, cache), "nodes": nodes}, indent=1))
        return 0
    console = Console()
    if nodes:
        console.print(nodes_table(nodes, snap.now))
    console.print(routes_table(snap))
    if snap.router.customers:
        console.print(_customers_table(customer_states(snap), snap.now))
    console.print(f"DNS cache: {cache['valid']} valid answers ({cache['negative']} negative) "
                  f"of {cache['entries']} stored, {cache['bytes'] // 1024} KiB")
    console.print(ledger_table(config, per_route=3))
    return 0


def status_document(config: Config, snap: Snapshot, cache: dict[str, int]) -> dict:
    """Everything `tidepost status` shows, as plain data."""
    return {"time": snap.now, "routes": route_states(snap),
            "customer_domains": customer_states(snap) if snap.router.customers else [],
            "dns_cache": cache, "activations": last_activations(config.spool_path, 3)}


def customer_states(snap: Snapshot) -> list[dict]:
    """Per customer pattern: recipients held, the oldest arrival, the last release."""
    releases = snap.releases
    held = snap.by_customer()
    states = []
    for pattern in snap.router.customers.patterns:
        waiting = held.get(pattern, Waiting())
        release = releases.get(pattern) or releases.get(pattern.lstrip("."))
        states.append({"domain": pattern, "held": waiting.recipients, "oldest": waiting.oldest,
                       "last_release": release})
    return states


def _customers_table(states: list[dict], now: float) -> Table:
    """DOMAIN, HELD, OLDEST, LAST RELEASE, per customer pattern."""
    table = Table(title="customer domains (held until ETRN/ATRN)", box=None,
                  header_style="bold", title_justify="left")
    for column in ("DOMAIN", "HELD", "OLDEST", "LAST RELEASE"):
        table.add_column(column)
    for state in states:
        release = state["last_release"]
        last = (f"{_ago(release['time'], now)} by {release['by']}{_on(release)} "
                f"({release['count']} sent)" if release else "never")
        table.add_row(state["domain"], str(state["held"]),
                      _ago(state["oldest"], now) if state["oldest"] else "-", last)
    return table


def _on(release: dict) -> str:
    """` on mx2`: the node that answered, in a cluster."""
    return f" on {release['node']}" if release.get("node") else ""


def _ago(moment: float, now: float) -> str:
    """`3h ago`."""
    return span(now - moment) + " ago"
