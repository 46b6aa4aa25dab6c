"""`tidepost serve`: run the daemon in the foreground."""

from __future__ import annotations

import argparse
import logging
import sys

from tidepost.accounts import AccountError
from tidepost.cli.common import EX_CONFIG, EX_NOPERM, add_config_option, config_or_exit, \
    subcommand
from tidepost.cli.logsetup import setup_logging
from tidepost.control.pidfile import AlreadyRunning
from tidepost.errors import ConfigError

DESCRIPTION = """\
Runs the SMTP listeners, the local submission socket, the queue manager and
its scheduler, and the control socket, in the foreground, logging to
standard error (and to log.syslog / log.file when configured).

Started as root, it binds its ports, starts the local delivery helper
(which writes each Maildir as its owner), and then runs as system.user
(default: tidepost).  Started as another user, it runs as that user.

SIGTERM or SIGINT stop it: deliveries in flight get 30 seconds, then return
to the queue.  SIGHUP re-reads the aliases, the customer domains and
credentials files, and the control flag files.  Exit 75 when another
daemon already runs on the spool, 78 for a configuration error."""


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Register the subcommand."""
    parser = subcommand(commands, "serve", "run the daemon in the foreground", DESCRIPTION)
    add_config_option(parser)
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="log debug messages too")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Start the node and block until SIGTERM/SIGINT."""
    config = config_or_exit(args.config)
    setup_logging(config, daemon=True, level=logging.DEBUG if args.verbose else None)
    from tidepost import node
    try:
        node.run_daemon(config)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"tidepost: {problem}", file=sys.stderr)
        return EX_CONFIG
    except AlreadyRunning as exc:
        print(f"tidepost: {exc}", file=sys.stderr)
        return 75
    except AccountError as exc:
        print(f"tidepost: {exc}", file=sys.stderr)
        return EX_NOPERM
    except OSError as exc:
        reason = f"{exc.strerror}: {exc.filename}" if exc.filename else exc.strerror or exc
        print(f"tidepost: cannot start: {reason}", file=sys.stderr)
        return 71
    return 0
