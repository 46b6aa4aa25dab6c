"""One mail transaction on an SMTP session: MAIL, RCPT..., DATA (RFC 5321 3.3).

Input: an open `SmtpSession` and a `Transaction` (sender, recipients, body
with CRLF line endings, BODY type, SMTPUTF8 flag).  Output: one `Outcome` per
recipient, in order; `send_transaction` never raises for SMTP or I/O trouble.

- With PIPELINING (RFC 2920) MAIL, every RCPT and DATA go in one write and
  the replies are read in order; without it, one command at a time.
  Transactions on one connection line up in its pipeline (pipeline.py): the
  next one's commands go out with this one's message content, so a message
  costs one round trip, not two.  The content waits for 354 and for `gate`
  (the caller's: the job before is recorded, so that a crash repeats at
  most one transaction).
- With CHUNKING (RFC 3030) the content is one `BDAT n LAST` chunk, sent
  as it is stored (no dot-stuffing; BODY= stays 7BIT or 8BITMIME, binary
  bodies would need BINARYMIME, which we never send).  No 354: the chunk
  goes after the MAIL and RCPT replies, and only if a recipient was
  accepted, so a refused message costs no body bytes.  `stream` (the
  agent's pipeline_depth of 2 or more) sends it with MAIL and RCPT when
  the gate is open: no waiting for their replies, at the price of a wasted
  body when the server refuses them (greylisting does, on every retry).
- MAIL FROM carries SIZE= when offered, BODY=8BITMIME for 8bit mail when
  offered (8BITMIME mail whose content is not ASCII bounces 5.6.3 at a
  server without 8BITMIME, nothing sent: RFC 6152 3 allows converting or
  returning it, never sending it raw; we do not convert), SMTPUTF8 when the envelope or headers need it, and XTRANSFER= (the
  message's transfer id) when the server is a tidepost offering XTIDEPOST
  TRANSFER (docs/EXTENSIONS.md): it then stores a repeat only once.  When they need
  it and the server lacks it, the affected recipients bounce with 5.6.7.
- With DSN offered (RFC 3461), MAIL carries the message's RET= and ENVID=
  and each RCPT its NOTIFY= and ORCPT=, as they came; the next hop then owns
  the reports, and a recipient it accepts is Delivered with no action of
  ours to report.  Without DSN, an accepted recipient is "relayed" (a
  NOTIFY=SUCCESS sender hears that from us).
- 2xx → Delivered, 4xx → Deferred, 5xx → Bounced; the reply to DATA, to
  the final "." or to BDAT LAST applies to every recipient accepted so far.  If the
  connection is lost or a 421 arrives, recipients without an answer are
  Deferred and the session is left `broken`.
- After a transaction that sent its content (the dot, or a BDAT LAST that
  got 2xx), the next starts with MAIL; otherwise with RSET (`needs_rset`,
  and in a pipeline the turn's `clean`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from tidepost.address import Address
from tidepost.dsnparams import orcpt_parameter, xtext_encode
from tidepost.errors import TempFailure
from tidepost.model import BodyType, MessageInfo, QueuedRecipient
from tidepost.outcomes import Outcome, bounced, deferred, delivered
from tidepost.smtp_client.pipeline import Turn
from tidepost.submission import transfers
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
    transfer_id: str = ""                      # XTRANSFER= for a tidepost peer (EXTENSIONS.md)
    ret: str = ""                              # RFC 3461 RET= and ENVID= (decoded)
    envid: str = ""


def message_transaction(message: MessageInfo, recipients: Sequence[QueuedRecipient],
                        body: bytes, transfer_id: str = "") -> Transaction:
    """The transaction that sends `message` (its stored envelope facts) to `recipients`."""
    return Transaction(message.sender, recipients, body, message.body_type, message.smtputf8,
                       transfer_id, message.ret, message.envid)


def dsn_mail_parameters(tx: Transaction) -> list[str]:
    """RET= and ENVID= for a next hop that offers DSN (RFC 3461 4.3, 4.4)."""
    params = [f"RET={tx.ret}"] if tx.ret else []
    return params + ([f"ENVID={xtext_encode(tx.envid)}"] if tx.envid else [])


def rcpt_command(recipient: QueuedRecipient, dsn: bool) -> str:
    """RCPT TO for one recipient, with its NOTIFY= and ORCPT= when `dsn` (offered)."""
    params = []
    if dsn and recipient.dsn.notify:
        params.append(f"NOTIFY={recipient.dsn.notify}")
    if dsn and recipient.dsn.orcpt:
        params.append(f"ORCPT={orcpt_parameter(recipient.dsn.orcpt)}")
    return " ".join([f"RCPT TO:<{recipient.address}>", *params])


async def send_transaction(session: SmtpSession, tx: Transaction, *,
                           gate: asyncio.Event | None = None,
                           on_turn: Callable[[], None] | None = None,
                           stream: bool = False) -> list[Outcome]:
    """Run one transaction; one outcome per recipient of `tx`, in order.

    `gate`: the message content is not sent before it is set (the job
    before this one on the connection has been recorded).  `on_turn` is
    called once the transaction has its place in the connection's pipeline,
    so that the next one may line up behind it.  `stream`: with CHUNKING,
    send the chunk without waiting for the MAIL and RCPT replies.
    """
    return (await run_transaction(session, tx, gate=gate, on_turn=on_turn,
                                  stream=stream)).outcomes


@dataclass(frozen=True, slots=True)
class TransactionResult:
    """The outcomes of one transaction, and what the connection said at all."""

    outcomes: list[Outcome]
    replied: bool     # the server answered at least one of its commands
    completed: bool   # a final reply to the message content was read


async def run_transaction(session: SmtpSession, tx: Transaction, *,
                          gate: asyncio.Event | None = None,
                          on_turn: Callable[[], None] | None = None,
                          stream: bool = False) -> TransactionResult:
    """send_transaction, telling also whether the server answered anything."""
    exchange = _Exchange(session, tx, gate, on_turn, stream)
    exchange.precheck()
    try:
        await exchange.run()
    except TempFailure as failure:
        exchange.settle_failure(failure)
    return TransactionResult(exchange.outcomes(), exchange.replied, exchange.completed)


def dot_stuff(body: bytes) -> bytes:
    """The DATA payload: leading dots doubled, then the CRLF.CRLF terminator."""
    if body and not body.endswith(b"\r\n"):
        body += b"\r\n"
    stuffed = body.replace(b"\r\n.", b"\r\n..")
    if stuffed.startswith(b"."):
        stuffed = b"." + stuffed
    return stuffed + b".\r\n"


def bdat_last(body: bytes) -> bytes:
    """The whole message as one last chunk (RFC 3030): no dot-stuffing, no terminator."""
    if body and not body.endswith(b"\r\n"):
        body += b"\r\n"
    return b"BDAT %d LAST\r\n" % len(body) + body


class _Exchange:
    """Transaction state: which recipients are settled, which were accepted."""

    def __init__(self, session: SmtpSession, tx: Transaction,
                 gate: asyncio.Event | None = None, on_turn: Callable[[], None] | None = None,
                 stream: bool = False):
        self.session = session
        self.tx = tx
        self.gate = gate
        self.on_turn = on_turn
        self.stream = stream
        self.settled: dict[int, Outcome] = {}
        self.pending: list[QueuedRecipient] = list(tx.recipients)
        self.accepted: list[QueuedRecipient] = []
        self.utf8 = False
        self.stage = "MAIL FROM"
        self.replied = False
        self.completed = False

    def precheck(self) -> None:
        """Bounce what the server's SIZE or missing 8BITMIME or SMTPUTF8 rules out."""
        limit, size = self.session.size_limit, len(self.tx.body)
        if limit and size > limit:
            self.refuse(self.pending, "5.3.4", f"message size {size} exceeds size "
                        f"limit {limit} of host {self.session.peer}")
            return
        if self.tx.body_type is BodyType.EIGHT_BIT_MIME and not self.session.supports(
                "8BITMIME") and not self.tx.body.isascii():
            self.refuse(self.pending, "5.6.3", f"host {self.session.peer} does not support "
                        "8BITMIME, which this message needs (RFC 6152)")
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
        if not self.session.supports("PIPELINING"):
            await self.session.reset()
            self.session.needs_rset = True
            await self.run_stepwise()
            return
        turn = self.session.pipeline.turn()
        if self.on_turn is not None:
            self.on_turn()
        try:
            await self.run_pipelined(turn)
        finally:
            turn.finish()
            if self.session.pipeline.is_last(turn):
                self.session.needs_rset = turn.clean is not True

    async def run_pipelined(self, turn: Turn) -> None:
        """MAIL, RCPTs and DATA (or BDAT) in one write, behind the transaction before.

        RFC 2920 3.1: the commands go out right after the previous
        message's content (`offer`), the content only after DATA's 354; the
        replies are read in order.  With CHUNKING (RFC 3030) the content is
        BDAT LAST and needs no 354: it goes once the replies to MAIL and
        RCPT are in, and only if a recipient was accepted; when streaming
        and nothing holds it back (`gate`), in the same write as the
        commands, without waiting for those replies.
        """
        chunking = self.session.supports("CHUNKING")
        turn.offer(self.commands)
        await turn.wait_write()
        self.check_line()
        data = b""
        if not turn.sent_early:
            turn.rset_sent = self.session.needs_rset if turn.first \
                else turn.previous_clean() is not True
            data = self.commands(turn.rset_sent)
        streaming = chunking and self.stream and (self.gate is None or self.gate.is_set())
        if streaming:
            data += self.bdat(turn)
        if data:
            await self.session.write(data)
        if streaming:
            turn.wrote()
        await turn.wait_read()
        self.check_line()
        mail = await self.read_envelope_replies(turn)
        if not chunking:
            await self.finish_data(turn)
        elif streaming or await self.send_bdat(turn):
            await self.finish_bdat(turn, mail)
        turn.read_all()

    async def read_envelope_replies(self, turn: Turn) -> Reply:
        """The replies to RSET, MAIL and each RCPT, settling what they decide."""
        if turn.rset_sent:
            self.stage = "RSET"
            reply = await self.read_reply()
            if reply.code // 100 != 2:
                self.session.broken = True
                raise self.session.refusal(reply, "refused RSET")
        self.stage = "MAIL FROM"
        mail = await self.read_reply()
        rcpts = list(self.pending)
        if not mail.is_positive:
            self.settle(self.pending, mail)
        for recipient in rcpts:
            self.stage = "RCPT TO"
            self.on_rcpt_reply(recipient, await self.read_reply(), mail)
        return mail

    async def finish_data(self, turn: Turn) -> None:
        """DATA's reply; after 354 the content (its dot ends the transaction), then the final reply."""
        self.stage = "DATA"
        reply = await self.read_reply()
        if reply.code != START_MAIL_INPUT:
            turn.wrote()
            self.settle(self.accepted, reply)
            return
        await self.wait_gate()
        turn.clean = True  # a reply to the dot ends the server's transaction either way
        if not self.accepted:  # RFC 2920 3.1: 354 with no recipient; end it empty
            await self.session.write(b".\r\n" + turn.take_next(rset=False))
            turn.wrote()
            await self.read_reply()
            return
        self.stage = "end of DATA"
        await self.session.write(dot_stuff(self.tx.body) + turn.take_next(rset=False))
        turn.wrote()
        self.settle_final(await self.read_reply(self.session.data_done_timeout))

    async def send_bdat(self, turn: Turn) -> bool:
        """BDAT after the MAIL and RCPT replies; False (and nothing sent) when none was accepted."""
        if not self.accepted:
            turn.wrote()
            return False
        await self.wait_gate()
        await self.session.write(self.bdat(turn))
        turn.wrote()
        return True

    def bdat(self, turn: Turn) -> bytes:
        """BDAT LAST with the message, then the next transaction's commands, if they wait."""
        turn.clean = None  # known when BDAT's reply comes: a refusal leaves the state open
        # What follows does not wait for BDAT's reply (RFC 3030: state unknown
        # after a refused chunk), so it starts with RSET.
        return bdat_last(self.tx.body) + turn.take_next(rset=True)

    async def finish_bdat(self, turn: Turn, mail: Reply) -> None:
        """The reply to BDAT LAST decides every accepted recipient."""
        self.stage = "BDAT"
        reply = await self.read_reply(self.session.data_done_timeout)
        turn.clean = reply.code // 100 == 2
        if mail.is_positive:
            self.settle_final(reply)

    def settle_final(self, reply: Reply) -> None:
        """The reply to the message content: the transaction is over."""
        self.completed = True
        self.session.transactions += 1
        self.settle(self.accepted, reply)

    async def wait_gate(self) -> None:
        """Hold the content until the gate opens (the job before is recorded)."""
        if self.gate is not None:
            await self.gate.wait()

    async def read_reply(self, timeout: float | None = None) -> Reply:
        """One reply (within `timeout`, else command_timeout), noting that the server answered."""
        reply = await self.session.read_reply(timeout)
        self.replied = True
        return reply

    def check_line(self) -> None:
        """Fail at once when a transaction before this one broke the connection."""
        if self.session.broken:
            raise TempFailure("4.4.2", f"lost connection with {self.session.peer} earlier "
                              "in the pipeline", self.session.peer.host)

    def commands(self, rset: bool) -> bytes:
        """This transaction's group: [RSET,] MAIL, each RCPT, and DATA unless CHUNKING."""
        lines = ["RSET"] if rset else []
        lines += [self.mail_command(), *map(self.rcpt_command, self.pending)]
        if not self.session.supports("CHUNKING"):
            lines.append("DATA")
        return "".join(line + "\r\n" for line in lines).encode("utf-8")

    async def run_stepwise(self) -> None:
        """MAIL, each RCPT and DATA (or BDAT), waiting for every reply."""
        mail = await self.session.command(self.mail_command())
        self.replied = True
        if not mail.is_positive:
            self.settle(self.pending, mail)
            return
        for recipient in list(self.pending):
            self.stage = "RCPT TO"
            self.on_rcpt_reply(recipient, await self.session.command(
                self.rcpt_command(recipient)), mail)
        if not self.accepted:
            return
        if self.session.supports("CHUNKING"):
            await self.run_bdat_stepwise()
            return
        self.stage = "DATA"
        await self.finish(await self.session.command("DATA"))

    async def run_bdat_stepwise(self) -> None:
        """BDAT LAST with the whole message, and its reply (no 354 to wait for)."""
        self.stage = "BDAT"
        await self.session.write(bdat_last(self.tx.body))
        final = await self.session.read_reply(self.session.data_done_timeout)
        if final.code // 100 == 2:
            self.session.needs_rset = False
        self.settle_final(final)

    def on_rcpt_reply(self, recipient: QueuedRecipient, reply: Reply, mail: Reply) -> None:
        """Accept or settle one recipient by its RCPT reply."""
        if not mail.is_positive:
            return
        if reply.code // 100 == 2:
            self.accepted.append(recipient)
        else:
            self.settle([recipient], reply)

    async def finish(self, data: Reply) -> None:
        """Stepwise: send the body after 354, or settle the accepted recipients by DATA's reply."""
        if data.code != START_MAIL_INPUT:
            self.settle(self.accepted, data)
            return
        self.stage = "end of DATA"
        await self.session.write(dot_stuff(self.tx.body))
        final = await self.session.read_reply(self.session.data_done_timeout)
        self.session.needs_rset = False
        self.settle_final(final)

    def mail_command(self) -> str:
        """MAIL FROM with the ESMTP parameters this server and message call for."""
        params = []
        if self.session.supports("SIZE"):
            params.append(f"SIZE={len(self.tx.body)}")
        if self.tx.body_type is BodyType.EIGHT_BIT_MIME and self.session.supports("8BITMIME"):
            params.append("BODY=8BITMIME")
        if self.utf8:
            params.append("SMTPUTF8")
        if self.tx.transfer_id and transfers.TRANSFER in self.session.tidepost_features():
            params.append(f"{transfers.PARAMETER}={self.tx.transfer_id}")
        if self.session.supports("DSN"):
            params += dsn_mail_parameters(self.tx)
        return " ".join([f"MAIL FROM:<{self.tx.sender}>", *params])

    def rcpt_command(self, recipient: QueuedRecipient) -> str:
        """RCPT TO for one recipient, with DSN parameters when the server takes them."""
        return rcpt_command(recipient, self.session.supports("DSN"))

    def settle(self, recipients: Sequence[QueuedRecipient], reply: Reply) -> None:
        """Record the outcome `reply` means for each of `recipients`."""
        for recipient in list(recipients):
            self.record(recipient, reply_outcome(recipient.recipient_id, reply,
                                                 self.session.peer, self.stage,
                                                 self.session.supports("DSN")))
        self.accepted = [r for r in self.accepted if r.recipient_id not in self.settled]

    def settle_failure(self, failure: TempFailure) -> None:
        """Defer every recipient still unsettled after a lost connection or 421."""
        reason = f"{failure.reason} (in reply to {self.stage})"
        for recipient in list(self.pending):
            self.record(recipient, deferred(recipient.recipient_id, failure.status,
                                            reason, self.session.peer.host,
                                            diagnostic=failure.diagnostic))

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


def reply_outcome(recipient_id: int, reply: Reply, peer: Peer, stage: str,
                  dsn: bool = False) -> Outcome:
    """Delivered, Deferred or Bounced as the reply's class says.

    `dsn`: the peer offered DSN and got the request, so a success report is
    its to send (Delivered with no action); otherwise it is "relayed".
    """
    said = f"host {peer} said: {reply} (in reply to {stage})"
    if reply.code // 100 == 2:
        return delivered(recipient_id, said, peer.host, "" if dsn else "relayed",
                         diagnostic=str(reply))
    if reply.code // 100 == 5:
        return bounced(recipient_id, reply.status, said, peer.host, diagnostic=str(reply))
    status = reply.status if reply.is_transient else "4.5.0"
    return deferred(recipient_id, status, said, peer.host, diagnostic=str(reply))


def _header_section(body: bytes) -> bytes:
    """The header lines of the message (up to the first empty line)."""
    end = body.find(b"\r\n\r\n")
    return body if end < 0 else body[:end]
