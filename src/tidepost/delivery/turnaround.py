"""Delivery over a connection someone else opened: ODMR's reversed session.

After ATRN (RFC 2645) the customer's own connection to us carries its mail:
we are the SMTP client on streams the server accepted.  `TurnedSession(smtp,
recipients_per_transaction, batch)` is an `AgentSession` on that one
`SmtpSession`: it never dials, never resolves, and once the connection is
lost every later recipient is Deferred (4.4.2) so the manager parks it for
the next request.  When the customer is a tidepost node offering XTIDEPOST
BATCH and `batch` (a BatchChannel) allows it, jobs go on the batch stream
and overlap (`depth`); else one plain SMTP transaction after another, with
XTRANSFER= when the customer offers XTIDEPOST TRANSFER (docs/EXTENSIONS.md).
`deliver()` never raises.
"""

from __future__ import annotations

import logging

from tidepost.delivery.agent import Overlap
from tidepost.delivery.batching import DEPTH as BATCH_DEPTH
from tidepost.delivery.batching import BatchChannel
from tidepost.model import DeliveryJob, QueuedRecipient
from tidepost.outcomes import Outcome, deferred
from tidepost.smtp_client.session import SmtpSession
from tidepost.smtp_client.transaction import message_transaction, send_transaction
from tidepost.submission.transfers import transfer_id

log = logging.getLogger("tidepost.delivery.turnaround")


class TurnedSession:
    """Delivers jobs one after another on an already open, reversed connection."""

    def __init__(self, smtp: SmtpSession, recipients_per_transaction: int = 50,
                 batch: BatchChannel | None = None):
        self.smtp = smtp
        self.size = recipients_per_transaction
        self.batch = batch
        self.destination_failed: tuple[str, str] | None = None

    @property
    def depth(self) -> int:
        """Jobs the manager may overlap: a batch stream's depth, else one after another."""
        return BATCH_DEPTH if self.batch is not None and self.batch.usable(self.smtp) else 0

    async def deliver(self, job: DeliveryJob, overlap: Overlap | None = None) -> list[Outcome]:
        """One job on the reversed connection; one outcome per recipient."""
        outcomes: list[Outcome] = []
        for start in range(0, len(job.recipients), self.size):
            chunk = job.recipients[start:start + self.size]
            if self.smtp.broken:
                outcomes += [deferred(r.recipient_id, "4.4.2", "the customer's connection "
                                      "was lost (ODMR)") for r in chunk]
                continue
            try:
                outcomes += await self._send(job, chunk)
            except Exception as error:  # an agent returns outcomes, always
                log.exception("ODMR delivery to %s failed unexpectedly", self.smtp.peer)
                self.smtp.close()
                outcomes += [deferred(r.recipient_id, "4.3.0", f"internal error: {error!r}")
                             for r in chunk]
        return outcomes

    async def _send(self, job: DeliveryJob, chunk: list[QueuedRecipient]) -> list[Outcome]:
        """One transaction: on the batch stream when there is one, else plain SMTP."""
        sender = self.batch.sender(self.smtp) if self.batch is not None else None
        if sender is not None:
            assert self.batch is not None
            return (await self.batch.send(sender, job, chunk, None))[1].outcomes
        # XTRANSFER= as on dialled connections: a tidepost site offers TRANSFER
        # to the relay it asked, so a repeat after a crash is answered, not stored.
        return await send_transaction(self.smtp, message_transaction(
            job.message, chunk, job.body, transfer_id(job.message.queue_id,
                                                      job.message.arrival)))

    async def close(self) -> None:
        """End the batch stream; the connection belongs to the conversation that reversed it."""
        if self.batch is not None:
            await self.batch.close()
