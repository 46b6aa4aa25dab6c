"""`tidepost config check`: validate the configuration, file:line for each error."""

from __future__ import annotations

import argparse
import sys

from tidepost.cli.common import add_config_option
from tidepost.config.load import find_config_path, load_config
from tidepost.errors import ConfigError
from tidepost.submission.aliases import load_aliases_file


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Register the subcommand."""
    parser = commands.add_parser("config", help="configuration tools")
    parser.add_argument("action", choices=["check"], help="check: validate and report")
    add_config_option(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Validate the configuration and the files it names."""
    try:
        config = load_config(find_config_path(args.config))
        load_aliases_file(config.local.aliases_file)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 1
    print(f"{config.source}: OK ({len(config.route)} routes, spool {config.spool})")
    return 0
