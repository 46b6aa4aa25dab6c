"""`tidepost etrn HOST[:PORT] DOMAIN...`: ask an upstream to send what it holds for us.

One connection: EHLO (STARTTLS when offered), one `ETRN DOMAIN` per domain
(`@domain` for the domain and its subdomains, RFC 1985), QUIT.  Each reply
is printed as `DOMAIN: REPLY`.  Exit 0 when every reply is 2xx, 1 when one
was refused, 75 when the upstream could not be reached.
"""

from __future__ import annotations

import argparse
import asyncio

from tidepost.cli.common import add_config_option, config_or_exit, subcommand
from tidepost.errors import TempFailure
from tidepost.smtp_client.turn import ETRN_PORT, etrn, parse_upstream

EX_USAGE, EX_TEMPFAIL = 64, 75


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Register the subcommand."""
    parser = subcommand(commands, "etrn", "ask an upstream to send the mail it holds for our domains (ETRN)",
                        __doc__.split("\n\n", 1)[1].strip())
    parser.add_argument("upstream", metavar="HOST[:PORT]")
    parser.add_argument("domains", metavar="DOMAIN", nargs="+",
                        help="domain, or @domain for it and its subdomains")
    add_config_option(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Send the requests and print the replies."""
    config = config_or_exit(args.config)
    try:
        peer = parse_upstream(args.upstream, ETRN_PORT)
    except ValueError as exc:
        print(f"tidepost etrn: {exc}")
        return EX_USAGE
    try:
        results = asyncio.run(etrn(peer, config.hostname, args.domains, config.delivery))
    except TempFailure as failure:
        print(f"tidepost etrn: {failure.reason}")
        return EX_TEMPFAIL
    for domain, reply in results:
        print(f"{domain}: {reply}")
    return 0 if all(reply.code // 100 == 2 for _, reply in results) else 1
