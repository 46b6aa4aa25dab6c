"""Mail whose MX hosts lead back to this tidepost (RFC 5321 5.1), against real DNS.

The node listens on 127.0.0.1:P and dials MX hosts on port P, so an MX host
with the address 127.0.0.1 is the node itself.  As a backup MX it hands the
mail to the better host (a smtp-sink on 127.0.0.2:P); when it is the best
host, or a domain's own address, the mail bounces with 5.4.6 instead of
looping until the Received-header count stops it.
"""

from __future__ import annotations

import pytest

from test_end_to_end import dsn_report, message, token

pytestmark = pytest.mark.integration

ZONE = [
    "backup.test. MX 10 primary.backup.test.",
    "backup.test. MX 20 us.backup.test.",
    "primary.backup.test. A 127.0.0.2",
    "us.backup.test. A 127.0.0.1",
    "first.test. MX 10 us.first.test.",
    "first.test. MX 20 other.first.test.",
    "us.first.test. A 127.0.0.1",
    "other.first.test. A 127.0.0.2",
    "itself.test. A 127.0.0.1",
]


def test_our_own_mx_host_is_skipped_or_the_mail_bounces_as_a_loop(
        tidepost_node, unbound, smtp_sink, sink_port):
    sink = smtp_sink("127.0.0.2", sink_port)
    node = tidepost_node(dns=unbound(ZONE), smtp_port=sink_port, start=False,
                         smtp={"listen": [f"127.0.0.1:{sink_port}"]})
    node.port = sink_port
    node.start()
    kept = token()
    node.send("alice@site.test", ["someone@backup.test"], message(kept))
    node.wait_for(lambda: sink.messages(), what="the backup MX's delivery to the primary")
    assert kept.encode() in sink.messages()[0].body

    node.send("alice@site.test", ["a@first.test", "b@itself.test"], message(token()))
    node.wait_queue_empty()
    dsns = node.maildir("alice")  # one per destination, or one for both
    fields = [f for raw in dsns for f in dsn_report(raw)[1]]
    assert sorted((f["final-recipient"].lower(), f["status"]) for f in fields) == [
        ("rfc822; a@first.test", "5.4.6"), ("rfc822; b@itself.test", "5.4.6")]
    assert all(b"loops back to myself" in raw for raw in dsns)
    assert len(sink.messages()) == 1  # the second MX of first.test is not tried
