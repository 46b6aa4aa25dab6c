"""What every subcommand does first: find and load the configuration, and its parser.

Exit codes follow sysexits.h; EX_NOPERM (77) is what a user gets who may not
read the queue (it is the daemon's account's, and root's).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Awaitable, Callable

from tidepost.accounts import AccountError
from tidepost.config.load import DEFAULT_CONFIG, find_config_path, load_config
from tidepost.config.schema import Config
from tidepost.errors import ConfigError

EX_NOPERM = 77
EX_CONFIG = 78


def add_config_option(parser: argparse.ArgumentParser) -> None:
    """The -c/--config option shared by all subcommands."""
    parser.add_argument("-c", "--config", metavar="CONFIG",
                        help=f"configuration file (default: {DEFAULT_CONFIG})")


def subcommand(commands: argparse._SubParsersAction, name: str, summary: str,
               description: str) -> argparse.ArgumentParser:
    """A subcommand: `summary` in `tidepost --help`, `description` in its own --help."""
    return commands.add_parser(name, help=summary, description=f"{summary}.\n\n{description}",
                               formatter_class=argparse.RawDescriptionHelpFormatter)


def config_or_exit(path: str | None) -> Config:
    """Load the configuration, or print every problem and exit 78."""
    try:
        return load_config(find_config_path(path))
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"tidepost: {problem}", file=sys.stderr)
        sys.exit(EX_CONFIG)


def spool_owner_or_exit(config: Config, with_helper: bool = False):
    """Started as root: become the spool's account first (startup.become_spool_owner).

    Returns the local delivery helper when asked for one (root only).  A
    user who may not use the spool is told so, with exit 77.
    """
    from tidepost.startup import become_spool_owner
    try:
        return become_spool_owner(config, with_helper)
    except AccountError as exc:
        print(f"tidepost: {exc}", file=sys.stderr)
        sys.exit(EX_NOPERM)


def in_cluster(config: Config, command: str, instead: str) -> bool:
    """True when the queue is a cluster's; else tell why `command` does not apply, and what does.

    For `tidepost customers` and `tidepost passwd`, which exit EX_CONFIG then.
    """
    if config.queue.backend == "postgresql":
        return True
    print(f"{command}: this node is not in a cluster (queue.backend is "
          f"{config.queue.backend}): {instead}", file=sys.stderr)
    return False


async def with_shared_directory(config: Config, action: Callable[[Any], Awaitable[Any]]) -> Any:
    """Open a cluster's queue database, run `action(its shared lists)`, close it; the result.

    For `tidepost customers` and `tidepost passwd` (queue/directory.py).
    """
    from tidepost.queue.backend import open_configured_queue
    from tidepost.queue.directory import shared_directory
    queue = open_configured_queue(config)
    try:
        directory = shared_directory(queue)
        assert directory is not None, "a postgresql queue keeps the shared lists"
        return await action(directory)
    finally:
        await queue.close()
