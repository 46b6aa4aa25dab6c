"""`tidepost queue`: list, summarise and administer the queue (mailq, qshape, postsuper).

    tidepost queue [list] [FILTERS] [--count | --json]
    tidepost queue summary [--by domain|route|sender] [--top N] [FILTERS]
    tidepost queue show ID... [--body]
    tidepost queue hold|release|requeue|delete ID... | --all [FILTERS]

FILTERS: --route, --state, --domain, --sender, --older-than (queue_filters.py),
evaluated by the queue store in its query.  The listing streams
(queue_list.py), the summary counts (queue_summary.py), the admin commands
change the queue one transaction each and tell a running daemon
(queue_admin.py).  Everything reads and writes the spool directly, so it
works with or without the daemon.  This module only parses the command
line; it imports the other actions' modules only when they run, so that
a listing starts at once.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import sys
from types import ModuleType

from tidepost.cli.common import (add_config_option, config_or_exit, spool_owner_or_exit,
                                 subcommand)
from tidepost.cli import queue_list
from tidepost.cli.queue_filters import Filters, UsageError, add_filter_options, filters_from
from tidepost.config.schema import Config
# The default store, loaded now: after a change of account (root -> the
# spool's) the Python installation need not be readable any more (a
# virtualenv under /root), and open_queue would import it late.
from tidepost.queue import sqlite as _default_store  # noqa: F401

EX_USAGE = 64
CHANGES = ("hold", "release", "requeue", "delete")


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Register `queue` and its actions."""
    parser = subcommand(
        commands, "queue", "list, summarise, show, hold, release, requeue or delete queued mail",
        "Without an action: the queue, like mailq, one line per recipient (queue id,\n"
        "age, size, sender, recipient, route, state), printed as it is read.  The\n"
        "filters run in the queue's query.  `tidepost queue ACTION --help` describes\n"
        "each action.")
    add_config_option(parser)
    _add_list_options(parser)
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    # Options given after an action belong to it; SUPPRESS keeps an action's
    # unset options from hiding the same options given before it.
    quiet = {"argument_default": argparse.SUPPRESS}
    listing = actions.add_parser(
        "list", help="list queued recipients (the default)", **quiet,
        description="One line per recipient, printed as it is read; its last error below.")
    add_config_option(listing)
    _add_list_options(listing)
    summary = actions.add_parser(
        "summary", help="counts per destination in age buckets (like qshape)", **quiet,
        description="Recipients per destination (or route, or sender), largest first, in "
                    "age buckets: under 5m, 5-10m, 10-20m, ... 640m-1d, 1d and more.")
    add_config_option(summary)
    add_filter_options(summary)
    summary.add_argument("--by", choices=("domain", "route", "sender"), default="domain",
                         help="what a line counts (default: recipient domain)")
    summary.add_argument("--top", type=int, default=20, metavar="N",
                         help="lines to show, largest first (0: all; default 20)")
    show = actions.add_parser(
        "show", help="one message: envelope, recipients, headers", **quiet,
        description="The envelope, each recipient with its route, state, attempts and last "
                    "error, and the headers (like postcat -q).")
    add_config_option(show)
    show.add_argument("ids", nargs="+", metavar="ID", help="queue ids")
    show.add_argument("--body", action="store_true", default=False,
                      help="print the whole message after the headers")
    for verb, doc in (("hold", "hold messages until released (any route)"),
                      ("release", "release held messages: due at once"),
                      ("requeue", "make messages due at once (retry now)"),
                      ("delete", "delete messages from the queue")):
        change = actions.add_parser(
            verb, help=doc, **quiet,
            description=f"{doc[0].upper()}{doc[1:]}: the messages named by queue id, or with "
                        "--all every recipient the filters select. One transaction; logged.")
        add_config_option(change)
        change.add_argument("ids", nargs="*", metavar="ID", help="queue ids")
        change.add_argument("--all", action="store_true", default=False,
                            help="every recipient the filters select (all, without filters)")
        add_filter_options(change)
    parser.set_defaults(run=run)


def _add_list_options(parser: argparse.ArgumentParser) -> None:
    """The listing's options."""
    add_filter_options(parser)
    parser.add_argument("--count", action="store_true", help="print only the number")
    parser.add_argument("--json", action="store_true",
                        help="one JSON object per recipient, values in full")


def run(args: argparse.Namespace) -> int:
    """Run the action; usage errors exit 64.

    Started as root, the command first becomes the spool's account (as
    every command does, so that nothing in the spool becomes root's); the
    admin log still names who ran it.
    """
    config = config_or_exit(args.config)
    action = args.action or "list"
    module = _module_for(action)
    by = module.admin_user() if action in CHANGES else ""  # before the account may change
    spool_owner_or_exit(config)
    try:
        if action == "list":
            return asyncio.run(module.list_queue(config, filters_from(args, config),
                                                 as_json=args.json, count_only=args.count))
        if action == "summary":
            return asyncio.run(module.summarise(config, filters_from(args, config), args.by,
                                                args.top))
        if action == "show":
            return asyncio.run(module.show_messages(config, args.ids, args.body))
        return asyncio.run(module.change(config, action, _targets(args, config), by))
    except UsageError as exc:
        print(f"tidepost queue {action}: {exc}", file=sys.stderr)
        return EX_USAGE


def _module_for(action: str) -> ModuleType:
    """The module that runs `action`, imported before any change of account (above)."""
    if action == "list":
        return queue_list
    name = "queue_summary" if action == "summary" else "queue_admin"
    return importlib.import_module(f"tidepost.cli.{name}")


def _targets(args: argparse.Namespace, config: Config) -> Filters:
    """Which recipients an admin change applies to: named messages, or --all with filters."""
    ids = tuple(getattr(args, "ids", ()))
    if bool(ids) == bool(args.all):
        raise UsageError("name queue ids, or give --all (with filters to narrow it)")
    return filters_from(args, config, ids or None)


def show(config: Config) -> int:
    """The whole listing (`sendmail -bp`, `mailq`); exit 0."""
    return asyncio.run(queue_list.list_queue(config, Filters()))
