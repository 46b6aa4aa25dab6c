"""Queue administration beside a running daemon: show, hold, release, requeue, delete.

A real `tidepost serve` delivers to a smtp-sink MX host found through
unbound, and a `tidepost flush` runs beside it.  Retries wait an hour and the daemon looks at the queue only
every 30 s on its own, so a recipient delivered within seconds of a
`release` or `requeue` was scheduled because the command told the daemon
(its control socket), and one not delivered while its MX host accepts was
kept back by the hold or the delete.
"""

from __future__ import annotations

import time

import pytest

pytestmark = pytest.mark.integration

ZONE = ["example.test. MX 10 mx1.example.test.", "mx1.example.test. A 127.0.0.2"]
PROMPT = 8.0  # seconds within which a released or requeued recipient must be delivered


def message(name: str) -> str:
    """A small message whose subject names it."""
    return f"From: alice@site.test\r\nSubject: admin test {name}\r\n\r\nbody of {name}\r\n"


def queue_ids(node) -> dict[str, str]:
    """{recipient: queue id} of what the listing shows."""
    rows = node.cli("queue", "--json", "-c", str(node.config_path)).stdout.decode()
    import json
    return {row["recipient"]: row["queue_id"] for row in map(json.loads, rows.splitlines())}


def admin(node, *args: str) -> str:
    """Run `tidepost queue ARGS` against the node; its standard output and error."""
    done = node.cli("queue", *args, "-c", str(node.config_path))
    return done.stdout.decode() + done.stderr.decode()


def test_hold_release_requeue_delete_and_show_beside_the_daemon(tidepost_node, unbound,
                                                                smtp_sink, sink_port):
    sink = smtp_sink("127.0.0.2", sink_port)
    sink.stop()  # the MX host is down: every first attempt is deferred
    node = tidepost_node(dns=unbound(ZONE), smtp_port=sink_port,
                         queue={"min_backoff": "1h", "max_backoff": "1h",
                                "poll_interval": "30s"})
    for name in ("held", "requeued", "deleted"):
        node.send("alice@site.test", [f"{name}@example.test"], message(name))
    node.wait_for(lambda: node.queue().count("retry ") == 3, timeout=30,
                  what="three recipients deferred for an hour")
    ids = queue_ids(node)

    out = admin(node, "hold", ids["held@example.test"])
    assert "held 1 recipient of 1 message" in out
    assert f"{ids['held@example.test']}: held by=" in out  # the admin log line
    shown = admin(node, "show", ids["held@example.test"])
    assert "recipient:  <held@example.test>  route internet, held (message), 1 attempts" in shown
    assert "last error: 4." in shown and "Subject: admin test held" in shown
    assert "held (message)" in node.queue()
    assert "deleted 1 recipient of 1 message" in admin(node, "delete", ids["deleted@example.test"])
    assert "deleted@example.test" not in node.queue()

    # A flush beside the daemon tries what is queued, and not the held one.
    assert b"flushed 1 recipients" in node.flush().stdout

    sink.start()
    started = time.monotonic()
    admin(node, "requeue", ids["requeued@example.test"])
    node.wait_for(lambda: "requeued@example.test" in sink.recipients(), timeout=PROMPT,
                  what="the requeued recipient delivered at once")
    time.sleep(2.0)  # the held one must stay held while its MX host accepts
    assert sink.recipients() == ["requeued@example.test"]
    admin(node, "release", ids["held@example.test"])
    node.wait_for(lambda: "held@example.test" in sink.recipients(), timeout=PROMPT,
                  what="the released recipient delivered at once")
    assert time.monotonic() - started < 25  # well before the daemon's own 30 s look
    node.wait_queue_empty()
    assert sorted(sink.recipients()) == ["held@example.test", "requeued@example.test"]
    assert b"body of deleted" not in b"".join(m.body for m in sink.messages())
