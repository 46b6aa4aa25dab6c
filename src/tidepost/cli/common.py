"""What every subcommand does first: find and load the configuration."""

from __future__ import annotations

import argparse
import logging
import sys

from tidepost.config.load import CONFIG_ORDER, find_config_path, load_config
from tidepost.config.schema import Config
from tidepost.errors import ConfigError

EX_CONFIG = 78


def add_config_option(parser: argparse.ArgumentParser) -> None:
    """The -c/--config option shared by all subcommands."""
    parser.add_argument("-c", "--config", metavar="CONFIG",
                        help=f"configuration file (default: {CONFIG_ORDER.split(', ', 1)[1]})")


def config_or_exit(path: str | None) -> Config:
    """Load the configuration, or print every problem and exit 78."""
    try:
        return load_config(find_config_path(path))
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"tidepost: {problem}", file=sys.stderr)
        sys.exit(EX_CONFIG)


def setup_logging(level: int = logging.WARNING) -> None:
    """Log to standard error, one line per event."""
    logging.basicConfig(level=level, stream=sys.stderr,
                        format="%(asctime)s tidepost[%(process)d] %(name)s: %(message)s")
