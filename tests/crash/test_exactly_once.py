"""Exactly-once between two tidepost nodes (XTIDEPOST TRANSFER, docs/EXTENSIONS.md).

A sending node ("site") relays everything for relay.test to a receiving
node ("relay") that delivers it into Maildirs.  Clients submit to the site
while one node, then the other, is SIGKILLed again and again.  Plain SMTP
cannot avoid a duplicate when the crash comes between the receiver's 250
and the sender's record of it; with transfer keys the repeat is answered
250 and not stored: every acknowledged message must arrive exactly once.

Also: the receiver answers a repeat without a second copy (partial
repeats included), offers the extension only to clients that may use it,
and a tidepost speaks plain SMTP to everyone else (smtp-sink).
TIDEPOST_CRASH_KILLS sets the kills per node (bench/crash.py runs 100).
"""

from __future__ import annotations

import os
import random
import smtplib

import pytest

from kill_harness import copies_of, message, submit_while_killing, tally

pytestmark = [pytest.mark.integration, pytest.mark.crash]

KILLS = int(os.environ.get("TIDEPOST_CRASH_KILLS", "10"))
USERS = ["alice", "carol", "dave"]


def relay_node(tidepost_node, **overrides):
    """The receiving tidepost: relay.test is local, Maildirs in its spool."""
    return tidepost_node(hostname="relay.test",
                         local={"domains": ["relay.test"], "users": ["alice", "bob", "carol",
                                                                      "dave"],
                                "system_users": False}, **overrides)


def site_node(tidepost_node, relay, **overrides):
    """The sending tidepost: everything goes to `relay` as its smarthost."""
    return tidepost_node(route=[{"name": "uplink", "domains": ["*"], "transport": "smarthost",
                                 "smarthost": f"[127.0.0.1]:{relay.port}",
                                 "on_demand": False, "start_held": False}], **overrides)


def relay_copies(relay):
    """{(recipient, token): copies} in the relay's Maildirs."""
    return copies_of(([f"{user}@relay.test"], body)
                     for user in USERS for body in relay.maildir(user))


@pytest.fixture
def seed() -> int:
    """The random seed (TIDEPOST_CRASH_SEED to repeat a run)."""
    value = int(os.environ.get("TIDEPOST_CRASH_SEED") or random.randrange(1 << 30))
    print(f"TIDEPOST_CRASH_SEED={value}")
    return value


def test_no_duplicates_between_tidepost_nodes_killed_again_and_again(tidepost_node, seed):
    relay = relay_node(tidepost_node)
    site = site_node(tidepost_node, relay)
    run = submit_while_killing(lambda: site.port, [site, relay],
                               [f"{u}@relay.test" for u in USERS], seed, KILLS,
                               pause=(0.2, 0.6))
    site.wait_queue_empty(timeout=90)
    relay.wait_queue_empty(timeout=60)
    result = tally(run, relay_copies(relay))
    print(result.line("tidepost to tidepost"))
    assert result.acknowledged > 0
    assert result.lost == []
    assert result.strangers == 0
    assert result.duplicates == 0
    assert "transfer=" in relay.log_path.read_text()  # the extension was used
    assert site.stop() == 0 and relay.stop() == 0


def test_a_repeated_transfer_is_acknowledged_and_not_stored_again(tidepost_node):
    relay = relay_node(tidepost_node)
    with smtplib.SMTP("127.0.0.1", relay.port, local_hostname="site.test") as client:
        client.ehlo()
        assert client.esmtp_features.get("xtidepost", "").split() == ["TRANSFER", "BATCH"]
        first = ["alice@relay.test", "carol@relay.test"]
        assert client.sendmail("bob@site.test", first, message("t1"),
                               mail_options=["XTRANSFER=0123456789AB.1700000000000"]) == {}
        # The whole transfer again, and a repeat that adds dave: only dave is new.
        client.sendmail("bob@site.test", first, message("t1"),
                        mail_options=["XTRANSFER=0123456789AB.1700000000000"])
        client.sendmail("bob@site.test", ["carol@relay.test", "dave@relay.test"],
                        message("t1"), mail_options=["XTRANSFER=0123456789AB.1700000000000"])
        # Another transfer id is another message, even with the same content.
        client.sendmail("bob@site.test", ["alice@relay.test"], message("t1"),
                        mail_options=["XTRANSFER=0123456789AB.1700000000001"])
        code, _ = client.docmd("MAIL FROM:<bob@site.test> XTRANSFER=bad/id")
        assert code == 501
    relay.wait_queue_empty(timeout=30)
    assert relay_copies(relay) == {("alice@relay.test", "t1"): 2, ("carol@relay.test", "t1"): 1,
                                   ("dave@relay.test", "t1"): 1}
    assert "duplicate" in relay.log_path.read_text()
    assert relay.stop() == 0


def test_only_trusted_clients_are_offered_transfers(tidepost_node):
    relay = relay_node(tidepost_node, smtp={"relay_networks": ["192.0.2.0/24"]})
    with smtplib.SMTP("127.0.0.1", relay.port, local_hostname="stranger.test") as client:
        client.ehlo()
        # XTIDEPOST BATCH is for anyone (the SMTP checks apply); TRANSFER is not
        assert client.esmtp_features.get("xtidepost", "").split() == ["BATCH"]
        code, _ = client.docmd("MAIL FROM:<x@stranger.test> XTRANSFER=0123456789AB.1")
        assert code == 555
    assert relay.stop() == 0


def test_plain_smtp_with_every_other_peer(tidepost_node, smtp_sink, sink_port):
    sink = smtp_sink("127.0.0.2", sink_port)
    site = tidepost_node(route=[{"name": "uplink", "domains": ["*"], "transport": "smarthost",
                                 "smarthost": f"[127.0.0.2]:{sink_port}",
                                 "on_demand": False, "start_held": False}])
    site.send("bob@site.test", ["someone@example.test"], message("plain"))
    site.wait_queue_empty(timeout=30)
    assert [m.recipients for m in sink.messages()] == [("someone@example.test",)]
    assert site.stop() == 0
