"""The SQLite writer's checkpoints: often enough to bound the WAL, never per commit."""

from __future__ import annotations

import asyncio
import fcntl
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tidepost.queue import sqlite_writer
from tidepost.queue.sqlite import connect
from tidepost.queue.sqlite_writer import WalIndex, Writer

PAGE = 4096


class CountingConnection(sqlite3.Connection):
    """A connection that counts the checkpoints asked of it."""

    checkpoints = 0

    def execute(self, sql, *args):  # noqa: D102 - sqlite3.Connection's own
        if "wal_checkpoint" in sql:
            CountingConnection.checkpoints += 1
        return super().execute(sql, *args)


def counting_connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False,
                           timeout=60, factory=CountingConnection)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    return conn


def insert_pages(pages: int):
    """An op that adds about `pages` pages of data."""
    def op(conn: sqlite3.Connection) -> None:
        conn.executemany("INSERT INTO blobs (data) VALUES (?)",
                         [(b"x" * (PAGE - 200),)] * pages)
    return op


async def commit_many(writer: Writer, commits: int, pages: int) -> None:
    for _ in range(commits):
        await writer.run(insert_pages(pages))


def make_writer(tmp_path: Path) -> tuple[Writer, Path]:
    path = tmp_path / "queue.sqlite"
    setup = connect(path)
    setup.execute("CREATE TABLE blobs (id INTEGER PRIMARY KEY, data BLOB)")
    setup.close()
    return Writer(path, counting_connect), path


def test_small_commits_after_a_large_wal_do_not_checkpoint_each_time(tmp_path, monkeypatch):
    monkeypatch.setattr(sqlite_writer, "CHECKPOINT_PAGES", 50)
    CountingConnection.checkpoints = 0
    writer, path = make_writer(tmp_path)
    try:
        asyncio.run(commit_many(writer, 4, 60))  # the WAL file grows past the threshold
        wal_size = Path(f"{path}-wal").stat().st_size
        assert wal_size > 50 * PAGE
        before = CountingConnection.checkpoints
        asyncio.run(commit_many(writer, 30, 1))  # 30 commits of about one page each
        during_small = CountingConnection.checkpoints - before
    finally:
        writer.stop()
    # ~30-60 frames in all: a checkpoint or two, not one per commit
    assert during_small <= 2, during_small


def test_the_wal_is_still_checkpointed_and_reused(tmp_path, monkeypatch):
    monkeypatch.setattr(sqlite_writer, "CHECKPOINT_PAGES", 50)
    writer, path = make_writer(tmp_path)
    try:
        asyncio.run(commit_many(writer, 100, 5))  # ~500 pages through a 50-page threshold
        pending = WalIndex(Path(f"{path}-shm")).pending()
        wal_size = Path(f"{path}-wal").stat().st_size
    finally:
        writer.stop()
    assert pending < 50 + 2 * 5 + 10
    assert wal_size < 200 * (PAGE + 24)  # reused from its start, not grown to ~500 pages


def test_pending_frames_are_read_from_the_wal_index(tmp_path):
    path = tmp_path / "db.sqlite"
    conn = connect(path)
    conn.execute("PRAGMA wal_autocheckpoint=0")
    conn.execute("CREATE TABLE t (data BLOB)")
    conn.executemany("INSERT INTO t VALUES (?)", [(b"y" * (PAGE - 200),)] * 20)
    index = WalIndex(Path(f"{path}-shm"))
    try:
        assert index.pending() >= 20
        conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        assert index.pending() == 0
    finally:
        conn.close()
        index.close()
    assert WalIndex(tmp_path / "missing-shm").pending() == 0


HOLDER = """
import asyncio, sys
from pathlib import Path
from tidepost.queue.sqlite import SqliteQueue
from tidepost.queue import sqlite_writer

sqlite_writer.CHECKPOINT_PAGES = 1   # every round reads the WAL index
async def main():
    queue = SqliteQueue(Path(sys.argv[1]))
    for _ in range(5):
        await queue.set_hold("uplink", True, 0.0, "test")
    print("ready", flush=True)
    sys.stdin.readline()
    await queue.close()
asyncio.run(main())
"""


def test_reading_the_wal_index_keeps_sqlites_lock_on_it(tmp_path):
    """Another process must still see this one using the -shm (SIGBUS otherwise).

    SQLite (os_unix.c) holds a shared lock on byte 128 of the -shm (the
    "DMS" byte) for as long as a connection maps it; a process that can take
    it exclusively believes it is alone and truncates the file.
    """
    path = tmp_path / "queue.sqlite"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(path)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        with open(f"{path}-shm", "r+b") as shm:
            with pytest.raises(OSError):
                fcntl.lockf(shm, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 128)
    finally:
        holder.communicate("stop\n", timeout=30)
    assert holder.returncode == 0


def test_the_wal_is_reused_under_a_steady_stream_of_commits(tmp_path, monkeypatch):
    """Writes always waiting (as under load): the WAL must still start again."""
    monkeypatch.setattr(sqlite_writer, "CHECKPOINT_PAGES", 50)
    writer, path = make_writer(tmp_path)

    async def stream() -> None:
        await asyncio.gather(*(commit_many(writer, 40, 2) for _ in range(10)))

    try:
        asyncio.run(stream())
        wal_size = Path(f"{path}-wal").stat().st_size
    finally:
        writer.stop()
    assert wal_size < 300 * (PAGE + 24)  # ~800 pages written in all, <= 20 at a time
