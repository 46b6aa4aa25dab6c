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
`SharedBatches` lets an agent's sessions to one tidepost peer share one
batch connection.
Config keys read: delivery.batch_chunk_size, delivery.batch_window.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from tidepost.config.schema import DeliveryConfig
from tidepost.model import DeliveryJob, QueuedRecipient
from tidepost.submission.transfers import transfer_id
from tidepost.smtp_client.batch import BatchSender, offers_batch
from tidepost.smtp_client.session import SmtpSession
from tidepost.smtp_client.transaction import Transaction, TransactionResult, message_transaction

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
        transaction = message_transaction(job.message, recipients, job.body)
        # The id plain SMTP's XTRANSFER would give it: a repeat is known whichever way.
        transfer = transfer_id(job.message.queue_id, job.message.arrival)
        return transaction, await sender.send(transaction, transfer, on_taken)

    async def close(self) -> None:
        """End the current sender, if any; never raises."""
        sender, self._sender = self._sender, None
        if sender is not None:
            await sender.close()


class SharedBatches:
    """Batch connections shared by an agent's sessions to one destination.

    The dispatcher runs several workers per destination, each with its own
    session; to a tidepost peer one connection carries them all (one
    compressed stream, no competing TCP connections on a thin link).  While
    nobody knows yet whether a destination speaks XTIDEPOST BATCH, its
    sessions dial one at a time (`first_dial`); once one has found out, a
    batch peer's connection is `shared` and the others `join` it, and a
    plain SMTP peer's sessions dial in parallel as before.
    """

    def __init__(self) -> None:
        self._shared: dict[tuple[str, ...], _Shared] = {}
        self._plain: set[tuple[str, ...]] = set()
        self._locks: dict[tuple[str, ...], asyncio.Lock] = {}

    def first_dial(self, key: tuple[str, ...]) -> asyncio.Lock | contextlib.nullcontext:
        """What a session holds while it dials: a lock until the peer's kind is known."""
        if key in self._plain:
            return contextlib.nullcontext()
        return self._locks.setdefault(key, asyncio.Lock())

    def join(self, key: tuple[str, ...]) -> tuple[SmtpSession, BatchChannel] | None:
        """The shared connection to `key` and its channel, if one is usable."""
        shared = self._shared.get(key)
        if shared is None or not shared.channel.usable(shared.smtp):
            self._shared.pop(key, None)
            return None
        shared.users += 1
        return shared.smtp, shared.channel

    def found(self, key: tuple[str, ...], smtp: SmtpSession, channel: BatchChannel) -> None:
        """A session dialled `key`: share it if it is a batch peer, else remember it is not."""
        if channel.usable(smtp):
            self._shared[key] = _Shared(smtp, channel, users=1)
        else:
            self._plain.add(key)
            self._locks.pop(key, None)

    def leave(self, key: tuple[str, ...], smtp: SmtpSession) -> bool:
        """A session is done with `smtp`; True when it was the last (it closes it)."""
        shared = self._shared.get(key)
        if shared is None or shared.smtp is not smtp:
            return True
        shared.users -= 1
        if shared.users > 0:
            return False
        del self._shared[key]
        return True


@dataclass(slots=True)
class _Shared:
    smtp: SmtpSession
    channel: BatchChannel
    users: int
