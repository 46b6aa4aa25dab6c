"""`newaliases`: check the aliases file and have the running daemon re-read it.

tidepost reads local.aliases_file as text (no database to rebuild, unlike
sendmail's and Postfix's), so `newaliases` checks the file, prints every
problem as `FILE:LINE: name: reason` (exit 1), and otherwise asks the
daemon to re-read its files, as SIGHUP does.  Only root and the mail
system's account may ask the daemon (its control socket is theirs).
"""

from __future__ import annotations

import sys

from tidepost.cli.common import config_or_exit, spool_owner_or_exit
from tidepost.control.client import request
from tidepost.errors import ConfigError
from tidepost.submission.aliases import load_aliases_file


def run(argv: list[str]) -> int:
    """`newaliases [-C CONFIG]`."""
    path = None
    if argv[:1] in (["-C"], ["-c"]) and len(argv) > 1:
        path = argv[1]
    elif argv and argv[0].startswith(("-C", "-c")) and len(argv[0]) > 2:
        path = argv[0][2:]
    elif argv and argv != ["-v"]:
        print("usage: newaliases [-C CONFIG]", file=sys.stderr)
        return 64
    config = config_or_exit(path)
    try:
        aliases = load_aliases_file(config.local.aliases_file)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 1
    where = config.local.aliases_file or "no aliases file configured"
    spool_owner_or_exit(config)
    answer = request(config.spool_path, "reload", timeout=10.0)
    if answer is None:
        print(f"{where}: {len(aliases)} aliases (no daemon running: read when it starts)")
    elif not answer.get("ok"):
        print(f"newaliases: the daemon refused: {answer.get('error')}", file=sys.stderr)
        return 75
    else:
        print(f"{where}: {len(aliases)} aliases; the daemon re-read it")
    return 0
