"""The relay role against independent implementations (issue 4), on loopback only.

- fetchmail (`--protocol ETRN`) asks tidepost's ETRN server to flush the mail
  it holds for a customer domain: the relay delivers it to the domain's MX
  (another `tidepost serve`, the site) exactly once;
- fetchmail (`--protocol ODMR`) against tidepost's ODMR listener: fetchmail
  authenticates with CRAM-MD5 (RFC 2645 makes it the ODMR mechanism), then
  ATRN reverses the connection and the relay delivers through fetchmail to
  the site's SMTP port, every held message exactly once; a wrong password is
  refused with nothing lost;
- a private Postfix instance is the upstream relay holding mail for the
  site's domain (a `hold` transport deferred until ETRN, the classic
  `fast_flush_domains` set-up); `tidepost etrn` flushes it into the site.

Tests needing fetchmail or Postfix skip when they are not installed
(./run-tests installs them), and the Postfix one when not run as root.
Every process belongs to the `processes` fixture or is stopped in a
`finally`; files live under pytest's temporary folders, except Postfix's
instance (a /tmp folder its `postfix` user can reach, removed at teardown).
"""

from __future__ import annotations

import os
import smtplib
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from private_postfix import holding_relay, private_postfix  # noqa: F401 (a fixture)

pytestmark = pytest.mark.integration

FETCHMAIL = "/usr/bin/fetchmail"
PASSWORD = "tide-secret"
USER = "ship"
SITE_ZONE = ["site.test. 300 MX 10 mx.site.test.", "mx.site.test. 300 A 127.0.0.1"]


def message(n: int) -> str:
    """Test message number n (its Subject is `interop n`)."""
    return (f"From: x@far.test\r\nSubject: interop {n}\r\nMessage-ID: <interop{n}@far.test>"
            f"\r\n\r\nbody {n}\r\n")


def subjects(mails: list[bytes]) -> list[bytes]:
    """The Subject values of Maildir messages, sorted."""
    return sorted(m.split(b"Subject: ", 1)[1].split(b"\r\n", 1)[0].split(b"\n", 1)[0]
                  for m in mails)


@pytest.fixture
def helpers(processes) -> dict[str, Any]:
    """The namespace of tests/integration/conftest.py (free_port, require, wait_for...).

    Taken from a fixture object's method, so it is the right module whatever
    `sys.modules["conftest"]` holds at the moment.
    """
    return type(processes).start.__globals__


def credentials_line(user: str, password: str, *domains: str) -> str:
    """`tidepost passwd --cram-md5 USER DOMAIN...` with the password on standard input."""
    return subprocess.run([sys.executable, "-m", "tidepost.cli.main", "passwd", "--cram-md5",
                           user, *domains], input=(password + "\n").encode(), capture_output=True,
                          check=True, timeout=60).stdout.decode()


def held(relay) -> int:
    """Recipients for site.test in the relay's queue."""
    return relay.queue().count("@site.test")


# -- fetchmail ------------------------------------------------------------------------


class Fetchmail:
    """Runs fetchmail with its own FETCHMAILHOME (rcfile, pid and id files) in `folder`."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.home = folder / "fetchmail-home"
        self.home.mkdir(mode=0o700)
        self.rcfile = self.home / "fetchmailrc"

    def run(self, rc: str, *extra: str, timeout: float = 45.0) -> subprocess.CompletedProcess:
        """Write `rc` as the rcfile (mode 0600) and run one verbose poll."""
        self.rcfile.write_text(rc)
        self.rcfile.chmod(0o600)
        env = {**os.environ, "HOME": str(self.home), "FETCHMAILHOME": str(self.home),
               "LC_ALL": "C"}
        argv = [FETCHMAIL, "-f", str(self.rcfile), "--nosyslog", "-v", "--nodetach",
                "--pidfile", str(self.home / "fetchmail.pid"),
                "--idfile", str(self.home / "fetchids"), *extra]
        done = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                              timeout=timeout, start_new_session=True)
        done.transcript = (done.stdout + done.stderr).decode(errors="replace")
        return done


@pytest.fixture
def fetchmail(tmp_path, helpers):
    """A Fetchmail runner (skips the test when fetchmail is not installed)."""
    helpers["require"](FETCHMAIL)
    return Fetchmail(tmp_path)


def start_relay(tidepost_node, dns, site, tmp_path, **relay_options):
    """A relay holding site.test, with AUTH for USER; the site is site.test's MX."""
    credentials = tmp_path / "credentials"
    credentials.write_text(credentials_line(USER, PASSWORD, "site.test"))
    return tidepost_node(
        dns=dns, smtp_port=site.port, hostname="relay.test",
        local={"domains": ["relay.test"], "users": ["postmaster"], "system_users": False},
        relay={"customer_domains": ["site.test"], "credentials_file": str(credentials),
               **relay_options})


def test_fetchmail_etrn_flushes_the_held_domain_exactly_once(tidepost_node, unbound,
                                                              fetchmail, tmp_path):
    site = tidepost_node()
    relay = start_relay(tidepost_node, unbound(SITE_ZONE), site, tmp_path)
    relay.send("x@far.test", ["alice@site.test", "bob@site.test"], message(1))
    relay.send("x@far.test", ["alice@site.test"], message(2))
    time.sleep(1.0)  # several poll intervals: held, not tried
    assert held(relay) == 3 and site.maildir("alice") == []

    rc = (f"poll 127.0.0.1 service {relay.port} protocol ETRN\n"
          f"    fetchdomains site.test\n")
    done = fetchmail.run(rc)
    print(done.transcript)
    assert done.returncode == 0, done.transcript
    assert "ETRN site.test" in done.transcript
    assert "253 2.0.0 OK, 3 pending messages for node site.test started" in done.transcript
    site.wait_for(lambda: len(site.maildir("alice")) == 2 and len(site.maildir("bob")) == 1,
                  what="the flushed mail at the site")
    relay.wait_queue_empty()

    again = fetchmail.run(rc)  # nothing left: 251 (fetchmail 6.4 exits 0, older ones 1)
    print(again.transcript)
    assert "251 2.0.0 OK, no messages waiting for node site.test" in again.transcript
    assert again.returncode in (0, 1), again.transcript
    time.sleep(1.0)
    assert subjects(site.maildir("alice")) == [b"interop 1", b"interop 2"]
    assert subjects(site.maildir("bob")) == [b"interop 1"]

    refused = fetchmail.run(f"poll 127.0.0.1 service {relay.port} protocol ETRN\n"
                            f"    fetchdomains other.test\n")
    print(refused.transcript)
    assert "459 4.7.1 Node other.test not allowed" in refused.transcript
    assert refused.returncode != 0


def start_odmr_pair(tidepost_node, helpers, tmp_path):
    """A site and a relay with an ODMR listener (its port returned) holding 4 recipients."""
    site = tidepost_node()
    odmr_port = helpers["free_port"]("127.0.0.1")
    # no DNS for the relay: the site is reachable only over the customer's own connection
    relay = start_relay(tidepost_node, helpers["NO_DNS"], site, tmp_path,
                        odmr_listen=[f"127.0.0.1:{odmr_port}"])
    for n, recipients in enumerate([["alice@site.test", "bob@site.test"],
                                    ["carol@site.test"], ["alice@site.test"]]):
        relay.send("x@far.test", recipients, message(n))
    time.sleep(1.0)
    assert held(relay) == 4
    return relay, site, odmr_port


def odmr_rc(port: int, site, password: str = PASSWORD) -> str:
    """A fetchmailrc polling 127.0.0.1:port by ODMR and forwarding to the site's SMTP port."""
    return (f'poll 127.0.0.1 service {port} protocol ODMR\n'
            f'    user "{USER}" password "{password}"\n'
            f'    fetchdomains site.test\n'
            f'    smtphost "127.0.0.1/{site.port}"\n')


def assert_odmr_delivers_exactly_once(fetchmail, port: int, relay, site) -> None:
    """fetchmail's ODMR session delivers the 4 held recipients once; a second gets 453."""
    done = fetchmail.run(odmr_rc(port, site))
    print(done.transcript)
    assert done.returncode == 0, done.transcript
    assert "ATRN site.test" in done.transcript
    assert "250 2.0.0 OK now reversing the connection" in done.transcript
    site.wait_for(lambda: (len(site.maildir("alice")), len(site.maildir("bob")),
                           len(site.maildir("carol"))) == (2, 1, 1),
                  what="the ODMR mail at the site")
    relay.wait_queue_empty()
    assert held(relay) == 0

    again = fetchmail.run(odmr_rc(port, site))  # nothing held any more: 453
    print(again.transcript)
    assert "453 4.3.0 You have no mail" in again.transcript
    assert again.returncode in (0, 1), again.transcript  # 6.4 exits 0, older ones PS_NOMAIL
    time.sleep(1.0)
    assert subjects(site.maildir("alice")) == [b"interop 0", b"interop 2"]  # exactly once
    assert subjects(site.maildir("bob")) == [b"interop 0"]
    assert subjects(site.maildir("carol")) == [b"interop 1"]


def test_fetchmail_odmr_against_tidepost(tidepost_node, fetchmail, helpers, tmp_path):
    """fetchmail's ODMR session straight to tidepost's ODMR port: AUTH CRAM-MD5,
    ATRN, the turnaround, and delivery through fetchmail into the site."""
    relay, site, odmr_port = start_odmr_pair(tidepost_node, helpers, tmp_path)
    with smtplib.SMTP("127.0.0.1", odmr_port, local_hostname="client.test") as probe:
        assert "CRAM-MD5" in probe.ehlo()[1].decode().upper()
    assert_odmr_delivers_exactly_once(fetchmail, odmr_port, relay, site)
    assert "ATRN site.test by ship: 4 recipients delivered" in relay.log_tail(400)


def test_fetchmail_odmr_with_a_wrong_password_loses_nothing(tidepost_node, fetchmail, helpers,
                                                            tmp_path):
    """A wrong CRAM-MD5 answer gets 535 5.7.8; nothing is delivered, nothing lost."""
    relay, site, odmr_port = start_odmr_pair(tidepost_node, helpers, tmp_path)
    bad = fetchmail.run(odmr_rc(odmr_port, site, "wrong-password"))
    print(bad.transcript)
    assert "535 5.7.8 Authentication credentials invalid" in bad.transcript
    assert bad.returncode != 0 and "ATRN" not in bad.transcript.split("535 5.7.8")[1]
    assert held(relay) == 4 and site.maildir("alice") == []


# -- Postfix as the upstream relay --------------------------------------------------------


def test_tidepost_etrn_flushes_a_postfix_relay_exactly_once(tidepost_node, private_postfix):
    site = tidepost_node()
    postfix = private_postfix(holding_relay(site.port))
    postfix.send(["alice@site.test", "bob@site.test"], message(1))
    postfix.send(["alice@site.test"], message(2))
    site.wait_for(lambda: postfix.log().count("status=deferred (deferred transport)") >= 3,
                  what="Postfix to defer the site's mail (hold transport)")
    listing = postfix.queue_listing()
    assert listing.count("(deferred transport)") == 2 and " in 2 Requests." in listing, listing
    time.sleep(1.0)
    assert site.maildir("alice") == [] and site.maildir("bob") == []

    done = site.cli("etrn", f"127.0.0.1:{postfix.port}", "site.test", "-c",
                    str(site.config_path))
    assert done.stdout.decode().strip() == "site.test: 250 Queuing started"
    site.wait_for(lambda: len(site.maildir("alice")) == 2 and len(site.maildir("bob")) == 1,
                  what="Postfix's held mail at the site")
    site.wait_for(lambda: "Mail queue is empty" in postfix.queue_listing(),
                  what="an empty Postfix queue")
    assert postfix.log().count("status=sent (250 2.0.0 Ok: queued as") == 3

    again = site.cli("etrn", f"127.0.0.1:{postfix.port}", "site.test", "-c",
                     str(site.config_path))
    assert again.returncode == 0
    time.sleep(1.5)
    assert subjects(site.maildir("alice")) == [b"interop 1", b"interop 2"]   # exactly once
    assert subjects(site.maildir("bob")) == [b"interop 1"]
    assert all(b"Received: from relay.test" in m for m in site.maildir("alice"))
