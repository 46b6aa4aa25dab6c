"""XTIDEPOST BATCH between two real tidepost processes over the emulated link.

Topology (as test_netns_held.py): namespace "site" runs the site's
`tidepost serve`, its uplink route held, smarthost the relay; namespace
"isp" runs the relay's `tidepost serve` on the far end of the link
(tidepost.testing.linkemu: delay and rate, every packet counted).

- Batch: while held, the site queues a text-heavy mix (testing/mailmix.py)
  and one message with a recipient the relay refuses; zero packets go out.
  On release every message arrives once, the refused recipient bounces to
  its sender at the site, the site's log shows the batch stream, and the
  link carried less than half the raw message bytes.
- Resume: a 2 MB message is sent while the link is cut 700 KB into it; the
  site defers it, the relay keeps the partial message in its spool; once
  the link is mended the next session resumes, and what arrived at the
  relay in all is at most one chunk more than one uninterrupted transfer
  of the same message (measured on the link, in the same test; the chunk
  with its TCP/IP headers, and the second session's greeting).
- Kill: the site is killed (SIGKILL) as soon as the relay has committed
  the first messages of a release, before their answer (300 ms away on
  the link) can reach it; restarted, it sends them again, and the relay
  recognises the transfer ids: every message is in its Maildirs once.
Skips unless root with `ip netns` and /dev/net/tun.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import sys

import pytest

from tidepost.testing.mailmix import message_mix
from tidepost.testing.netns import emulated_link, unavailable

from test_netns_held import tidepost_argv, wait_for

pytestmark = pytest.mark.integration

SITE_ADDRESS, ISP_ADDRESS = "10.77.0.1", "10.77.0.2"
LINK = "tpbatch0"
CHUNK = 32 * 1024


@pytest.fixture
def link():
    """Namespaces site and isp joined by a 1 MB/s, 20 ms link; removed afterwards."""
    if reason := unavailable():
        pytest.skip(reason)
    with emulated_link("tpb", LINK, SITE_ADDRESS, ISP_ADDRESS) as joined:
        yield joined


class Node:
    """`tidepost serve` in a namespace, with its own config, spool and log."""

    def __init__(self, processes, netns: str, folder: Path, config: str):
        folder.mkdir()
        self.processes, self.netns, self.folder = processes, netns, folder
        self.config = folder / "tidepost.toml"
        self.config.write_text(config.replace("SPOOL", str(folder / "spool")))
        self.log = folder / "serve.log"
        self.daemon = None
        self.starts = 0

    def argv(self, *args: str) -> list[str]:
        return ["ip", "netns", "exec", self.netns, *args]

    def start(self) -> Node:
        self.starts += 1
        self.daemon = self.processes.start(
            self.argv(*tidepost_argv(), "serve", "-c", str(self.config)), log=self.log)
        wait_for(lambda: self.log.exists() and
                 self.log.read_text().count("tidepost started") >= self.starts
                 or self.daemon.poll() is not None, 20, what="tidepost serve to start")
        assert self.daemon.poll() is None, self.log.read_text()
        return self

    def cli(self, *args: str) -> str:
        done = subprocess.run(self.argv(*tidepost_argv(), *args, "-c", str(self.config)),
                              capture_output=True, check=True, timeout=60)
        return done.stdout.decode()

    def maildir(self, user: str) -> list[bytes]:
        folder = self.folder / "spool" / "mail" / user / "new"
        return [p.read_bytes() for p in folder.iterdir()] if folder.exists() else []

    def submit(self, messages: list[tuple[str, bytes]]) -> None:
        """Send (recipient, message) pairs to this node's port 2525 over its loopback."""
        script = ("import smtplib, sys, pickle\n"
                  "s = smtplib.SMTP('127.0.0.1', 2525, local_hostname='lan.site.test')\n"
                  "for rcpt, data in pickle.load(sys.stdin.buffer):\n"
                  "    s.sendmail('alice@site.test', [rcpt], data)\n"
                  "s.quit()\n")
        import pickle
        subprocess.run(self.argv(sys.executable, "-c", script), input=pickle.dumps(messages),
                       check=True, timeout=120)


SITE = f"""hostname = "site.test"
spool = "SPOOL"
[smtp]
listen = ["127.0.0.1:2525"]
[local]
domains = ["site.test"]
users = ["alice"]
system_users = false
[queue]
poll_interval = "0.2s"
min_backoff = "1s"
max_backoff = "2s"
[dns]
nameservers = ["127.0.0.1:9"]
[delivery]
connect_timeout = "5s"
command_timeout = "3s"
batch_chunk_size = {CHUNK}
[system]
user = "root"
[[route]]
name = "uplink"
domains = ["*"]
transport = "smarthost"
smarthost = "[{ISP_ADDRESS}]:25"
on_demand = true
start_held = true
"""

RELAY = f"""hostname = "relay.test"
spool = "SPOOL"
[smtp]
listen = ["{ISP_ADDRESS}:25"]
max_message_size = 5000000
relay_networks = ["10.77.0.0/30"]  # the site's transfers are exactly once
[local]
domains = ["remote.test"]
users = ["bob", "carol"]
system_users = false
[queue]
poll_interval = "0.2s"
[system]
user = "root"
"""


def test_batch_release_delivers_everything_once_in_half_the_bytes(link, processes,
                                                                   tmp_path):
    site_ns, isp_ns, emulator = link
    relay = Node(processes, isp_ns, tmp_path / "relay", RELAY).start()
    site = Node(processes, site_ns, tmp_path / "site", SITE).start()
    mix = message_mix(60, seed=3, mix="text")
    mail = [(("bob" if i % 2 else "carol") + "@remote.test", data)
            for i, (_, data) in enumerate(mix)]
    raw = sum(len(data) for _, data in mail)
    before = emulator.counts()["a_to_b"]
    site.submit(mail + [("nobody@remote.test", b"Subject: lost\r\n\r\nno such user\r\n")])
    time.sleep(1.0)
    assert emulator.counts()["a_to_b"] == before, "the site sent packets while held"

    site.cli("link", "up", "uplink")
    wait_for(lambda: len(relay.maildir("bob")) + len(relay.maildir("carol")) >= 60, 60,
             what="all messages at the relay")
    bounces = wait_for(lambda: site.maildir("alice"), 30, what="the bounce at the site")
    time.sleep(1.0)  # a duplicate would show now
    carried = emulator.counts()["a_to_b"][1] - before[1]
    assert len(relay.maildir("bob")) == 30 and len(relay.maildir("carol")) == 30
    assert b"nobody@remote.test" in bounces[0] and b"5.1.1" in bounces[0]
    assert "XTIDEPOST BATCH with" in site.log.read_text()
    print(f"\n60 messages, {raw} raw bytes: the link carried {carried} bytes up "
          f"({carried / raw:.2f} of raw)")
    assert carried <= 0.5 * raw


def test_a_cut_link_resumes_from_the_last_stored_chunk(link, processes, tmp_path):
    site_ns, isp_ns, emulator = link
    relay = Node(processes, isp_ns, tmp_path / "relay", RELAY).start()
    site = Node(processes, site_ns, tmp_path / "site", SITE).start()
    rng_body = os.urandom(1_500_000).hex()[:2_000_000]
    photo = (b"Subject: photos\r\nContent-Type: text/plain\r\n\r\n"
             + "\r\n".join(rng_body[i:i + 76] for i in range(0, len(rng_body), 76)).encode()
             + b"\r\n")
    site.submit([("bob@remote.test", photo)])
    start = emulator.counts()["a_to_b"][1]
    emulator.cut_after(start + 700_000)
    site.cli("link", "up", "uplink")
    wait_for(lambda: emulator.down, 60, what="the link to be cut")
    partials = relay.folder / "spool" / "batch-partial"
    wait_for(lambda: "XTIDEPOST BATCH with" in site.log.read_text(), 30,
             what="the site to give up the cut session")
    held = wait_for(lambda: sum(p.stat().st_size for p in partials.iterdir())
                    if partials.is_dir() else 0, 10, what="a partial message at the relay")
    while True:  # a loaded relay may still be storing the chunks that did arrive
        time.sleep(1.0)
        now = sum(p.stat().st_size for p in partials.iterdir())
        if now == held:
            break
        held = now
    first = emulator.counts()["a_to_b"][1] - start
    emulator.set_down(False)
    wait_for(lambda: relay.maildir("bob"), 60, what="the message at the relay")
    time.sleep(0.5)
    both = emulator.counts()["a_to_b"][1] - start
    assert relay.maildir("bob")[0].endswith(photo.replace(b"\r\n", b"\n"))  # LF in a Maildir

    # The reference: the same message again, uninterrupted (a new transfer).
    site.submit([("carol@remote.test", photo)])
    wait_for(lambda: relay.maildir("carol"), 60, what="the reference message")
    time.sleep(0.5)
    reference = emulator.counts()["a_to_b"][1] - start - both
    sent_again = both - reference
    print(f"\n2 MB message cut after {first} bytes on the link; {held} bytes kept at the "
          f"relay; {both} bytes in all against {reference} uninterrupted: "
          f"{sent_again} sent again (chunk {CHUNK})")
    assert f"{held} octets resumed" in site.log.read_text()
    # At most the chunk the cut interrupted, as it travels (TCP/IP headers), and the
    # new session's greeting, EHLO and XRESUME.
    assert sent_again <= CHUNK * 1.04 + 2048
    assert not any(partials.iterdir())


def test_a_site_killed_before_the_answer_repeats_and_nothing_is_stored_twice(
        link, processes, tmp_path):
    site_ns, isp_ns, emulator = link
    emulator.set_delay(0.3)
    relay = Node(processes, isp_ns, tmp_path / "relay", RELAY).start()
    site = Node(processes, site_ns, tmp_path / "site", SITE).start()
    mail = [("bob@remote.test", b"Subject: kill %d\r\n\r\nbody %d\r\n" % (i, i))
            for i in range(20)]
    site.submit(mail)

    def committed() -> int:
        # The relay's log, not its queue: bob is local there, so a committed
        # message may be delivered and gone from the queue a moment later.
        return relay.log.read_text().count(": received from=")
    site.cli("link", "up", "uplink")
    wait_for(lambda: committed() > 0, 30, what="the relay's first commits", interval=0.01)
    os.killpg(site.daemon.pid, 9)  # the answer is still on the link
    site.daemon.wait()
    first = committed()
    site.start()
    site.cli("link", "up", "uplink")
    wait_for(lambda: len(relay.maildir("bob")) >= 20, 60, what="every message at the relay")
    time.sleep(1.5)  # a duplicate would show now
    subjects = sorted(m.split(b"Subject: ")[1].split(b"\n")[0] for m in relay.maildir("bob"))
    print(f"\nkilled with {first} committed at the relay; after the restart "
          f"{len(subjects)} delivered")
    assert subjects == sorted(b"kill %d" % i for i in range(20))
    # The messages committed before the kill were sent again (none had been recorded).
    restarted = site.log.read_text().split("tidepost started")[-1]
    assert first > 0 and restarted.count("delivered to=") == 20
