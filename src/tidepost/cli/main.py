"""`tidepost`: the command table.  Each subcommand lives in its own module.

Every subcommand takes `-c CONFIG` (else $TIDEPOST_CONFIG, else the embedded
default).  Exit codes follow sysexits.h: 0 ok, 64 usage, 65 bad data,
67 unknown user, 69 unavailable, 75 temporary failure, 78 configuration.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from tidepost import __version__

EX_USAGE = 64
# Command name -> module, in the order `--help` lists them.
COMMANDS = {"serve": "serve", "queue": "queue", "flush": "flush", "link": "link",
            "etrn": "etrn", "odmr": "odmr", "status": "status", "passwd": "passwd",
            "config": "config_cmd"}
MODULES = tuple(COMMANDS.values())


def build_parser(modules: tuple[str, ...] = MODULES) -> argparse.ArgumentParser:
    """The argument parser for every subcommand but sendmail (or those of `modules`)."""
    parser = argparse.ArgumentParser(prog="tidepost", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"tidepost {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in modules:
        importlib.import_module(f"tidepost.cli.{name}").add_parser(commands)
    commands.add_parser("sendmail", help="submit a message from standard input "
                        "(sendmail-compatible flags)", add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `tidepost` script."""
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "sendmail":
        from tidepost.cli import sendmail
        return sendmail.run(argv[1:])
    # A command imports its own module only: `tidepost queue` must print its
    # first line at once, not after every other command's imports.
    parser = build_parser((COMMANDS[argv[0]],) if argv and argv[0] in COMMANDS else MODULES)
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return EX_USAGE
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
