"""Exactly-once on ODMR turns: the relay killed after the site's 250, again and again.

A relay (`tidepost serve`, relay role) holds mail for the customer domain
site.test.  The site runs `tidepost odmr` (AUTH, ATRN) through a TCP proxy
owned by the test; after ATRN the relay is the SMTP client on that
connection and the site's side, which trusts the relay it asked, offers
XTIDEPOST TRANSFER.  The proxy reads what the site sends back: at the
chosen `Ok: queued as` reply (the site has committed the message) it
SIGSTOPs the relay's process group, passes the reply on, and SIGKILLs the
relay, so the reply lies unread in the dead relay's socket: the relay never
recorded the delivery.  That is the moment plain SMTP duplicates a message.
The relay is started again, the turn is rerun, and so on for KILLS kills;
then turns without kills until the relay has nothing left.  Every held
message must be in the site's Maildirs exactly once, and the site must have
answered repeats (`duplicate` in its odmr log).

Both ways the reversed session carries mail: plain SMTP transactions
(XTRANSFER=, the site not offering XTIDEPOST BATCH) and the batch stream
(XTIDEPOST BATCH, whose records carry the transfer ids).
TIDEPOST_CRASH_KILLS sets the kills (default 10).
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from kill_harness import copies_of, message

pytestmark = [pytest.mark.integration, pytest.mark.crash]

KILLS = int(os.environ.get("TIDEPOST_CRASH_KILLS", "10"))
PASSWORD = "tide-secret"
USERS = ["alice", "bob"]
MESSAGES = 24
QUEUED = b"Ok: queued as"


class SiteReplyKiller(threading.Thread):
    """A TCP proxy to the relay's ODMR port that kills the relay at a chosen reply.

    One connection at a time.  `arm(n)`: in the next connection, the n-th
    line from the site carrying `Ok: queued as` (a plain 250 after DATA or
    a batch outcome line) is the moment: `stop()` the relay, pass the
    bytes holding that reply on, give them time to reach its socket,
    `kill()` it.
    """

    def __init__(self, target_port: int, stop, kill):
        super().__init__(daemon=True)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.target_port, self.stop, self.kill = target_port, stop, kill
        self.armed: int | None = None
        self.killed = threading.Event()

    def arm(self, nth: int | None) -> None:
        """Kill at the nth queued reply of the next connection (None: never)."""
        self.armed, self.killed = nth, threading.Event()

    def close(self) -> None:
        self.listener.close()

    def run(self) -> None:
        while True:
            try:
                site, _ = self.listener.accept()
            except OSError:
                return  # closed
            relay = socket.create_connection(("127.0.0.1", self.target_port))
            downward = threading.Thread(target=pipe, args=(relay, site), daemon=True)
            downward.start()
            self._from_site(site, relay)
            downward.join(30)
            site.close()
            relay.close()

    def _from_site(self, site: socket.socket, relay: socket.socket) -> None:
        """Pass the site's bytes on; at the armed reply, stop, pass, kill."""
        seen, tail = 0, b""
        try:
            while data := site.recv(65536):
                lines = (tail + data).split(b"\n")
                tail = lines.pop()
                seen += sum(QUEUED in line for line in lines)
                if self.armed is not None and seen >= self.armed and not self.killed.is_set():
                    self.stop()
                    relay.sendall(data)  # into the stopped relay's socket buffer
                    time.sleep(0.2)
                    self.kill()
                    self.killed.set()
                    break
                relay.sendall(data)
        except OSError:
            pass
        hang_up(site, relay)


def pipe(source: socket.socket, sink: socket.socket) -> None:
    """Copy until either side ends, then end both."""
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    hang_up(source, sink)


def hang_up(*sockets: socket.socket) -> None:
    for sock in sockets:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def start_relay(tidepost_node, tmp_path):
    """The relay, holding site.test for user `ship`, with an ODMR port."""
    line = subprocess.run([sys.executable, "-m", "tidepost.cli.main", "passwd", "ship",
                           "site.test"], input=PASSWORD.encode(), capture_output=True,
                          check=True).stdout.decode()
    (tmp_path / "credentials").write_text(line)
    free_port = sys.modules["tidepost_integration_fixtures"].free_port
    odmr_port = free_port("127.0.0.1")
    relay = tidepost_node(hostname="relay.test",
                          local={"domains": ["relay.test"], "users": ["postmaster"],
                                 "system_users": False},
                          relay={"customer_domains": ["site.test"],
                                 "credentials_file": str(tmp_path / "credentials"),
                                 "odmr_listen": [f"127.0.0.1:{odmr_port}"]})
    relay.odmr_port = odmr_port
    return relay


def odmr(site, port: int, log) -> subprocess.CompletedProcess:
    """One `tidepost odmr` turn through the proxy; its output appended to `log`."""
    done = subprocess.run([sys.executable, "-m", "tidepost.cli.main", "odmr",
                           f"127.0.0.1:{port}", "ship", "site.test", "-c",
                           str(site.config_path)],
                          env={**os.environ, "TIDEPOST_ODMR_PASSWORD": PASSWORD},
                          capture_output=True, timeout=120)
    log.write(done.stdout + done.stderr)
    return done


def site_copies(site):
    """{(recipient, token): copies} in the site's Maildirs."""
    return copies_of(([f"{user}@site.test"], body)
                     for user in USERS for body in site.maildir(user))


@pytest.fixture
def seed() -> int:
    value = int(os.environ.get("TIDEPOST_CRASH_SEED") or random.randrange(1 << 30))
    print(f"TIDEPOST_CRASH_SEED={value}")
    return value


@pytest.mark.parametrize("batch", [False, True], ids=["plain-smtp", "batch-stream"])
def test_relay_killed_after_the_sites_250_on_odmr_turns(tidepost_node, tmp_path, seed, batch):
    rng = random.Random(seed)
    relay = start_relay(tidepost_node, tmp_path)
    site = tidepost_node(smtp={"batch": batch})
    sent = {}
    for n in range(MESSAGES):
        recipients = [f"{u}@site.test" for u in USERS] if n % 3 == 0 else \
            [f"{rng.choice(USERS)}@site.test"]
        token = f"odmr-{n}"
        relay.send("x@far.test", recipients, message(token))
        sent[token] = recipients
    relay.wait_for(lambda: relay.queue().count("site.test") == sum(map(len, sent.values())),
                   what="the mail held for site.test")

    def stop_relay() -> None:
        """The dangerous moment: the site has committed; the relay must not read its 250."""
        os.killpg(relay.process.pid, signal.SIGSTOP)

    proxy = SiteReplyKiller(relay.odmr_port, stop_relay, relay.kill)  # SIGKILL, stopped
    proxy.start()
    log = open(tmp_path / "odmr.log", "ab")
    kills = 0
    try:
        for _ in range(KILLS * 3):
            if kills == KILLS:
                break
            proxy.arm(rng.randint(1, 3))
            odmr(site, proxy.port, log)
            if proxy.killed.is_set():
                kills += 1
                relay.start()
            # else: fewer replies than armed for were left: nothing killed this turn
        proxy.arm(None)
        for _ in range(10):  # turns without kills until the relay holds nothing
            done = odmr(site, proxy.port, log)
            if b"453" in done.stdout:
                break
        else:
            raise AssertionError("the relay still holds mail after 10 quiet turns")
    finally:
        proxy.close()
        log.close()
    site.wait_for(lambda: sum(site_copies(site).values()) >= sum(map(len, sent.values())),
                  what="every held message at the site")
    site.wait_queue_empty()
    time.sleep(1.0)  # a late duplicate would be delivered by now
    copies = site_copies(site)
    expected = {(r, t): 1 for t, rs in sent.items() for r in rs}
    odmr_log = (tmp_path / "odmr.log").read_bytes().decode(errors="replace")
    print(f"ODMR turns, {'batch' if batch else 'plain SMTP'}: {kills} kills, "
          f"{sum(copies.values())} copies of {len(expected)}, "
          f"{sum(n - 1 for n in copies.values() if n > 1)} duplicates, "
          f"{odmr_log.count('duplicate')} repeats answered")
    assert kills >= KILLS // 2, "too few turns reached the armed reply"
    assert dict(copies) == expected
    assert "duplicate" in odmr_log  # a repeat happened and was answered, not stored
    used_batch = "XTIDEPOST BATCH with" in relay.log_path.read_text()
    assert used_batch == batch  # the reversed session carried what this case tests
    assert relay.queue_empty()
