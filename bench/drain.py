#!/usr/bin/env python3
"""Drain benchmark: time to empty a held queue over a slow link, against its floor.

Builds two network namespaces, "site" and "isp", joined by the userspace
link emulator (tidepost.testing.linkemu) with a rate (default 256 kbit/s)
and a one-way delay (default 300 ms: a satellite-like link), IPv6 off.  The
isp runs unbound, serving MX records for D destination domains (default 5;
mx.dK.test on its own address), and one smtp-sink listening on all of them.
The site runs `tidepost serve` with its uplink route held (`start_held`),
DNS at the isp's unbound.

N messages (default 200 of about 4 KiB, spread over the domains) are queued
over SMTP on the site's loopback while held; the packets the site puts on
the link meanwhile are counted (the goal is 0).  Then `tidepost link up
uplink`, and the clock runs until the sink has dumped all N.  The floor is
what the link cannot beat: the message bytes divided by the rate.

Runs: tidepost with its defaults, and with `[delivery] destination_concurrency
= 1` (one connection per domain) as the reference, so the ratio shows what
parallel connections buy on a long, thin link.  With --postfix, also a
private Postfix instance in the site namespace (held with defer_transports,
released with `postqueue -f`).  Each run gets fresh namespaces, link and
servers.  Cleans up on errors and Ctrl-C.

Prints a table; asserts nothing.  Needs root, `ip netns`, /dev/net/tun,
unbound and smtp-sink (./run-tests installs them).
Usage: .venv/bin/python bench/drain.py --help
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from private_postfix import main_cf  # bench/ is on sys.path when run as a script

UNBOUND = "/usr/sbin/unbound"
SMTP_SINK = "/usr/sbin/smtp-sink"
POSTFIX = "/usr/sbin/postfix"
POSTQUEUE = "/usr/sbin/postqueue"
LINK = "tplink0"
SITE_ADDRESS, ISP_ADDRESS = "10.77.0.1", "10.77.0.2"
SENDER = "bench@site.test"
TIDEPOST_PORT, POSTFIX_PORT = 2525, 2526


def mx_address(domain: int) -> str:
    """The isp-side address of mx.dK.test."""
    return f"10.77.1.{domain + 1}"


# -- the link: the emulator, also telling connections and DNS queries apart ---------------


def counting_link(site: str, isp: str, delay: float, rate: float):
    """A started LinkEmulator that also looks into the IPv4 packets the site sends.

    Besides the emulator's own (packets, bytes) each way, it counts TCP
    connections (SYNs), DNS queries (UDP to port 53) and retransmitted TCP
    payload bytes (data at or below the highest sequence number already sent
    on that connection), all from the site to the isp.
    """
    from tidepost.testing.linkemu import LinkEmulator

    class CountingLink(LinkEmulator):
        """The emulator, peeking at each packet the site sends (a_to_b)."""

        def start(self) -> CountingLink:
            self.connections: set[bytes] = set()   # (address, port) of the first SYNs
            self.dns_queries = 0
            self.retransmitted = 0                 # TCP payload bytes sent again
            self._sent: dict[bytes, int] = {}      # connection -> highest sequence sent
            super().start()
            up = self._directions["a_to_b"]
            take = up.take

            def peek(packet: bytes, now: float, down: bool = False) -> None:
                self._peek(packet)
                take(packet, now, down)

            up.take = peek
            return self

        def _peek(self, packet: bytes) -> None:
            if len(packet) < 20 or packet[0] >> 4 != 4:
                return
            header = (packet[0] & 0x0F) * 4
            if packet[9] == 17 and packet[header + 2:header + 4] == b"\x00\x35":
                self.dns_queries += 1
            if packet[9] != 6 or len(packet) < header + 20:
                return
            flow = packet[12:16] + packet[header:header + 4]
            flags = packet[header + 13]
            seq = int.from_bytes(packet[header + 4:header + 8], "big")
            if flags & 0x12 == 0x02:          # SYN without ACK: a new connection
                self.connections.add(flow)
                self._sent[flow] = (seq + 1) % 2**32
                return
            payload = len(packet) - header - (packet[header + 12] >> 4) * 4
            high = self._sent.get(flow)
            if payload <= 0 or high is None:
                return
            end = (seq + payload) % 2**32
            if (high - end) % 2**32 < 2**31:            # all of it was sent before
                self.retransmitted += payload
            else:
                if (high - seq) % 2**32 < 2**31:        # the start of it was
                    self.retransmitted += (high - seq) % 2**32
                self._sent[flow] = end

    return CountingLink(site, isp, ifname=LINK, delay=delay, rate=rate).start()


# -- processes and namespaces --------------------------------------------------------------


def ip(*args: str) -> None:
    """Run `ip ARGS`; raises on failure."""
    subprocess.run(["ip", *args], check=True, capture_output=True)


def wait_for(predicate, timeout: float, what: str, interval: float = 0.1):
    """Poll `predicate` until it is true; its value, or RuntimeError naming `what`."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)
    return value


def tidepost_argv() -> list[str]:
    """The `tidepost` command of this Python (the venv's script, else -m)."""
    script = Path(sys.executable).parent / "tidepost"
    return [str(script)] if script.exists() else [sys.executable, "-m", "tidepost.cli.main"]


class Topology:
    """Namespaces site and isp, the link, unbound and smtp-sink; all undone by close()."""

    def __init__(self, folder: Path, delay: float, rate: float, domains: int):
        self.folder, self.delay, self.rate, self.domains = folder, delay, rate, domains
        tag = uuid.uuid4().hex[:6]
        self.site, self.isp = f"tp-dsite-{tag}", f"tp-disp-{tag}"
        self.netns_etc = Path("/etc/netns") / self.site
        self.namespaces: list[str] = []
        self.processes: list[subprocess.Popen] = []
        self.cleanups: list = []   # callables run first at close(), newest first
        self.link = None
        self.dumps = folder / "dumps"

    def in_ns(self, netns: str, *argv: str) -> list[str]:
        """ARGV run inside `netns`."""
        return ["ip", "netns", "exec", netns, *argv]

    def start(self, argv: list[str], log: Path) -> subprocess.Popen:
        """Start a process in its own session (so it can be ended as a group)."""
        with open(log, "ab") as out:
            process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                       stderr=subprocess.STDOUT, start_new_session=True)
        self.processes.append(process)
        return process

    def listening(self, netns: str, proto: str, port: int) -> bool:
        """True when something in `netns` listens on `port` (proto "t" or "u")."""
        done = subprocess.run(["ip", "netns", "exec", netns, "ss", f"-Hln{proto}",
                               f"sport = :{port}"], capture_output=True, text=True)
        return bool(done.stdout.strip())

    def build(self) -> Topology:
        """Create everything; on failure the caller's close() undoes what exists."""
        for name in (self.site, self.isp):
            ip("netns", "add", name)
            self.namespaces.append(name)
        self.link = counting_link(self.site, self.isp, self.delay, self.rate)
        for name, mine in ((self.site, SITE_ADDRESS), (self.isp, ISP_ADDRESS)):
            subprocess.run(self.in_ns(name, "sysctl", "-qw",
                                      f"net.ipv6.conf.{LINK}.disable_ipv6=1",
                                      "net.ipv6.conf.default.disable_ipv6=1"), check=True)
            ip("-n", name, "link", "set", "lo", "up")
            ip("-n", name, "addr", "add", f"{mine}/30", "dev", LINK)
            ip("-n", name, "link", "set", LINK, "up")
        for domain in range(self.domains):
            ip("-n", self.isp, "addr", "add", f"{mx_address(domain)}/32", "dev", LINK)
        ip("-n", self.site, "route", "add", "default", "dev", LINK)
        # programs that read /etc/resolv.conf (Postfix) see the isp's unbound
        self.netns_etc.mkdir(parents=True, exist_ok=True)
        (self.netns_etc / "resolv.conf").write_text(f"nameserver {ISP_ADDRESS}\n")
        self.start_isp()
        return self

    def start_isp(self) -> None:
        """unbound (MX and A records of every domain) and one smtp-sink on all addresses."""
        records = []
        for domain in range(self.domains):
            records += [f"d{domain}.test. 3600 MX 10 mx.d{domain}.test.",
                        f"mx.d{domain}.test. 3600 A {mx_address(domain)}"]
        data = "\n".join(f'    local-data: "{record}"' for record in records)
        conf = self.folder / "unbound.conf"
        conf.write_text(f"""server:
    username: ""
    chroot: ""
    directory: "{self.folder}"
    do-daemonize: no
    use-syslog: no
    logfile: ""
    pidfile: ""
    num-threads: 1
    interface: {ISP_ADDRESS}
    port: 53
    access-control: 10.77.0.0/30 allow
    do-ip6: no
    local-zone: "test." static
{data}
remote-control:
    control-enable: no
""")
        unbound = self.start(self.in_ns(self.isp, UNBOUND, "-d", "-c", str(conf)),
                             self.folder / "unbound.log")
        self.dumps.mkdir()
        sink = self.start(self.in_ns(self.isp, SMTP_SINK, "-u", "root", "-d",
                                     f"{self.dumps}/", "0.0.0.0:25", "256"),
                          self.folder / "sink.log")
        wait_for(lambda: unbound.poll() is not None or self.listening(self.isp, "u", 53),
                 15, "unbound")
        wait_for(lambda: sink.poll() is not None or self.listening(self.isp, "t", 25),
                 15, "smtp-sink")
        for name, process in (("unbound", unbound), ("smtp-sink", sink)):
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited with status {process.returncode}")

    def close(self) -> None:
        """Stop every process, the link and the namespaces; never raises.

        Ctrl-C and SIGTERM wait until this is done: a second Ctrl-C must not
        leave half of it behind.
        """
        saved = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT,
                                                                     signal.SIGTERM)}
        try:
            self._close()
        finally:
            for sig, handler in saved.items():
                signal.signal(sig, handler)

    def _close(self) -> None:
        """close(), with the signals held off."""
        while self.cleanups:
            with contextlib.suppress(Exception):
                self.cleanups.pop()()
        for process in reversed(self.processes):
            stop_group(process)
        if self.link is not None:
            with contextlib.suppress(Exception):
                self.link.close()
        for name in self.namespaces:
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
        shutil.rmtree(self.netns_etc, ignore_errors=True)


def stop_group(process: subprocess.Popen, timeout: float = 10.0) -> None:
    """SIGTERM to the process's group, then SIGKILL after `timeout`; reap it."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()


# -- the mail ---------------------------------------------------------------------------


def make_message(index: int, domains: int, size: int) -> tuple[str, bytes]:
    """Recipient and message (CRLF, about `size` bytes) number `index`."""
    rcpt = f"user{index}@d{index % domains}.test"
    head = (f"From: {SENDER}\r\nTo: {rcpt}\r\nSubject: drain-{index:05d}\r\n"
            f"Message-ID: <drain-{index}@site.test>\r\n\r\n").encode()
    line = b"abcdefghijklmnopqrstuvwxyz0123456789" * 2 + b"ABCD\r\n"
    return rcpt, head + line * max((size - len(head)) // len(line), 1)


SUBMIT = """\
import smtplib, sys
port, count, domains, size = map(int, sys.argv[1:5])
sys.path.insert(0, sys.argv[5])
from drain import make_message

with smtplib.SMTP("127.0.0.1", port, local_hostname="lan.site.test", timeout=60) as s:
    for i in range(count):
        rcpt, body = make_message(i, domains, size)
        s.sendmail("{sender}", [rcpt], body)
""".replace("{sender}", SENDER)


def send_one(topology: Topology, port: int, rcpt: str, subject: str) -> None:
    """One small message into the site over its loopback."""
    subprocess.run(topology.in_ns(topology.site, sys.executable, "-c", WARM, str(port),
                                  rcpt, subject), check=True, timeout=60)


WARM = """\
import smtplib, sys
port, rcpt, subject = int(sys.argv[1]), sys.argv[2], sys.argv[3]
with smtplib.SMTP("127.0.0.1", port, local_hostname="lan.site.test", timeout=60) as s:
    s.sendmail("{sender}", [rcpt], f"Subject: {subject}\\r\\n\\r\\nwarm up\\r\\n")
""".replace("{sender}", SENDER)


def submit(topology: Topology, port: int, count: int, domains: int, size: int) -> None:
    """Queue `count` messages over one SMTP session on the site's loopback."""
    subprocess.run(topology.in_ns(topology.site, sys.executable, "-c", SUBMIT, str(port),
                                  str(count), str(domains), str(size),
                                  str(Path(__file__).resolve().parent)),
                   check=True, timeout=600)


class Sink:
    """What smtp-sink has dumped: the Subject tag of each complete transaction."""

    def __init__(self, dumps: Path):
        self.dumps = dumps
        self.done: dict[str, list[str]] = {}   # dump file name -> tags in it

    def tags(self, prefix: str = "drain-") -> list[str]:
        """Every tag received so far (a duplicate delivery appears twice)."""
        for path in self.dumps.iterdir():
            if path.name in self.done:
                continue
            data = path.read_bytes()
            if data.endswith(b"\n\n"):
                self.done[path.name] = [line[9:].decode().strip() for line in data.split(b"\n")
                                        if line.startswith(b"Subject: ")]
        return [tag for tags in self.done.values() for tag in tags if tag.startswith(prefix)]


# -- the servers in the site namespace ----------------------------------------------------


TIDEPOST_CONFIG = """\
hostname = "site.test"
spool = "{spool}"

[smtp]
listen = ["127.0.0.1:{port}"]

[local]
domains = ["site.test"]
system_users = false

[dns]
nameservers = ["{dns}"]

[delivery]
smtp_port = 25
{delivery}
[[route]]
name = "uplink"
domains = ["*"]
transport = "mx"
on_demand = true
start_held = true
{route}"""


class TidepostSite:
    """`tidepost serve` in the site namespace, uplink held."""

    def __init__(self, topology: Topology, folder: Path, delivery: str, route: str = ""):
        self.topology, self.folder = topology, folder
        self.config = folder / "tidepost.toml"
        self.config.write_text(TIDEPOST_CONFIG.format(
            spool=folder / "spool", port=TIDEPOST_PORT, dns=ISP_ADDRESS, delivery=delivery,
            route=route))
        self.port = TIDEPOST_PORT

    def start(self) -> None:
        """Start the daemon and wait until it listens."""
        topo = self.topology
        daemon = topo.start(topo.in_ns(topo.site, *tidepost_argv(), "serve",
                                       "-c", str(self.config)), self.folder / "serve.log")
        wait_for(lambda: daemon.poll() is not None or
                 topo.listening(topo.site, "t", self.port), 30, "tidepost serve")
        if daemon.poll() is not None:
            raise RuntimeError(f"tidepost serve exited {daemon.returncode}: "
                               f"{(self.folder / 'serve.log').read_text()}")

    def queued(self, count: int) -> None:
        """Wait until the held messages are queued (the 250 came after the commit)."""

    def release(self, up: bool = True) -> None:
        """`tidepost link up uplink` (or down)."""
        topo = self.topology
        subprocess.run(topo.in_ns(topo.site, *tidepost_argv(), "link", "up" if up else "down",
                                  "uplink", "-c", str(self.config)),
                       check=True, capture_output=True, timeout=60)

    def metered(self) -> tuple[int, int]:
        """(up, down) IP bytes the link meter has written for the uplink (usage.sqlite)."""
        path = self.folder / "spool" / "usage.sqlite"
        if not path.exists():
            return (0, 0)
        with contextlib.closing(sqlite3.connect(path)) as db:
            row = db.execute("SELECT COALESCE(SUM(ip_up), 0), COALESCE(SUM(ip_down), 0) "
                             "FROM routes WHERE route='uplink'").fetchone()
        return (row[0], row[1])

    def warm_dns(self, sink: Sink, domains: int) -> None:
        """One message to each domain with the link up, then hold it again.

        A site's usual destinations are in its DNS cache (SPOOL/dns-cache.sqlite,
        kept across restarts for the records' TTLs, here an hour): the drain
        then starts with no lookups, as it would after a recent session.
        """
        self.release()
        for domain in range(domains):
            send_one(self.topology, self.port, f"warm{domain}@d{domain}.test",
                     f"warmup-{domain}")
        wait_for(lambda: len(set(sink.tags("warmup-"))) >= domains, 120, "the warm-up mail")
        self.release(up=False)
        time.sleep(2.0)  # its connections close (QUIT) before the held period is watched


class PostfixSite:
    """A private Postfix instance in the site namespace, remote mail held."""

    def __init__(self, topology: Topology, folder: Path, main_cf_extra: str = ""):
        self.topology, self.folder = topology, folder
        self.conf = folder / "conf"
        self.port = POSTFIX_PORT
        self.main_cf_extra = main_cf_extra  # e.g. a relayhost (bench/batch.py)

    def start(self) -> None:
        """Write main.cf and master.cf (no chroot: DNS needs /etc/resolv.conf), start."""
        folder, topo = self.folder, self.topology
        self.conf.mkdir()
        (self.conf / "main.cf").write_text(main_cf(folder, "site.test") + self.main_cf_extra)
        lines = []
        for line in Path("/etc/postfix/master.cf").read_text().splitlines():
            fields = line.split()
            if len(fields) >= 8 and not line[0].isspace() and not line.startswith("#"):
                if fields[0] == "smtp" and fields[1] == "inet":
                    fields[0] = f"127.0.0.1:{self.port}"
                fields[4] = "n"    # chroot
                line = " ".join(fields)
            lines.append(line)
        (self.conf / "master.cf").write_text("\n".join(lines) + "\n")
        (folder / "queue").mkdir()
        (folder / "data").mkdir()
        shutil.chown(folder / "data", "postfix")
        topo.cleanups.append(self.stop)
        started = subprocess.run(topo.in_ns(topo.site, POSTFIX, "-c", str(self.conf),
                                            "start"), capture_output=True, text=True)
        if started.returncode:
            log = folder / "maillog"
            raise RuntimeError(f"postfix start failed: {started.stderr}"
                               f"{log.read_text() if log.exists() else ''}")
        wait_for(lambda: topo.listening(topo.site, "t", self.port), 30, "postfix smtpd")

    def queued(self, count: int) -> None:
        """Wait until qmgr has deferred every message (held by defer_transports)."""
        deferred = self.folder / "queue" / "deferred"
        wait_for(lambda: sum(len(files) for _, _, files in os.walk(deferred)) >= count,
                 120, "postfix to defer the messages")

    def release(self) -> None:
        """`postqueue -f`: deliver what defer_transports holds."""
        topo = self.topology
        subprocess.run(topo.in_ns(topo.site, POSTQUEUE, "-c", str(self.conf), "-f"),
                       check=True, capture_output=True, timeout=60)

    def notes(self) -> list[str]:
        """Why deliveries were deferred after the release, from Postfix's log."""
        log = self.folder / "maillog"
        reasons: dict[str, int] = {}
        for line in log.read_text(errors="replace").splitlines() if log.exists() else []:
            if "status=deferred" in line and "(deferred transport)" not in line:
                reason = line.split("status=deferred", 1)[1].strip(" ()")[:70]
                reasons[reason] = reasons.get(reason, 0) + 1
        return [f"{count} deferred: {reason}" for reason, count in reasons.items()]

    def stop(self) -> None:
        """`postfix stop`; the master's pid gets SIGKILL if it is still there."""
        topo = self.topology
        subprocess.run(topo.in_ns(topo.site, POSTFIX, "-c", str(self.conf), "stop"),
                       capture_output=True, timeout=60)
        pidfile = self.folder / "queue" / "pid" / "master.pid"
        with contextlib.suppress(OSError, ValueError):
            pid = int(pidfile.read_text().split()[0])
            for _ in range(50):
                os.kill(pid, 0)
                time.sleep(0.1)
            os.kill(pid, signal.SIGKILL)


# -- one run ----------------------------------------------------------------------------


@dataclass
class Result:
    """One measured drain."""

    name: str
    messages: int
    message_bytes: int
    rate: float
    link: str = ""                    # "56k 600ms": rate and one-way delay
    held_packets: int = 0
    delivered: int = 0
    duplicates: int = 0
    up: tuple[int, int] = (0, 0)      # (packets, bytes) site -> isp after release
    down: tuple[int, int] = (0, 0)    # isp -> site
    connections: int = 0
    dns_queries: int = 0
    retransmitted: int = 0            # TCP payload bytes the site sent twice
    metered: tuple[int, int] = (0, 0)  # (up, down) bytes tidepost's link meter counted
    first: float = 0.0
    last: float = 0.0                 # seconds from release to the last delivery seen
    drain: float = 0.0
    complete: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def floor(self) -> float:
        """Seconds the message bytes alone need at the link's rate."""
        return self.message_bytes / self.rate

    @property
    def busy(self) -> float:
        """Share of the drain time the site's side of the link spent sending."""
        return self.up[1] / self.rate / self.drain if self.drain else 0.0


def run(name: str, make_site, args, base: Path, rate: float) -> Result:
    """Fresh topology and server; queue N held; release; time until the sink has all."""
    folder = base / "".join(c if c.isalnum() else "-" for c in name)
    folder.mkdir()
    folder.chmod(0o755)  # Postfix's daemons run as user postfix
    sizes = [len(make_message(i, args.domains, args.size)[1]) for i in range(args.messages)]
    result = Result(name, args.messages, sum(sizes), rate,
                    f"{args.rate_kbit:g}k {args.delay_ms:g}ms")
    topology = Topology(folder, args.delay_ms / 1000, rate, args.domains)
    try:
        topology.build()
        link, sink = topology.link, Sink(topology.dumps)
        site = make_site(topology, folder)
        site.start()
        if args.warm_dns and isinstance(site, TidepostSite):
            site.warm_dns(sink, args.domains)
        before = link.counts()["a_to_b"][0]
        print(f"  {name}: queueing {args.messages} messages while held...", file=sys.stderr)
        submit(topology, site.port, args.messages, args.domains, args.size)
        site.queued(args.messages)
        time.sleep(args.settle)  # time for anything that would go out anyway
        metered = getattr(site, "metered", None)
        if metered:
            time.sleep(5.5)  # the link meter writes every 5 s: what came before is in
        metered_before = metered() if metered else (0, 0)
        counts = link.counts()
        result.held_packets = counts["a_to_b"][0] - before
        start_up, start_down = counts["a_to_b"], counts["b_to_a"]
        start_connections, start_dns = len(link.connections), link.dns_queries
        start_retransmitted = link.retransmitted

        print(f"  {name}: released, draining...", file=sys.stderr)
        released = time.monotonic()
        site.release()
        deadline, got = released + args.timeout, 0
        while time.monotonic() < deadline:
            now, before_poll = time.monotonic(), got
            got = len(set(sink.tags()))
            if got > before_poll:
                result.first = result.first or now - released
                result.last = now - released
            if got >= args.messages:
                result.complete = True
                break
            if now - released - result.last > args.stall:
                result.notes.append(f"nothing new for {args.stall:g}s: gave up")
                break
            time.sleep(0.05)
        result.drain = result.last if result.complete else time.monotonic() - released
        time.sleep(1.0)  # QUITs, and a duplicate would show up now
        tags = sink.tags()
        result.delivered, result.duplicates = len(set(tags)), len(tags) - len(set(tags))
        counts = link.counts()
        result.up = tuple(n - m for n, m in zip(counts["a_to_b"], start_up))
        result.down = tuple(n - m for n, m in zip(counts["b_to_a"], start_down))
        result.connections = len(link.connections) - start_connections
        result.dns_queries = link.dns_queries - start_dns
        result.retransmitted = link.retransmitted - start_retransmitted
        result.notes += site.notes() if hasattr(site, "notes") else []
    finally:
        topology.close()  # tidepost writes its last counts as it stops
    if metered:
        after = metered()
        result.metered = (after[0] - metered_before[0], after[1] - metered_before[1])
    return result


# -- output -----------------------------------------------------------------------------


def print_table(results: list[Result], args) -> None:
    """One row per run, then the notes and what the reference ratios say."""
    print(f"{'link':<12}{'run':<24}{'msgs':>5}{'KiB':>6}{'held':>5}{'up KiB':>7}{'retx':>6}{'dn KiB':>7}"
          f"{'up pkt':>7}{'dn pkt':>7}{'conn':>5}{'dns':>5}{'floor s':>8}{'first s':>8}"
          f"{'drain s':>8}{'x floor':>8}{'busy':>6}")
    for r in results:
        drain = f"{r.drain:.1f}" if r.complete else f">{r.drain:.0f}"
        ratio = f"{r.drain / r.floor:.2f}" if r.complete else "-"
        print(f"{r.link:<12}{r.name:<24}{r.delivered:>5}{r.message_bytes / 1024:>6.0f}{r.held_packets:>5}"
              f"{r.up[1] / 1024:>7.0f}{r.retransmitted / 1024:>6.0f}{r.down[1] / 1024:>7.0f}"
              f"{r.up[0]:>7}{r.down[0]:>7}{r.connections:>5}{r.dns_queries:>5}"
              f"{r.floor:>8.1f}{r.first:>8.1f}{drain:>8}{ratio:>8}{r.busy:>6.0%}")
    for r in results:
        if r.metered[0]:
            print(f"{r.link} {r.name}: the link meter counted {r.metered[0] / 1024:.0f} KiB up "
                  f"and {r.metered[1] / 1024:.0f} KiB down; the emulator {r.up[1] / 1024:.0f} "
                  f"and {r.down[1] / 1024:.0f} ({r.metered[0] / r.up[1]:.1%} up, "
                  f"{r.metered[1] / r.down[1]:.1%} down)")
        if r.duplicates:
            print(f"{r.name}: {r.duplicates} duplicate deliveries")
        if r.held_packets:
            print(f"{r.name}: {r.held_packets} packets left the site while held (goal 0)")
        if not r.complete:
            print(f"{r.name}: {r.delivered} of {r.messages} delivered, the last "
                  f"{r.last:.1f}s after the release")
        for note in r.notes:
            print(f"{r.name}: {note}")
    for link in dict.fromkeys(r.link for r in results):
        by = {r.name: r for r in results if r.complete and r.link == link}
        default, single = by.get("tidepost default"), by.get("tidepost 1 conn/domain")
        if default and single:
            print(f"{link}: drain time, 1 conn/domain / default: "
                  f"{single.drain / default.drain:.2f}")
        if default and by.get("postfix"):
            print(f"{link}: drain time, tidepost default / postfix: "
                  f"{default.drain / by['postfix'].drain:.2f}")


def missing() -> str:
    """Why the benchmark cannot run here, or ''."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, TUN devices)"
    if not shutil.which("ip") or not os.path.exists("/dev/net/tun"):
        return "needs `ip` and /dev/net/tun"
    for program in (UNBOUND, SMTP_SINK):
        if not os.access(program, os.X_OK):
            return f"{program} is not installed (./run-tests installs it)"
    probe = f"tp-probe-{os.getpid()}"
    if subprocess.run(["ip", "netns", "add", probe], capture_output=True).returncode:
        return "`ip netns add` is not permitted here"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return ""


def on_sigterm(signum, frame) -> None:
    """SIGTERM (and SIGHUP) clean up like Ctrl-C."""
    raise KeyboardInterrupt


# Link profiles: (kbit/s, one-way delay in ms, messages).  The message
# count makes the floor a minute or two, so that what SMTP costs per message
# shows rather than the ~7 round trips any drain needs to start and end
# (DNS, TCP, greeting, EHLO, the first 354, the last reply).
PROFILES = {"56k": (56, 600, 200), "1m": (1000, 150, 2000)}


def tidepost_runs(names: str, rate_kbit: float) -> list:
    """(label, site factory) for each tidepost run named in --runs."""
    runs = []
    for run_name in names.split(","):
        route = ""
        if run_name == "default":
            delivery, label = "", "tidepost default"
        elif run_name == "single":
            delivery, label = "destination_concurrency = 1\n", "tidepost 1 conn/domain"
        elif run_name == "rate":  # the route knows its link's speed: route.rate
            delivery, label = "", "tidepost route.rate"
            route = f"rate = {int(rate_kbit * 1000)}\n"
        else:  # a number: that destination_concurrency
            delivery = f"destination_concurrency = {int(run_name)}\n"
            label = f"tidepost {int(run_name)} conn/domain"
        runs.append((label, lambda topo, folder, d=delivery, r=route:
                     TidepostSite(topo, folder, d, r)))
    return runs


def parse_args() -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=200, help="messages queued (N)")
    parser.add_argument("--size", type=int, default=4096, help="bytes per message")
    parser.add_argument("--domains", type=int, default=5, help="destination domains")
    parser.add_argument("--rate-kbit", type=float, default=256,
                        help="link rate each way, kbit/s (default 256 = 32 KB/s)")
    parser.add_argument("--delay-ms", type=float, default=300, help="one-way delay, ms")
    parser.add_argument("--profiles", default="",
                        help="comma-separated link profiles instead of --rate-kbit, "
                        f"--delay-ms and --messages: {', '.join(PROFILES)} "
                        "(56 kbit/s 600 ms with 200 messages, 1 Mbit/s 150 ms with 2000)")
    parser.add_argument("--timeout", type=float, default=600,
                        help="give up on a drain after this many seconds")
    parser.add_argument("--stall", type=float, default=60,
                        help="give up on a drain when nothing arrives for this many seconds")
    parser.add_argument("--settle", type=float, default=3.0,
                        help="seconds to watch the held link after queueing")
    parser.add_argument("--runs", default="default,single",
                        help="tidepost runs: default, single (destination_concurrency = 1), "
                        "rate (route.rate set to the link's rate), or a number (that "
                        "destination_concurrency)")
    parser.add_argument("--postfix", action="store_true", help="also measure Postfix")
    parser.add_argument("--warm-dns", action="store_true",
                        help="tidepost: deliver one message to each domain before holding "
                        "the link, so that the drain finds its DNS answers cached")
    return parser.parse_args()


def main() -> int:
    """Parse options, run each configuration on a fresh topology, print the table."""
    args = parse_args()
    if why := missing():
        print(f"drain benchmark skipped: {why}")
        return 0
    profiles = [(name, *PROFILES[name]) for name in args.profiles.split(",") if name] or \
        [("", args.rate_kbit, args.delay_ms, args.messages)]
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with it ignored
    signal.signal(signal.SIGTERM, on_sigterm)
    signal.signal(signal.SIGHUP, on_sigterm)
    base = Path(tempfile.mkdtemp(prefix="tidepost-drain-"))
    base.chmod(0o755)
    results: list[Result] = []
    try:
        for profile, rate_kbit, delay_ms, messages in profiles:
            args.rate_kbit, args.delay_ms, args.messages = rate_kbit, delay_ms, messages
            if not run_profile(profile, args, base / (profile or "link"), results):
                return 130
    finally:
        if results:
            print_table(results, args)
        if os.environ.get("DRAIN_KEEP"):
            print(f"kept {base}", file=sys.stderr)
        else:
            shutil.rmtree(base, ignore_errors=True)
    return 0


def run_profile(profile: str, args: argparse.Namespace, base: Path,
                results: list[Result]) -> bool:
    """Every run on one link profile, added to `results`; False when interrupted."""
    base.mkdir()
    base.chmod(0o755)
    rate = args.rate_kbit * 1000 / 8
    runs = tidepost_runs(args.runs, args.rate_kbit)
    if args.postfix:
        if not os.access(POSTFIX, os.X_OK) or not Path("/etc/postfix/master.cf").exists():
            print("postfix: skipped (Postfix is not installed)")
        else:
            runs.append(("postfix", PostfixSite))
    print(f"drain benchmark{' ' + profile if profile else ''}: {args.messages} messages of "
          f"~{args.size} bytes to {args.domains} domains over {args.rate_kbit:g} kbit/s "
          f"({rate / 1000:g} kB/s), {args.delay_ms:g} ms each way; {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}", flush=True)
    try:
        for name, make_site in runs:
            results.append(run(name, make_site, args, base, rate))
    except KeyboardInterrupt:
        print("interrupted; cleaned up", file=sys.stderr)
        return False
    return True


if __name__ == "__main__":
    sys.exit(main())
