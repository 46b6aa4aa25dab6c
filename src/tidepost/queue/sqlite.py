"""The default queue store: one SQLite database in the spool.

WAL mode with synchronous=FULL: a COMMIT returns only after the write-ahead
log is fsync'd, so a committed message survives a crash or power loss.

Group commit: all writes go through one writer thread, which takes every
operation waiting for it and runs them in a single transaction (each inside
its own SAVEPOINT, so one failure does not spoil the others), and a sync
thread that fsyncs the WAL for every transaction written meanwhile before
their callers hear of them (sqlite_writer.py).  Twenty concurrent SMTP
sessions therefore share one fsync instead of paying twenty, and a write
never waits behind another transaction's fsync.
Reads run on a second thread with its own connection; nothing here blocks the
event loop.  Other processes (`tidepost sendmail`, `tidepost flush`) open the
same file; SQLite's locking and the busy timeout serialise them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import secrets
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Sequence

from tidepost.address import Address
from tidepost.durable import private_file, sync_path
from tidepost.errors import AlreadyQueued, QueueError
from tidepost.model import (BodyType, MessageInfo, QueuedRecipient, RecipientDsn,
                            RecipientState, ScheduleEntry)
from tidepost.outcomes import Verdict
from tidepost.queue import sqlite_views as views
from tidepost.queue.backend import (ClaimResult, HoldState, NewMessage, PendingGroup,
                                    QueueRow, RecipientUpdate, Recorded)
from tidepost.queue.selection import Changed, Changes, Selection, Tally, TallyKey
from tidepost.queue.sqlite_writer import Writer

SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    queue_id  TEXT NOT NULL UNIQUE,
    sender    TEXT NOT NULL,
    arrival   REAL NOT NULL,
    size      INTEGER NOT NULL,
    body_type TEXT NOT NULL,
    smtputf8  INTEGER NOT NULL,
    warned    INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS bodies (
    message_id INTEGER PRIMARY KEY REFERENCES messages(id) ON DELETE CASCADE,
    body       BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS recipients (
    -- AUTOINCREMENT: ids never reused, so "id > last seen" finds all new rows
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id  INTEGER NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
    local       TEXT NOT NULL,
    domain      TEXT NOT NULL,
    state       TEXT NOT NULL,
    next_try    REAL NOT NULL,
    attempts    INTEGER NOT NULL DEFAULT 0,
    last_error  TEXT NOT NULL DEFAULT '',
    lease_owner TEXT,
    lease_until REAL,
    uncertain   INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS recipients_by_state ON recipients(state, next_try);
CREATE INDEX IF NOT EXISTS recipients_by_message ON recipients(message_id);
CREATE TABLE IF NOT EXISTS holds (
    route   TEXT PRIMARY KEY,
    held    INTEGER NOT NULL,
    changed REAL NOT NULL,
    cause   TEXT NOT NULL
);
"""

# Each entry takes the schema from version N+1 to N+2 (SCHEMA is version 1).
# Append only: a spool of any earlier version is brought up to date at open,
# inside one transaction per step, by whichever process opens it first.
MIGRATIONS: tuple[str, ...] = (
    # 2: transfer keys, stored with the message they brought (exactly-once
    # receipt: a repeated transfer is recognised, not stored twice).
    """
    CREATE TABLE transfers (
        key      TEXT PRIMARY KEY,
        queue_id TEXT NOT NULL,
        received REAL NOT NULL
    );
    CREATE INDEX transfers_by_age ON transfers(received);
    """,
    # 3: queue administration.  The change log tells a running daemon which
    # recipients `tidepost queue release/requeue` made due
    # (QueueBackend.changes_since); recipients HELD by an admin need no new
    # column: the state says it.  The views need no new index: they scan
    # recipients in rowid order (sqlite_views.py says why).
    """
    CREATE TABLE changes (
        id           INTEGER PRIMARY KEY AUTOINCREMENT,
        recipient_id INTEGER NOT NULL,
        changed      REAL NOT NULL
    );
    CREATE INDEX changes_by_age ON changes(changed);
    """,
    # 4: DSN requests (RFC 3461): RET and ENVID per message, NOTIFY and ORCPT
    # per recipient.  '' is "not given"; mail queued before keeps today's
    # default reports.  ADD COLUMN with a constant default rewrites no row.
    """
    ALTER TABLE messages ADD COLUMN ret TEXT NOT NULL DEFAULT '';
    ALTER TABLE messages ADD COLUMN envid TEXT NOT NULL DEFAULT '';
    ALTER TABLE recipients ADD COLUMN notify TEXT NOT NULL DEFAULT '';
    ALTER TABLE recipients ADD COLUMN orcpt TEXT NOT NULL DEFAULT '';
    """,
)
SCHEMA_VERSION = 1 + len(MIGRATIONS)

QUEUED = RecipientState.QUEUED.value
CLAIMED = RecipientState.CLAIMED.value
HELD = RecipientState.HELD.value
CHUNK = 500            # ids per IN (...) list
FETCH = 2000           # rows per batch handed from the reader thread to a listing


def connect(path: Path) -> sqlite3.Connection:
    """Open the queue database with the durability settings tidepost relies on."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=60)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA busy_timeout=60000")
    return conn


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the schema up to SCHEMA_VERSION; returns the version found.

    A spool newer than this program is refused (QueueError) rather than
    written with assumptions that no longer hold.
    """
    found = conn.execute("PRAGMA user_version").fetchone()[0]
    if found == SCHEMA_VERSION:
        return found  # current: no write, so that a listing writes nothing at all
    conn.execute("BEGIN IMMEDIATE")  # one process migrates; the others wait, then see it
    try:
        found = conn.execute("PRAGMA user_version").fetchone()[0]
        if found > SCHEMA_VERSION:
            raise QueueError(f"queue schema version {found} is newer than this tidepost "
                             f"({SCHEMA_VERSION}); upgrade tidepost")
        if found == 0:
            for statement in _statements(SCHEMA):
                conn.execute(statement)
        for step in MIGRATIONS[max(found, 1) - 1:]:
            for statement in _statements(step):
                conn.execute(statement)
        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return found


def _sync_folder(folder: Path) -> None:
    """fsync a folder: a new queue's files, and the removal of the rollback journal
    that switching to WAL used, must not depend on the file system's own timing
    (a journal back from the dead after a power cut would undo the switch)."""
    sync_path(folder)


def _statements(script: str) -> list[str]:
    """The statements of a schema script (none contains a semicolon inside)."""
    return [s.strip() for s in script.split(";") if s.strip()]


# Queue ids come from a generator seeded once per process: os.urandom per
# message is a system call that gives up the GIL, and the event loop then
# waits for the queue's writer thread to hand it back (py-spy: 3.5% of the
# loop's time at 10 sessions).  Ids need to be unlikely to repeat, not secret.
_ids = random.Random(secrets.randbits(64))
os.register_at_fork(after_in_child=lambda: _ids.seed(secrets.randbits(64)))


def new_queue_id() -> str:
    """A short, unique, visible message id (like Postfix's queue id)."""
    return f"{_ids.getrandbits(48):012X}"


def _chunks(ids: Sequence[int]) -> list[Sequence[int]]:
    """Split an id list so that IN (...) stays within SQLite's variable limit."""
    return [ids[i:i + CHUNK] for i in range(0, len(ids), CHUNK)]


def _marks(ids: Sequence[int]) -> str:
    """Placeholders for an IN list."""
    return ",".join("?" * len(ids))


class SqliteQueue:
    """QueueBackend on one SQLite file (see module docstring)."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        try:
            private_file(path)  # queued mail: never readable by local users
            with contextlib.closing(connect(path)) as conn:
                if migrate(conn) == 0:
                    _sync_folder(path.parent)
        except sqlite3.Error as exc:
            raise QueueError(f"cannot open the queue {path}: {exc}") from None
        self._writer = Writer(path, connect)
        self._reader_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="queue-reader")
        self._reader: sqlite3.Connection | None = None

    async def _read(self, op: Callable[[sqlite3.Connection], Any]) -> Any:
        """Run a read-only `op` on the reader thread."""
        def run() -> Any:
            if self._reader is None:
                self._reader = connect(self.path)
            return op(self._reader)
        return await asyncio.get_running_loop().run_in_executor(self._reader_pool, run)

    async def submit(self, message: NewMessage) -> list[ScheduleEntry]:
        """Queue one message durably; returns after the group COMMIT."""
        return await self._writer.run(lambda conn: _insert(conn, message), acknowledged=True)

    async def known_transfers(self, keys: Sequence[str]) -> dict[str, str]:
        """Queue ids stored under the known ones among `keys`."""
        wanted = list(keys)
        def op(conn: sqlite3.Connection) -> dict[str, str]:
            return _known_transfers(conn, wanted)
        return await self._read(op)

    async def forget_transfers(self, before: float) -> int:
        """Drop transfer keys older than `before`."""
        return await self._writer.run(lambda conn: conn.execute(
            "DELETE FROM transfers WHERE received < ?", (before,)).rowcount)

    async def claim(self, recipient_ids: Sequence[int], owner: str, lease: float,
                    now: float, force: bool = False) -> ClaimResult:
        """Lease due recipients to `owner` (see QueueBackend.claim)."""
        ids = list(recipient_ids)
        return await self._writer.run(lambda conn: _claim(conn, ids, owner, lease, now, force))

    async def load_body(self, message_id: int) -> bytes:
        """The message bytes, read off the event loop."""
        def op(conn: sqlite3.Connection) -> bytes:
            row = conn.execute("SELECT body FROM bodies WHERE message_id=?",
                               (message_id,)).fetchone()
            if row is None:
                raise QueueError(f"message {message_id} has no body")
            return bytes(row[0])
        return await self._read(op)

    async def message_by_id(self, message_id: int) -> MessageInfo | None:
        """A queued message's facts, None once it left the queue."""
        def op(conn: sqlite3.Connection) -> MessageInfo | None:
            row = conn.execute(f"SELECT {INFO_COLUMNS} FROM messages m WHERE m.id=?",
                               (message_id,)).fetchone()
            return None if row is None else _message_info(row)
        return await self._read(op)

    async def record(self, owner: str, updates: Sequence[RecipientUpdate],
                     new_messages: Sequence[NewMessage] = (),
                     warned: Sequence[int] = ()) -> Recorded:
        """Apply outcomes, queue DSNs, mark warnings and drop finished messages."""
        def op(conn: sqlite3.Connection) -> Recorded:
            _apply_updates(conn, owner, updates)
            conn.executemany("UPDATE messages SET warned=1 WHERE id=?", [(m,) for m in warned])
            entries = [e for m in new_messages for e in _insert(conn, m)]
            return Recorded(entries, _drop_finished(conn, updates))
        return await self._writer.run(op)

    async def walk(self) -> list[ScheduleEntry]:
        """Every QUEUED recipient."""
        return await self.entries_since(0)

    async def entries_since(self, recipient_id: int) -> list[ScheduleEntry]:
        """QUEUED recipients with id above `recipient_id`."""
        def op(conn: sqlite3.Connection) -> list[ScheduleEntry]:
            rows = conn.execute(
                "SELECT r.id, r.message_id, r.domain, r.next_try, m.size FROM recipients r "
                "JOIN messages m ON m.id=r.message_id "
                "WHERE r.state=? AND r.id>? ORDER BY r.id", (QUEUED, recipient_id))
            # Interned: 100,000 recipients share a few thousand domain strings.
            return [ScheduleEntry(rid, mid, domain, next_try, size)
                    for rid, mid, domain, next_try, size in rows]
        return await self._read(op)

    async def recover_orphans(self, is_alive: Callable[[str], bool], now: float) -> int:
        """Return dead runners' leases to QUEUED, marked uncertain."""
        def op(conn: sqlite3.Connection) -> int:
            owners = [row[0] for row in conn.execute(
                "SELECT DISTINCT lease_owner FROM recipients WHERE state=?", (CLAIMED,))]
            count = 0
            for owner in owners:
                expired = "" if not is_alive(owner) else " AND lease_until < ?"
                args: tuple = (QUEUED, now, CLAIMED, owner) + ((now,) if expired else ())
                count += conn.execute(
                    "UPDATE recipients SET state=?, lease_owner=NULL, lease_until=NULL, "
                    "uncertain=1, next_try=MIN(next_try, ?) "
                    f"WHERE state=? AND lease_owner=?{expired}", args).rowcount
            return count
        return await self._writer.run(op)

    async def release_claims(self, owner: str) -> int:
        """Return all of `owner`'s leases to QUEUED unchanged."""
        return await self._writer.run(lambda conn: conn.execute(
            "UPDATE recipients SET state=?, lease_owner=NULL, lease_until=NULL "
            "WHERE state=? AND lease_owner=?", (QUEUED, CLAIMED, owner)).rowcount)

    async def rows(self) -> list[QueueRow]:
        """Every undelivered recipient, oldest message first."""
        return [row async for row in self.select(Selection())]

    async def select(self, selection: Selection) -> AsyncIterator[QueueRow]:
        """Selected recipients, read FETCH at a time on the reader thread.

        The next batch is read while the caller works through this one:
        sqlite3 lets go of the GIL while it steps, so reading and printing
        overlap.
        """
        cursor = await self._read(lambda conn: views.select_rows(conn, selection))
        fetch = asyncio.ensure_future(self._read(lambda conn: cursor.fetchmany(FETCH)))
        try:
            while batch := await fetch:
                fetch = asyncio.ensure_future(self._read(lambda conn: cursor.fetchmany(FETCH)))
                for row in batch:
                    yield QueueRow(*row)
        finally:
            if not fetch.done():
                await asyncio.wait({fetch})
            await self._read(lambda conn: cursor.close())

    async def count(self, selection: Selection) -> int:
        """How many recipients `selection` picks."""
        return await self._read(lambda conn: views.count_rows(conn, selection))

    async def tally(self, selection: Selection, by: TallyKey, size_bounds: Sequence[int] = (),
                    age_bounds: Sequence[float] = (), now: float = 0.0) -> list[Tally]:
        """Grouped counts of the selected recipients (see QueueBackend.tally)."""
        return await self._read(lambda conn: views.tally_rows(
            conn, selection, by, size_bounds, age_bounds, now))

    async def message_info(self, queue_id: str) -> MessageInfo | None:
        """The stored facts of one message."""
        def op(conn: sqlite3.Connection) -> MessageInfo | None:
            row = conn.execute(f"SELECT {INFO_COLUMNS} FROM messages m WHERE m.queue_id=?",
                               (queue_id,)).fetchone()
            return None if row is None else _message_info(row)
        return await self._read(op)

    async def hold_recipients(self, selection: Selection, now: float) -> list[Changed]:
        """Selected QUEUED recipients become HELD."""
        return await self._writer.run(lambda conn: views.hold(conn, selection, now))

    async def release_recipients(self, selection: Selection, now: float) -> list[Changed]:
        """Selected HELD recipients become QUEUED, due now."""
        return await self._writer.run(lambda conn: views.release(conn, selection, now))

    async def requeue_recipients(self, selection: Selection, now: float) -> list[Changed]:
        """Selected QUEUED recipients become due now."""
        return await self._writer.run(lambda conn: views.requeue(conn, selection, now))

    async def delete_recipients(self, selection: Selection, now: float) -> list[Changed]:
        """Selected undelivered recipients, and messages left with none, are deleted."""
        return await self._writer.run(lambda conn: views.delete(conn, selection, now))

    async def changes_since(self, change: int) -> Changes:
        """Recipients changed after change number `change`."""
        return await self._read(lambda conn: views.changes_since(conn, change))

    async def pending_summary(self, now: float, size_bounds: Sequence[int] = ()
                              ) -> list[PendingGroup]:
        """QUEUED recipients per domain, size class and due-or-not (recipients_by_state)."""
        bounds = sorted(size_bounds)
        case = "CASE " + "".join(f"WHEN m.size <= ? THEN {i} " for i in range(len(bounds))) + \
            f"ELSE {len(bounds)} END" if bounds else "0"

        def op(conn: sqlite3.Connection) -> list[PendingGroup]:
            rows = conn.execute(
                "SELECT domain, class, due, SUM(n), COUNT(*), SUM(size), MIN(mid), MAX(mid) "
                f"FROM (SELECT r.domain AS domain, {case} AS class, r.next_try <= ? AS due, "
                "r.message_id AS mid, m.size AS size, COUNT(*) AS n "
                "FROM recipients r JOIN messages m ON m.id=r.message_id WHERE r.state=? "
                "GROUP BY r.domain, class, due, r.message_id) "
                "GROUP BY domain, class, due ORDER BY domain, class, due",
                (*bounds, now, QUEUED)).fetchall()
            return [PendingGroup(d, c, bool(due), n, m, b, lo, hi)
                    for d, c, due, n, m, b, lo, hi in rows]
        return await self._read(op)

    async def holds(self) -> dict[str, HoldState]:
        """Persisted hold states."""
        def op(conn: sqlite3.Connection) -> dict[str, HoldState]:
            rows = conn.execute("SELECT route, held, changed, cause FROM holds")
            return {r[0]: HoldState(r[0], bool(r[1]), r[2], r[3]) for r in rows}
        return await self._read(op)

    async def set_hold(self, route: str, held: bool, now: float, cause: str) -> None:
        """Persist a route's hold state."""
        await self._writer.run(lambda conn: conn.execute(
            "INSERT INTO holds(route, held, changed, cause) VALUES (?,?,?,?) "
            "ON CONFLICT(route) DO UPDATE SET held=excluded.held, "
            "changed=excluded.changed, cause=excluded.cause",
            (route, int(held), now, cause)))

    async def reschedule(self, recipient_ids: Sequence[int], next_try: float) -> None:
        """Make QUEUED recipients due at `next_try`."""
        def op(conn: sqlite3.Connection) -> None:
            for chunk in _chunks(list(recipient_ids)):
                conn.execute(f"UPDATE recipients SET next_try=? WHERE state=? "
                             f"AND id IN ({_marks(chunk)})", (next_try, QUEUED, *chunk))
        await self._writer.run(op)

    async def close(self) -> None:
        """Close the reader's connection, then drain the writer and close its own (last)."""
        def close_reader() -> None:
            if self._reader is not None:
                self._reader.close()
        await asyncio.get_running_loop().run_in_executor(self._reader_pool, close_reader)
        self._reader_pool.shutdown()
        await asyncio.get_running_loop().run_in_executor(None, self._writer.stop)


def _known_transfers(conn: sqlite3.Connection, keys: list[str]) -> dict[str, str]:
    """{key: queue_id} for the stored ones among `keys`."""
    found: dict[str, str] = {}
    for chunk in _chunks(keys):
        found.update(conn.execute(f"SELECT key, queue_id FROM transfers "
                                  f"WHERE key IN ({_marks(chunk)})", chunk).fetchall())
    return found


def _insert(conn: sqlite3.Connection, message: NewMessage) -> list[ScheduleEntry]:
    """Insert a message, its body, its recipients and its transfer keys.

    Returns schedule entries; raises AlreadyQueued before writing anything
    when a transfer key is already stored.
    """
    queue_id = message.queue_id or new_queue_id()
    known = _known_transfers(conn, list(message.transfer_keys))
    if known:
        key, earlier = next(iter(known.items()))
        raise AlreadyQueued(key, earlier)
    conn.executemany("INSERT INTO transfers(key, queue_id, received) VALUES (?,?,?)",
                     [(key, queue_id, message.arrival) for key in message.transfer_keys])
    cursor = conn.execute(
        "INSERT INTO messages(queue_id, sender, arrival, size, body_type, smtputf8, ret, envid) "
        "VALUES (?,?,?,?,?,?,?,?)",
        (queue_id, str(message.sender), message.arrival, len(message.body),
         message.body_type.value, int(message.smtputf8), message.ret, message.envid))
    message_id = cursor.lastrowid
    conn.execute("INSERT INTO bodies(message_id, body) VALUES (?,?)", (message_id, message.body))
    entries = []
    for rcpt in message.recipients:
        dsn = message.dsn_of(rcpt)
        rid = conn.execute(
            "INSERT INTO recipients(message_id, local, domain, state, next_try, notify, orcpt) "
            "VALUES (?,?,?,?,?,?,?)",
            (message_id, rcpt.local, rcpt.domain, QUEUED, message.arrival, dsn.notify,
             dsn.orcpt)).lastrowid
        # Interned, as the walk's: the scheduler keeps the entry as long as the
        # mail waits, and a held site's 100,000 share a few domain strings.
        entries.append(ScheduleEntry(rid, message_id, rcpt.domain, message.arrival,
                                     len(message.body)))
    return entries


def _claim(conn: sqlite3.Connection, ids: list[int], owner: str, lease: float,
           now: float, force: bool) -> ClaimResult:
    """Lease the due ones among `ids`; report the queued-but-not-due rest.

    Only recipients this call moves from QUEUED to CLAIMED are returned: one
    that this owner already holds is in flight, and handing it out again
    would deliver it twice.  The writer's transaction (BEGIN IMMEDIATE) makes
    the select and the update one step for every process.
    """
    result = ClaimResult()
    for chunk in _chunks(ids):
        rows = conn.execute(
            "SELECT r.id, r.message_id, r.local, r.domain, r.attempts, r.uncertain, "
            f"r.next_try, r.notify, r.orcpt, {INFO_COLUMNS} "
            "FROM recipients r JOIN messages m ON m.id=r.message_id "
            f"WHERE r.state=? AND r.id IN ({_marks(chunk)}) ORDER BY r.message_id, r.id",
            (QUEUED, *chunk)).fetchall()
        due = [row for row in rows if force or row[6] <= now]
        result.not_due.extend(ScheduleEntry(row[0], row[1], row[3], row[6], row[13])
                              for row in rows if not (force or row[6] <= now))
        for part in _chunks([row[0] for row in due]):
            conn.execute(f"UPDATE recipients SET state=?, lease_owner=?, lease_until=? "
                         f"WHERE id IN ({_marks(part)})", (CLAIMED, owner, now + lease, *part))
        _group_claimed(due, result)
    return result


def _group_claimed(rows: list, result: ClaimResult) -> None:
    """Group freshly claimed rows by message."""
    by_message: dict[int, tuple[MessageInfo, list[QueuedRecipient]]] = {}
    for row in rows:
        rid, mid, local, domain, attempts, uncertain, _next_try, notify, orcpt = row[:9]
        if mid not in by_message:
            by_message[mid] = (_message_info(row[9:]), [])
        by_message[mid][1].append(QueuedRecipient(rid, mid, Address(local, domain), attempts,
                                                  bool(uncertain), RecipientDsn(notify, orcpt)))
    result.claimed.extend(by_message.values())


INFO_COLUMNS = ("m.id, m.queue_id, m.sender, m.arrival, m.size, m.body_type, m.smtputf8, "
                "m.warned, m.ret, m.envid")


def _message_info(row: Sequence[Any]) -> MessageInfo:
    """A MessageInfo from the INFO_COLUMNS of a row."""
    mid, queue_id, sender, arrival, size, body_type, smtputf8, warned, ret, envid = row
    return MessageInfo(mid, queue_id, _sender(sender), arrival, size, BodyType(body_type),
                       bool(smtputf8), bool(warned), ret, envid)


def _sender(text: str) -> Address:
    """Rebuild a stored sender (written by str(Address)) without re-parsing."""
    if not text:
        return Address("", "")
    local, _, domain = text.rpartition("@")
    return Address(local, domain) if local else Address(text, "")


def _apply_updates(conn: sqlite3.Connection, owner: str,
                   updates: Sequence[RecipientUpdate]) -> None:
    """Write each outcome: final state, or QUEUED again with its next try."""
    for update in updates:
        outcome = update.outcome
        error = "" if outcome.verdict is Verdict.DELIVERED else \
            f"{outcome.status} {outcome.reason}"[:500]
        if update.next_try is None:
            state = (RecipientState.DELIVERED if outcome.verdict is Verdict.DELIVERED
                     else RecipientState.BOUNCED).value
            conn.execute("UPDATE recipients SET state=?, lease_owner=NULL, lease_until=NULL, "
                         "attempts=attempts+1, last_error=? WHERE id=? AND lease_owner=?",
                         (state, error, outcome.recipient_id, owner))
        else:
            conn.execute("UPDATE recipients SET state=?, lease_owner=NULL, lease_until=NULL, "
                         "attempts=attempts+?, last_error=?, next_try=?, uncertain=0 "
                         "WHERE id=? AND lease_owner=?",
                         (QUEUED, int(outcome.attempted), error, update.next_try,
                          outcome.recipient_id, owner))


def _drop_finished(conn: sqlite3.Connection, updates: Sequence[RecipientUpdate]) -> list[str]:
    """Delete messages none of whose recipients is QUEUED, CLAIMED or HELD; their queue ids."""
    finished = {u.outcome.recipient_id for u in updates if u.next_try is None}
    removed: list[str] = []
    for chunk in _chunks(sorted(finished)):
        removed += [row[0] for row in conn.execute(
            "DELETE FROM messages WHERE id IN (SELECT message_id FROM recipients "
            f"WHERE id IN ({_marks(chunk)})) AND NOT EXISTS (SELECT 1 FROM recipients r "
            "WHERE r.message_id=messages.id AND r.state IN (?,?,?)) RETURNING queue_id",
            (*chunk, QUEUED, CLAIMED, HELD))]
    return removed
