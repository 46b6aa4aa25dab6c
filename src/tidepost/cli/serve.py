"""`tidepost serve`: run the daemon in the foreground."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from tidepost.cli.common import EX_CONFIG, add_config_option, config_or_exit, setup_logging
from tidepost.control.pidfile import AlreadyRunning
from tidepost.errors import ConfigError


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Register the subcommand."""
    parser = commands.add_parser("serve", help="run the daemon in the foreground")
    add_config_option(parser)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Start the node and block until SIGTERM/SIGINT."""
    config = config_or_exit(args.config)
    setup_logging(logging.DEBUG if args.verbose else logging.INFO)
    from tidepost import node
    try:
        asyncio.run(node.serve(config))
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"tidepost: {problem}", file=sys.stderr)
        return EX_CONFIG
    except AlreadyRunning as exc:
        print(f"tidepost: {exc}", file=sys.stderr)
        return 75
    except OSError as exc:
        print(f"tidepost: cannot start: {exc}", file=sys.stderr)
        return 71
    return 0
