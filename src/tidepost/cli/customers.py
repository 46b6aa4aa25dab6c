"""`tidepost customers add|remove|list|import`: a cluster's customer domains.

In a cluster (`[queue] backend = "postgresql"`) the customer domains are
kept in the database: one command on any node changes every node at once
(each running node hears the change and routes by the new list without a
restart or SIGHUP).  `.example.org` means the domain and its subdomains.

- `add DOMAIN...`: list them (those listed already are left as they are);
- `remove DOMAIN...`: unlist them; mail already held for them stays held;
- `list`: the cluster's list, one a line (a valid customer domains file),
  then, as comments, the patterns of this node's own configuration
  (relay.customer_domains, relay.customer_domains_file), which count too;
- `import FILE`: add every pattern of a customer domains file (one a line,
  `#` comments), nothing if a line is bad.

A single node (SQLite) keeps its customer domains in its configuration and
files only; this command says so and exits 78.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from tidepost.address import AddressError
from tidepost.cli.common import EX_CONFIG, add_config_option, config_or_exit, in_cluster, \
    subcommand, with_shared_directory
from tidepost.config.schema import Config
from tidepost.queue.directory import SharedDirectory
from tidepost.routing.customers import CustomerDomains, normalise_pattern, parse_domains_text

EX_DATAERR, EX_NOINPUT = 65, 66


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Register the subcommand."""
    parser = subcommand(commands, "customers", "a cluster's customer domains (relay role)",
                        __doc__.split("\n\n", 1)[1].strip())
    add_config_option(parser)
    parser.add_argument("action", choices=("add", "remove", "list", "import"))
    parser.add_argument("items", metavar="DOMAIN|FILE", nargs="*",
                        help="domains (add, remove), or one file (import)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Check the arguments, then change or show the database's list."""
    config = config_or_exit(args.config)
    if not in_cluster(config, "tidepost customers", "its customer domains are "
                      "relay.customer_domains and relay.customer_domains_file"):
        return EX_CONFIG
    if args.action == "list":
        return asyncio.run(with_shared_directory(config, lambda d: _list(d, config)))
    if args.action == "import":
        if len(args.items) != 1:
            print("tidepost customers import: name one file", file=sys.stderr)
            return EX_DATAERR
        patterns, status = _read_file(args.items[0])
    else:
        patterns, status = _parse(args.items)
    if status:
        return status
    if args.action == "remove":
        return asyncio.run(with_shared_directory(config, lambda d: _remove(d, patterns, config)))
    return asyncio.run(with_shared_directory(config, lambda d: _add(d, patterns)))


def _parse(items: list[str]) -> tuple[list[str], int]:
    """Normalised patterns, or a message per bad one and exit 65."""
    if not items:
        print("tidepost customers: name at least one domain", file=sys.stderr)
        return [], EX_DATAERR
    patterns, bad = [], []
    for item in items:
        try:
            patterns.append(normalise_pattern(item))
        except AddressError as exc:
            bad.append(f"tidepost customers: {item!r}: {exc}")
    for line in bad:
        print(line, file=sys.stderr)
    return patterns, EX_DATAERR if bad else 0


def _read_file(path: str) -> tuple[list[str], int]:
    """The patterns of a customer domains file; nothing, and a message, if a line is bad."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        print(f"tidepost customers import: {path}: {exc}", file=sys.stderr)
        return [], EX_NOINPUT
    patterns, bad = parse_domains_text(text)
    for line in bad:
        print(f"tidepost customers import: {path}: {line}", file=sys.stderr)
    return list(patterns), EX_DATAERR if bad else 0


async def _add(directory: SharedDirectory, patterns: list[str]) -> int:
    added = set(await directory.add_customer_domains(patterns))
    for pattern in dict.fromkeys(patterns):
        print(f"{pattern}: {'added' if pattern in added else 'already listed'}")
    return 0


async def _remove(directory: SharedDirectory, patterns: list[str], config: Config) -> int:
    removed = set(await directory.remove_customer_domains(patterns))
    local = set(CustomerDomains(config).local_patterns)
    status = 0
    for pattern in dict.fromkeys(patterns):
        if pattern in removed:
            print(f"{pattern}: removed")
        else:
            status = 1
            where = " (it is in this node's configuration: relay.customer_domains or " \
                    "relay.customer_domains_file)" if pattern in local else ""
            print(f"tidepost customers: {pattern}: not in the cluster's list{where}",
                  file=sys.stderr)
    return status


async def _list(directory: SharedDirectory, config: Config) -> int:
    shared = await directory.customer_domains()
    for pattern in shared:
        print(pattern)
    local = [p for p in CustomerDomains(config).local_patterns if p not in set(shared)]
    if local:
        print("# also customer domains on this node (its relay.customer_domains and "
              "relay.customer_domains_file):")
        for pattern in local:
            print(f"# {pattern}")
    return 0
