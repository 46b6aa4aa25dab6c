"""SIGKILL `tidepost serve` again and again while clients submit mail over SMTP.

SPEC section 4: a 250 after DATA means the message is on stable storage; a
crash at any moment loses no acknowledged message and delivers none twice.

Client threads send messages, each carrying a unique token, and remember
the tokens that got a 250.  Meanwhile the test kills the daemon with
SIGKILL at random moments (seeded; the seed is printed) and restarts it.
At the end, with the daemon up, the queue must drain, and:

- local delivery: every acknowledged token is in its recipient's Maildir
  exactly once, and no token is there twice at all;
- remote delivery (smtp-sink): acknowledged tokens are all delivered.  A
  crash after the receiver's 250 but before the queue records it makes a
  duplicate that no sender can avoid (RFC 1047); their count is printed,
  and each extra copy must follow a kill that came within KILL_WINDOW
  seconds after the copy before it.
"""

from __future__ import annotations

import collections
import os
import random

import pytest

import kill_harness as harness
from kill_harness import TOKEN

pytestmark = [pytest.mark.integration, pytest.mark.crash]

KILLS = int(os.environ.get("TIDEPOST_CRASH_KILLS", "8"))
KILL_WINDOW = 0.25  # s before a kill in which a delivered copy may go unrecorded (seen: <10 ms)
CLOCK_SLACK = 0.05  # file times against time.time() in the test
CLIENTS = 3
DESTINATION_CONCURRENCY = 10  # the default of delivery.destination_concurrency
ZONE = ["example.test. MX 10 mx1.example.test.", "mx1.example.test. A 127.0.0.2"]


def submit_while_killing(node, recipients: list[str], seed: int):
    """The harness's run: CLIENTS submitters, KILLS kills of `node`."""
    return harness.submit_while_killing(lambda: node.port, [node], recipients, seed, KILLS,
                                        clients=CLIENTS)


def bounded(result: harness.Tally) -> None:
    """Each kill can cost at most one repeat per connection in flight.

    A client has one transaction open at a time, so at most CLIENTS
    messages per kill are stored without their 250; the daemon has at most
    destination_concurrency connections, each with one delivery between
    the remote 250 and its record (pipeline_depth 1), so at most that many
    duplicates per kill.
    """
    assert result.stored_without_250 <= CLIENTS * result.kills
    assert result.duplicates <= DESTINATION_CONCURRENCY * result.kills


def excused(arrivals: list[float], kills: list[float]) -> bool:
    """True when each copy after the first follows a kill that came just after the copy
    before it (within KILL_WINDOW): the only way a crash-safe queue delivers twice."""
    return all(any(kill - KILL_WINDOW <= earlier <= kill + CLOCK_SLACK and later >= kill
                   for kill in kills)
               for earlier, later in zip(arrivals, arrivals[1:]))


@pytest.fixture
def seed() -> int:
    """The random seed (TIDEPOST_CRASH_SEED to repeat a run)."""
    value = int(os.environ.get("TIDEPOST_CRASH_SEED") or random.randrange(1 << 30))
    print(f"TIDEPOST_CRASH_SEED={value}")
    return value


def test_local_mail_survives_sigkill_exactly_once(tidepost_node, seed):
    node = tidepost_node()
    users = ["alice", "carol", "dave"]
    run = submit_while_killing(node, [f"{u}@site.test" for u in users], seed)
    node.wait_queue_empty(timeout=60)

    delivered = harness.copies_of(([f"{user}@site.test"], m)
                                  for user in users for m in node.maildir(user))
    result = harness.tally(run, delivered)
    print(result.line("local"))
    assert result.acknowledged, "no message was acknowledged at all"
    assert result.lost == [], f"acknowledged but not delivered: {result.lost[:20]}"
    assert [k for k, n in delivered.items() if n > 1] == []
    assert result.strangers == 0
    bounded(result)
    assert node.maildir("bob") == []  # no DSN came back to the sender
    assert node.stop() == 0


def test_remote_mail_survives_sigkill(tidepost_node, unbound, smtp_sink, sink_port, seed):
    sink = smtp_sink("127.0.0.2", sink_port)
    node = tidepost_node(dns=unbound(ZONE), smtp_port=sink_port)
    rcpts = [f"user{i}@example.test" for i in range(5)]
    run = submit_while_killing(node, rcpts, seed)
    kills = run.kills
    node.wait_queue_empty(timeout=60)

    messages = sink.messages()
    result = harness.tally(run, harness.copies_of((m.recipients, m.body) for m in messages))
    print(result.line("remote"))
    assert result.acknowledged, "no message was acknowledged at all"
    assert result.lost == [], f"acknowledged but never delivered: {result.lost[:20]}"
    assert result.strangers == 0
    bounded(result)
    # A duplicate is excusable only when the receiver's 250 for the earlier copy came
    # just before a kill, before the queue could record it (RFC 1047), and the later
    # copy came after that kill.  Two copies from one daemon's lifetime are a bug.
    arrivals = collections.defaultdict(list)
    for m in messages:
        for token in TOKEN.findall(m.body):
            for rcpt in m.recipients:
                arrivals[(rcpt, token.decode())].append(m.path.stat().st_mtime)
    unexcused = {key: times for key, times in arrivals.items()
                 if not excused(sorted(times), kills)}
    lags = [min(k - t for k in kills if k >= t - CLOCK_SLACK)
            for times in arrivals.values() if len(times) > 1
            for t in sorted(times)[:-1] if any(k >= t - CLOCK_SLACK for k in kills)]
    if lags:
        print(f"remote: duplicated copies arrived {min(lags):.3f}-{max(lags):.3f}s "
              f"before a kill")
    assert unexcused == {}, (f"{len(unexcused)} recipients got copies not explained by "
                             f"a kill (kills at {kills}): {dict(list(unexcused.items())[:10])}")
    assert node.maildir("bob") == []
    assert node.stop() == 0
