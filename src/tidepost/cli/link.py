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
from rich.table import Table

from tidepost.cli.common import add_config_option, config_or_exit
from tidepost.config.schema import Config
from tidepost.control.client import request
from tidepost.queue.backend import open_queue
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
    """Print each route's state and queued count."""
    queue = open_queue(config.queue.backend, config.spool_path)
    try:
        holds, rows = await queue.holds(), await queue.rows()
    finally:
        await queue.close()
    router = Router(config)
    counts: dict[str, int] = {}
    for row in rows:
        name = router.route_of(row.domain) or "-"
        counts[name] = counts.get(name, 0) + 1
    table = Table(box=None, header_style="bold")
    for column in ("ROUTE", "KIND", "STATE", "QUEUED", "CHANGED", "CAUSE"):
        table.add_column(column)
    for name in router.route_names():
        route = router.by_name.get(name)
        state = holds.get(name)
        held = state.held if state else bool(route and route.start_held)
        kind = "local" if route is None else ("on-demand" if route.on_demand else "always-up")
        changed = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(state.changed)) \
            if state else "-"
        table.add_row(name, kind, "held" if held else "up", str(counts.get(name, 0)),
                      changed, state.cause if state else ("start_held" if held else "-"))
    Console().print(table)
    return 0
