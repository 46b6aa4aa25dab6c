"""`tidepost link up|down ROUTE`, `tidepost link status`: release and hold routes.

With a daemon running, the request goes through its control socket and
takes effect at once; without one, the state is written to the queue and
applies when the daemon starts.  Either way it persists across restarts.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

from rich.console import Console

from tidepost.cli.common import EX_NOPERM, add_config_option, config_or_exit, \
    spool_owner_or_exit, subcommand
from tidepost.config.schema import Config
from tidepost.control.client import request
from tidepost.queue.backend import open_queue
from tidepost.cli.routes_view import ledger_table, read_snapshot, routes_table
from tidepost.routing.routes import Router


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Register the subcommand."""
    parser = subcommand(
        commands, "link", "hold or release a route, or show the routes",
        "`link up ROUTE` releases a route: everything held on it is scheduled at once\n"
        "(an ip-up hook's job); `link down ROUTE` holds it: nothing new starts on it,\n"
        "no DNS query, no connection, and deliveries in flight finish.  The state\n"
        "persists across restarts.  `link status` shows each route's state, queue and\n"
        "next run, and the last activations of on-demand routes with their causes.")
    parser.add_argument("action", choices=["up", "down", "status"],
                        help="up: release, down: hold, status: show the routes")
    parser.add_argument("route", nargs="?", help="the route (see `tidepost link status`)")
    add_config_option(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Dispatch up/down/status."""
    config = config_or_exit(args.config)
    if args.action == "status":
        spool_owner_or_exit(config)
        return asyncio.run(status(config))
    names = Router(config).route_names()
    if args.route not in names:
        print(f"tidepost link: no route named {args.route!r} (routes: {', '.join(names)})")
        return 64
    held = args.action == "down"
    spool_owner_or_exit(config)
    try:
        answer = request(config.spool_path, "hold" if held else "release", route=args.route,
                         cause=f"tidepost link {args.action}")
    except PermissionError:
        print("tidepost link: permission denied: only root and the mail system's account "
              "may hold or release routes", file=sys.stderr)
        return EX_NOPERM
    if answer is None:
        asyncio.run(_set_offline(config, args.route, held))
        print(f"route {args.route} {'held' if held else 'released'} (no daemon running; "
              "applies when it starts)")
    elif not answer.get("ok"):
        print(f"tidepost link: {answer.get('error')}")
        return 1
    else:
        extra = f", {answer.get('scheduled', 0)} recipients scheduled" if not held else ""
        print(f"route {args.route} {'held' if held else 'released'}{extra}")
    return 0


async def _set_offline(config: Config, route: str, held: bool) -> None:
    """Persist a hold state directly in the queue."""
    queue = open_queue(config.queue.backend, config.spool_path)
    try:
        await queue.set_hold(route, held, time.time(), f"tidepost link {'down' if held else 'up'}")
    finally:
        await queue.close()


async def status(config: Config) -> int:
    """Print each route's state, queue and next run, then the ledger."""
    snap = await read_snapshot(config)
    console = Console()
    console.print(routes_table(snap))
    console.print(ledger_table(config))
    return 0
