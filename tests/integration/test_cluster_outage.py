"""A database outage under running nodes: stop PostgreSQL (-m immediate), start it again.

Real parts: a private PostgreSQL server of this test's own (it is crashed
and restarted), unbound, two `tidepost serve` nodes on it, and the counting
SMTP sink of test_cluster.py standing in for the destinations' servers.
- before: mail to out.test is delivered, mail to site.test (a customer) held;
  one delivery to out.test is in flight, its 250 held back by the sink;
- the database is stopped as by a crash; the sink then says 250 to that
  delivery, whose outcome the node cannot record;
- while it is down: every submission to either node is answered 451 4.3.0
  (never 250), ETRN 458, both nodes keep running, with little CPU and a
  bounded log (no traceback, a line per refused message and a few more);
- after it is back, without a restart: both nodes accept again, deliver
  what they accept, the delivery done during the outage is recorded and not
  sent again, an ETRN delivers the held mail of before and after, each
  recipient once; the nodes' LISTEN connections are back (a `tidepost
  passwd` on one node is known to the other at once, with a 30 s poll).
"""

from __future__ import annotations

import base64
import os
import smtplib
import time

import pytest

from conftest import wait_for
from test_cluster import message, relay_nodes, sink  # noqa: F401 - sink: a fixture
from tidepost.testing.pgcluster import PrivateCluster, binaries

pytestmark = pytest.mark.integration

ZONE = ["site.test. 300 MX 10 mx.site.test.", "mx.site.test. 300 A 127.0.0.1",
        "out.test. 300 MX 10 mx.out.test.", "mx.out.test. 300 A 127.0.0.1"]
OUTAGE = 8.0        # seconds the database stays down
CPU_BOUND = 1.0     # CPU seconds a node may use over OUTAGE (idle polling, not spinning)
LOG_BOUND = 12      # log lines a node may write over OUTAGE beside those of each refusal


@pytest.fixture
def database():
    """A PostgreSQL server of this test's own: the test crashes it."""
    if binaries() is None:
        pytest.skip("PostgreSQL is not installed (./run-tests installs postgresql)")
    server = PrivateCluster().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pair(database, tidepost_node, unbound, sink):
    dsn = database.create_database("outage")
    return relay_nodes(tidepost_node, unbound(ZONE), sink, dsn, 2, "30s",
                       relay={"customer_domains": ["site.test"], "etrn_rate": 1000})


def submit(node, n: int, rcpt: str) -> tuple[int, bytes]:
    """One message over SMTP; the reply to its end of DATA (or to the first refusal)."""
    with smtplib.SMTP("127.0.0.1", node.port, local_hostname="client.test", timeout=30) as c:
        c.ehlo()
        for code, text in (c.mail("x@far.test"), c.rcpt(rcpt)):
            if code != 250:
                return code, text
        return c.data(message(n).encode())


def cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def log_lines(node) -> list[bytes]:
    return node.log_path.read_bytes().splitlines()


def auth_plain(node, user: str, password: str) -> int:
    token = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
    with smtplib.SMTP("127.0.0.1", node.port, local_hostname="client.test", timeout=30) as c:
        c.ehlo()
        return c.docmd("AUTH", f"PLAIN {token}")[0]


def etrn(node) -> int:
    with smtplib.SMTP("127.0.0.1", node.port, local_hostname="client.test", timeout=30) as c:
        c.ehlo()
        return c.docmd("ETRN", "site.test")[0]


def test_a_database_outage_refuses_mail_loses_nothing_and_the_nodes_recover(
        pair, database, sink):
    a, b = pair
    assert submit(a, 1, "u@out.test")[0] == 250
    assert submit(b, 2, "u@site.test")[0] == 250
    wait_for(lambda: sink.total() == 1, 20, what="m1 delivered")
    sink.delaying = True
    assert submit(a, 3, "u@out.test")[0] == 250
    wait_for(lambda: sink.waiting == 1, 20, what="m3 in flight, its 250 held back")

    database.crash()
    sink.delaying = False  # m3 is delivered now; node A cannot record it
    wait_for(lambda: sink.total() == 2, 10, what="m3 answered")
    cpu = {node: cpu_seconds(node.process.pid) for node in pair}
    lines = {node: len(log_lines(node)) for node in pair}
    started = time.monotonic()
    replies, etrns = [], []
    while time.monotonic() - started < OUTAGE:
        for node, n in ((a, 10), (b, 11)):
            replies.append(submit(node, n, "u@out.test"))
        etrns.append(etrn(b))
        time.sleep(1.0)
    for node in pair:
        assert node.running, "a node died with its database"
        used = cpu_seconds(node.process.pid) - cpu[node]
        assert used < CPU_BOUND, f"{used:.2f} CPU seconds while the database was down"
        outage_log = log_lines(node)[lines[node]:]
        others = [line for line in outage_log if b"not queued" not in line
                  and b"NOQUEUE" not in line and b"ETRN site.test" not in line]
        assert len(others) < LOG_BOUND and not any(b"Traceback" in line for line in outage_log), \
            b"\n".join(outage_log).decode()
    assert replies and all(code == 451 and b"4.3.0" in text for code, text in replies), replies
    assert set(etrns) == {458}  # "unable to queue messages for node", try again later

    database.restart()
    wait_for(lambda: submit(a, 4, "u@out.test")[0] == 250, 30, interval=0.5,
             what="node A accepting again")
    assert submit(b, 5, "u@out.test")[0] == 250
    assert submit(b, 6, "u@site.test")[0] == 250
    expected_out = {("m1", "u@out.test"), ("m3", "u@out.test"), ("m4", "u@out.test"),
                    ("m5", "u@out.test")}
    wait_for(lambda: set(sink.accepted) >= expected_out, 30, what="delivered after the outage")
    assert etrn(a) in (250, 253)
    expected = expected_out | {("m2", "u@site.test"), ("m6", "u@site.test")}
    wait_for(lambda: set(sink.accepted) >= expected, 30, what="the held mail after ETRN")
    time.sleep(2.0)  # anything sent twice (m3 above all) would arrive by now
    assert {key[0] for key in sink.accepted} & {"m10", "m11"} == set()  # 451: not queued
    assert set(sink.accepted) == expected and sink.duplicates() == {}
    a.wait_queue_empty()

    stored = a.cli("passwd", "ship", "-c", str(a.config_path), stdin="tide-secret")
    assert "ship: added" in stored.stdout.decode()
    wait_for(lambda: auth_plain(b, "ship", "tide-secret") == 235, 5,
             what="node B hearing the change (its LISTEN connection back)")
    assert "LISTEN connection back" in b.log_tail(400)
