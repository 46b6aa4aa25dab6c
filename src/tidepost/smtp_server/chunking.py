"""The server's CHUNKING verb: BDAT <octets> [LAST] (RFC 3030).

`ChunkingVerbs` is a base of `Conversation`, so every SMTP conversation
(the listeners, the relay's, `tidepost odmr`'s reversed session and
`sendmail -bs`) takes BDAT; EHLO says CHUNKING while `smtp.chunking` is on.

The octets after a BDAT line are always read, whatever the reply, so they
can never run as commands; only a size that is not digits cannot be
skipped: 501 5.5.4 and the connection is closed.  Each chunk is answered in
command order (pipelined chunks are read one after another, RFC 2920), and
the replies pending are sent before a wait for the client's octets or for
the commit, so neither side waits on the other:

- 503 5.5.1 with no MAIL transaction, 554 5.5.1 when it has no accepted
  recipient (as DATA, and as Postfix), 502 5.5.1 with `smtp.chunking` off;
- 552 5.3.4 once the message passes `smtp.max_message_size`: what came so
  far is dropped and the transaction ends (chunks the client pipelined
  behind it then get 503, and are read and discarded too);
- 250 `Ok: N octets received` to a chunk that is not the last;
- after LAST (also `BDAT 0 LAST`), the message goes through the same
  acceptance as DATA's (`Conversation.accept_message`: content checks,
  submission, Received header, loop and header checks), and its 250 is
  sent only after the commit.

Content: no dot-stuffing and no end-of-data mark, so SMTP smuggling has no
terminator to forge here; the body is checked as DATA's is (data.py): a
bare CR or LF, a NUL or a line over 1000 octets is refused with 554 5.6.0,
so what is queued has CRLF lines, like every DATA message, and is
dot-stuffed as such when relayed onward over DATA.  The one difference RFC
3030 allows, a last line without CRLF, gets its CRLF added.

Memory: a message's chunks are held only up to the size limit (octets past
it are read and dropped, never stored), and an announced size allocates
nothing (reader.py reads a chunk in reads of 64 KiB).  A message past the
large-body threshold takes a slot of the server's LargeBodies (bodies.py),
as a DATA section does, until its transaction ends (`release()`).
Config keys read: smtp.chunking, smtp.max_message_size.
"""

from __future__ import annotations

from typing import Any

from tidepost.smtp_server import replies as S
from tidepost.smtp_server.bodies import BodyTicket
from tidepost.smtp_server.reader import MessageData, SmtpReader, examine
from tidepost.smtp_server.replies import Reply
from tidepost.smtp_server.state import Transaction

KEYWORD = "CHUNKING"
MAX_SIZE_DIGITS = 20  # enough for any 64-bit size; more digits are a syntax error


def parse_bdat(arg: str) -> tuple[int, bool] | None:
    """`123 LAST` -> (123, True); None when malformed."""
    words = arg.split(" ")
    if not 1 <= len(words) <= 2 or (len(words) == 2 and words[1].upper() != "LAST"):
        return None
    size = words[0]
    if not (size.isascii() and size.isdigit() and len(size) <= MAX_SIZE_DIGITS):
        return None
    return int(size), len(words) == 2


class ChunkedBody:
    """The chunks of one BDAT message so far, never more than `max_size` octets of them."""

    def __init__(self, max_size: int, ticket: BodyTicket | None):
        self.max_size = max_size
        self.octets = bytearray()
        self.size = 0  # octets received, kept or not
        self._ticket = ticket
        self._slot_taken = False

    @property
    def too_big(self) -> bool:
        """True once the message has passed the size limit."""
        return self.size > self.max_size

    async def read_chunk(self, reader: SmtpReader, count: int) -> None:
        """Read one chunk's `count` octets; keep them while under the limit."""
        room = self.max_size - len(self.octets)
        large = None if self._slot_taken else self._ticket
        if await reader.read_octets_into(count, self.octets, room, large):
            self._slot_taken = True
        self.size += count
        if self.too_big:
            self.octets = bytearray()  # nothing of it will be queued: free it now

    def message(self) -> MessageData:
        """The message the chunks make, checked as a DATA section is."""
        if self.too_big:
            return MessageData(b"", self.size, too_big=True)
        body = bytes(self.octets)
        if body and not body.endswith(b"\r\n"):
            body += b"\r\n"  # RFC 3030 lets the last line go without; the queue wants CRLF
        return examine(body, self.max_size)

    def release(self) -> None:
        """The message is queued or abandoned: give its memory slot back."""
        self.octets = bytearray()
        if self._ticket is not None:
            self._ticket.done()


class ChunkingVerbs:
    """BDAT, mixed into Conversation (which provides the rest)."""

    config: Any
    limits: Any
    counters: Any
    transaction: Transaction | None
    _reader: SmtpReader
    _command: str
    _large_bodies: Any

    def reply(self, reply: Reply) -> None: ...  # Conversation's
    def close_after_reply(self) -> None: ...
    async def flush(self) -> None: ...
    def end_transaction(self) -> None: ...
    def note_transaction(self, transaction: Transaction) -> None: ...
    async def accept_message(self, transaction: Transaction,
                             data: MessageData) -> Reply: ...

    def chunking_keywords(self) -> list[str]:
        """`CHUNKING` when this server takes BDAT."""
        return [KEYWORD] if self.limits.chunking else []

    async def smtp_BDAT(self, arg: str) -> None:
        """BDAT octets [LAST]: one chunk of a message; see the module docstring."""
        parsed = parse_bdat(arg)
        if parsed is None:  # how many octets follow is unknown: they cannot be skipped
            self.reply(S.S501_BDAT_SYNTAX)
            return self.close_after_reply()
        count, last = parsed
        if self._reader.buffered < count:
            await self.flush()  # replies pending go out before we wait on the client
        transaction = self.transaction
        refusal = self._bdat_refusal(transaction)
        if refusal is not None or transaction is None:
            await self._reader.read_octets_into(count, bytearray(), 0)
            self.end_transaction()
            return self.reply(refusal or S.S503_MAIL_FIRST)
        self.note_transaction(transaction)
        if transaction.chunks is None:
            transaction.chunks = ChunkedBody(self.limits.max_message_size, self._ticket())
        chunks: ChunkedBody = transaction.chunks
        await chunks.read_chunk(self._reader, count)
        if last or chunks.too_big:
            return await self._end_of_message(transaction, chunks)
        self.reply(S.chunk_received(count))

    def _bdat_refusal(self, transaction: Transaction | None) -> Reply | None:
        """Why this BDAT's chunk cannot join a message, or None."""
        if not self.limits.chunking:
            return S.S502_BDAT_DISABLED
        if transaction is None:
            return S.S503_MAIL_FIRST
        if not transaction.recipients:
            return S.S554_NO_VALID_RECIPIENTS
        return None

    def _ticket(self) -> BodyTicket | None:
        """A claim on the server's large-body memory, if it bounds it."""
        return self._large_bodies.ticket() if self._large_bodies is not None else None

    async def _end_of_message(self, transaction: Transaction, chunks: ChunkedBody) -> None:
        """The last chunk, or one past the limit: accept or refuse the message."""
        await self.flush()  # the replies before it need not wait for the commit
        try:
            outcome = await self.accept_message(transaction, chunks.message())
        finally:
            self.end_transaction()  # frees the chunks, whatever the outcome
        self.reply(outcome)
        if outcome.code == 250:
            await self.flush()  # at once, as after DATA: the client waits for it
