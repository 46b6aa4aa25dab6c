"""The PostgreSQL queue store: several tidepost nodes on one database.

Same contract as the SQLite store (tests/contract), on a database that any
number of nodes share (docs/CLUSTER.md):
- a message is queued at one COMMIT (synchronous_commit on); concurrent
  submits share it (queue/pg_insert.py, group commit);
- claims lock with `FOR UPDATE SKIP LOCKED`, so two nodes asking for the
  same recipients at once (two ETRNs for one domain) split them, never share;
- leases belong to a runner (`HOST:PID:START`); a node's liveness is its
  heartbeat row (queue/pg_nodes.py), and a dead node's leases return to the
  queue for the others;
- each commit that queues mail, releases or requeues it, or changes a route
  hold sends a NOTIFY that wakes the other nodes (`on_notice`); polling
  remains only as the fallback, and the LISTEN connection comes back by
  itself after a database restart;
- the relay role's customer domains and AUTH users are shared lists in the
  same database (`directory`, queue/pg_directory.py);
- `queued_since` follows new mail by transaction snapshot, so a node never
  misses a message whose sequence number was handed out before a later one's
  but committed after it.
asyncpg runs on a loop of its own thread (queue/pg_loop.py), so the store
serves the daemon's loop and CLI commands alike.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, AsyncIterator, Callable, Coroutine, Sequence

import asyncpg

from tidepost.address import Address
from tidepost.errors import QueueError
from tidepost.model import (BodyType, MessageInfo, QueuedRecipient, RecipientDsn,
                            RecipientState, ScheduleEntry)
from tidepost.queue import pg_views as views
from tidepost.queue.backend import (NOTICE_RECONNECTED, ClaimResult, HoldState, NewMessage,
                                    PendingGroup, QueueRow, RecipientUpdate, Recorded)
from tidepost.queue.pg_directory import PgDirectory
from tidepost.queue.pg_insert import GroupCommit, known_transfers, with_queue_id
from tidepost.queue.pg_loop import LoopThread, relay_to
from tidepost.queue.pg_nodes import NodeRow, Nodes
from tidepost.queue.pg_record import RecordGroup, RecordRequest
from tidepost.queue.pg_schema import migrate
from tidepost.queue.selection import Changed, Changes, Selection, Tally, TallyKey

QUEUED = RecipientState.QUEUED.value
CLAIMED = RecipientState.CLAIMED.value
HELD = RecipientState.HELD.value
log = logging.getLogger("tidepost.queue")
FETCH = 2000          # rows per batch of a streamed listing
POOL_SIZE = 8         # connections per node (the writer, claims, views, the listener)
TURN_MEMORY = 3600.0   # seconds granted ETRN/ATRN requests are kept beyond the window
LISTEN_RETRY = 1.0     # seconds between attempts to get the LISTEN connection back
LISTEN_PROBE = 10.0    # seconds between probes of an idle LISTEN connection
LISTEN_TIMEOUT = 5.0   # seconds a connect or probe of it may take
INFO_COLUMNS = ("m.id, m.queue_id, m.sender, m.arrival, m.size, m.body_type, m.smtputf8, "
                "m.warned, m.ret, m.envid")


def message_of(row: Sequence) -> MessageInfo:
    """A MessageInfo from the INFO_COLUMNS of a row."""
    mid, queue_id, sender, arrival, size, body_type, smtputf8, warned, ret, envid = row
    return MessageInfo(mid, queue_id, sender_of(sender), arrival, size, BodyType(body_type),
                       smtputf8, warned, ret, envid)


def sender_of(text: str) -> Address:
    """Rebuild a stored sender (written by str(Address)) without re-parsing."""
    if not text:
        return Address("", "")
    local, _, domain = text.rpartition("@")
    return Address(local, domain) if local else Address(text, "")


class PostgresQueue:
    """QueueBackend on a PostgreSQL database (see module docstring)."""

    def __init__(self, dsn: str, owner: str = "", node: str = "",
                 node_timeout: float = 30.0):
        self.dsn = dsn
        self._thread = LoopThread("queue-postgres")
        self._owner = owner  # this node's runner, "" for a CLI command
        self._listeners: list[Callable[[str], None]] = []
        self._closed = False
        try:
            self._thread.run(self._open(node, node_timeout))
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            self._thread.stop()
            raise QueueError(f"cannot open the queue database: {exc}") from None
        except BaseException:
            self._thread.stop()
            raise

    async def _open(self, node: str, node_timeout: float) -> None:
        """On the store's loop: connect, migrate, start the writer and the node record."""
        # Custom plans always: the queries' parameters (a snapshot's oldest
        # transaction, a list of ids) decide between an index and a scan.
        # No floor of connections: asyncpg would retry it every second of a
        # database outage with a traceback in the log; each use reconnects.
        self._pool = await asyncpg.create_pool(
            self.dsn, min_size=0, max_size=POOL_SIZE, reset=_nothing_to_reset,
            server_settings={"plan_cache_mode": "force_custom_plan"})
        async with self._pool.acquire() as conn:
            await migrate(conn)
        self._writer = GroupCommit(self._pool, self._owner or "cli")
        self._recorder = RecordGroup(self._pool)
        self.nodes = Nodes(self._pool, node_timeout)
        self.directory = PgDirectory(self._pool, self._call)
        self._listener: asyncpg.Connection | None = None
        self._listening: asyncio.Future | None = None
        if self._owner:
            await self.nodes.join(self._owner, node or self._owner)

    def _call(self, coro: Coroutine) -> Any:
        """Run `coro` on the store's loop, translating database errors to QueueError."""
        async def guarded() -> Any:
            try:
                return await coro
            except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
                raise QueueError(f"queue database: {exc}") from None
        return self._thread.call(guarded())

    async def cluster_nodes(self) -> list[NodeRow]:
        """Every node of the cluster with its recipients in flight (`tidepost status`)."""
        return await self._call(self.nodes.rows())

    async def note_turn(self, kind: str, client: str, at: float) -> None:
        """Count one granted ETRN/ATRN request of `client` for the cluster's budget."""
        await self._execute("INSERT INTO turn_requests(kind, client, at, owner) "
                            "VALUES ($1, $2, $3, $4)", kind, client, at, self._owner)

    async def turn_counts(self, kind: str, since: float) -> dict[str, int]:
        """Requests per client that the other runners granted since `since`."""
        async def op() -> dict[str, int]:
            async with self._pool.acquire() as conn:
                await conn.execute("DELETE FROM turn_requests WHERE at < $1",
                                   since - TURN_MEMORY)
                rows = await conn.fetch(
                    "SELECT client, count(*) FROM turn_requests WHERE kind = $1 AND at > $2 "
                    "AND owner <> $3 GROUP BY client", kind, since, self._owner)
            return {row[0]: row[1] for row in rows}
        return await self._call(op())

    # -- wake-ups -----------------------------------------------------------

    async def on_notice(self, callback: Callable[[str], None]) -> None:
        """Call `callback(payload)` on the caller's loop at each NOTIFY of another runner.

        Payloads: the notifying runner for new mail, "changes" for a release
        or requeue, "holds" for a route hold, "customers" or "credentials"
        for a change of a shared list (queue/directory.py), and NOTICE_RECONNECTED
        after the LISTEN connection was lost and is back (notices may have
        been missed: read everything that may have changed).  A notice is
        only a hint: the listener reads the queue to see what changed.
        """
        relayed = relay_to(asyncio.get_running_loop(), callback)
        await self._call(self._listen(relayed))

    async def _listen(self, callback: Callable[[str], None]) -> None:
        self._listeners.append(callback)
        if self._listening is None:
            first = asyncio.get_running_loop().create_future()
            self._listening = asyncio.ensure_future(self._keep_listening(first))
            await first  # the first LISTEN is up (or failed: the caller polls)

    async def _keep_listening(self, first: asyncio.Future) -> None:
        """Hold the LISTEN connection; after it is lost, connect again until it is back.

        A database restart or a network failure closes it.  Until it is back
        the nodes still poll (queue.poll_interval); once it is, every listener
        hears NOTICE_RECONNECTED and reads the queue, to catch up on what it missed.
        """
        lost_since = 0.0
        while not self._closed:
            try:
                self._listener = await asyncpg.connect(self.dsn, timeout=LISTEN_TIMEOUT)
                await self._listener.add_listener(views.NOTICE_CHANNEL, self._heard)
            except (OSError, asyncio.TimeoutError, asyncpg.PostgresError,
                    asyncpg.InterfaceError) as exc:
                if not first.done():
                    first.set_result(None)
                if not lost_since:
                    lost_since = time.monotonic()
                    log.warning("queue database: cannot LISTEN (%s); polling until it is back",
                                exc)
                await asyncio.sleep(LISTEN_RETRY)
                continue
            if not first.done():
                first.set_result(None)
            if lost_since:
                log.warning("queue database: LISTEN connection back after %.0f s",
                            time.monotonic() - lost_since)
                lost_since = 0.0
                self._heard(None, 0, views.NOTICE_CHANNEL, NOTICE_RECONNECTED)
            await self._while_alive(self._listener)
            if not self._closed:
                lost_since = time.monotonic()
                log.warning("queue database: LISTEN connection lost; polling until it is back")

    async def _while_alive(self, conn: asyncpg.Connection) -> None:
        """Return when `conn` is closed or stops answering a probe."""
        idle = 0.0
        while not self._closed and not conn.is_closed():
            await asyncio.sleep(LISTEN_RETRY)
            idle += LISTEN_RETRY
            if idle >= LISTEN_PROBE:
                idle = 0.0
                try:
                    await conn.execute("SELECT 1", timeout=LISTEN_TIMEOUT)
                except (OSError, asyncio.TimeoutError, asyncpg.PostgresError,
                        asyncpg.InterfaceError):
                    conn.terminate()

    def _heard(self, conn: Any, pid: int, channel: str, payload: str) -> None:
        if payload != self._owner:
            for listener in self._listeners:
                listener(payload)

    # -- the queue ----------------------------------------------------------

    async def submit(self, message: NewMessage) -> list[ScheduleEntry]:
        """Queue one message durably; returns after the group COMMIT."""
        return await self._call(self._writer.submit(message))

    async def known_transfers(self, keys: Sequence[str]) -> dict[str, str]:
        """Queue ids stored under the known ones among `keys`."""
        async def op() -> dict[str, str]:
            async with self._pool.acquire() as conn:
                return await known_transfers(conn, keys)
        return await self._call(op())

    async def forget_transfers(self, before: float) -> int:
        """Drop transfer keys older than `before`."""
        status = await self._execute("DELETE FROM transfers WHERE received < $1", before)
        return int(status.split()[-1])

    async def _execute(self, sql: str, *args: Any) -> str:
        async def op() -> str:
            return await self._pool.execute(sql, *args)
        return await self._call(op())

    async def _fetch(self, sql: str, *args: Any) -> list:
        async def op() -> list:
            return await self._pool.fetch(sql, *args)
        return await self._call(op())

    async def claim(self, recipient_ids: Sequence[int], owner: str, lease: float,
                    now: float, force: bool = False) -> ClaimResult:
        """Lease due recipients to `owner`; rows another runner is claiming are skipped."""
        ids = sorted(set(recipient_ids))

        async def op() -> ClaimResult:
            async with self._pool.acquire() as conn, conn.transaction():
                rows = await conn.fetch(
                    "WITH picked AS (SELECT id FROM recipients WHERE id = ANY($1::int8[]) "
                    "AND state = $2 AND ($5 OR next_try <= $4) ORDER BY id "
                    "FOR UPDATE SKIP LOCKED) "
                    "UPDATE recipients r SET state = $3, lease_owner = $6, lease_until = $4 + $7 "
                    "FROM picked WHERE r.id = picked.id "
                    "RETURNING r.id, r.message_id, r.local, r.domain, r.attempts, r.uncertain, "
                    "r.notify, r.orcpt",
                    ids, QUEUED, CLAIMED, now, force, owner, lease)
                infos = await conn.fetch(f"SELECT {INFO_COLUMNS} FROM messages m "
                                         "WHERE m.id = ANY($1::int8[])",
                                         list({row[1] for row in rows}))
                not_due = [] if force else await conn.fetch(
                    "SELECT r.id, r.message_id, r.domain, r.next_try, m.size FROM recipients r "
                    "JOIN messages m ON m.id = r.message_id WHERE r.id = ANY($1::int8[]) "
                    "AND r.state = $2 AND r.next_try > $3", ids, QUEUED, now)
            return _claim_result(rows, infos, not_due)
        return await self._call(op())

    async def load_body(self, message_id: int) -> bytes:
        """The stored message bytes."""
        async def op() -> bytes:
            body = await self._pool.fetchval("SELECT body FROM bodies WHERE message_id = $1",
                                             message_id)
            if body is None:
                raise QueueError(f"message {message_id} has no body")
            return body
        return await self._call(op())

    async def message_by_id(self, message_id: int) -> MessageInfo | None:
        """A queued message's facts, None once it left the queue."""
        rows = await self._fetch(f"SELECT {INFO_COLUMNS} FROM messages m WHERE m.id = $1",
                                 message_id)
        return message_of(rows[0]) if rows else None

    async def message_info(self, queue_id: str) -> MessageInfo | None:
        """The stored facts of the message with this queue id."""
        rows = await self._fetch(f"SELECT {INFO_COLUMNS} FROM messages m WHERE m.queue_id = $1",
                                 queue_id)
        return message_of(rows[0]) if rows else None

    async def record(self, owner: str, updates: Sequence[RecipientUpdate],
                     new_messages: Sequence[NewMessage] = (),
                     warned: Sequence[int] = ()) -> Recorded:
        """Apply outcomes, queue DSNs, mark warnings and drop finished messages.

        Records made at the same moment share one transaction (queue/pg_record.py).
        """
        dsns = [with_queue_id(m) for m in new_messages]

        async def op() -> Recorded:
            return await self._recorder.record(RecordRequest(owner, updates, dsns, warned))
        return await self._call(op())

    async def walk(self) -> list[ScheduleEntry]:
        """Every QUEUED recipient."""
        return await self.entries_since(0)

    async def entries_since(self, recipient_id: int) -> list[ScheduleEntry]:
        """QUEUED recipients with id above `recipient_id`."""
        rows = await self._fetch(
            "SELECT r.id, r.message_id, r.domain, r.next_try, m.size FROM recipients r "
            "JOIN messages m ON m.id = r.message_id WHERE r.state = $1 AND r.id > $2 "
            "ORDER BY r.id", QUEUED, recipient_id)
        return [ScheduleEntry(*row) for row in rows]

    async def queued_since(self, cursor: str | None) -> tuple[str, list[ScheduleEntry]]:
        """QUEUED recipients of messages committed after snapshot `cursor` (None: all).

        Returns a new cursor: the snapshot this read saw.  Messages are
        matched by the transaction that queued them, so one committed late
        with a low id is found as surely as one with a high id.
        """
        async def op() -> tuple[str, list[ScheduleEntry]]:
            async with self._pool.acquire() as conn, conn.transaction(isolation="repeatable_read"):
                snapshot = await conn.fetchval("SELECT pg_current_snapshot()::text")
                if cursor is None:
                    condition, args = "true", []
                else:
                    # The lower bound as a value, not an expression, so that the
                    # planner sees how few messages are that new and uses the index.
                    oldest = await conn.fetchval(
                        "SELECT pg_snapshot_xmin($1::text::pg_snapshot)::text", cursor)
                    condition = ("m.committed >= $2::text::xid8 AND NOT "
                                 "pg_visible_in_snapshot(m.committed, $3::text::pg_snapshot)")
                    args = [oldest, cursor]
                rows = await conn.fetch(
                    "SELECT r.id, r.message_id, r.domain, r.next_try, m.size FROM messages m "
                    "JOIN recipients r ON r.message_id = m.id "
                    f"WHERE r.state = $1 AND {condition} ORDER BY r.id", QUEUED, *args)
            return snapshot, [ScheduleEntry(*row) for row in rows]
        return await self._call(op())

    async def recover_orphans(self, is_alive: Callable[[str], bool], now: float) -> int:
        """Return the leases of dead runners and dead nodes, and expired ones, marked uncertain."""
        async def op() -> int:
            owners = [row[0] for row in await self._pool.fetch(
                "SELECT DISTINCT lease_owner FROM recipients WHERE state = $1", CLAIMED)]
            silent = await self.nodes.silent()
            # Never this node's own: after a database outage its heartbeat is
            # old, but it is alive, holds its deliveries and records them.
            dead = [o for o in owners if o != self._owner and (o in silent or not is_alive(o))]
            async with self._pool.acquire() as conn, conn.transaction():
                rows = await conn.fetch(
                    "UPDATE recipients SET state = $1, lease_owner = NULL, lease_until = NULL, "
                    "uncertain = true, next_try = least(next_try, $2) "
                    "WHERE state = $3 AND (lease_owner = ANY($4::text[]) OR lease_until < $2) "
                    "AND lease_owner <> $5 RETURNING id", QUEUED, now, CLAIMED, dead, self._owner)
                # Every node must see them again, not only this one: a node that
                # lost an ETRN's claim to the dead one has forgotten them.
                await views.log_changes(conn, [row[0] for row in rows], now)
            return len(rows)
        return await self._call(op())

    async def release_claims(self, owner: str) -> int:
        """Return all of `owner`'s leases to QUEUED unchanged."""
        status = await self._execute(
            "UPDATE recipients SET state = $1, lease_owner = NULL, lease_until = NULL "
            "WHERE state = $2 AND lease_owner = $3", QUEUED, CLAIMED, owner)
        return int(status.split()[-1])

    async def rows(self) -> list[QueueRow]:
        """Every undelivered recipient, in queue order."""
        return [row async for row in self.select(Selection())]

    async def select(self, selection: Selection) -> AsyncIterator[QueueRow]:
        """Selected recipients, streamed FETCH at a time through a server-side cursor.

        The next batch is read while the caller works through this one.
        """
        sql, args = views.select_sql(selection)
        conn = await self._call(self._pool.acquire())
        transaction = conn.transaction()
        fetch = None
        try:
            await self._call(transaction.start())
            cursor = await self._call(conn.cursor(sql, *args))
            fetch = asyncio.ensure_future(self._call(cursor.fetch(FETCH)))
            while batch := await fetch:
                fetch = asyncio.ensure_future(self._call(cursor.fetch(FETCH)))
                for row in batch:
                    yield QueueRow(*row)
        finally:
            if fetch is not None and not fetch.done():
                await asyncio.wait({fetch})
            await self._call(_end_listing(self._pool, conn, transaction))

    async def count(self, selection: Selection) -> int:
        """How many recipients `selection` picks."""
        async def op() -> int:
            async with self._pool.acquire() as conn:
                return await views.count_rows(conn, selection)
        return await self._call(op())

    async def tally(self, selection: Selection, by: TallyKey, size_bounds: Sequence[int] = (),
                    age_bounds: Sequence[float] = (), now: float = 0.0) -> list[Tally]:
        """Grouped counts of the selected recipients (see QueueBackend.tally)."""
        async def op() -> list[Tally]:
            async with self._pool.acquire() as conn:
                return await views.tally_rows(conn, selection, by, size_bounds, age_bounds, now)
        return await self._call(op())

    async def _change(self, change: Callable, selection: Selection, now: float) -> list[Changed]:
        async def op() -> list[Changed]:
            async with self._pool.acquire() as conn, conn.transaction():
                return await change(conn, selection, now)
        return await self._call(op())

    async def hold_recipients(self, selection: Selection, now: float) -> list[Changed]:
        """Selected QUEUED recipients become HELD."""
        return await self._change(views.hold, selection, now)

    async def release_recipients(self, selection: Selection, now: float) -> list[Changed]:
        """Selected HELD recipients become QUEUED, due now."""
        return await self._change(views.release, selection, now)

    async def requeue_recipients(self, selection: Selection, now: float) -> list[Changed]:
        """Selected QUEUED recipients become due now."""
        return await self._change(views.requeue, selection, now)

    async def delete_recipients(self, selection: Selection, now: float) -> list[Changed]:
        """Selected undelivered recipients, and messages left with none, are deleted."""
        return await self._change(views.delete, selection, now)

    async def changes_since(self, change: int) -> Changes:
        """Recipients changed after change number `change`."""
        async def op() -> Changes:
            async with self._pool.acquire() as conn, conn.transaction(isolation="repeatable_read"):
                return await views.changes_since(conn, change)
        return await self._call(op())

    async def pending_summary(self, now: float, size_bounds: Sequence[int] = ()
                              ) -> list[PendingGroup]:
        """QUEUED recipients per domain, size class and due-or-not."""
        bounds = sorted(size_bounds)
        case = ("CASE " + "".join(f"WHEN m.size <= {int(b)} THEN {i} "
                                  for i, b in enumerate(bounds)) +
                f"ELSE {len(bounds)} END") if bounds else "0"
        rows = await self._fetch(
            "SELECT domain, class, due, sum(n)::int8, count(*), sum(size)::int8, min(mid), "
            f"max(mid) FROM (SELECT r.domain AS domain, {case} AS class, "
            "r.next_try <= $1 AS due, r.message_id AS mid, m.size AS size, count(*) AS n "
            "FROM recipients r JOIN messages m ON m.id = r.message_id WHERE r.state = $2 "
            "GROUP BY r.domain, class, due, r.message_id, m.size) AS per_message "
            "GROUP BY domain, class, due ORDER BY domain, class, due", now, QUEUED)
        return [PendingGroup(*row) for row in rows]

    async def holds(self) -> dict[str, HoldState]:
        """Persisted hold states, shared by every node."""
        rows = await self._fetch("SELECT route, held, changed, cause FROM holds")
        return {r[0]: HoldState(*r) for r in rows}

    async def set_hold(self, route: str, held: bool, now: float, cause: str) -> None:
        """Persist a route's hold state for the whole cluster, and tell the other nodes."""
        async def op() -> None:
            async with self._pool.acquire() as conn, conn.transaction():
                await conn.execute(
                    "INSERT INTO holds(route, held, changed, cause) VALUES ($1, $2, $3, $4) "
                    "ON CONFLICT (route) DO UPDATE SET held = excluded.held, "
                    "changed = excluded.changed, cause = excluded.cause",
                    route, held, now, cause)
                await conn.execute("SELECT pg_notify($1, 'holds')", views.NOTICE_CHANNEL)
        await self._call(op())

    async def reschedule(self, recipient_ids: Sequence[int], next_try: float) -> None:
        """Make QUEUED recipients due at `next_try`."""
        await self._execute("UPDATE recipients SET next_try = $1 WHERE state = $2 "
                            "AND id = ANY($3::int8[])", next_try, QUEUED, list(recipient_ids))

    async def close(self) -> None:
        """Finish pending writes, leave the cluster and close the connections (once)."""
        if self._closed:
            return
        self._closed = True

        async def op() -> None:
            await self._writer.close()
            await self._recorder.close()
            if self._owner:
                await self.nodes.leave(self._owner)
            if self._listening is not None:
                self._listening.cancel()
                await asyncio.gather(self._listening, return_exceptions=True)
            if self._listener is not None and not self._listener.is_closed():
                await self._listener.close()
            await self._pool.close()
        try:
            await self._call(op())
        finally:
            await asyncio.get_running_loop().run_in_executor(None, self._thread.stop)


async def _end_listing(pool: asyncpg.Pool, conn: asyncpg.Connection,
                       transaction: Any) -> None:
    """End a listing's read-only transaction and give its connection back."""
    try:
        if conn.is_in_transaction():
            await transaction.rollback()
    finally:
        await pool.release(conn)


def _claim_result(rows: list, infos: list, not_due: list) -> ClaimResult:
    """Group freshly claimed rows by message, in message then recipient order."""
    messages = {row[0]: message_of(row) for row in infos}
    by_message: dict[int, list[QueuedRecipient]] = {}
    for rid, mid, local, domain, attempts, uncertain, notify, orcpt in sorted(
            rows, key=lambda r: (r[1], r[0])):
        by_message.setdefault(mid, []).append(QueuedRecipient(
            rid, mid, Address(local, domain), attempts, uncertain, RecipientDsn(notify, orcpt)))
    return ClaimResult([(messages[m], r) for m, r in by_message.items()],
                       [ScheduleEntry(*row) for row in not_due])


async def _nothing_to_reset(conn: asyncpg.Connection) -> None:
    """The pool's reset of a released connection: nothing, no round trip.

    asyncpg's default sends RESET ALL, CLOSE ALL, UNLISTEN * and
    pg_advisory_unlock_all() at every release, a round trip a write or a
    read: a third of an ETRN flush's time on the store's thread.  Our pool
    connections keep no session state (LISTEN has its own connection, the
    migration lock is released in its finally, open transactions are
    still rolled back by asyncpg before this is called).
    """
