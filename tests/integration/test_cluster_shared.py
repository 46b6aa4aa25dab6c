"""The cluster's shared lists with real nodes: one command on one node, every node follows.

Real parts: a private PostgreSQL server (tests/conftest.py), unbound for
the customer's MX, two `tidepost serve` nodes on one database whose
configurations name no customer domain and no credentials file, `tidepost
customers` and `tidepost passwd` run against node A's configuration, and
a counting SMTP sink standing in for the customer's server.
- `customers add site.test` on A: node B accepts mail for site.test (its
  RCPT was refused before), holds it and answers ETRN for it, no restart,
  no SIGHUP; `customers remove` on A and B refuses site.test again;
- `passwd ship` on A: ship can AUTH PLAIN on B; `passwd --delete` and B
  answers 535 again;
- an ETRN answered by B is the last release `tidepost status` shows on A
  (and the reverse), with the node that answered, and no node writes
  SPOOL/customer-releases.json;
- `link down internet` on A: mail submitted to B waits (B follows the hold),
  `link up` on A and B sends again.
The poll interval is long (30 s): only the NOTIFY can make B follow in time.
"""

from __future__ import annotations

import base64
import json
import smtplib
import time

import pytest

from conftest import wait_for
from test_cluster import SITE_ZONE, message, relay_nodes, sink  # noqa: F401 - sink: a fixture

pytestmark = pytest.mark.integration

PASSWORD = "tide-secret"
FOLLOW = 5.0  # seconds a node may take to follow a change (a notice: well under one)


@pytest.fixture
def pair(pg_server, tidepost_node, unbound, sink, request):
    """Two relay nodes on one fresh database, no customer domain or user configured."""
    return two_nodes(pg_server, tidepost_node, unbound, sink, request,
                     smtp={"relay_networks": ["192.0.2.0/24"]})  # loopback: only customers


@pytest.fixture
def relaying_pair(pg_server, tidepost_node, unbound, sink, request):
    """Two such nodes that relay for loopback (to site.test, by its MX: the sink)."""
    return two_nodes(pg_server, tidepost_node, unbound, sink, request)


def two_nodes(pg_server, tidepost_node, unbound, sink, request, **sections) -> list:
    """Two started relay nodes on a database of the test's own, with `sections` configured."""
    dsn = pg_server.create_database("shared_" + request.node.name[-40:].lower())
    return relay_nodes(tidepost_node, unbound(SITE_ZONE), sink, dsn, 2, "30s",
                       relay={"etrn_rate": 1000}, **sections)


def rcpt(node, address: str) -> int:
    """The node's reply code to RCPT TO:<address> from an unauthenticated client."""
    with smtplib.SMTP("127.0.0.1", node.port, local_hostname="client.test", timeout=30) as c:
        c.ehlo()
        c.mail("x@far.test")
        return c.rcpt(address)[0]


def auth_plain(node, user: str, password: str) -> int:
    """The node's reply code to AUTH PLAIN with these credentials."""
    token = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
    with smtplib.SMTP("127.0.0.1", node.port, local_hostname="client.test", timeout=30) as c:
        c.ehlo()
        return c.docmd("AUTH", f"PLAIN {token}")[0]


def etrn(node, domain: str = "site.test") -> int:
    with smtplib.SMTP("127.0.0.1", node.port, local_hostname="client.test", timeout=30) as c:
        c.ehlo()
        return c.docmd("ETRN", domain)[0]


def followed(check, what: str) -> float:
    """Wait until `check()` holds; how long it took."""
    start = time.monotonic()
    wait_for(check, FOLLOW, interval=0.1, what=what)
    return time.monotonic() - start


def test_customers_added_on_one_node_are_customers_of_the_other_at_once(pair, sink):
    a, b = pair
    assert rcpt(b, "alice@site.test") >= 500  # not a customer: loopback may not relay
    assert etrn(b) == 459
    added = a.cli("customers", "add", "site.test", "-c", str(a.config_path))
    assert "site.test: added" in added.stdout.decode()
    followed(lambda: rcpt(b, "alice@site.test") == 250, "node B to accept site.test")
    b.send("x@far.test", ["alice@site.test", "bob@site.test"], message(1))
    a.send("x@far.test", ["alice@site.test"], message(2))
    time.sleep(1.0)
    assert sink.total() == 0  # held for the customer on both nodes
    listed = b.cli("customers", "list", "-c", str(b.config_path)).stdout.decode()
    assert listed.splitlines() == ["site.test"]
    assert etrn(b) in (250, 253)
    wait_for(lambda: sink.total() >= 3, 30, what="the held mail delivered after ETRN to B")
    assert set(sink.accepted) == {("m1", "alice@site.test"), ("m1", "bob@site.test"),
                                  ("m2", "alice@site.test")}
    assert sink.duplicates() == {}

    removed = a.cli("customers", "remove", "site.test", "-c", str(a.config_path))
    assert "site.test: removed" in removed.stdout.decode()
    followed(lambda: rcpt(b, "alice@site.test") >= 500, "node B to refuse site.test again")
    assert etrn(b) == 459
    again = a.cli("customers", "remove", "site.test", "-c", str(a.config_path), check=False)
    assert again.returncode == 1 and "not in the cluster's list" in again.stderr.decode()


def test_a_user_set_with_passwd_on_one_node_authenticates_on_the_other(pair):
    a, b = pair
    assert auth_plain(b, "ship", PASSWORD) == 535
    stored = a.cli("passwd", "ship", "site.test", "-c", str(a.config_path), stdin=PASSWORD)
    assert "ship: added" in stored.stdout.decode()
    followed(lambda: auth_plain(b, "ship", PASSWORD) == 235, "node B to know ship")
    assert auth_plain(b, "ship", "wrong") == 535
    listed = b.cli("passwd", "--list", "-c", str(b.config_path)).stdout.decode()
    assert listed.split() == ["ship", "site.test"] and PASSWORD not in listed

    a.cli("passwd", "ship", "site.test", "-c", str(a.config_path), stdin="changed")
    followed(lambda: auth_plain(b, "ship", "changed") == 235, "node B to take the new password")
    assert auth_plain(b, "ship", PASSWORD) == 535
    a.cli("passwd", "--delete", "ship", "-c", str(a.config_path))
    followed(lambda: auth_plain(b, "ship", "changed") == 535, "node B to forget ship")


def last_release(node, pattern: str = "site.test") -> dict | None:
    """What `tidepost status --json` on `node` says of the pattern's last release."""
    done = node.cli("status", "--json", "-c", str(node.config_path))
    states = json.loads(done.stdout)["customer_domains"]
    return next(s["last_release"] for s in states if s["domain"] == pattern)


def test_a_release_made_on_one_node_is_the_one_every_nodes_status_shows(pair, sink):
    a, b = pair
    a.cli("customers", "add", "site.test", "-c", str(a.config_path))
    followed(lambda: rcpt(b, "alice@site.test") == 250, "node B to accept site.test")
    assert last_release(a) is None and last_release(b) is None
    a.send("x@far.test", ["alice@site.test", "bob@site.test"], message(1))
    assert etrn(b) in (250, 253)
    wait_for(lambda: sink.total() >= 2, 30, what="the held mail delivered after ETRN to B")
    shown = last_release(a)
    assert (shown["by"], shown["node"], shown["count"]) == ("ETRN", "n1", 2)
    assert abs(shown["time"] - time.time()) < 30
    assert last_release(b) == shown
    screen = a.cli("status", "-c", str(a.config_path)).stdout.decode()
    assert "by ETRN on n1 (2 sent)" in " ".join(screen.split())

    # A's scheduler may still list what B sent: the claim, not that list, says what goes.
    assert etrn(a) == 251  # nothing waiting, but a release of 0 all the same: the later one
    wait_for(lambda: (last_release(b) or {}).get("node") == "n0", 10,
             what="node A's release shown by node B")
    assert last_release(b)["time"] > shown["time"] and last_release(b)["count"] == 0
    assert last_release(a) == last_release(b)
    assert not any((node.spool / "customer-releases.json").exists() for node in pair)


def test_a_route_held_on_one_node_is_held_on_the_other(relaying_pair, sink):
    a, b = relaying_pair
    a.cli("link", "down", "internet", "-c", str(a.config_path))
    wait_for(lambda: "route internet held by another node" in b.log_tail(200), FOLLOW,
             what="node B to follow the hold")
    b.send("x@far.test", ["carol@site.test"], message(1))
    time.sleep(2.0)
    assert sink.total() == 0  # B holds it too: the route is held for the cluster
    shown = b.cli("link", "status", "-c", str(b.config_path)).stdout.decode()
    assert "held" in shown
    a.cli("link", "up", "internet", "-c", str(a.config_path))
    wait_for(lambda: sink.total() >= 1, 30, what="the held mail sent after link up on A")
    wait_for(lambda: "route internet released by another node" in b.log_tail(200), FOLLOW,
             what="node B to follow the release")
    b.send("x@far.test", ["dave@site.test"], message(2))
    wait_for(lambda: sink.total() >= 2, 30, what="mail to B sent again")
    assert sink.duplicates() == {}


def test_a_single_node_has_no_shared_lists(tidepost_node):
    node = tidepost_node(start=False)
    done = node.cli("customers", "list", "-c", str(node.config_path), check=False)
    assert done.returncode == 78 and "not in a cluster" in done.stderr.decode()
    listed = node.cli("passwd", "--list", "-c", str(node.config_path), check=False)
    assert listed.returncode == 78 and "edit relay.credentials_file" in listed.stderr.decode()
    line = node.cli("passwd", "ship", "-c", str(node.config_path), stdin=PASSWORD)
    assert line.stdout.decode().startswith("ship:scrypt$")  # printed, as before
