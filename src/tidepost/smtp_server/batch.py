"""The server's verbs of XTIDEPOST BATCH: XBATCH and XRESUME (docs/BATCH.md).

`BatchVerbs` is a base of `Conversation`, so every SMTP conversation (the
listeners, the relay's RelayConversation, `tidepost odmr`'s reversed
session) speaks it when `smtp.batch` is on; EHLO then says
`XTIDEPOST BATCH` (session.py joins the feature words of XTIDEPOST).

XRESUME <transfer-id>: 250 2.0.0 `<transfer-id> <octets>`, the octets of
  that message held from an earlier session (0: none).  501 5.5.4 for a
  malformed id.
XBATCH <octets>: the chunk's octets follow the line at once (no 354, as
  BDAT).  They are read whatever happens next, so they can never run as
  commands; a size that is not 1..MAX_CHUNK digits is 501 5.5.4 and the
  connection is closed (the octets cannot be skipped safely).  503 5.5.1
  before EHLO or inside a MAIL transaction, 503 5.5.1 once the stream has
  failed (RSET starts a new one); 554 5.6.0 for a malformed stream
  (batch_inbound.py, batchcodec.py).  Otherwise a multi-line 250: one
  line per outcome of the messages the chunk completed, then
  `2.0.0 chunk N stored`, sent after everything the chunk carried is
  queued or durably kept as a partial message.  From a client that may not
  relay (outside relay_networks, no AUTH), each 5xx outcome counts against
  `smtp.max_errors` as the SMTP reply would, so XBATCH is no way round the
  limit (user harvesting, relay probing); reaching it, 421 4.7.0 follows
  the chunk's reply.  A trusted peer's batch of bounced recipients goes on.
Config keys read: smtp.batch, smtp.batch_partial_lifetime, smtp.max_errors (spool through
`config.spool_path`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from tidepost import batchcodec as codec
from tidepost.smtp_server import replies as S
from tidepost.smtp_server.batch_inbound import InboundBatch
from tidepost.smtp_server.batch_partials import FOLDER, PartialStore
from tidepost.smtp_server.rejections import log_reject
from tidepost.smtp_server.replies import Reply
from tidepost.submission import transfers

log = logging.getLogger("tidepost.smtp_server.batch")

FEATURE = "BATCH"


class BatchVerbs:
    """XBATCH and XRESUME, mixed into Conversation (which provides the rest)."""

    config: Any
    session: Any
    transaction: Any
    submission: Any
    limits: Any
    _reader: Any
    _batch_stream: InboundBatch | None = None
    _batch_errors = 0  # 5xx outcomes of the chunk being taken, for the error limit

    def reply(self, reply: Reply) -> None: ...  # Conversation's
    def reply_lines(self, code: int, lines: list[str]) -> None: ...
    def close_after_reply(self) -> None: ...
    async def flush(self) -> None: ...
    def _xtidepost_features(self) -> tuple[str, ...]: ...
    def count_errors(self, count: int) -> None: ...

    def batch_features(self) -> list[str]:
        """`BATCH` when this server takes batch streams."""
        return [FEATURE] if self.config.smtp.batch else []

    def batch_reset(self) -> None:
        """RSET: the next XBATCH starts a new stream."""
        self._batch_stream = None

    @property
    def max_message_size(self) -> int:
        """The SIZE limit, for the batch's records."""
        return self.limits.max_message_size

    def batch_transfers(self) -> bool:
        """True when this client's transfer ids count (exactly once, as XTRANSFER=)."""
        return transfers.TRANSFER in self._xtidepost_features()

    def batch_refused(self, command: str, reply: Reply, sender: str | None,
                      recipient: str | None) -> None:
        """The mail log's `reject` line for a refusal inside a batch (command XBATCH MAIL...)."""
        if reply.code >= 500 and not self.session.may_relay:
            self._batch_errors += 1
        log_reject(f"XBATCH {command}", self.session.peer_ip, self.session.helo, reply,
                   sender=sender, recipient=recipient)

    def _partials(self) -> PartialStore:
        """The spool's store of partly received messages, this client's part of it.

        Owned by the client's transfer namespace (an AUTH user, or the relay
        networks), else by its address: one client never sees another's.
        """
        smtp = self.config.smtp
        owner = transfers.namespace(self.session.authenticated, self.session.may_relay)
        return PartialStore(self.config.spool_path / FOLDER, smtp.batch_partial_lifetime,
                            smtp.batch_partial_space, owner or f"ip:{self.session.peer_ip}")

    def _batch_refusal(self) -> Reply | None:
        """Why XBATCH or XRESUME may not be used now, or None."""
        if not self.config.smtp.batch:
            return S.S500_UNKNOWN_COMMAND
        if not self.session.helo or not self.session.esmtp:
            return S.S503_HELO_FIRST
        if self.transaction is not None:
            return S.S503_BATCH_IN_TRANSACTION
        return None

    async def smtp_XRESUME(self, arg: str) -> None:
        """XRESUME transfer-id: how much of that message we hold."""
        refusal = self._batch_refusal()
        if refusal is not None:
            return self.reply(refusal)
        if not codec.valid_transfer_id(arg):
            return self.reply(S.S501_SYNTAX)
        held = await asyncio.to_thread(self._partials().held, arg)
        self.reply(S.batch_held(arg, held))

    async def smtp_XBATCH(self, arg: str) -> None:
        """XBATCH octets: one chunk of the session's batch stream."""
        if not (arg.isascii() and arg.isdigit() and 0 < int(arg) <= codec.MAX_CHUNK):
            self.reply(S.S501_BATCH_SIZE)
            return self.close_after_reply()
        chunk = await self._reader.read_octets(int(arg))
        refusal = self._batch_refusal()
        if refusal is not None:
            return self.reply(refusal)
        batch = await self._batch()
        if batch.broken:
            return self.reply(S.S503_BATCH_BROKEN)
        self._batch_errors = 0
        try:
            lines = await batch.take(chunk)
        except codec.StreamError as error:
            log.info("batch stream from %s refused: %s", self.session.peer_ip, error)
            self.reply(S.s554_batch_stream(str(error)))
            return self.count_errors(self._batch_errors)
        self.reply_lines(250, [f"2.0.0 {line}" for line in lines]
                         + [f"2.0.0 chunk {batch.chunks} stored"])
        self.count_errors(self._batch_errors)  # after the outcomes: 421 comes last
        await self.flush()  # an acknowledgement frees the client's window: never hold it

    async def _batch(self) -> InboundBatch:
        """This session's stream, made at its first chunk (old partials expire then)."""
        if self._batch_stream is None:
            partials = self._partials()
            await asyncio.to_thread(partials.expire, time.time())  # file times: wall clock
            self._batch_stream = InboundBatch(self, partials)  # type: ignore[arg-type]
        return self._batch_stream
