"""The receiving end of one session's batch stream: records in, the SMTP path's replies out.

`InboundBatch(checks, partials)` is made at a session's first XBATCH and
decodes its chunks (`await take(chunk)`), one message open at a time.  It
writes no second submission path: every record goes through the
conversation's own checks (`BatchChecks`, which Conversation implements):
`mail_verdict` for the MAIL line (syntax, SIZE, SMTPUTF8), `rcpt_verdict` for
each RCPT line (relay control, recipient limits), then for the complete
message `accept_message` (size, bare CR/LF, NUL, line length: the same
`content_problem` as DATA, on the decompressed octets; then the submission,
250 only after commit).

Outcomes (docs/BATCH.md): when a record's END arrives, `take` returns its
lines: `<tid> <i> <reply>` for recipient i (0-based) when its RCPT was
refused, and `<tid> * <reply>` for every other recipient (the MAIL
refusal, or the final reply).  Exactly once: for a client that may use
XTIDEPOST TRANSFER (relay_networks or AUTH), the record's transfer id is
the transaction's, as XTRANSFER= would make it (submission/transfers.py):
a repeat of recipients an earlier session queued is answered 250 again
and not stored twice.
Resume: at the end of every chunk the open message's octets go to its
partial file, fsync'd before the chunk's reply; `MSG tid offset` with
offset > 0 continues from that file (451 4.3.0 for the message when it holds
fewer octets, so the client sends it whole next time).  A refused envelope
keeps nothing.  A malformed stream raises `StreamError` (the session then
refuses the rest of it).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, Coroutine, Protocol

from tidepost import batchcodec as codec
from tidepost.smtp_server import replies as S
from tidepost.smtp_server.batch_partials import PartialStore
from tidepost.smtp_server.reader import MessageData, examine
from tidepost.smtp_server.rejections import path_word
from tidepost.smtp_server.replies import Reply
from tidepost.smtp_server.state import Transaction

TEXT_LIMIT = 200  # characters of a reply's text in an outcome line
SUBMITS_AT_ONCE = 32  # complete messages of one chunk queued side by side


class BatchChecks(Protocol):
    """What a batch needs from its conversation: the SMTP checks and the submission."""

    def mail_verdict(self, arg: str) -> Transaction | Reply: ...

    def rcpt_verdict(self, transaction: Transaction, arg: str) -> Reply: ...

    async def accept_message(self, transaction: Transaction, data: MessageData) -> Reply: ...

    def batch_transfers(self) -> bool: ...

    def batch_refused(self, command: str, reply: Reply, sender: str | None,
                      recipient: str | None) -> None: ...

    @property
    def max_message_size(self) -> int: ...


@dataclass(slots=True)
class _Message:
    """The message whose record is open."""

    transfer_id: str
    total: int
    body: bytearray
    synced: int                            # octets already in the partial file
    refusal: Reply | None = None           # for every recipient; the content is dropped
    transaction: Transaction | None = None
    lines: list[str] = field(default_factory=list)   # per-recipient outcome lines


class InboundBatch:
    """Decodes one session's batch stream and answers each message as SMTP would."""

    def __init__(self, checks: BatchChecks, partials: PartialStore):
        self.checks = checks
        self.partials = partials
        self.decoder = codec.BatchDecoder()
        self.broken = False
        self.chunks = 0
        self._message: _Message | None = None

    async def take(self, chunk: bytes) -> list[str]:
        """Decode one chunk; the outcome lines of the messages it completed.

        The messages a chunk completes are submitted side by side (their
        commits can share an fsync), SUBMITS_AT_ONCE at most, and answered
        in stream order once all are done.
        """
        ends: list[asyncio.Task[list[str]]] = []
        lines: list[str] = []
        try:
            for event in self.decoder.feed(chunk):
                end = await self._on_event(event)
                if end is not None:
                    ends.append(asyncio.ensure_future(end))
                if len(ends) >= SUBMITS_AT_ONCE:
                    lines += _joined(await asyncio.gather(*ends))
                    ends = []
        except codec.StreamError:
            self.broken = True
            self._message = None
            raise
        finally:
            done = await asyncio.gather(*ends, return_exceptions=True)
        lines += _joined([d for d in done if isinstance(d, list)])
        await self._keep_open_message()
        self.chunks += 1
        return lines

    async def _on_event(self, event: codec.Event) -> Coroutine[Any, Any, list[str]] | None:
        """Advance the open message by one decoded event; a complete one's submission."""
        if isinstance(event, codec.Begin):
            self._message = await self._begin(event)
            return None
        message = self._message
        assert message is not None  # the decoder orders the events
        if isinstance(event, codec.Envelope):
            await self._envelope(message, event)
        elif isinstance(event, codec.Data):
            if message.refusal is None:
                message.body += event.octets
        else:
            self._message = None
            return self._end(message)
        return None

    async def _begin(self, begin: codec.Begin) -> _Message:
        """MSG: a new message, or the rest of one held from an earlier session."""
        tid, offset = begin.transfer_id, begin.offset
        message = _Message(tid, begin.total, bytearray(), synced=offset)
        if begin.total > self.checks.max_message_size:
            message.refusal = S.S552_TOO_BIG
        elif offset:
            held = await asyncio.to_thread(self.partials.load, tid, offset)
            if held is None:
                message.refusal = S.S451_BATCH_RESUME_LOST
            else:
                message.body += held
        else:
            await asyncio.to_thread(self.partials.drop, tid)
        return message

    async def _envelope(self, message: _Message, envelope: codec.Envelope) -> None:
        """MAIL and RCPT lines through the conversation's checks; known recipients noted."""
        if message.refusal is not None:
            return
        sender = path_word(_argument(envelope.mail))
        started = self.checks.mail_verdict(_argument(envelope.mail))
        if isinstance(started, Reply):
            message.refusal = started
            self.checks.batch_refused("MAIL", started, sender, None)
            return
        for index, line in enumerate(envelope.rcpts):
            verdict = self.checks.rcpt_verdict(started, _argument(line))
            if verdict.code != 250:
                message.lines.append(_line(message.transfer_id, str(index), verdict))
                self.checks.batch_refused("RCPT", verdict, sender,
                                          path_word(_argument(line)))
        if self.checks.batch_transfers():  # exactly once, as XTRANSFER= (submission/transfers.py)
            started.transfer_id = message.transfer_id
        message.transaction = started

    async def _end(self, message: _Message) -> list[str]:
        """END: the message's final reply for every recipient without one."""
        await asyncio.to_thread(self.partials.drop, message.transfer_id)
        transaction = message.transaction
        final = message.refusal
        if final is None and transaction is not None and transaction.recipients:
            data = examine(bytes(message.body), self.checks.max_message_size)
            final = await self.checks.accept_message(transaction, data)
        # Every recipient refused: the `*` line then applies to none.
        final = final or S.S554_NO_VALID_RECIPIENTS
        pending = transaction.recipients if transaction is not None else []
        if final.code >= 400 and (pending or message.refusal is not None):
            first = f"<{pending[0]}>" if pending else None
            self.checks.batch_refused("end-of-data", final, None, first)
        return [*message.lines, _line(message.transfer_id, "*", final)]

    async def _keep_open_message(self) -> None:
        """The open message's new octets into its partial file, durably, before the reply."""
        message = self._message
        if message is None or message.refusal is not None or message.transaction is None \
                or not message.transaction.recipients:
            return
        if len(message.body) == message.synced:
            return
        new = bytes(message.body[message.synced:])
        start = message.synced

        def write() -> None:
            if self.partials.append(message.transfer_id, new, start):
                self.partials.sync([message.transfer_id])
        await asyncio.to_thread(write)
        message.synced = len(message.body)


def _joined(groups: list[list[str]]) -> list[str]:
    return [line for group in groups for line in group]


def _argument(line: str) -> str:
    """`MAIL FROM:<a> ...` -> `FROM:<a> ...`: what the SMTP verb's handler takes."""
    return line.partition(" ")[2].strip(" ")


def _line(transfer_id: str, which: str, reply: Reply) -> str:
    """One outcome line: transfer id, recipient index or `*`, the reply."""
    text = "".join(c if c.isprintable() else " " for c in reply.text)[:TEXT_LIMIT]
    return f"{transfer_id} {which} {reply.code} {reply.status or '-'} {text}"
