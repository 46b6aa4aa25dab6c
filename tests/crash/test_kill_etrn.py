"""ETRN on a relay (RFC 1985) exactly once: two at once, and SIGKILL during the flush.

The relay holds mail for its customer cust.test, whose MX is an smtp-sink.
Two ETRNs sent at the same moment deliver each held message once.  Then,
with the sink slow to answer DATA (`-w`), the relay is killed while every
message of an ETRN flush is in flight: none had its content sent, so after
the restart they are all held again, none lost, and the next ETRN delivers
each exactly once.
"""

from __future__ import annotations

import collections
import re
import smtplib
import threading
import time

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.crash]

ZONE = ["cust.test. MX 10 mx.cust.test.", "mx.cust.test. A 127.0.0.2"]
TOKEN = re.compile(rb"tok-\d+-x")


def etrn(port: int) -> tuple[int, bytes]:
    """One ETRN cust.test from a fresh client connection."""
    with smtplib.SMTP("127.0.0.1", port, local_hostname="customer.test", timeout=60) as client:
        client.ehlo()
        return client.docmd("ETRN", "cust.test")


def hold(relay, numbers: range) -> None:
    """Queue one message per number for cust.test, each with its token."""
    for n in numbers:
        relay.send("x@far.test", [f"u{n % 3}@cust.test"],
                   f"Subject: held {n}\r\nX-Token: tok-{n}-x\r\n\r\nbody {n}\r\n")


def copies(sink) -> collections.Counter:
    """How many times the sink received each token."""
    return collections.Counter(t for m in sink.messages() for t in TOKEN.findall(m.body))


def test_etrn_delivers_each_held_message_once_even_when_killed_midway(
        tidepost_node, unbound, smtp_sink, sink_port):
    sink = smtp_sink("127.0.0.2", sink_port)
    relay = tidepost_node(dns=unbound(ZONE), smtp_port=sink_port, hostname="relay.test",
                          local={"domains": ["relay.test"], "users": ["postmaster"],
                                 "system_users": False},
                          relay={"customer_domains": ["cust.test"]})
    hold(relay, range(30))
    replies: list[tuple[int, bytes]] = []
    threads = [threading.Thread(target=lambda: replies.append(etrn(relay.port)))
               for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(code for code, _ in replies) in ([250, 253], [251, 253], [253, 253])
    relay.wait_queue_empty()
    relay.wait_for(lambda: len(copies(sink)) == 30, what="30 messages at the sink")
    assert set(copies(sink).values()) == {1}

    sink.start(options=["-w", "4"])  # DATA answered after 4 s: nothing completes before
    hold(relay, range(30, 50))
    assert etrn(relay.port)[0] == 253
    relay.wait_for(lambda: relay.queue().count("in flight") == 20, what="the flush in flight")
    relay.kill()
    sink.start()
    relay.start()
    assert relay.queue().count("cust.test") == 20  # all back, none lost
    assert etrn(relay.port)[0] == 253
    relay.wait_queue_empty()
    relay.wait_for(lambda: len(copies(sink)) == 50, what="50 messages at the sink")
    assert set(copies(sink).values()) == {1}
    assert relay.stop() == 0
