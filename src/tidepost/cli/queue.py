"""`tidepost queue [list]`: the queue, like mailq."""

from __future__ import annotations

import argparse
import asyncio
import time

from rich.console import Console
from rich.table import Table

from tidepost.cli.common import add_config_option, config_or_exit
from tidepost.config.schema import Config
from tidepost.queue.backend import QueueRow, open_queue
from tidepost.routing.routes import Router


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Register the subcommand."""
    parser = commands.add_parser("queue", help="list queued mail (like mailq)")
    parser.add_argument("action", nargs="?", choices=["list"], default="list")
    add_config_option(parser)
    parser.set_defaults(run=lambda args: show(config_or_exit(args.config)))


def show(config: Config) -> int:
    """Print every undelivered recipient; exit 0."""
    rows = asyncio.run(_rows(config))
    console = Console(width=None if Console().is_terminal else 200)
    if not rows:
        console.print("Mail queue is empty")
        return 0
    router = Router(config)
    table = Table(box=None, header_style="bold")
    for column in ("ID", "AGE", "SIZE", "SENDER", "RECIPIENT", "ROUTE", "STATE", "LAST ERROR"):
        table.add_column(column, overflow="fold")
    now = time.time()
    for row in rows:
        table.add_row(row.queue_id, _age(now - row.arrival), str(row.size),
                      row.sender or "<>", row.recipient, router.route_of(row.domain, row.size) or "-",
                      _state(row, now), row.last_error)
    console.print(table)
    console.print(f"-- {len({r.queue_id for r in rows})} messages, {len(rows)} recipients")
    return 0


async def _rows(config: Config) -> list[QueueRow]:
    """Read the queue rows and close the store."""
    queue = open_queue(config.queue.backend, config.spool_path)
    try:
        return await queue.rows()
    finally:
        await queue.close()


def _state(row: QueueRow, now: float) -> str:
    """queued / deferred (retry in ...) / in flight."""
    if row.state == "claimed":
        return "in flight"
    if row.attempts and row.next_try > now:
        return f"deferred, retry in {_age(row.next_try - now)}"
    return "queued"


def _age(seconds: float) -> str:
    """A short human duration: 45s, 12m, 3h, 2d."""
    seconds = max(seconds, 0)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"
