"""The relay role with real peers: two `tidepost serve` (relay and site) on loopback.

- mail for the site's domain sent to the relay is held while nobody asks;
  the site's route is released, the site sends ETRN, and every message
  arrives exactly once (a second ETRN finds nothing);
- an independent client (Python's smtplib, and swaks for EHLO) drives ETRN
  and gets the RFC 1985 codes, including the refusals, with nothing lost;
- ODMR: `tidepost odmr` authenticates, sends ATRN, and the relay delivers
  over the same connection into the site's queue.
The relay finds the site through unbound (site.test MX -> 127.0.0.1) and
dials it on [delivery] smtp_port, the site's SMTP port.
"""

from __future__ import annotations

import os
import smtplib
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.integration

PASSWORD = "tide-secret"
SITE_ZONE = ["site.test. 300 MX 10 mx.site.test.", "mx.site.test. 300 A 127.0.0.1"]


def message(n: int) -> str:
    return (f"From: x@far.test\r\nSubject: held {n}\r\nMessage-ID: <held{n}@far.test>\r\n"
            f"\r\nbody {n}\r\n")


def rewrite(node) -> None:
    """Write a node's (changed) config back to its file."""
    to_toml = sys.modules[type(node).__module__].to_toml
    node.config_path.write_text(to_toml(node.config))


def start_pair(tidepost_node, unbound, tmp_path, site_route=None, **relay_options):
    """A site (started) and its relay (started), the relay holding site.test."""
    dns = unbound(SITE_ZONE)
    site = tidepost_node(start=False)
    credentials = tmp_path / "credentials"
    line = subprocess.run([sys.executable, "-m", "tidepost.cli.main", "passwd", "ship",
                           "site.test"], input=PASSWORD.encode(), capture_output=True,
                          check=True).stdout.decode()
    credentials.write_text(line)
    relay = tidepost_node(
        dns=dns, smtp_port=site.port, hostname="relay.test",
        local={"domains": ["relay.test"], "users": ["postmaster"], "system_users": False},
        relay={"customer_domains": ["site.test"], "credentials_file": str(credentials),
               **relay_options})
    site.config["route"] = [{"name": "uplink", "domains": ["*"], "start_held": True,
                             "etrn": [f"127.0.0.1:{relay.port}"], "etrn_domains": ["site.test"],
                             **(site_route or {})}]
    rewrite(site)
    site.start()
    return relay, site


def held_count(relay) -> int:
    return relay.queue().count("site.test")


def test_held_until_the_site_asks_then_delivered_exactly_once(tidepost_node, unbound,
                                                               tmp_path):
    relay, site = start_pair(tidepost_node, unbound, tmp_path)
    for n in range(3):
        relay.send("x@far.test", ["alice@site.test", "bob@site.test"] if n == 0
                   else ["alice@site.test"], message(n))
    time.sleep(1.5)  # several poll intervals: the relay must not try
    assert held_count(relay) == 4
    assert site.maildir("alice") == [] and "route=customers" not in relay.log_tail(400)
    status = relay.cli("status", "-c", str(relay.config_path)).stdout.decode()
    assert "customers" in status and "site.test" in status and "never" in status

    site.cli("link", "up", "uplink", "-c", str(site.config_path))   # site sends ETRN
    site.wait_for(lambda: len(site.maildir("alice")) == 3 and len(site.maildir("bob")) == 1,
                  what="the held mail to arrive at the site")
    relay.wait_queue_empty()
    assert "ETRN site.test to 127.0.0.1" in site.log_tail(400)
    assert "XTIDEPOST BATCH with" in relay.log_tail(400)  # tidepost to tidepost

    again = site.cli("etrn", f"127.0.0.1:{relay.port}", "site.test", "-c",
                     str(site.config_path)).stdout.decode()
    assert "251 2.0.0 OK, no messages waiting for node site.test" in again
    time.sleep(1.0)
    assert len(site.maildir("alice")) == 3 and len(site.maildir("bob")) == 1  # exactly once
    subjects = sorted(m.split(b"Subject: ")[1].split(b"\n")[0] for m in site.maildir("alice"))
    assert subjects == [b"held 0", b"held 1", b"held 2"]
    status = relay.cli("status", "-c", str(relay.config_path)).stdout.decode()
    assert "by ETRN" in status


def test_etrn_from_an_independent_client_and_refusals(tidepost_node, unbound, tmp_path):
    relay, site = start_pair(tidepost_node, unbound, tmp_path, etrn_rate=2)
    relay.send("x@far.test", ["carol@site.test"], message(7))
    ehlo = subprocess.run(["/usr/bin/swaks", "--server", f"127.0.0.1:{relay.port}",
                           "--quit-after", "EHLO", "--helo", "client.test"],
                          capture_output=True, timeout=30)
    if ehlo.returncode == 0:
        assert b"250-ETRN" in ehlo.stdout or b"250 ETRN" in ehlo.stdout
    with smtplib.SMTP("127.0.0.1", relay.port, local_hostname="client.test") as client:
        client.ehlo()
        assert client.docmd("ETRN", "other.test") == \
            (459, b"4.7.1 Node other.test not allowed: we hold no mail for it")
        assert client.docmd("ETRN", "bad..domain")[0] == 501
        assert client.docmd("ETRN", "#queue")[0] == 458
        assert client.docmd("ATRN", "site.test")[0] == 530          # no AUTH
        auth = client.docmd("AUTH", "PLAIN AHNoaXAAd3Jvbmc=")        # ship / wrong
        assert auth == (535, b"5.7.8 Authentication credentials invalid")
        assert held_count(relay) == 1                                 # nothing lost
        # well-formed requests count against etrn_rate (2 a minute): other.test was one
        assert client.docmd("ETRN", "@site.test")[0] == 253
        assert client.docmd("ETRN", "site.test")[0:1] == (458,)        # flood
    site.wait_for(lambda: len(site.maildir("carol")) == 1, what="carol's message")


def test_odmr_atrn_delivers_over_the_same_connection(tidepost_node, unbound, tmp_path):
    relay, site = start_pair(tidepost_node, unbound, tmp_path,
                             site_route={"hangup_file": "hangup.uplink", "hangup_grace": "1s"})
    relay.stop()
    odmr_port = relay.port + 1 if relay.port < 65000 else relay.port - 1
    relay.config["relay"]["odmr_listen"] = [f"127.0.0.1:{odmr_port}"]
    rewrite(relay)
    relay.start()
    # the site is not reachable by MX this time: ODMR needs no DNS and no inbound port
    site.stop()
    relay.send("x@far.test", ["dave@site.test", "alice@site.test"], message(9))
    site.start()
    env = {**os.environ, "TIDEPOST_ODMR_PASSWORD": PASSWORD}
    hangup = site.spool / "control" / "hangup.uplink"
    done = subprocess.run([sys.executable, "-m", "tidepost.cli.main", "odmr", "--route",
                           "uplink", f"127.0.0.1:{odmr_port}", "ship", "site.test", "-c",
                           str(site.config_path)], env=env, capture_output=True, timeout=60)
    ended = time.time()
    assert done.returncode == 0, done.stderr.decode() + done.stdout.decode()
    # the session told the daemon it ran: the hang-up signal came after it ended
    site.wait_for(hangup.exists, what="the hang-up file after the ODMR session")
    assert float(hangup.read_text().split()[1].split("=")[1]) > ended
    assert b"250 2.0.0 OK now reversing the connection" in done.stdout
    site.wait_for(lambda: len(site.maildir("dave")) == 1 and len(site.maildir("alice")) == 1,
                  what="ODMR mail in the site's Maildirs")
    relay.wait_queue_empty()
    assert "XTIDEPOST BATCH with" in relay.log_tail(400)  # the reversed connection too
    again = subprocess.run([sys.executable, "-m", "tidepost.cli.main", "odmr",
                            f"127.0.0.1:{odmr_port}", "ship", "-c", str(site.config_path)],
                           env=env, capture_output=True, timeout=60)
    assert b"453" in again.stdout
    bad = subprocess.run([sys.executable, "-m", "tidepost.cli.main", "odmr",
                          f"127.0.0.1:{odmr_port}", "ship", "site.test", "-c",
                          str(site.config_path)],
                         env={**env, "TIDEPOST_ODMR_PASSWORD": "nope"}, capture_output=True,
                         timeout=60)
    assert bad.returncode == 1 and b"535" in bad.stdout


def test_customer_domains_file_is_reread_while_running(tidepost_node, tmp_path):
    listing = tmp_path / "customers"
    listing.write_text("# held for customers\nold.test\n")
    relay = tidepost_node(hostname="relay.test", local={"domains": ["relay.test"]},
                          smtp={"relay_networks": []},
                          relay={"customer_domains_file": str(listing)})
    relay.send("x@far.test", ["a@old.test"], message(1))
    with pytest.raises(smtplib.SMTPRecipientsRefused):
        relay.send("x@far.test", ["a@new.test"], message(2))
    listing.write_text("old.test\nnew.test  # added\n")
    relay.wait_for(lambda: _accepted(relay, "a@new.test"), timeout=10,
                   what="new.test to become a customer domain")
    assert relay.queue().count("@old.test") == 1 and relay.queue().count("@new.test") == 1


def _accepted(relay, recipient: str) -> bool:
    try:
        relay.send("x@far.test", [recipient], message(3))
    except smtplib.SMTPRecipientsRefused:
        return False
    return True
