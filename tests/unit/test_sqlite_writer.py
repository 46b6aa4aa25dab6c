"""The SQLite writer's checkpoints: often enough to bound the WAL, never per commit."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from tidepost.queue import sqlite_writer
from tidepost.queue.sqlite import connect
from tidepost.queue.sqlite_writer import Writer, wal_frames_pending

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
        pending = wal_frames_pending(Path(f"{path}-shm"))
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
    shm = Path(f"{path}-shm")
    try:
        assert wal_frames_pending(shm) >= 20
        conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        assert wal_frames_pending(shm) == 0
    finally:
        conn.close()
    assert wal_frames_pending(tmp_path / "missing-shm") == 0


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
