"""Queueing messages in PostgreSQL: many messages in one statement, one COMMIT.

`insert_messages` stores a batch of messages (with bodies, recipients and
transfer keys) in a single statement built on `unnest` of arrays, so a
group commit of fifty SMTP sessions costs a handful of round trips, not
fifty times four.  `GroupCommit` is the writer: submits that arrive while a
COMMIT is in progress wait and share the next one (as the SQLite store's
writer thread does); synchronous_commit stays on, so a submit returns only
after the WAL is flushed.  A batch whose statement fails (a queue id in
use) is retried one message at a time, each in its own transaction, so that
one bad message does not spoil the others.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import asyncpg

from tidepost.errors import AlreadyQueued, QueueError
from tidepost.model import RecipientState, ScheduleEntry
from tidepost.queue.backend import NewMessage
from tidepost.queue.pg_batches import Batches
from tidepost.queue.pg_views import NOTICE_CHANNEL
from tidepost.queue.sqlite import new_queue_id

QUEUED = RecipientState.QUEUED.value
BATCH_LIMIT = 512  # messages per group commit
WRITERS = 2        # group commits in progress at once

INSERT = f"""
WITH m AS (
    INSERT INTO messages(queue_id, sender, arrival, size, body_type, smtputf8, ret, envid)
    SELECT * FROM unnest($1::text[], $2::text[], $3::float8[], $4::int8[], $5::text[],
                         $6::bool[], $17::text[], $18::text[])
    RETURNING id, queue_id, size
), b AS (
    INSERT INTO bodies(message_id, body)
    SELECT m.id, x.body FROM unnest($1::text[], $7::bytea[]) AS x(queue_id, body)
    JOIN m USING (queue_id)
), t AS (
    INSERT INTO transfers(key, queue_id, received)
    SELECT * FROM unnest($8::text[], $9::text[], $10::float8[])
), r AS (
    INSERT INTO recipients(message_id, local, domain, state, next_try, notify, orcpt)
    SELECT m.id, x.local, x.domain, '{QUEUED}', x.next_try, x.notify, x.orcpt
    FROM unnest($11::text[], $12::text[], $13::text[], $14::float8[], $15::int[],
                $19::text[], $20::text[])
         AS x(queue_id, local, domain, next_try, n, notify, orcpt)
    JOIN m USING (queue_id) ORDER BY m.id, x.n
    RETURNING id, message_id, domain, next_try
)
SELECT r.id, r.message_id, r.domain, r.next_try, m.size, m.queue_id
FROM r JOIN m ON m.id = r.message_id CROSS JOIN (SELECT pg_notify('{NOTICE_CHANNEL}', $16)) n
ORDER BY r.id
"""


def with_queue_id(message: NewMessage) -> NewMessage:
    """The message with its queue id chosen, if submission left it empty."""
    if message.queue_id:
        return message
    return dataclasses.replace(message, queue_id=new_queue_id())


async def known_transfers(conn: asyncpg.Connection, keys: Sequence[str]) -> dict[str, str]:
    """{key: queue id} for the stored ones among `keys`."""
    rows = await conn.fetch("SELECT key, queue_id FROM transfers WHERE key = ANY($1::text[])",
                            list(keys))
    return {row[0]: row[1] for row in rows}


async def insert_messages(conn: asyncpg.Connection, messages: Sequence[NewMessage],
                          notice: str = "queued") -> list[list[ScheduleEntry]]:
    """Insert messages (queue ids chosen) in one statement; entries per message.

    Transfer keys already stored raise AlreadyQueued before anything is written.
    """
    keys = [k for m in messages for k in m.transfer_keys]
    if keys:
        known = await known_transfers(conn, keys)
        if known:
            key, earlier = next(iter(known.items()))
            raise AlreadyQueued(key, earlier)
    rcpts = [(m.queue_id, r, n) for m in messages for n, r in enumerate(m.recipients)]
    requests = [m.dsn_of(r) for m in messages for r in m.recipients]
    rows = await conn.fetch(
        INSERT,
        [m.queue_id for m in messages], [str(m.sender) for m in messages],
        [m.arrival for m in messages], [len(m.body) for m in messages],
        [m.body_type.value for m in messages], [m.smtputf8 for m in messages],
        [m.body for m in messages],
        keys, [m.queue_id for m in messages for _ in m.transfer_keys],
        [m.arrival for m in messages for _ in m.transfer_keys],
        [q for q, _, _ in rcpts], [r.local for _, r, _ in rcpts],
        [r.domain for _, r, _ in rcpts],
        [m.arrival for m in messages for _ in m.recipients],
        [n for _, _, n in rcpts], notice,
        [m.ret for m in messages], [m.envid for m in messages],
        [d.notify for d in requests], [d.orcpt for d in requests])
    entries: dict[str, list[ScheduleEntry]] = {m.queue_id: [] for m in messages}
    for rid, mid, domain, next_try, size, queue_id in rows:
        entries[queue_id].append(ScheduleEntry(rid, mid, domain, next_try, size))
    return [entries[m.queue_id] for m in messages]


class GroupCommit:
    """Concurrent submits in shared transactions (queue/pg_batches.py), WRITERS at once."""

    def __init__(self, pool: asyncpg.Pool, notice: str):
        self._pool = pool
        self._notice = notice
        self._batches: Batches[NewMessage] = Batches(self._commit, BATCH_LIMIT, WRITERS)

    async def submit(self, message: NewMessage) -> list[ScheduleEntry]:
        """Queue `message` in the next group commit; returns after COMMIT."""
        return await self._batches.submit(with_queue_id(message))

    async def close(self) -> None:
        """Finish the batches waiting, then stop."""
        await self._batches.close()

    async def _commit(self, batch: list[NewMessage]) -> list[Any]:
        """One transaction for the batch; one transaction per message if the batch fails.

        Only a statement's failure leads to the retry one by one: a failed
        COMMIT fails the whole batch (451 to each client; the outcome of
        that COMMIT is unknown, and retrying could store a message twice).
        """
        try:
            async with self._pool.acquire() as conn:
                transaction = conn.transaction()
                await transaction.start()
                try:
                    values = await insert_messages(conn, batch, self._notice)
                except (asyncpg.PostgresError, AlreadyQueued):
                    await transaction.rollback()
                    return [await self._one(conn, message) for message in batch]
                await transaction.commit()
                return list(values)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            return [QueueError(f"queue write failed: {exc}")] * len(batch)

    async def _one(self, conn: asyncpg.Connection,
                   message: NewMessage) -> list[ScheduleEntry] | BaseException:
        """Insert one message in a transaction of its own; its entries or its error."""
        try:
            async with conn.transaction():
                return (await insert_messages(conn, [message], self._notice))[0]
        except AlreadyQueued as exc:
            return exc
        except asyncpg.UniqueViolationError:
            return QueueError(f"queue id {message.queue_id} is already in use")
        except asyncpg.PostgresError as exc:
            return QueueError(f"queue write failed: {exc}")
