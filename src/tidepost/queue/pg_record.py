"""Recording delivery outcomes in PostgreSQL: concurrent records share a transaction.

A relay flushing a customer's held mail finishes jobs on many connections
at once, and each job's outcomes must be written before its recipients
count as delivered.  One transaction per job costs six round trips and a
WAL flush, so the store's thread, not the link, set the pace of a flush.
`RecordGroup` gathers the records that arrive while a transaction is in
progress into the next one: the messages they touch are locked in id order
(as a single record did, so two nodes never deadlock), every update is one
`unnest` statement, the DSNs one insert, the finished messages one DELETE.
A batch whose statements fail is retried one record at a time, so that
one bad record does not spoil the others; a failed COMMIT fails the batch.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

import asyncpg

from tidepost.errors import QueueError
from tidepost.model import RecipientState, ScheduleEntry
from tidepost.outcomes import Verdict
from tidepost.queue import pg_views as views
from tidepost.queue.backend import NewMessage, RecipientUpdate, Recorded
from tidepost.queue.pg_batches import Batches
from tidepost.queue.pg_insert import insert_messages

QUEUED = RecipientState.QUEUED.value
CLAIMED = RecipientState.CLAIMED.value
HELD = RecipientState.HELD.value
BATCH_LIMIT = 256  # records per transaction
WRITERS = 2        # transactions in progress at once


@dataclass(frozen=True, slots=True)
class RecordRequest:
    """One `record` call: a runner's outcomes, the DSNs they cause, warnings given."""

    owner: str
    updates: Sequence[RecipientUpdate]
    dsns: Sequence[NewMessage]  # queue ids chosen
    warned: Sequence[int]


class RecordGroup:
    """Concurrent records of one runner in shared transactions (module docstring)."""

    def __init__(self, pool: asyncpg.Pool):
        self._pool = pool
        self._batches: Batches[RecordRequest] = Batches(
            self._commit, BATCH_LIMIT, WRITERS, key=lambda request: request.owner)

    async def record(self, request: RecordRequest) -> Recorded:
        """Write `request` in the next shared transaction; returns after COMMIT."""
        return await self._batches.submit(request)

    async def close(self) -> None:
        """Finish the records waiting, then stop."""
        await self._batches.close()

    async def _commit(self, batch: list[RecordRequest]) -> list[Recorded | BaseException]:
        try:
            async with self._pool.acquire() as conn:
                transaction = conn.transaction()
                await transaction.start()
                try:
                    recorded = await write_records(conn, batch)
                except asyncpg.PostgresError:
                    await transaction.rollback()
                    if len(batch) == 1:
                        raise
                    return [await _one(conn, request) for request in batch]
                await transaction.commit()
                return list(recorded)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            return [QueueError(f"queue database: {exc}")] * len(batch)


async def _one(conn: asyncpg.Connection, request: RecordRequest) -> Recorded | BaseException:
    """Write one record in a transaction of its own; what it did, or its error."""
    try:
        async with conn.transaction():
            return (await write_records(conn, [request]))[0]
    except asyncpg.PostgresError as exc:
        return QueueError(f"queue database: {exc}")


async def write_records(conn: asyncpg.Connection,
                        batch: Sequence[RecordRequest]) -> list[Recorded]:
    """Apply the records of one runner in the open transaction; what each did."""
    updates = [u for request in batch for u in request.updates]
    ids = [u.outcome.recipient_id for u in updates]
    # The messages first, in id order: two nodes finishing the last
    # recipients of one message then see each other's outcome, and one of
    # them drops it.
    await conn.execute(
        "SELECT 1 FROM messages WHERE id IN (SELECT message_id FROM recipients "
        "WHERE id = ANY($1::int8[])) ORDER BY id FOR UPDATE", ids)
    requeued = await apply_updates(conn, batch[0].owner, updates)
    # In the change log, so that every node knows them again (a node whose
    # claim lost to this one dropped them from its scheduler).
    await views.log_changes(conn, requeued, time.time())
    warned = sorted({m for request in batch for m in request.warned})
    if warned:  # a round trip saved for nearly every record
        await conn.execute("UPDATE messages SET warned = true WHERE id = ANY($1::int8[])",
                           warned)
    dsns = [m for request in batch for m in request.dsns]
    entries = await insert_messages(conn, dsns, batch[0].owner) if dsns else []
    removed = await drop_finished(conn, [u.outcome.recipient_id for u in updates
                                         if u.next_try is None])
    return _split(batch, entries, removed)


def _split(batch: Sequence[RecordRequest], entries: list[list[ScheduleEntry]],
           removed: dict[int, str]) -> list[Recorded]:
    """Each record's share: its DSNs' entries, the messages its recipients finished."""
    results, offset = [], 0
    for request in batch:
        mine = entries[offset:offset + len(request.dsns)]
        offset += len(request.dsns)
        gone = [removed.pop(u.outcome.recipient_id) for u in request.updates
                if u.outcome.recipient_id in removed]
        results.append(Recorded([e for batch_entries in mine for e in batch_entries],
                                sorted(gone)))
    return results


async def apply_updates(conn: asyncpg.Connection, owner: str,
                        updates: Sequence[RecipientUpdate]) -> list[int]:
    """Write each outcome held by `owner`: final state, or QUEUED again with its next try.

    Returns the ids of the recipients queued again.
    """
    ids, states, attempted, errors, next_tries = [], [], [], [], []
    for update in updates:
        outcome = update.outcome
        delivered = outcome.verdict is Verdict.DELIVERED
        ids.append(outcome.recipient_id)
        errors.append("" if delivered else f"{outcome.status} {outcome.reason}"[:500])
        next_tries.append(update.next_try)
        if update.next_try is None:
            states.append(RecipientState.DELIVERED.value if delivered
                          else RecipientState.BOUNCED.value)
            attempted.append(1)
        else:
            states.append(QUEUED)
            attempted.append(int(outcome.attempted))
    # `r.id = ANY` lets the planner find the rows by primary key; joined only
    # to unnest's output it read every CLAIMED row of the queue (a whole
    # domain after an ETRN) for each record.
    rows = await conn.fetch(
        "UPDATE recipients r SET state = u.state, lease_owner = NULL, lease_until = NULL, "
        "attempts = r.attempts + u.attempted, last_error = u.error, "
        "next_try = coalesce(u.next_try, r.next_try), "
        "uncertain = CASE WHEN u.next_try IS NULL THEN r.uncertain ELSE false END "
        "FROM unnest($1::int8[], $2::text[], $3::int[], $4::text[], $5::float8[]) "
        "AS u(id, state, attempted, error, next_try) "
        "WHERE r.id = ANY($1::int8[]) AND r.id = u.id AND r.lease_owner = $6 AND r.state = $7 "
        "RETURNING r.id, r.state",
        ids, states, attempted, errors, next_tries, owner, CLAIMED)
    return [row[0] for row in rows if row[1] == QUEUED]


async def drop_finished(conn: asyncpg.Connection, finished: list[int]) -> dict[int, str]:
    """Delete messages none of whose recipients is undelivered.

    Returns {recipient id: queue id}: for each message dropped, the lowest
    of its ids in `finished` (the record holding it reports the removal).
    """
    if not finished:
        return {}
    rows = await conn.fetch(
        "WITH f AS (SELECT id, message_id FROM recipients WHERE id = ANY($1::int8[])), "
        "d AS (DELETE FROM messages WHERE id IN (SELECT message_id FROM f) "
        "AND NOT EXISTS (SELECT 1 FROM recipients r WHERE r.message_id = messages.id "
        "AND r.state = ANY($2::text[])) RETURNING id, queue_id) "
        "SELECT min(f.id), d.queue_id FROM d JOIN f ON f.message_id = d.id "
        "GROUP BY d.id, d.queue_id",
        finished, [QUEUED, CLAIMED, HELD])
    return {lowest: queue_id for lowest, queue_id in rows}
