"""`tidepost config check`: every problem of the configuration, in one pass.

Checks the TOML file (syntax, keys, types, bounds, and the semantic rules of
config/load.py: duplicate or hidden routes, missing smarthosts, listen
addresses...) and then every file `tidepost serve` would open: the aliases
file, the customer domains file, the credentials file, the TLS certificate
and key, and (a warning only) the account the daemon runs as.  Each problem is
printed as `FILE:LINE: key: reason` (the line where one is known); exit 1
when there is any, 0 with a one-line summary when there is none.
"""

from __future__ import annotations

import argparse
import pwd
import sys
from pathlib import Path

from tidepost.cli.common import add_config_option
from tidepost.config.load import check_config, find_config_path, load_config, read_config_text
from tidepost.config.schema import Config
from tidepost.errors import ConfigError
from tidepost.routing.customers import parse_domains_text
from tidepost.smtp_server.credentials import CredentialsError, parse_line
from tidepost.smtp_server.tls import context_from_config
from tidepost.submission.aliases import load_aliases_file


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Register the subcommand."""
    parser = commands.add_parser(
        "config", help="check the configuration", description=__doc__.split("\n\n")[1],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["check"],
                        help="check: report every problem of the configuration and the "
                             "files it names")
    add_config_option(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Validate the configuration and the files it names; print every problem."""
    path = find_config_path(args.config)
    try:
        config, problems = _check_text(path)
    except ConfigError as exc:
        config, problems = None, exc.problems
    if config is not None:
        problems += named_file_problems(config)
        for warning in account_warnings(config):
            print(f"warning: {warning}", file=sys.stderr)
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        print(f"{len(problems)} problem{'s' if len(problems) > 1 else ''} found",
              file=sys.stderr)
        return 1
    assert config is not None
    print(f"{config.source}: OK ({len(config.route)} routes, spool {config.spool})")
    return 0


def _check_text(path: Path | None) -> tuple[Config | None, list[str]]:
    """The config file's own problems, and the Config made of its valid parts."""
    if path is None:
        return load_config(None), []
    return check_config(read_config_text(path), str(path))


def named_file_problems(config: Config) -> list[str]:
    """Problems of the files the configuration names (what serve would open)."""
    problems: list[str] = []
    try:
        load_aliases_file(config.local.aliases_file)
    except ConfigError as exc:
        problems += exc.problems
    problems += _customer_file_problems(config.relay.customer_domains_file)
    problems += _credentials_problems(config.relay.credentials_file)
    problems += _tls_problems(config)
    return problems


def _customer_file_problems(path: str) -> list[str]:
    """Unreadable file or bad lines of relay.customer_domains_file."""
    if not path:
        return []
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return [f"{path}: relay.customer_domains_file: cannot read: {exc}"]
    _, bad = parse_domains_text(text)
    return [f"{path}:{line.removeprefix('line ')}" for line in bad]


def _credentials_problems(path: str) -> list[str]:
    """Unreadable file or every bad line of relay.credentials_file."""
    if not path:
        return []
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return [f"{path}: relay.credentials_file: cannot read: {exc}"]
    problems = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if line and not line.startswith("#"):
            try:
                parse_line(line, f"{path}:{number}")
            except CredentialsError as exc:
                problems.append(str(exc))
    return problems


def _tls_problems(config: Config) -> list[str]:
    """A certificate and key that do not load (serve would refuse to start)."""
    try:
        context_from_config(config)
    except ConfigError as exc:
        return exc.problems
    return []


def account_warnings(config: Config) -> list[str]:
    """The account `serve` started as root switches to should exist (else it keeps root)."""
    user = config.system.user
    if not user or config.source == "<embedded default>":
        return []
    try:
        pwd.getpwnam(user)
    except KeyError:
        return [f"{config.source}: system.user: no account named {user!r}: started as "
                "root, serve would keep root (`tidepost install` creates the account)"]
    return []
