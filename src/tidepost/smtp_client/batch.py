"""The sending end of XTIDEPOST BATCH: many messages per round trip, compressed, resumable.

`BatchSender(session, chunk_size, window)` sends the transactions given to
`await send(tx, transfer_id, on_taken)` as records of one compressed stream
(batchcodec.py) in `XBATCH n` chunks of about `chunk_size` compressed octets,
up to `window` of them out before their replies (docs/BATCH.md).  Each
`send` returns a `TransactionResult` with one outcome per recipient, built
from the server's outcome lines exactly as the SMTP replies would have
been (transaction.reply_outcome): a refused RCPT bounces or defers that
recipient, the final reply decides the rest.

- A chunk goes out when it is full (within chunk_size / 8: zlib is flushed
  every chunk_size / 8 raw octets, so it never holds more back than that),
  or when nothing waits to be encoded and
  no chunk is waiting for its reply (an idle link gets what there is at once;
  a busy one gets fuller chunks).  At most MESSAGES_PER_CHUNK records end in
  one chunk, so that one reply stays small.
- Resume: a message larger than a chunk that was tried before is preceded
  by `XRESUME tid`, and only the octets the server does not hold are sent
  (`MSG tid offset`).
- Memory: a message's body is kept until its outcome arrives; `on_taken`
  (the dispatcher's next job may start) is called only while the bodies in
  flight stay under `memory_budget` octets.
- Failure: when the connection is lost or the server refuses a chunk, the
  session is closed and every message without its outcome is Deferred (the
  next session resumes or repeats it; transfer ids make a repeat harmless).
`close()` ends the sender's tasks; it never raises.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from tidepost.batchcodec import BatchEncoder
from tidepost.errors import TempFailure
from tidepost.model import BodyType, QueuedRecipient
from tidepost.outcomes import Outcome, deferred
from tidepost.smtp_client.replies import Reply
from tidepost.smtp_client.session import SmtpSession
from tidepost.smtp_client.transaction import (Transaction, TransactionResult, dsn_mail_parameters,
                                              rcpt_command, reply_outcome)

log = logging.getLogger("tidepost.smtp_client.batch")

FEATURE = "BATCH"
MESSAGES_PER_CHUNK = 64
REPLY_LINES = 64 * 1024    # an outcome line per refused recipient, at most


def offers_batch(session: SmtpSession) -> bool:
    """True when the server's EHLO said `XTIDEPOST ... BATCH`."""
    return FEATURE in session.extensions.get("XTIDEPOST", "").upper().split()


def transfer_id(helo_name: str, queue_id: str, recipients: Sequence[QueuedRecipient]) -> str:
    """The stable id of one message to one set of recipients, from this node."""
    ids = ",".join(str(r.recipient_id) for r in sorted(recipients,
                                                       key=lambda r: r.recipient_id))
    digest = hashlib.sha256(f"{helo_name}\0{queue_id}\0{ids}".encode()).hexdigest()
    return digest[:32]


@dataclass(slots=True)
class _Outbound:
    """One transaction on its way: waiting, being sent, or waiting for its outcome."""

    tx: Transaction
    transfer_id: str
    done: asyncio.Future[TransactionResult]
    on_taken: Callable[[], None] | None
    sent_from: int = 0     # the offset the server already held (resume)


@dataclass(slots=True)
class _ChunkSent:
    """A chunk whose reply is awaited: the records that ended in it, in order."""

    ended: list[_Outbound] = field(default_factory=list)


class BatchSender:
    """One connection's batch stream, client side."""

    def __init__(self, session: SmtpSession, chunk_size: int, window: int,
                 memory_budget: int = 4 * 1024 * 1024):
        self.session = session
        self.chunk_size = chunk_size
        # Raw octets per DATA piece and between flushes: a chunk ends within a
        # step of chunk_size, and blocks stay long enough to compress well.
        self._step = max(1024, chunk_size // 8)
        self.memory_budget = memory_budget
        self.encoder = BatchEncoder()
        self.octets_resumed = 0            # octets not sent because the server held them
        self.messages = 0                  # records whose outcome arrived
        self._waiting: deque[_Outbound] = deque()
        # Taken, outcome not yet known; by identity: two jobs of one message share
        # a transfer id (its recipients' keys tell them apart at the server).
        self._flight: dict[int, _Outbound] = {}
        self._unready: deque[_Outbound] = deque()  # taken, on_taken not yet called
        self._expected: asyncio.Queue[_ChunkSent | asyncio.Future[int]] = asyncio.Queue()
        self._window = asyncio.Semaphore(window)
        self._unanswered = 0
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._failure: TempFailure | None = None

    async def send(self, tx: Transaction, transfer: str,
                   on_taken: Callable[[], None] | None = None) -> TransactionResult:
        """Queue one transaction on the stream; its result once the server has answered."""
        if self._failure is not None:
            return self._deferred(tx, self._failure)
        item = _Outbound(tx, transfer, asyncio.get_running_loop().create_future(), on_taken)
        self._waiting.append(item)
        self._wake.set()
        if not self._tasks:
            self._tasks = [asyncio.create_task(self._guard(self._write_loop())),
                           asyncio.create_task(self._guard(self._read_loop()))]
        return await item.done

    async def close(self) -> None:
        """Stop the tasks; whatever still waits is Deferred.  Logs what the stream carried."""
        if self._tasks:
            raw, compressed = self.encoder.raw, self.encoder.compressed
            log.info("XTIDEPOST BATCH with %s: %d messages, %d octets sent as %d (%.0f%%), "
                     "%d octets resumed", self.session.peer, self.messages, raw, compressed,
                     100.0 * compressed / max(raw, 1), self.octets_resumed)
        self._fail(TempFailure("4.4.2", f"batch stream with {self.session.peer} closed"))
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- writing ------------------------------------------------------------

    async def _write_loop(self) -> None:
        """Encode waiting transactions into chunks and send them."""
        pending = bytearray()
        chunk = _ChunkSent()
        while True:
            if not self._waiting:
                if (pending or chunk.ended) and not self._unanswered:
                    await self._send_chunk(pending, chunk)
                    pending, chunk = bytearray(), _ChunkSent()
                    continue
                self._wake.clear()
                await self._wake.wait()
                continue
            item = self._waiting.popleft()
            if _may_be_held(item.tx, self.chunk_size):
                if pending or chunk.ended:  # not stuck behind the XRESUME round trip
                    await self._send_chunk(pending, chunk)
                    pending, chunk = bytearray(), _ChunkSent()
                item.sent_from = await self._held(item.transfer_id)
                self.octets_resumed += item.sent_from
            self._take(item)
            for octets in self.encoder.message(item.transfer_id, item.sent_from, item.tx.body,
                                               *self._envelope_lines(item.tx),
                                               piece=self._step):
                pending += octets
                if self.encoder.unflushed >= self._step:
                    pending += self.encoder.flush()  # zlib holds no more than a step back
                if len(pending) >= self.chunk_size - self._step:
                    await self._send_chunk(pending, chunk)
                    pending, chunk = bytearray(), _ChunkSent()
            chunk.ended.append(item)
            if len(chunk.ended) >= MESSAGES_PER_CHUNK:
                await self._send_chunk(pending, chunk)
                pending, chunk = bytearray(), _ChunkSent()

    async def _held(self, transfer: str) -> int:
        """XRESUME: the octets of this message the server holds from before."""
        answer: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._expected.put_nowait(answer)
        await self.session.write(f"XRESUME {transfer}\r\n".encode("ascii"))
        return await answer

    async def _send_chunk(self, pending: bytearray, chunk: _ChunkSent) -> None:
        """One XBATCH chunk: the octets so far and a flush, behind the window."""
        await self._window.acquire()
        data = bytes(pending) + self.encoder.flush()
        self._unanswered += 1
        self._expected.put_nowait(chunk)
        await self.session.write(b"XBATCH %d\r\n" % len(data) + data)

    def _take(self, item: _Outbound) -> None:
        """The item is being sent: let the next job start if memory allows."""
        self._flight[id(item)] = item
        self._unready.append(item)
        self._release_turns()

    def _release_turns(self) -> None:
        """Call on_taken for taken items while the bodies in flight fit the budget."""
        while self._unready and self._flight_bytes() <= self.memory_budget:
            item = self._unready.popleft()
            if item.on_taken is not None:
                item.on_taken()

    def _flight_bytes(self) -> int:
        """Octets of the message bodies sent, or being sent, without their outcome."""
        return sum(len(item.tx.body) for item in self._flight.values())

    # -- reading ------------------------------------------------------------

    async def _read_loop(self) -> None:
        """Read the replies in the order their commands went out."""
        while True:
            expected = await self._expected.get()
            reply = await self.session.read_reply(max_lines=REPLY_LINES)
            if isinstance(expected, asyncio.Future):
                expected.set_result(_held_octets(reply))
                continue
            self._unanswered -= 1
            self._window.release()
            self._wake.set()
            if reply.code != 250:
                raise self.session.refusal(reply, "refused a batch chunk")
            self._settle(expected, reply)
            self._release_turns()

    def _settle(self, chunk: _ChunkSent, reply: Reply) -> None:
        """Resolve the records that ended in the chunk from its outcome lines.

        The lines come in stream order, each record's ending with its `*`
        line, so they are matched to the records by position (and checked
        by transfer id).
        """
        records = iter(chunk.ended)
        lines: list[tuple[str, Reply]] = []
        for text in reply.lines[:-1]:
            parsed = _outcome_line(text)
            if parsed is None:
                continue
            lines.append(parsed[1:])
            if parsed[1] != "*":
                continue
            item = next(records, None)
            if item is not None:
                self._resolve(item, lines if parsed[0] == item.transfer_id else [])
            lines = []
        for item in records:  # no `*` line for it: a server that broke the protocol
            self._resolve(item, [])

    def _envelope_lines(self, tx: Transaction) -> tuple[str, list[str]]:
        """The record's MAIL and RCPT lines; DSN parameters when the peer offers DSN."""
        dsn = self.session.supports("DSN")
        return _mail_line(tx, dsn), [rcpt_command(r, dsn) for r in tx.recipients]

    def _resolve(self, item: _Outbound, lines: list[tuple[str, Reply]]) -> None:
        """Give one record its result; later calls for it change nothing."""
        self._flight.pop(id(item), None)
        if not item.done.done():
            self.messages += 1
            item.done.set_result(self._result(item, lines))

    def _result(self, item: _Outbound, lines: list[tuple[str, Reply]]) -> TransactionResult:
        """Outcomes per recipient: its own line, else the `*` line."""
        peer = self.session.peer
        own = {which: reply for which, reply in lines}
        final = own.get("*")
        outcomes: list[Outcome] = []
        for index, recipient in enumerate(item.tx.recipients):
            reply = own.get(str(index), final)
            if reply is None:
                outcomes.append(deferred(recipient.recipient_id, "4.5.0", f"host {peer} gave "
                                         "no outcome for this recipient (XBATCH)", peer.host))
            else:
                outcomes.append(reply_outcome(recipient.recipient_id, reply, peer, "XBATCH",
                                              self.session.supports("DSN")))
        self.session.transactions += final is not None
        return TransactionResult(outcomes, replied=True, completed=final is not None)

    # -- failure ------------------------------------------------------------

    async def _guard(self, loop: object) -> None:
        """Run a loop; a lost connection or refused chunk fails the whole stream."""
        try:
            await loop  # type: ignore[misc]
        except TempFailure as failure:
            self._fail(failure)
            self._abort()
        except asyncio.CancelledError:
            raise
        except Exception as error:  # never leave a sender waiting for ever
            log.exception("batch stream with %s failed", self.session.peer)
            self._fail(TempFailure("4.3.0", f"internal error: {error!r}"))
            self._abort()

    def _abort(self) -> None:
        """Drop the connection at once: unacknowledged chunks are not worth the link
        (the next session resumes), and a mended link must not carry them late."""
        transport = getattr(self.session.writer, "transport", None)
        if transport is not None:
            transport.abort()
        self.session.close()

    def _fail(self, failure: TempFailure) -> None:
        """Defer every transaction without an outcome; later sends defer at once."""
        if self._failure is None:
            self._failure = failure
        items = list(self._flight.values()) + list(self._waiting)
        self._flight.clear()
        self._waiting.clear()
        for item in items:
            if not item.done.done():
                item.done.set_result(self._deferred(item.tx, failure))
        while not self._expected.empty():
            expected = self._expected.get_nowait()
            if isinstance(expected, asyncio.Future) and not expected.done():
                expected.set_exception(failure)
        for item in self._unready:
            if item.on_taken is not None:
                item.on_taken()
        self._unready.clear()
        self._wake.set()

    def _deferred(self, tx: Transaction, failure: TempFailure) -> TransactionResult:
        """Every recipient Deferred with the stream's failure."""
        host = self.session.peer.host
        return TransactionResult([deferred(r.recipient_id, failure.status,
                                           f"{failure.reason} (XBATCH)", host)
                                  for r in tx.recipients], replied=False, completed=False)


def _may_be_held(tx: Transaction, chunk_size: int) -> bool:
    """True when the server may hold part of this message: worth an XRESUME round trip.

    Only a message larger than a chunk that was tried before can have been
    cut off in an earlier session; asking for the others would stall the
    stream a round trip each for nothing.
    """
    return len(tx.body) > chunk_size and any(r.attempts or r.uncertain for r in tx.recipients)


def _mail_line(tx: Transaction, dsn: bool) -> str:
    """The record's MAIL line: BODY, SMTPUTF8 and (`dsn`) RET/ENVID as SMTP would send them."""
    params = ["BODY=8BITMIME"] if tx.body_type is BodyType.EIGHT_BIT_MIME else []
    if tx.smtputf8 or not tx.sender.is_ascii or any(not r.address.is_ascii
                                                    for r in tx.recipients):
        params.append("SMTPUTF8")
    params += dsn_mail_parameters(tx) if dsn else []
    return " ".join([f"MAIL FROM:<{tx.sender}>", *params])


def _held_octets(reply: Reply) -> int:
    """XRESUME's answer `250 2.0.0 tid octets`; 0 for anything else."""
    words = reply.lines[0].split()
    if reply.code != 250 or not words or not words[-1].isdigit():
        return 0
    return int(words[-1])


def _outcome_line(text: str) -> tuple[str, str, Reply] | None:
    """`2.0.0 tid which code status text` -> (tid, which, Reply); None if malformed."""
    words = text.split(" ", 5)
    if len(words) < 5 or not words[3].isdigit() or len(words[3]) != 3:
        return None
    status = "" if words[4] == "-" else words[4] + " "
    rest = words[5] if len(words) > 5 else ""
    return words[1], words[2], Reply(int(words[3]), (status + rest,))
