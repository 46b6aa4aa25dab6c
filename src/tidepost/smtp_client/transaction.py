"""One mail transaction on an SMTP session: MAIL, RCPT..., DATA (RFC 5321 3.3).

Input: an open `SmtpSession` and a `Transaction` (sender, recipients, body
with CRLF line endings, BODY type, SMTPUTF8 flag).  Output: one `Outcome` per
recipient, in order; `send_transaction` never raises for SMTP or I/O trouble.

- With PIPELINING (RFC 2920) MAIL, every RCPT and DATA go in one write and
  the replies are read in order; without it, one command at a time.
- MAIL FROM carries SIZE= when offered, BODY=8BITMIME for 8bit mail when
  offered (8bit mail to a server without 8BITMIME is sent as is, as Postfix
  does), and SMTPUTF8 when the envelope or headers need it.  When they need
  it and the server lacks it, the affected recipients bounce with 5.6.7.
- 2xx → Delivered, 4xx → Deferred, 5xx → Bounced; the reply to DATA or to
  the final "." applies to every recipient accepted so far.  If the
  connection is lost or a 421 arrives, recipients without an answer are
  Deferred and the session is left `broken`.
- After a transaction that ended with a reply to ".", the session is clean;
  otherwise `needs_rset` makes the next transaction start with RSET.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from tidepost.address import Address
from tidepost.errors import TempFailure
from tidepost.model import BodyType, QueuedRecipient
from tidepost.outcomes import Outcome, bounced, deferred, delivered
from tidepost.smtp_client.replies import START_MAIL_INPUT, Reply
from tidepost.smtp_client.session import Peer, SmtpSession


@dataclass(frozen=True, slots=True)
class Transaction:
    """What one MAIL FROM ... end-of-data exchange carries."""

    sender: Address
    recipients: Sequence[QueuedRecipient]
    body: bytes                                # CRLF line endings, ends with CRLF
    body_type: BodyType = BodyType.SEVEN_BIT
    smtputf8: bool = False                     # the message was submitted with SMTPUTF8


async def send_transaction(session: SmtpSession, tx: Transaction) -> list[Outcome]:
    """Run one transaction; one outcome per recipient of `tx`, in order."""
    exchange = _Exchange(session, tx)
    exchange.precheck()
    try:
        await exchange.run()
    except TempFailure as failure:
        exchange.settle_failure(failure)
    return exchange.outcomes()


def dot_stuff(body: bytes) -> bytes:
    """The DATA payload: leading dots doubled, then the CRLF.CRLF terminator."""
    if body and not body.endswith(b"\r\n"):
        body += b"\r\n"
    stuffed = body.replace(b"\r\n.", b"\r\n..")
    if stuffed.startswith(b"."):
        stuffed = b"." + stuffed
    return stuffed + b".\r\n"


class _Exchange:
    """Transaction state: which recipients are settled, which were accepted."""

    def __init__(self, session: SmtpSession, tx: Transaction):
        self.session = session
        self.tx = tx
        self.settled: dict[int, Outcome] = {}
        self.pending: list[QueuedRecipient] = list(tx.recipients)
        self.accepted: list[QueuedRecipient] = []
        self.utf8 = False
        self.stage = "MAIL FROM"

    def precheck(self) -> None:
        """Bounce what the server's SIZE or missing SMTPUTF8 rules out."""
        limit, size = self.session.size_limit, len(self.tx.body)
        if limit and size > limit:
            self.refuse(self.pending, "5.3.4", f"message size {size} exceeds size "
                        f"limit {limit} of host {self.session.peer}")
            return
        envelope_needs = not self.tx.sender.is_ascii or (
            self.tx.smtputf8 and not _header_section(self.tx.body).isascii())
        needy = [r for r in self.pending if envelope_needs or not r.address.is_ascii]
        if self.session.supports("SMTPUTF8"):
            self.utf8 = bool(needy) or self.tx.smtputf8
        elif needy:
            self.refuse(needy, "5.6.7", f"host {self.session.peer} does not support "
                        "SMTPUTF8, which this message needs (RFC 6531)")

    async def run(self) -> None:
        """Send the transaction, pipelined when the server allows it."""
        if not self.pending:
            return
        await self.session.reset()
        self.session.needs_rset = True
        if self.session.supports("PIPELINING"):
            await self.run_pipelined()
        else:
            await self.run_stepwise()

    async def run_pipelined(self) -> None:
        """MAIL, RCPTs and DATA in one write; replies read in order (RFC 2920)."""
        commands = [self.mail_command(), *map(_rcpt_command, self.pending), "DATA"]
        await self.session.write("".join(c + "\r\n" for c in commands).encode())
        mail = await self.session.read_reply()
        rcpts = list(self.pending)
        if not mail.is_positive:
            self.settle(self.pending, mail)
        for recipient in rcpts:
            self.stage = "RCPT TO"
            self.on_rcpt_reply(recipient, await self.session.read_reply(), mail)
        self.stage = "DATA"
        await self.finish(await self.session.read_reply())

    async def run_stepwise(self) -> None:
        """MAIL, each RCPT and DATA, waiting for every reply."""
        mail = await self.session.command(self.mail_command())
        if not mail.is_positive:
            self.settle(self.pending, mail)
            return
        for recipient in list(self.pending):
            self.stage = "RCPT TO"
            self.on_rcpt_reply(recipient, await self.session.command(_rcpt_command(recipient)),
                               mail)
        if self.accepted:
            self.stage = "DATA"
            await self.finish(await self.session.command("DATA"))

    def on_rcpt_reply(self, recipient: QueuedRecipient, reply: Reply, mail: Reply) -> None:
        """Accept or settle one recipient by its RCPT reply."""
        if not mail.is_positive:
            return
        if reply.code // 100 == 2:
            self.accepted.append(recipient)
        else:
            self.settle([recipient], reply)

    async def finish(self, data: Reply) -> None:
        """Send the body after 354, or settle the accepted recipients by DATA's reply."""
        if data.code != START_MAIL_INPUT:
            self.settle(self.accepted, data)
            return
        if not self.accepted:  # RFC 2920 3.1: 354 with no recipient; end it empty
            await self.session.write(b".\r\n")
            await self.session.read_reply()
            return
        self.stage = "end of DATA"
        await self.session.write(dot_stuff(self.tx.body))
        final = await self.session.read_reply()
        self.session.needs_rset = False
        self.session.transactions += 1
        self.settle(self.accepted, final)

    def mail_command(self) -> str:
        """MAIL FROM with the ESMTP parameters this server and message call for."""
        params = []
        if self.session.supports("SIZE"):
            params.append(f"SIZE={len(self.tx.body)}")
        if self.tx.body_type is BodyType.EIGHT_BIT_MIME and self.session.supports("8BITMIME"):
            params.append("BODY=8BITMIME")
        if self.utf8:
            params.append("SMTPUTF8")
        return " ".join([f"MAIL FROM:<{self.tx.sender}>", *params])

    def settle(self, recipients: Sequence[QueuedRecipient], reply: Reply) -> None:
        """Record the outcome `reply` means for each of `recipients`."""
        for recipient in list(recipients):
            self.record(recipient, _outcome(recipient.recipient_id, reply,
                                            self.session.peer, self.stage))
        self.accepted = [r for r in self.accepted if r.recipient_id not in self.settled]

    def settle_failure(self, failure: TempFailure) -> None:
        """Defer every recipient still unsettled after a lost connection or 421."""
        reason = f"{failure.reason} (in reply to {self.stage})"
        for recipient in list(self.pending):
            self.record(recipient, deferred(recipient.recipient_id, failure.status,
                                            reason, self.session.peer.host))

    def refuse(self, recipients: Sequence[QueuedRecipient], status: str, reason: str) -> None:
        """Bounce recipients before any command is sent."""
        for recipient in list(recipients):
            self.record(recipient, bounced(recipient.recipient_id, status, reason,
                                           self.session.peer.host))

    def record(self, recipient: QueuedRecipient, outcome: Outcome) -> None:
        """Settle one recipient once; later replies cannot change it."""
        if recipient.recipient_id not in self.settled:
            self.settled[recipient.recipient_id] = outcome
            self.pending = [r for r in self.pending if r is not recipient]

    def outcomes(self) -> list[Outcome]:
        """The settled outcomes in recipient order (none may be missing)."""
        for recipient in list(self.pending):  # cannot happen; never lose a recipient
            self.record(recipient, deferred(recipient.recipient_id, "4.3.0",
                                            "transaction ended without a reply",
                                            self.session.peer.host))
        return [self.settled[r.recipient_id] for r in self.tx.recipients]


def _outcome(recipient_id: int, reply: Reply, peer: Peer, stage: str) -> Outcome:
    """Delivered, Deferred or Bounced as the reply's class says."""
    said = f"host {peer} said: {reply} (in reply to {stage})"
    if reply.code // 100 == 2:
        return delivered(recipient_id, said, peer.host)
    if reply.code // 100 == 5:
        return bounced(recipient_id, reply.status, said, peer.host)
    status = reply.status if reply.is_transient else "4.5.0"
    return deferred(recipient_id, status, said, peer.host)


def _rcpt_command(recipient: QueuedRecipient) -> str:
    """RCPT TO for one recipient."""
    return f"RCPT TO:<{recipient.address}>"


def _header_section(body: bytes) -> bytes:
    """The header lines of the message (up to the first empty line)."""
    end = body.find(b"\r\n\r\n")
    return body if end < 0 else body[:end]
