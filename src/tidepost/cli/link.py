"""`tidepost link up|down ROUTE`, `tidepost link status`: release and hold routes.

With a daemon running, the request goes through its control socket and
takes effect at once; without one, the state is written to the queue and
applies when the daemon starts.  Either way it persists across restarts.
"""

from __future__ import annotations

import argparse
import asyncio
import time

from rich.console import Console

from tidepost.cli.common import add_config_option, config_or_exit
from tidepost.config.schema import Config
from tidepost.control.client import request
from tidepost.queue.backend import open_queue
from tidepost.cli.routes_view import ledger_table, read_snapshot, routes_table
from tidepost.routing.routes import Router


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Register the subcommand."""
    parser = commands.add_parser("link", help="hold or release a route, or show them")
    parser.add_argument("action", choices=["up", "down", "status"])
    parser.add_argument("route", nargs="?")
    add_config_option(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Dispatch up/down/status."""
    config = config_or_exit(args.config)
    if args.action == "status":
        return asyncio.run(status(config))
    names = Router(config).route_names()
    if args.route not in names:
        print(f"tidepost link: no route named {args.route!r} (routes: {', '.join(names)})")
        return 64
    held = args.action == "down"
    answer = request(config.spool_path, "hold" if held else "release", route=args.route,
                     cause=f"tidepost link {args.action}")
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
