"""SIGKILL `tidepost serve` while it opens a spool of the schema before DSN (version 3).

The migration to version 4 (DSN requests, queue/sqlite.py) is one
transaction at open.  The daemon is killed at random moments from its start
on, again and again: the first kill comes while it starts up and opens the
spool (around the migration; which side of its commit is not known), the
later ones during the delivery of the old mail.  At the end every old
message is in its Maildir exactly once and the spool is at version 4.
"""

from __future__ import annotations

import collections
import os
import random
import sqlite3
import time
import uuid

import pytest

from tidepost.queue.sqlite import MIGRATIONS, SCHEMA

pytestmark = [pytest.mark.integration, pytest.mark.crash]

KILLS = int(os.environ.get("TIDEPOST_CRASH_KILLS", "8"))
MESSAGES = 200
USERS = ("carol", "dave")


def version_3_spool(path, tokens: list[str]) -> None:
    """A spool as tidepost wrote it before DSN requests, holding `tokens` as queued mail."""
    old = sqlite3.connect(path)
    old.executescript(SCHEMA + MIGRATIONS[0] + MIGRATIONS[1] + "PRAGMA user_version=3;")
    for n, tok in enumerate(tokens, 1):
        body = f"From: bob@site.test\r\nSubject: old {tok}\r\n\r\ntoken {tok}\r\n".encode()
        old.execute("INSERT INTO messages(id, queue_id, sender, arrival, size, body_type, "
                    "smtputf8) VALUES (?, ?, 'bob@site.test', 1.0, ?, '7BIT', 0)",
                    (n, f"OLD{n:09d}", len(body)))
        old.execute("INSERT INTO bodies VALUES (?, ?)", (n, body))
        old.execute("INSERT INTO recipients(message_id, local, domain, state, next_try) "
                    "VALUES (?, ?, 'site.test', 'queued', 1.0)", (n, USERS[n % 2]))
    old.commit()
    old.close()


def test_killed_while_migrating_and_delivering_the_old_mail_arrives_once(tidepost_node):
    seed = int(os.environ.get("TIDEPOST_CRASH_SEED") or random.randrange(1 << 30))
    print(f"TIDEPOST_CRASH_SEED={seed}")
    rng = random.Random(seed)
    node = tidepost_node(start=False)
    node.spool.mkdir(parents=True, exist_ok=True)
    tokens = [uuid.uuid4().hex for _ in range(MESSAGES)]
    version_3_spool(node.spool / "queue.sqlite", tokens)
    for round_ in range(KILLS):
        node.start(wait=False)
        # The start itself takes about a second; the first kill comes within it.
        time.sleep(rng.uniform(0.3, 1.0) if round_ == 0 else rng.uniform(0.0, 1.5))
        node.kill()
    node.start()
    node.wait_queue_empty(timeout=90)
    copies = collections.Counter(tok for user in USERS for m in node.maildir(user)
                                 for tok in tokens if tok.encode() in m)
    assert [t for t in tokens if copies[t] == 0] == []
    assert [t for t in tokens if copies[t] > 1] == []
    check = sqlite3.connect(node.spool / "queue.sqlite")
    assert check.execute("PRAGMA user_version").fetchone()[0] == 4
    assert check.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    check.close()
    assert node.stop() == 0
