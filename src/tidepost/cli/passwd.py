"""`tidepost passwd USER [DOMAIN...]`: print a line for `relay.credentials_file`.

The password is read from the terminal (twice), or as the first line of
standard input when that is not a terminal.  The line printed is
`USER:scrypt$SALT$HASH[:DOMAIN,...]`; the domains are the customer domains
the user may ETRN and ATRN (`.example.org` for the domain and subdomains).
Append it to the credentials file and send the daemon SIGHUP.
"""

from __future__ import annotations

import argparse
import getpass
import sys

from tidepost.cli.common import subcommand
from tidepost.smtp_server.credentials import format_line

EX_USAGE = 64


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Register the subcommand."""
    parser = subcommand(commands, "passwd", "print a credentials-file line for SMTP AUTH (relay role)",
                        __doc__.split("\n\n", 1)[1].strip())
    parser.add_argument("user")
    parser.add_argument("domains", metavar="DOMAIN", nargs="*",
                        help="customer domains this user may ETRN/ATRN")
    parser.add_argument("--cram-md5", action="store_true",
                        help="also enable CRAM-MD5 (needed by fetchmail's ODMR mode); "
                             "stores a password-equivalent secret in the file")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Read the password and print the line."""
    password = _read_password()
    if not password:
        print("tidepost passwd: empty password", file=sys.stderr)
        return EX_USAGE
    try:
        print(format_line(args.user, password, tuple(args.domains), args.cram_md5))
    except ValueError as exc:
        print(f"tidepost passwd: {exc}", file=sys.stderr)
        return EX_USAGE
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
