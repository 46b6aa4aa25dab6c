"""`tidepost`: the command table.  Each subcommand lives in its own module.

Every subcommand takes `-c CONFIG` (else $TIDEPOST_CONFIG, else the embedded
default).  Exit codes follow sysexits.h: 0 ok, 64 usage, 65 bad data,
67 unknown user, 69 unavailable, 75 temporary failure, 78 configuration.
"""

from __future__ import annotations

import argparse
import sys

from tidepost import __version__
from tidepost.cli import config_cmd, etrn, flush, link, odmr, passwd, queue, serve, status

EX_USAGE = 64


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every subcommand but sendmail."""
    parser = argparse.ArgumentParser(prog="tidepost", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"tidepost {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in (serve, queue, flush, link, etrn, odmr, status, passwd, config_cmd):
        module.add_parser(commands)
    commands.add_parser("sendmail", help="submit a message from standard input "
                        "(sendmail-compatible flags)", add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `tidepost` script."""
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "sendmail":
        from tidepost.cli import sendmail
        return sendmail.run(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return EX_USAGE
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
