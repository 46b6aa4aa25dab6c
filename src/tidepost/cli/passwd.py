"""`tidepost passwd USER [DOMAIN...]`: an SMTP AUTH user (relay role).

The password is read from the terminal (twice), or as the first line of
standard input when that is not a terminal.  The domains are the customer
domains the user may ETRN and ATRN (`.example.org` for the domain and
subdomains).  Only a salted scrypt hash of the password is kept.

On a single node the command prints a line for `relay.credentials_file`,
`USER:scrypt$SALT$HASH[:DOMAIN,...]`: append it to the file and send the
daemon SIGHUP.  In a cluster (`[queue] backend = "postgresql"`) it stores
the user in the database instead, replacing a user of that name, and every
running node takes it at once (`--print` prints the line as on a single
node).  More for a cluster:
- `--delete USER`: remove the user;
- `--list`: the users, with their domains;
- `--import FILE`: store every user of a credentials file.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import sys

from tidepost.cli.common import EX_CONFIG, add_config_option, config_or_exit, in_cluster, \
    subcommand, with_shared_directory
from tidepost.config.schema import Config
from tidepost.queue.directory import SharedDirectory
from tidepost.smtp_server.credentials import Credentials, CredentialsError, format_line, \
    new_record

EX_USAGE, EX_DATAERR = 64, 65


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Register the subcommand."""
    parser = subcommand(commands, "passwd", "set an SMTP AUTH user's password (relay role)",
                        __doc__.split("\n\n", 1)[1].strip())
    add_config_option(parser)
    parser.add_argument("user", nargs="?")
    parser.add_argument("domains", metavar="DOMAIN", nargs="*",
                        help="customer domains this user may ETRN/ATRN")
    parser.add_argument("--cram-md5", action="store_true",
                        help="also enable CRAM-MD5 (needed by fetchmail's ODMR mode); "
                             "stores a password-equivalent secret")
    parser.add_argument("--print", action="store_true", dest="print_line",
                        help="print the credentials-file line, also in a cluster")
    cluster = parser.add_mutually_exclusive_group()
    cluster.add_argument("--delete", action="store_true",
                         help="cluster: remove USER from the database")
    cluster.add_argument("--list", action="store_true", help="cluster: list the users")
    cluster.add_argument("--import", metavar="FILE", dest="import_file",
                         help="cluster: store every user of a credentials file")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Read the password and print the line, or store the user in the cluster's database."""
    config = config_or_exit(args.config)
    clustered = config.queue.backend == "postgresql"
    if args.delete or args.list or args.import_file:
        if not in_cluster(config, "tidepost passwd", "--delete, --list and --import are for "
                          "a cluster; on this node edit relay.credentials_file"):
            return EX_CONFIG
        return asyncio.run(_manage(config, args))
    if not args.user:
        print("tidepost passwd: name the user", file=sys.stderr)
        return EX_USAGE
    password = _read_password()
    if not password:
        print("tidepost passwd: empty password", file=sys.stderr)
        return EX_USAGE
    try:
        if not clustered or args.print_line:
            print(format_line(args.user, password, tuple(args.domains), args.cram_md5))
            return 0
        record = new_record(args.user, password, tuple(args.domains), args.cram_md5)
    except ValueError as exc:
        print(f"tidepost passwd: {exc}", file=sys.stderr)
        return EX_USAGE
    replaced = asyncio.run(with_shared_directory(config, lambda d: d.put_credential(record)))
    print(f"{record.user}: {'changed' if replaced else 'added'} in the cluster's database")
    return 0


async def _manage(config: Config, args: argparse.Namespace) -> int:
    """--delete, --list, --import."""
    if args.delete:
        if not args.user:
            print("tidepost passwd --delete: name the user", file=sys.stderr)
            return EX_USAGE
        if not await with_shared_directory(config, lambda d: d.remove_credential(args.user)):
            print(f"tidepost passwd: {args.user}: no such user in the cluster's database",
                  file=sys.stderr)
            return 1
        print(f"{args.user}: removed from the cluster's database")
        return 0
    if args.list:
        for record in await with_shared_directory(config, lambda d: d.credentials()):
            extra = " (cram-md5)" if record.cram_secret else ""
            print(f"{record.user}\t{','.join(record.domains) or '-'}{extra}")
        return 0
    try:
        records = Credentials.load(args.import_file).records()
    except CredentialsError as exc:
        print(f"tidepost passwd --import: {exc}", file=sys.stderr)
        return EX_DATAERR

    async def store_all(directory: SharedDirectory) -> None:
        for record in records:
            await directory.put_credential(record)
    await with_shared_directory(config, store_all)
    print(f"{len(records)} users stored in the cluster's database")
    return 0


def _read_password() -> str:
    """From the terminal (asked twice) or the first line of standard input."""
    if not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass("Password: ")
    if getpass.getpass("Again: ") != first:
        print("tidepost passwd: the passwords differ", file=sys.stderr)
        return ""
    return first
