"""`tidepost link up|down ROUTE`, `link status`, `link usage`, `link plan ROUTE`.

With a daemon running, a hold or release goes through its control socket and
takes effect at once; without one, the state is written to the queue and
applies when the daemon starts.  Either way it persists across restarts.
`usage` exports what each route's link carried (cli/usage.py), `plan` what a
release would send now (cli/plan.py); both read the spool, daemon or not.
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
from tidepost.queue.backend import open_configured_queue
from tidepost.cli.plan import show_plan
from tidepost.cli.routes_view import ledger_table, read_snapshot, routes_table
from tidepost.cli.usage import show_usage
from tidepost.routing.routes import Router


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Register the subcommand."""
    parser = subcommand(
        commands, "link", "hold or release a route, or show the routes",
        "`link up ROUTE` releases a route: everything held on it is scheduled at once\n"
        "(an ip-up hook's job); `link down ROUTE` holds it: nothing new starts on it,\n"
        "no DNS query, no connection, and deliveries in flight finish.  The state\n"
        "persists across restarts.  `link status` shows each route's state, queue and\n"
        "next run, and the last activations of on-demand routes with their causes.\n"
        "`link usage [ROUTE]` shows (or exports, --csv/--json) the bytes up and down,\n"
        "messages, connections and online time per route and day or month, and with\n"
        "--senders the bytes each sender sent.  `link plan ROUTE` tells what a release\n"
        "would send now: messages, recipients, bytes, the DNS names to look up, and the\n"
        "seconds it takes at the route's rate.")
    parser.add_argument("action", choices=["up", "down", "status", "usage", "plan"],
                        help="up: release, down: hold, status: show the routes, usage: "
                        "link accounting, plan: what a release would send")
    parser.add_argument("route", nargs="?", help="the route (see `tidepost link status`)")
    parser.add_argument("--route", dest="route_option", metavar="ROUTE",
                        help="usage: only this route")
    parser.add_argument("--period", choices=["day", "month"], default="day",
                        help="usage: one line per route and day (default) or month")
    parser.add_argument("--senders", action="store_true",
                        help="usage: bytes per envelope sender instead of per route")
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--csv", dest="output", action="store_const", const="csv",
                        help="usage: comma-separated values with a header line")
    output.add_argument("--json", dest="output", action="store_const", const="json",
                        help="usage, plan: JSON")
    add_config_option(parser)
    parser.set_defaults(run=run, output="table")


def run(args: argparse.Namespace) -> int:
    """Dispatch up/down/status."""
    config = config_or_exit(args.config)
    if args.action == "status":
        spool_owner_or_exit(config)
        return asyncio.run(status(config))
    names = Router(config).route_names()
    if args.action == "usage":
        route = args.route_option or args.route
        if route is not None and route not in names:
            print(f"tidepost link: no route named {route!r} (routes: {', '.join(names)})")
            return 64
        spool_owner_or_exit(config)
        return show_usage(config, route, args.period, args.senders, args.output)
    if args.action == "plan" and args.route in names:
        spool_owner_or_exit(config)
        return asyncio.run(show_plan(config, args.route, args.output))
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
    queue = open_configured_queue(config)
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
