"""SIGKILL `tidepost queue delete --all` in the middle of its transaction.

Each admin change is one transaction (docs/QUEUE.md), so a command killed
midway must leave the queue exactly as it was: every message, body and
recipient still there, nothing half deleted, and the store healthy enough
that the same command then runs to the end.

"Midway" is made sure of, not hoped for: SQLite writes the pages of a
large transaction to the write-ahead log as its page cache fills, long
before the commit, so the test kills the command once the log has grown
past WAL_TRIGGER, a small part of what the whole delete writes.
"""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tidepost_integration_fixtures import tidepost_argv

pytestmark = [pytest.mark.integration, pytest.mark.crash]

sys.path.insert(0, str(Path(__file__).parents[2] / "bench"))
from queue_views import fill  # noqa: E402 - the benchmark's bulk filler, the real schema

MESSAGES = 30_000
WAL_TRIGGER = 4 * 2**20  # bytes of log before the kill; the delete writes over 50 MiB


def counts(path: Path) -> dict[str, int]:
    """Rows per table, and rows whose message is gone (must be none)."""
    db = sqlite3.connect(path)
    try:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        found = {table: db.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
                 for table in ("messages", "bodies", "recipients")}
        found["orphans"] = db.execute(
            "SELECT (SELECT count(*) FROM recipients WHERE message_id NOT IN "
            "(SELECT id FROM messages)) + (SELECT count(*) FROM bodies WHERE message_id "
            "NOT IN (SELECT id FROM messages))").fetchone()[0]
        return found
    finally:
        db.close()


def test_a_delete_killed_midway_deletes_nothing_and_can_run_again(tmp_path):
    spool = tmp_path / "spool"
    spool.mkdir()
    queue = spool / "queue.sqlite"
    fill(queue, MESSAGES, time.time())
    config = tmp_path / "tidepost.toml"
    config.write_text(f'hostname = "site.test"\nspool = "{spool}"\n'
                      '[system]\nuser = "root"\n')  # the test's folders are root's alone
    whole = {"messages": MESSAGES, "bodies": MESSAGES, "recipients": MESSAGES, "orphans": 0}
    assert counts(queue) == whole
    wal = spool / "queue.sqlite-wal"
    command = [*tidepost_argv(), "queue", "delete", "--all", "-c", str(config)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while process.poll() is None and time.monotonic() < deadline:
            if wal.exists() and wal.stat().st_size >= WAL_TRIGGER:
                process.send_signal(signal.SIGKILL)
                break
            time.sleep(0.002)
    finally:
        if process.poll() is None and process.returncode is None:
            process.kill()
        process.wait()
    assert process.returncode == -signal.SIGKILL, "the delete ended before it was killed"
    assert counts(queue) == whole  # all of it still there: the transaction never committed
    done = subprocess.run(command, capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"deleted {MESSAGES} recipients of {MESSAGES} messages".encode() in done.stdout
    assert counts(queue) == {"messages": 0, "bodies": 0, "recipients": 0, "orphans": 0}
