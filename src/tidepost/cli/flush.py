"""`tidepost flush [--route R] [--domain D]`: run the queue now, with progress.

Runs in this process, beside the daemon if one runs: the queue's claims see
to it that no recipient is delivered twice.  Held routes are not flushed
(release them with `tidepost link up ROUTE`).  Every attempt is logged
(docs/LOGGING.md) with `runner=flush` (`runner=sendmail -q` for that
spelling).  Started as root, it first starts the local delivery helper and
becomes the spool's account, as the daemon does.
"""

from __future__ import annotations

import argparse
import asyncio

from rich.console import Console
from rich.progress import Progress

from tidepost.address import domain_matches
from tidepost.cli.common import add_config_option, config_or_exit, spool_owner_or_exit, \
    subcommand
from tidepost.cli.logsetup import setup_logging
from tidepost.config.schema import Config
from tidepost.manager.manager import FlushReport
from tidepost.model import ScheduleEntry


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Register the subcommand."""
    parser = subcommand(commands, "flush", "deliver queued mail now (like sendmail -q)",
                        "Runs the queue once in this process, ignoring retry times but not "
                        "holds, with\nprogress; safe beside the daemon and another flush: "
                        "no recipient is\ndelivered twice.  Held routes are not flushed: "
                        "`tidepost link up ROUTE`\nreleases them.")
    parser.add_argument("--route", help="only this route")
    parser.add_argument("--domain", help="only this domain (and its subdomains)")
    add_config_option(parser)
    parser.set_defaults(run=lambda args: flush_now(config_or_exit(args.config),
                                                   args.route, args.domain))


def flush_now(config: Config, route: str | None, domain: str | None,
              runner: str = "flush") -> int:
    """Flush and print a summary; exit 0 unless the route is unknown."""
    setup_logging(config)
    names = ["local", *(r.name for r in config.route)]
    if route and route not in names:
        print(f"tidepost flush: no route named {route!r} (routes: {', '.join(names)})")
        return 64
    domain = domain.lower().rstrip(".") if domain else None

    def wanted(entry: ScheduleEntry, entry_route: str) -> bool:
        if route and entry_route != route:
            return False
        return not domain or domain_matches(entry.domain, "." + domain)

    helper = spool_owner_or_exit(config, with_helper=True)
    try:
        report = asyncio.run(_flush(config, wanted, runner, helper))
    finally:
        if helper is not None:
            helper.close()
    console = Console()
    console.print(f"flushed {report.attempted} recipients: {report.delivered} delivered, "
                  f"{report.deferred} deferred, {report.bounced} bounced")
    if report.held:
        console.print(f"{report.held} recipients wait on held routes "
                      f"(tidepost link up ROUTE releases them)")
    return 0


async def _flush(config: Config, wanted, runner: str, helper) -> FlushReport:
    """Build the parts, run one pass with a progress bar, close the queue."""
    from tidepost import node
    parts = node.build(config, owner_writer=helper)
    parts.manager.runner = runner
    try:
        with Progress(transient=True, console=Console(stderr=True)) as progress:
            task = progress.add_task("delivering", total=None)
            parts.manager.on_result = lambda done, total: progress.update(
                task, completed=done, total=total)
            return await parts.manager.flush(wanted)
    finally:
        await parts.close()
