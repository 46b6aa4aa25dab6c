"""`tidepost odmr HOST[:PORT] USER [DOMAIN...]`: fetch held mail by On-Demand Mail Relay.

The site's half of RFC 2645: connect to the provider (port 366 unless
given), EHLO, STARTTLS when offered, AUTH PLAIN as USER, `ATRN DOMAIN,...`
(no domain: all the user's domains); on 250 the roles reverse and this
process serves SMTP on the same connection, queueing what the provider
sends (trusted submission, 250 only after commit) until it says QUIT.  The
running daemon, if any, is then woken to deliver it.
The password comes from $TIDEPOST_ODMR_PASSWORD or `--password-file`.
What it queues (and repeats it answered: `duplicate`) goes to the mail log
(log.syslog / log.file, else standard error), as `tidepost flush` does.
Exit 0 after a session (or 453: no mail), 1 when refused, 75 when the
provider could not be reached.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

from tidepost.cli.common import add_config_option, config_or_exit, spool_owner_or_exit, subcommand
from tidepost.cli.logsetup import setup_logging
from tidepost.config.schema import Config
from tidepost.errors import TempFailure
from tidepost.smtp_client.turn import ODMR_PORT, odmr, parse_upstream

EX_USAGE, EX_TEMPFAIL = 64, 75
NO_MAIL = 453


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Register the subcommand."""
    parser = subcommand(commands, "odmr", "fetch held mail from a provider over our own connection (ODMR, ATRN)",
                        __doc__.split("\n\n", 1)[1].strip())
    parser.add_argument("provider", metavar="HOST[:PORT]")
    parser.add_argument("user")
    parser.add_argument("domains", metavar="DOMAIN", nargs="*")
    parser.add_argument("--password-file", help="file whose first line is the password")
    parser.add_argument("--route", help="the route this session uses: its hang-up signal "
                        "waits for the session to end")
    add_config_option(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Run one ODMR session."""
    config = config_or_exit(args.config)
    password = _password(args.password_file)
    if password is None:
        print("tidepost odmr: set TIDEPOST_ODMR_PASSWORD or use --password-file",
              file=sys.stderr)
        return EX_USAGE
    spool_owner_or_exit(config)
    setup_logging(config)  # the mail it queues is logged as the daemon's is
    try:
        peer = parse_upstream(args.provider, ODMR_PORT)
        reply = asyncio.run(fetch(config, peer, args.user, password, args.domains,
                                  args.route))
    except ValueError as exc:
        print(f"tidepost odmr: {exc}", file=sys.stderr)
        return EX_USAGE
    except TempFailure as failure:
        print(f"tidepost odmr: {failure.reason}", file=sys.stderr)
        return EX_TEMPFAIL
    print(f"ATRN: {reply}")
    return 0 if reply.code in (250, NO_MAIL) else 1


async def fetch(config: Config, peer, user: str, password: str, domains: list[str],
                route: str | None = None):
    """AUTH and ATRN, then serve the reversed connection into our queue."""
    from tidepost import node
    from tidepost.control.client import request
    from tidepost.smtp_server.session import Conversation
    parts = node.build(config)

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        address = (writer.get_extra_info("peername") or (peer.address,))[0]
        await Conversation(config, parts.submission, reader, writer, peer_ip=address,
                           trusted=True).run()
    token = f"odmr-{os.getpid()}"
    if route:
        request(config.spool_path, "odmr", route=route, token=token, running=True, timeout=2.0)
    try:
        reply = await odmr(peer, config.hostname, user, password, domains, config.delivery,
                           serve)
    finally:
        await parts.close()
        if route:
            request(config.spool_path, "odmr", route=route, token=token, running=False,
                    timeout=2.0)
    if reply.code == 250:
        request(config.spool_path, "wake", timeout=2.0)
    return reply


def _password(path: str | None) -> str | None:
    """The password from a file or the environment."""
    if path:
        try:
            return Path(path).read_text().splitlines()[0]
        except (OSError, IndexError):
            return None
    return os.environ.get("TIDEPOST_ODMR_PASSWORD")
