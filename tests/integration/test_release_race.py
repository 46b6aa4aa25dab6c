"""A release covers every message committed before it, whichever process queued it.

Seen before the fix: `tidepost sendmail` immediately followed by `tidepost
link up uplink` on a route with a schedule printed "1 recipients scheduled"
and left the new message queued until the next schedule slot, because the
daemon learnt of mail queued by other processes only at its next poll.  The
poll interval here is a minute, so only a release that looks at the queue
itself can deliver within the few seconds each round allows.
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.integration

ROUNDS = 12


def test_sendmail_then_link_up_delivers_at_once_every_time(tidepost_node, smtp_sink,
                                                           sink_port):
    sink = smtp_sink("127.0.0.2", sink_port)
    node = tidepost_node(
        queue={"poll_interval": "60s"},
        route=[{"name": "uplink", "domains": ["*"], "transport": "smarthost",
                "smarthost": f"[127.0.0.2]:{sink_port}", "start_held": True,
                "schedule": ["every 12h"]}])
    for round_number in range(ROUNDS):
        tag = f"race-{round_number}"
        node.sendmail(["-i", f"{tag}@far.example"], f"Subject: {tag}\n\n{tag}\n")
        released = node.cli("link", "up", "uplink", "-c", str(node.config_path))
        assert b"released" in released.stdout
        node.wait_for(lambda: f"{tag}@far.example" in sink.recipients(), timeout=8,
                      what=f"round {round_number} delivered right after the release")
        node.cli("link", "down", "uplink", "-c", str(node.config_path))
    recipients = sink.recipients()
    assert sorted(recipients) == sorted(f"race-{n}@far.example" for n in range(ROUNDS))
