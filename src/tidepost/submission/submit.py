"""The one way into the queue, for SMTP sessions and the command line.

`Submission.submit()` takes a parsed envelope and the raw message (CRLF line
endings, already dot-unstuffed), expands local aliases, prepends a Received
header, checks for mail loops, and commits the message through the queue
backend.  It returns the queue id only after the commit: that return is the
moment a message counts as queued, and only then may a caller say 250 or exit 0.

Recipient checks made while a client talks (does this local user exist? which
route serves that domain?) live here too, so that the SMTP server and
`tidepost sendmail` apply the same rules.  Nothing here touches DNS.

Config keys read: hostname, local.*, relay.domains (through Router).
"""

from __future__ import annotations

import dataclasses
import logging
import re
from dataclasses import dataclass
from email.utils import formatdate
from typing import Callable

from tidepost.address import Address
from tidepost.clock import Clock
from tidepost.eventlog import event
from tidepost.eventloop import running_loop
from tidepost.config.schema import Config
from tidepost.errors import AlreadyQueued
from tidepost.model import NO_DSN_REQUEST, Envelope, RecipientDsn, ScheduleEntry
from tidepost.queue.backend import NewMessage, QueueBackend
from tidepost.queue.sqlite import new_queue_id
from tidepost.routing.routes import Router
from tidepost.submission.aliases import Aliases
from tidepost.submission.headers import count_received, header_section, received_header
from tidepost.submission.inflow import InFlow
from tidepost.submission.transfers import TransferKeys

log = logging.getLogger("tidepost.submission")

MAX_RECEIVED = 50  # more Received headers than this is a mail loop (RFC 5321 6.3)
TRANSFER_ATTEMPTS = 3  # a concurrent repeat of the same transfer makes us look again
_MESSAGE_ID = re.compile(rb"(?im)^message-id:[ \t]*(<[^>\r\n]{1,250}>)")


@dataclass(frozen=True, slots=True)
class ClientInfo:
    """Who handed us the message."""

    address: str = ""          # IP address; "" for the command line
    helo: str = ""
    protocol: str = "ESMTP"    # SMTP, ESMTP, ESMTPS, ESMTPA, ESMTPSA, or "local"
    authenticated: str = ""    # SMTP AUTH identity, if any
    local_user: str = ""       # login name for command-line submissions
    uid: int | None = None     # their uid, from the kernel
    way: str = ""              # local submissions: "local" or "maildrop"
    tls: str = ""              # TLS version of the SMTP session, if any
    transfer: str = ""         # transfer id of a tidepost peer (XTIDEPOST TRANSFER)


class SubmissionRejected(Exception):
    """The message cannot be queued; carries the SMTP reply to give."""

    def __init__(self, code: int, status: str, text: str):
        super().__init__(f"{code} {status} {text}")
        self.code = code
        self.status = status
        self.text = text


class Submission:
    """Validates, rewrites and queues messages."""

    def __init__(self, config: Config, queue: QueueBackend, clock: Clock,
                 router: Router, aliases: Aliases,
                 on_queued: Callable[[list[ScheduleEntry]], None] = lambda entries: None,
                 transfers: TransferKeys | None = None, inflow: InFlow | None = None):
        self._hostname = config.hostname
        self.transfers = transfers  # None: this node takes no XTIDEPOST transfers
        self.inflow = inflow        # None: intake is never paced
        self._queue = queue
        self._clock = clock
        self.router = router
        self.aliases = aliases
        self._on_queued = on_queued

    def is_local_domain(self, domain: str) -> bool:
        """True when mail for `domain` is delivered on this host."""
        return self.router.is_local(domain)

    def local_user_exists(self, local_part: str) -> bool:
        """True when a local mailbox or alias answers to `local_part`."""
        return self.aliases.exists(local_part)

    def is_customer_domain(self, domain: str) -> bool:
        """True for customer domains: accepted from anyone, held (relay role)."""
        return self.router.is_customer(domain)

    def has_route(self, domain: str) -> bool:
        """True when some route serves `domain`."""
        return self.router.route_of(domain) is not None

    async def submit(self, envelope: Envelope, body: bytes, client: ClientInfo,
                     transfer_keys: tuple[str, ...] = ()) -> str:
        """Queue `body` for the envelope durably; return the queue id after commit.

        `transfer_keys` are stored in the same commit; when one was stored
        before, the queue raises AlreadyQueued and nothing is stored.
        """
        if count_received(body) > MAX_RECEIVED:
            raise SubmissionRejected(554, "5.4.6", "Too many Received headers: mail loop")
        expanded = self._expand(envelope)
        recipients = tuple(expanded)
        if not recipients:
            raise SubmissionRejected(550, "5.1.1", "No valid recipients after alias expansion")
        too_big = [r for r in recipients if self.router.route_of(r.domain, len(body)) is None]
        if too_big:
            raise SubmissionRejected(552, "5.3.4", f"Message too big for every route to "
                                                   f"{too_big[0].domain}")
        queue_id = new_queue_id()
        now = self._clock.now()
        stamped = received_header(client, self._hostname, queue_id, envelope, now) + body
        message = NewMessage(envelope.sender, recipients, stamped, now,
                             envelope.body_type, envelope.smtputf8, queue_id,
                             transfer_keys=transfer_keys, ret=envelope.ret,
                             envid=envelope.envid,
                             dsn={r: d for r, d in expanded.items() if d != NO_DSN_REQUEST})
        entries = await self._queue.submit(message)
        # Logged once the caller has had its turn: its 250 goes out first.  The
        # line cost a sixth of the loop's time on the client's path; written
        # while the client sends its next command, it costs the client nothing.
        running_loop().call_soon(log_received, queue_id, envelope.sender, recipients,
                                 stamped, client)
        self._on_queued(entries)
        return queue_id

    async def submit_transfer(self, envelope: Envelope, body: bytes, client: ClientInfo,
                              keys: dict[Address, str]) -> tuple[str, bool]:
        """Queue the recipients of a transfer not stored before; (queue id, was a repeat).

        `keys` maps each recipient to its transfer key (transfers.py).  The
        recipients whose key is stored already are dropped; when none is
        left the transfer is a repeat and the earlier queue id is returned,
        storing nothing.  The check and the insert are not one transaction,
        so a concurrent repeat (the same transfer on two connections) makes
        the insert raise AlreadyQueued, and we look again.
        """
        for _ in range(TRANSFER_ATTEMPTS):
            known = await self._queue.known_transfers(list(keys.values()))
            fresh = tuple(r for r in envelope.recipients if keys[r] not in known)
            if not fresh:
                earlier = next(iter(known.values()))
                event(log, earlier, "duplicate", transfer=client.transfer or None)
                return earlier, True
            partial = dataclasses.replace(envelope, recipients=fresh)
            try:
                return await self.submit(partial, body, client, tuple(
                    dict.fromkeys(keys[r] for r in fresh))), False
            except AlreadyQueued:
                continue
        raise SubmissionRejected(451, "4.3.0", "Transfer repeated concurrently; try again")

    def _expand(self, envelope: Envelope) -> dict[Address, RecipientDsn]:
        """Expand aliases of local recipients; drop duplicates, keep order.

        Each final recipient maps to its DSN request.  An alias target
        inherits the NOTIFY of the address it came from, and an ORCPT naming
        that address when the client gave none: the report then says which
        address the sender used (RFC 3461 4.2).
        """
        out: dict[Address, RecipientDsn] = {}
        for rcpt in envelope.recipients:
            request = envelope.dsn.get(rcpt, NO_DSN_REQUEST)
            if not self.router.is_local(rcpt.domain):
                out.setdefault(rcpt, request)
                continue
            for target in self.aliases.expand(rcpt.local, rcpt.domain):
                out.setdefault(target, _inherited(request, rcpt, target))
        return out


def _inherited(request: RecipientDsn, original: Address, target: Address) -> RecipientDsn:
    """The DSN request of an alias target: the original's, with its address as ORCPT."""
    if target == original or request == NO_DSN_REQUEST or request.orcpt:
        return request
    return RecipientDsn(request.notify, f"rfc822;{original}")


def log_received(queue_id: str, sender: Address, recipients: tuple[Address, ...],
                 body: bytes, client: ClientInfo) -> None:
    """The `received` line of the mail log (docs/LOGGING.md)."""
    found = _MESSAGE_ID.search(header_section(body))
    local = client.protocol == "local"
    event(log, queue_id, "received", from_=f"<{sender}>", size=len(body),
          nrcpt=len(recipients), message_id=found.group(1).decode("ascii", "replace")
          if found else None,
          client="local" if local else f"{client.helo or 'unknown'}[{client.address}]",
          protocol=(client.way or "local") if local else client.protocol,
          tls=client.tls or None, auth=client.authenticated or None,
          uid=client.uid, user=client.local_user or None, transfer=client.transfer or None)


def date_header(now: float) -> str:
    """An RFC 5322 date for headers tidepost writes."""
    return formatdate(now, localtime=True)
