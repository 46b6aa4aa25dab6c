"""The SQLite queue's writes: group-committed on one thread, made durable on another.

Every write of the daemon goes through `Writer.run(op)`.  The writer thread
takes every operation waiting for it and runs them in one transaction, each
inside its own SAVEPOINT (one failure does not spoil the others), and
COMMITs with `synchronous=OFF`: the commit is written to the WAL, not yet
fsync'd.  It hands the batch to the sync thread and goes on with the next
batch at once.  The sync thread fsyncs the WAL (one fsync for every batch
that arrived meanwhile) and only then completes the callers' futures: a
caller still learns of its commit only once it is on stable storage (the
250 after DATA, the recorded outcome of a delivery), but the next batch is
written while the last one is being synced, not after.  That matters for
duplicates: a kill -9 (as opposed to a power cut) loses nothing that was
written, so a remote 250 is safe from the moment its outcome reaches the
WAL, which no longer waits behind other sessions' fsyncs.  Submissions a
client waits to hear a 250 for wait instead (`run(acknowledged=True)`):
written just before the sync that makes them durable, the window in which
a crash leaves them stored but unacknowledged is one fsync.

Checkpoints: SQLite's own (`wal_autocheckpoint`) are off on the writer's
connection, whose `synchronous=OFF` would not sync the database before the
WAL is reused.  The writer thread checkpoints itself, between two
transactions, under `synchronous=FULL` (the WAL is synced before it is
copied, the database after), once CHECKPOINT_PAGES frames wait to be
copied.  That count comes from the WAL index: the WAL file keeps its size
when SQLite reuses it, so judged by its size every commit after the first
4 MB would checkpoint (three syncs instead of one).  It is the writer that
checkpoints because SQLite starts the WAL again from its beginning only
when a write transaction begins with every frame copied: a checkpoint on
another thread, racing the writer's next transaction, almost never allows
that, and the WAL grows.  Other processes (sendmail, flush, queue
administration) keep SQLite's defaults and `synchronous=FULL`.  At stop the
writer's connection goes back to FULL before it closes, so its last
checkpoint is synced too.
tests/crash/test_power_loss.py keeps only what was fsync'd and finds every
acknowledged message.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue as thread_queue
import sqlite3
import sys
import threading
from pathlib import Path
from typing import Any, Callable

from tidepost.errors import QueueError, QueueFull
from tidepost.eventloop import running_loop

BATCH_LIMIT = 512          # operations per group commit
CHECKPOINT_PAGES = 1000    # WAL pages (of 4 KiB) between checkpoints: SQLite's default
WAL_INDEX_HEADER = 136     # two copies of the 48-byte WalIndexHdr, then WalCkptInfo

Connect = Callable[[Path], sqlite3.Connection]
Batch = list  # of (op, future, loop)


class Writer:
    """The writer and sync threads of one SqliteQueue."""

    def __init__(self, path: Path, connect: Connect):
        self._path = path
        self._wal = Path(f"{path}-wal")
        self._wal_index = WalIndex(Path(f"{path}-shm"))
        self._connect = connect
        self._waiting = threading.Condition()
        self._ops: list[tuple] = []      # (op, future, loop, acknowledged), under _waiting
        self._stopping = False
        self._unsynced = 0               # batches written, not yet fsync'd
        self._synced: thread_queue.SimpleQueue = thread_queue.SimpleQueue()
        self._thread = threading.Thread(target=self._write, name="queue-writer", daemon=True)
        self._syncer = threading.Thread(target=self._sync, name="queue-sync", daemon=True)
        self._thread.start()
        self._syncer.start()

    def run(self, op: Callable[[sqlite3.Connection], Any],
            acknowledged: bool = False) -> asyncio.Future:
        """Schedule `op` in the next transaction; the future resolves once it is durable.

        `acknowledged`: a client hears of this commit (a 250 after DATA), and
        until it does, a crash makes it send a second copy.  Such an op is
        written only when no sync is under way, just before the one that
        makes it durable, so that window is one fsync long.  Other ops (a
        remote 250's outcome above all) are written at once.
        """
        loop = running_loop()
        future = loop.create_future()
        with self._waiting:
            self._ops.append((op, future, loop, acknowledged))
            self._waiting.notify_all()
        return future

    def stop(self) -> None:
        """Finish what is queued, then end both threads.

        Call it after closing the queue's other connections: it lets go of
        the WAL index's descriptor (see WalIndex).
        """
        with self._waiting:
            self._stopping = True
            self._waiting.notify_all()
        self._thread.join()
        self._syncer.join()
        self._wal_index.close()

    # -- the writer thread ----------------------------------------------------

    def _write(self) -> None:
        """Thread body: batch, execute, commit, hand over to the sync thread."""
        conn = self._connect(self._path)
        conn.execute("PRAGMA synchronous=OFF")      # the sync thread fsyncs
        conn.execute("PRAGMA wal_autocheckpoint=0")  # and _checkpoint, synced
        try:
            while (batch := self._next_batch()) is not None:
                results = _commit(conn, batch)
                with self._waiting:
                    self._unsynced += 1
                self._synced.put((batch, results))
                self._checkpoint(conn)
        finally:
            self._synced.put(None)
            with contextlib.suppress(sqlite3.Error):
                conn.execute("PRAGMA synchronous=FULL")  # a closing checkpoint is synced
            conn.close()

    def _next_batch(self) -> Batch | None:
        """The ops to write now (at least one), or None when stopped with none left.

        Every op waiting, but acknowledged ones only while nothing waits for
        a sync (see `run`).
        """
        with self._waiting:
            while True:
                idle = self._unsynced == 0 or self._stopping
                batch = [item for item in self._ops if idle or not item[3]][:BATCH_LIMIT]
                if batch:
                    taken = {id(item) for item in batch}
                    self._ops = [item for item in self._ops if id(item) not in taken]
                    return [item[:3] for item in batch]
                if self._stopping and not self._ops:
                    return None
                self._waiting.wait()

    # -- the sync thread ----------------------------------------------------

    def _sync(self) -> None:
        """Thread body: fsync the WAL for every batch committed meanwhile, then report."""
        stopping = False
        while not stopping:
            item = self._synced.get()
            done = [] if item is None else [item]
            stopping = item is None
            while not stopping:
                try:
                    item = self._synced.get_nowait()
                except thread_queue.Empty:
                    break
                stopping = item is None
                if item is not None:
                    done.append(item)
            self._report(done, self._fsync_wal())
            with self._waiting:
                self._unsynced -= len(done)
                self._waiting.notify_all()

    def _fsync_wal(self) -> QueueError | None:
        """fsync the WAL; the error to report instead of success if that failed."""
        try:
            fd = os.open(self._wal, os.O_RDONLY)
        except FileNotFoundError:
            return None  # no WAL: everything is in the database file already
        except OSError as exc:
            return QueueError(f"queue sync failed: {exc}")
        try:
            os.fsync(fd)
        except OSError as exc:  # what was written may not be on disk: say so
            return QueueError(f"queue sync failed: {exc}")
        finally:
            os.close(fd)
        return None

    @staticmethod
    def _report(done: list[tuple[Batch, list]], failure: QueueError | None) -> None:
        """Complete the futures of synced batches (with `failure`, if the sync failed)."""
        for batch, results in done:
            for (_, future, loop), (value, error) in zip(batch, results):
                if failure is not None and error is None:
                    error = failure
                try:
                    loop.call_soon_threadsafe(_resolve, future, value, error)
                except RuntimeError:
                    pass  # the caller's event loop is gone; nobody waits for this answer

    def _checkpoint(self, conn: sqlite3.Connection) -> None:
        """Copy the WAL into the database, synced, once enough of it waits (writer thread)."""
        if self._wal_index.pending() < CHECKPOINT_PAGES:
            return
        try:
            conn.execute("PRAGMA synchronous=FULL")
            try:
                conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
            finally:
                conn.execute("PRAGMA synchronous=OFF")
        except sqlite3.Error:
            pass  # the next round tries again; the WAL only grows meanwhile


class WalIndex:
    """The count of WAL frames not yet copied into the database, from the WAL index.

    The WAL index is the -shm file (sqlite.org/walformat.html, 2.2: native
    byte order; mxFrame at offset 16 of each of the two 48-byte header
    copies, nBackfill at offset 96).  It is read through one descriptor kept
    open until every connection of this queue is closed: closing any
    descriptor of a file drops every POSIX lock the process holds on it,
    SQLite's shared lock on the -shm among them, and then the next process
    to open the queue takes itself for the only one, truncates the -shm
    under our mapping, and this process dies of SIGBUS.
    """

    def __init__(self, path: Path):
        self._path = path
        self._fd: int | None = None

    def pending(self) -> int:
        """Frames waiting for a checkpoint; 0 while unknown (no index yet, or mid-update)."""
        if self._fd is None:
            try:
                self._fd = os.open(self._path, os.O_RDONLY)
            except OSError:
                return 0
        try:
            header = os.pread(self._fd, WAL_INDEX_HEADER, 0)
        except OSError:
            return 0
        if len(header) < WAL_INDEX_HEADER or header[:48] != header[48:96]:
            return 0  # a writer is updating the header: the next round looks again
        last_frame = int.from_bytes(header[16:20], sys.byteorder)
        backfilled = int.from_bytes(header[96:100], sys.byteorder)
        return max(last_frame - backfilled, 0)

    def close(self) -> None:
        """Let the descriptor go: only once no connection of this process uses the queue."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _commit(conn: sqlite3.Connection, batch: Batch) -> list[tuple[Any, BaseException | None]]:
    """Run a batch in one transaction; each op inside its own savepoint; their results."""
    results: list[tuple[Any, BaseException | None]] = []
    try:
        conn.execute("BEGIN IMMEDIATE")
        for op, _, _ in batch:
            conn.execute("SAVEPOINT op")
            try:
                results.append((op(conn), None))
                conn.execute("RELEASE op")
            except Exception as exc:  # reported to that op's caller only
                conn.execute("ROLLBACK TO op")
                conn.execute("RELEASE op")
                if isinstance(exc, sqlite3.Error):
                    exc = write_error(exc)
                results.append((None, exc))
        conn.execute("COMMIT")
    except sqlite3.Error as exc:
        with contextlib.suppress(sqlite3.Error):  # a full disk may refuse that too
            if conn.in_transaction:
                conn.execute("ROLLBACK")
        results = [(None, write_error(exc))] * len(batch)
    return results


def write_error(exc: sqlite3.Error) -> QueueError:
    """The QueueError for a failed write: QueueFull when the disk or quota is full."""
    full = getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or \
        "disk is full" in str(exc)
    return (QueueFull if full else QueueError)(f"queue write failed: {exc}")


def _resolve(future: asyncio.Future, value: Any, error: BaseException | None) -> None:
    """Complete a future from the loop thread unless its waiter gave up."""
    if future.cancelled():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)
