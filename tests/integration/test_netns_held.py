"""Zero traffic while held, measured on a real (emulated) link between namespaces.

Topology: namespace "site" runs `tidepost serve`; namespace "isp" runs unbound
(the site's only nameserver) and smtp-sink (MX of remote.test).  The two are
joined by TUN devices and the userspace emulator in tidepost.testing.linkemu
(20 ms each way, 1 MB/s), which counts every packet the site puts on the link.
IPv6 is off on the link, so the kernel adds no packets of its own.

With the uplink route held: 100 messages for remote.test (SMTP and `tidepost
sendmail`), local mail, and a daemon restart put zero packets on the link,
and the local mail is delivered.  After `tidepost link up uplink`, all 100
arrive at the sink exactly once; the time from release to the last delivery
is printed.  Skips unless root with `ip netns`, /dev/net/tun, unbound and
smtp-sink.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tidepost.testing.dns import unbound_config
from tidepost.testing.netns import emulated_link, unavailable

pytestmark = pytest.mark.integration

UNBOUND = "/usr/sbin/unbound"
SMTP_SINK = "/usr/sbin/smtp-sink"
SITE_ADDRESS, ISP_ADDRESS = "10.77.0.1", "10.77.0.2"
LINK = "tplink0"
REMOTE_MESSAGES = 100


def _skip_unless_possible() -> None:
    """Skip cleanly where namespaces, TUN or the servers are not available."""
    if reason := unavailable():
        pytest.skip(reason)
    for program in (UNBOUND, SMTP_SINK):
        if not os.access(program, os.X_OK):
            pytest.skip(f"{program} is not installed (./run-tests installs it)")
    probe = f"tp-probe-{os.getpid()}"
    if subprocess.run(["ip", "netns", "add", probe], capture_output=True).returncode != 0:
        pytest.skip("`ip netns add` is not permitted here")
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)


def tidepost_argv() -> list[str]:
    """The `tidepost` command of the Python running the tests."""
    script = Path(sys.executable).parent / "tidepost"
    return [str(script)] if script.exists() else [sys.executable, "-m", "tidepost.cli.main"]


def wait_for(predicate, timeout: float, what: str, interval: float = 0.1):
    """Poll `predicate` until true; its value, or AssertionError naming `what`."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)
    return value


@pytest.fixture
def link():
    """Namespaces site and isp joined by the emulated link; removed afterwards."""
    _skip_unless_possible()
    with emulated_link("tp", LINK, SITE_ADDRESS, ISP_ADDRESS) as joined:
        yield joined


def start_isp(processes, isp: str, folder: Path) -> Path:
    """unbound and smtp-sink in the isp namespace; the sink's dump folder."""
    zone = ['remote.test. 300 MX 10 mx.remote.test.', f'mx.remote.test. 300 A {ISP_ADDRESS}']
    conf = unbound_config(folder, zone, address=ISP_ADDRESS, allow="10.77.0.0/30")
    in_isp = ["ip", "netns", "exec", isp]
    processes.start([*in_isp, UNBOUND, "-d", "-c", str(conf)], log=folder / "unbound.log")
    dumps = folder / "dumps"
    dumps.mkdir()
    processes.start([*in_isp, SMTP_SINK, "-u", "root", "-d", f"{dumps}/", f"{ISP_ADDRESS}:25",
                     "100"], log=folder / "sink.log")
    return dumps


def site_config(folder: Path) -> Path:
    """The site's tidepost.toml: uplink held from the start, DNS at the isp."""
    path = folder / "tidepost.toml"
    path.write_text(f"""hostname = "site.test"
spool = "{folder / 'spool'}"
[smtp]
listen = ["127.0.0.1:2525"]
[local]
domains = ["site.test"]
users = ["alice"]
system_users = false
[queue]
poll_interval = "0.2s"
[dns]
nameservers = ["{ISP_ADDRESS}"]
timeout = "3s"
[delivery]
smtp_port = 25
connect_timeout = "5s"
[system]
user = "root"  # its spool is in pytest's private folder
[[route]]
name = "uplink"
domains = ["*"]
on_demand = true
start_held = true
""")
    return path


class Site:
    """`tidepost serve` and its clients inside the site namespace."""

    def __init__(self, processes, netns: str, folder: Path):
        self.processes, self.netns, self.folder = processes, netns, folder
        self.config = site_config(folder)
        self.log = folder / "serve.log"
        self.daemon = None
        self.starts = 0

    def argv(self, *args: str) -> list[str]:
        """ARGS run inside the namespace."""
        return ["ip", "netns", "exec", self.netns, *args]

    def start(self) -> None:
        """Start the daemon and wait until it says it has started."""
        self.starts += 1
        self.daemon = self.processes.start(
            self.argv(*tidepost_argv(), "serve", "-c", str(self.config)), log=self.log)
        wait_for(lambda: self.log.exists() and
                 self.log.read_text().count("tidepost started") >= self.starts
                 or self.daemon.poll() is not None, 20, "tidepost serve to start")
        assert self.daemon.poll() is None, self.log.read_text()

    def stop(self) -> None:
        """SIGTERM the daemon and wait for it."""
        assert self.processes.stop(self.daemon, 30) == 0, self.log.read_text()

    def smtp(self, messages: list[tuple[str, str]]) -> None:
        """Submit (recipient, tag) messages over one SMTP session on the site's loopback."""
        script = ("import smtplib, sys\n"
                  "s = smtplib.SMTP('127.0.0.1', 2525, local_hostname='lan.site.test')\n"
                  "for line in sys.stdin.read().splitlines():\n"
                  "    rcpt, tag = line.split()\n"
                  "    s.sendmail('alice@site.test', [rcpt], f'Subject: {tag}\\r\\n\\r\\n{tag}\\r\\n')\n"
                  "s.quit()\n")
        lines = "".join(f"{rcpt} {tag}\n" for rcpt, tag in messages)
        subprocess.run(self.argv(sys.executable, "-c", script), input=lines.encode(),
                       check=True, timeout=60)

    def sendmail(self, messages: list[tuple[str, str]], parallel: int = 4) -> None:
        """Submit each (recipient, tag) with `tidepost sendmail`, a few at a time."""
        for start in range(0, len(messages), parallel):
            running = [subprocess.Popen(
                self.argv(*tidepost_argv(), "sendmail", "-C", str(self.config), "-i", rcpt),
                stdin=subprocess.PIPE) for rcpt, _ in messages[start:start + parallel]]
            for process, (_, tag) in zip(running, messages[start:start + parallel]):
                process.communicate(f"Subject: {tag}\n\n{tag}\n".encode(), timeout=60)
                assert process.returncode == 0

    def cli(self, *args: str) -> str:
        """`tidepost ARGS -c CONFIG` in the namespace; its output."""
        done = subprocess.run(self.argv(*tidepost_argv(), *args, "-c", str(self.config)),
                              capture_output=True, check=True, timeout=60)
        return done.stdout.decode()

    def maildir(self, user: str) -> int:
        """Messages in `user`'s Maildir."""
        folder = self.folder / "spool" / "mail" / user / "new"
        return len(list(folder.iterdir())) if folder.exists() else 0


def sink_tags(dumps: Path) -> list[str]:
    """The Subject tags of every message smtp-sink has dumped completely."""
    tags = []
    for path in dumps.iterdir():
        data = path.read_bytes()
        if data.endswith(b"\n\n"):
            tags += [line[9:].decode().strip() for line in data.split(b"\n")
                     if line.startswith(b"Subject: ")]
    return tags


def test_held_uplink_sends_nothing_and_release_delivers_all_once(link, processes, tmp_path):
    site_ns, isp_ns, emulator = link
    dumps = start_isp(processes, isp_ns, tmp_path)
    site = Site(processes, site_ns, tmp_path)
    remote = [(f"user{i}@remote.test", f"remote-{i:03d}") for i in range(REMOTE_MESSAGES)]
    before = emulator.counts()["a_to_b"]

    site.start()
    site.smtp(remote[:40] + [("alice@site.test", "local-1")])
    site.sendmail(remote[40:50])
    site.stop()
    site.start()
    site.smtp(remote[50:90])
    site.sendmail(remote[90:] + [("alice@site.test", "local-2")])
    wait_for(lambda: site.maildir("alice") == 2, 10, "local mail in alice's Maildir")
    time.sleep(1.0)  # a few poll intervals: time for anything that would go out
    assert emulator.counts()["a_to_b"] == before, "the site sent packets while held"
    assert "uplink" in site.cli("link", "status")

    released = time.monotonic()
    site.cli("link", "up", "uplink")
    wait_for(lambda: len(sink_tags(dumps)) >= REMOTE_MESSAGES, 30,
             "all messages at the sink", interval=0.05)
    elapsed = time.monotonic() - released
    print(f"\nrelease to last delivery: {elapsed:.2f} s for {REMOTE_MESSAGES} messages; "
          f"link site->isp {emulator.counts()['a_to_b']}, isp->site "
          f"{emulator.counts()['b_to_a']} (packets, bytes)")
    time.sleep(0.5)  # a duplicate would show up now
    tags = sink_tags(dumps)
    assert sorted(tags) == sorted(tag for _, tag in remote)
    ledger = (tmp_path / "spool" / "ledger.jsonl").read_text()
    assert "dns remote.test MX" in ledger and "released: tidepost link up" in ledger
    site.stop()
