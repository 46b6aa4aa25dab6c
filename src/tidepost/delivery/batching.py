"""XTIDEPOST BATCH for the delivery agents: when to use it and on which connection.

`BatchChannel(config, helo_name, enabled)` belongs to one agent session
(delivery/smtp.py for MX and smarthost delivery, including the relay's
ETRN runs to its customers; delivery/turnaround.py for ODMR's reversed
connection).  `sender(smtp)` is the `BatchSender` of that connection when
`enabled` (the route's `tidepost_batch`) and the server offers
`XTIDEPOST BATCH`, else None (plain SMTP, unchanged).  `send(smtp, job,
recipients, on_taken)` sends one transaction of a job on it, under the
job's transfer id.  Jobs then overlap `DEPTH` deep: the dispatcher's gate
is not needed for exactly-once, since the receiver recognises a repeated
transfer id.  `close()` ends the sender; the caller says QUIT.
Config keys read: delivery.batch_chunk_size, delivery.batch_window.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from tidepost.config.schema import DeliveryConfig
from tidepost.model import DeliveryJob, QueuedRecipient
from tidepost.smtp_client.batch import BatchSender, offers_batch, transfer_id
from tidepost.smtp_client.session import SmtpSession
from tidepost.smtp_client.transaction import Transaction, TransactionResult

DEPTH = 64  # jobs in flight on a batch connection (memory: BatchSender's budget)


class BatchChannel:
    """The batch stream of an agent session's current connection, if any."""

    def __init__(self, config: DeliveryConfig, helo_name: str, enabled: bool = True):
        self.config = config
        self.helo_name = helo_name
        self.enabled = enabled
        self._sender: BatchSender | None = None

    def usable(self, smtp: SmtpSession | None) -> bool:
        """True when `smtp` carries batches (so jobs may overlap DEPTH deep)."""
        return smtp is not None and self.enabled and offers_batch(smtp) and not smtp.broken

    def sender(self, smtp: SmtpSession) -> BatchSender | None:
        """The connection's sender, made on first use; None for plain SMTP."""
        if not self.enabled or not offers_batch(smtp):
            return None
        if self._sender is None or self._sender.session is not smtp:
            self._sender = BatchSender(smtp, self.config.batch_chunk_size,
                                       self.config.batch_window)
        return self._sender

    async def send(self, sender: BatchSender, job: DeliveryJob,
                   recipients: Sequence[QueuedRecipient],
                   on_taken: Callable[[], None] | None
                   ) -> tuple[Transaction, TransactionResult]:
        """One transaction of `job` (those `recipients`) on the batch stream, and its result."""
        transaction = Transaction(job.message.sender, recipients, job.body,
                                  job.message.body_type, job.message.smtputf8)
        transfer = transfer_id(self.helo_name, job.message.queue_id, recipients)
        return transaction, await sender.send(transaction, transfer, on_taken)

    async def close(self) -> None:
        """End the current sender, if any; never raises."""
        sender, self._sender = self._sender, None
        if sender is not None:
            await sender.close()
