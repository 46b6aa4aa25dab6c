"""Three queue runners at once (the daemon and two `tidepost flush`) deliver each recipient once.

SPEC section 4: "Multiple queue runners (a cron flush while the daemon runs,
two flushes at once) never deliver a message twice."  The queue is filled
with the daemon down (one `tidepost sendmail -bs` session); the daemon
starts, and once it is delivering, two flushes start together and race it
and each other for the recipients still queued.
"""

from __future__ import annotations

import collections
import re
import time

import pytest

pytestmark = pytest.mark.integration

REMOTE = 300
LOCAL = 60
ZONE = ["example.test. MX 10 mx1.example.test.", "mx1.example.test. A 127.0.0.2"]


def bs_session(transactions: list[tuple[str, str]]) -> bytes:
    """An SMTP transcript for `sendmail -bs`: one message per (recipient, token)."""
    lines = ["HELO client.test"]
    for recipient, tok in transactions:
        lines += ["MAIL FROM:<alice@site.test>", f"RCPT TO:<{recipient}>", "DATA",
                  f"Subject: {tok}", "", f"token {tok}", "."]
    lines.append("QUIT")
    return ("\r\n".join(lines) + "\r\n").encode()


def test_daemon_and_two_flushes_deliver_each_recipient_once(
        tidepost_node, unbound, smtp_sink, sink_port):
    sink = smtp_sink("127.0.0.2", sink_port)
    node = tidepost_node(dns=unbound(ZONE), smtp_port=sink_port, start=False,
                         delivery={"max_concurrency": 2, "destination_concurrency": 2})
    remote = [(f"r{i}@example.test", f"remote-{i}-token") for i in range(REMOTE)]
    local = [("alice@site.test", f"local-{i}-token") for i in range(LOCAL)]
    done = node.sendmail(["-bs"], bs_session(remote + local))
    assert len(re.findall(rb"^250 2\.0\.0", done.stdout, re.M)) == REMOTE + LOCAL, done.stdout

    # The daemon claims a few dozen recipients at a time (max_concurrency 2); once it
    # delivers, two flushes start together and race it and each other for the rest.
    node.start()
    node.wait_for(lambda: sink.messages(), what="the daemon's first delivery")
    flushes = [node.flush_process(), node.flush_process()]
    deadline = time.monotonic() + 60
    for flush in flushes:
        assert flush.wait(max(deadline - time.monotonic(), 1)) == 0, \
            (node.folder / "flush.log").read_text()
    node.wait_queue_empty(timeout=max(deadline - time.monotonic(), 5))
    print("flushes:", (node.folder / "flush.log").read_text())  # who delivered how many

    counts = collections.Counter(sink.recipients())
    assert set(counts) == {r for r, _ in remote}
    assert [r for r, n in counts.items() if n > 1] == []
    delivered = collections.Counter(
        tok for m in node.maildir("alice") for _, tok in local if tok.encode() + b"\n" in m
        or tok.encode() + b"\r\n" in m)
    assert sorted(delivered) == sorted(tok for _, tok in local)
    assert [t for t, n in delivered.items() if n > 1] == []
    assert len(node.maildir("alice")) == LOCAL  # and nothing else: no DSN
