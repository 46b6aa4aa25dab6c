"""`tidepost`: the command table, and the sendmail, mailq and newaliases personalities.

Each subcommand lives in its own module with its own `--help`.  Called by
the name `sendmail`, `mailq` or `newaliases` (the links `tidepost install`
makes in /usr/sbin), the program behaves as that command.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable
from typing import NoReturn

from tidepost import __version__
from tidepost.errors import QueueError

EX_USAGE, EX_TEMPFAIL, EX_NOPERM = 64, 75, 77
# Command name -> module, in the order `--help` lists them.
COMMANDS = {"serve": "serve", "queue": "queue", "flush": "flush", "link": "link",
            "status": "status", "etrn": "etrn", "odmr": "odmr", "passwd": "passwd",
            "customers": "customers",
            "config": "config_cmd", "install": "install", "uninstall": "install"}
MODULES = tuple(dict.fromkeys(COMMANDS.values()))

DESCRIPTION = """\
tidepost: a mail transfer agent for intermittent, metered and dial-on-demand
links, and for the relays that hold mail for such sites until they connect."""

EPILOG = """\
Configuration: every command reads the file given with -c CONFIG (sendmail:
-C CONFIG), else $TIDEPOST_CONFIG, else /etc/tidepost/tidepost.toml when it
exists, else the embedded default.
`tidepost COMMAND --help` describes a command and its options.

Exit codes (sysexits): 0 ok, 1 a check failed, 64 usage, 65 bad data,
67 unknown user, 69 unavailable, 75 temporary failure (try again),
77 permission denied, 78 configuration error."""


class UsageParser(argparse.ArgumentParser):
    """argparse, with its usage errors exiting 64 (EX_USAGE, as every tidepost command) not 2."""

    def error(self, message: str) -> NoReturn:
        """Print the usage and the error, exit EX_USAGE."""
        self.print_usage(sys.stderr)
        self.exit(EX_USAGE, f"{self.prog}: error: {message}\n")


def build_parser(modules: tuple[str, ...] = MODULES) -> argparse.ArgumentParser:
    """The argument parser for every subcommand but sendmail (or those of `modules`).

    The command modules are imported here, not at the top: `sendmail`, the
    command other programs run most, starts without loading them all, and
    a command run by name loads its own module only (`tidepost queue`
    prints its first line in 0.2 s).
    """
    parser = UsageParser(prog="tidepost", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"tidepost {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for name in modules:
        importlib.import_module(f"tidepost.cli.{name}").add_parser(commands)
    commands.add_parser("sendmail", add_help=False,
                        help="submit a message from standard input (sendmail-compatible "
                             "flags; `tidepost sendmail --help`)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `tidepost` script (and of its sendmail/mailq/newaliases links)."""
    personality = os.path.basename(sys.argv[0]) if argv is None else "tidepost"
    argv = sys.argv[1:] if argv is None else argv
    if personality in ("sendmail", "tidepost-sendmail", "mailq", "newaliases"):
        from tidepost.cli import sendmail
        return _with_queue(personality, lambda: sendmail.run_as(personality, argv))
    if argv and argv[0] == "sendmail":
        from tidepost.cli import sendmail
        return _with_queue("sendmail", lambda: sendmail.run(argv[1:]))
    parser = build_parser((COMMANDS[argv[0]],) if argv and argv[0] in COMMANDS else MODULES)
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return EX_USAGE
    return _with_queue(args.command, lambda: args.run(args))


def _with_queue(command: str, action: Callable[[], int]) -> int:
    """Run `action`; a queue this user cannot open (mailq, sendmail -q) exits plainly."""
    try:
        return action()
    except (QueueError, PermissionError) as exc:
        return _queue_unusable(command, exc)


def _queue_unusable(command: str, error: Exception) -> int:
    """A queue this user may not open is exit 77 with a plain reason; else 75."""
    text = str(error)
    if isinstance(error, PermissionError) or any(
            words in text for words in ("unable to open", "readonly", "permission")):
        print(f"tidepost {command}: permission denied: the queue belongs to the mail "
              "system's account; run this as root or as that account", file=sys.stderr)
        return EX_NOPERM
    print(f"tidepost {command}: {text}", file=sys.stderr)
    return EX_TEMPFAIL


if __name__ == "__main__":
    sys.exit(main())
