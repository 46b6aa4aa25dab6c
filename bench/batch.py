#!/usr/bin/env python3
"""Batch benchmark: a held site's release to its relay, XTIDEPOST BATCH against plain SMTP.

Namespaces "site" and "isp" joined by the link emulator, as bench/drain.py
builds them (its Topology).  The isp runs a tidepost relay on
10.77.0.2:2525 that takes mail from the site's network and holds it
(nothing goes further).  The site queues N messages of a realistic mix
(tidepost.testing.mailmix: plain text, HTML with a text part, a few JPEG
and PDF attachments of random, i.e. already compressed, data) while its
uplink is held, then releases it; the clock runs until the relay has
committed all N.  Runs, each on fresh namespaces, link and servers:

- `tidepost batch`: the site's route to the relay with `tidepost_batch`
  (the default): compressed batches, resumable, exactly once;
- `tidepost smtp`: the same with `tidepost_batch = false`: plain SMTP with
  PIPELINING, the reference the goals are against;
- `postfix` (with --postfix): a private Postfix on the site, relayhost the
  relay, held by defer_transports = smtp and released with `postqueue -f`
  (the usual dial-up recipe).

Columns: up KiB / raw (link bytes site->isp against the raw message
bytes), floor s (raw bytes / rate), drain s and its ratio to the floor and
to plain SMTP's drain.  `held` is packets sent while held (goal 0).  Then a
second table: the codecs on the same mix (ratio and CPU), zstandard only if
it is importable.  Prints; asserts nothing.  Needs root, `ip netns`,
/dev/net/tun, unbound and smtp-sink (./run-tests installs them).
Usage: .venv/bin/python bench/batch.py --help
"""

from __future__ import annotations

import argparse
import contextlib
import lzma
import os
import pickle
import platform
import sqlite3
import subprocess
import sys
import tempfile
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from drain import (ISP_ADDRESS, PostfixSite, Topology, missing, tidepost_argv,  # noqa: E402
                   wait_for)

from tidepost.testing.mailmix import message_mix  # noqa: E402

PROFILES = {"56k": (56_000 / 8, 0.600), "1m": (1_000_000 / 8, 0.150)}
RELAY_PORT, SITE_PORT = 2525, 2525
SENDER = "master@site.test"

RELAY = """hostname = "relay.test"
spool = "{spool}"
[smtp]
listen = ["{address}:{port}"]
relay_networks = ["10.77.0.0/30"]
max_message_size = 50000000
[local]
domains = ["relay.test"]
system_users = false
[[route]]
name = "hold"
domains = ["*"]
start_held = true
"""

SITE = """hostname = "site.test"
spool = "{spool}"
[smtp]
listen = ["127.0.0.1:{port}"]
[local]
domains = ["site.test"]
system_users = false
[dns]
nameservers = ["127.0.0.1:9"]
[[route]]
name = "uplink"
domains = ["*"]
transport = "smarthost"
smarthost = "[{relay}]:{relay_port}"
on_demand = true
start_held = true
tidepost_batch = {batch}
"""

SUBMIT = """\
import pickle, smtplib, sys
with smtplib.SMTP("127.0.0.1", int(sys.argv[1]), local_hostname="lan.site.test") as s:
    for rcpt, data in pickle.load(sys.stdin.buffer):
        s.sendmail("{sender}", [rcpt], data)
""".replace("{sender}", SENDER)


@dataclass
class Row:
    link: str
    name: str
    messages: int
    raw: int
    rate: float
    held: int = 0
    delivered: int = 0
    up: int = 0
    down: int = 0
    connections: int = 0
    drain: float = 0.0
    complete: bool = False

    @property
    def floor(self) -> float:
        return self.raw / self.rate


class Relay:
    """The tidepost relay in the isp namespace; counts what it has committed."""

    def __init__(self, topology: Topology, folder: Path):
        self.topology, self.folder = topology, folder / "relay"
        self.folder.mkdir()
        self.config = self.folder / "tidepost.toml"
        self.config.write_text(RELAY.format(spool=self.folder / "spool", address=ISP_ADDRESS,
                                            port=RELAY_PORT))

    def start(self) -> None:
        topo = self.topology
        daemon = topo.start(topo.in_ns(topo.isp, *tidepost_argv(), "serve", "-c",
                                       str(self.config)), self.folder / "serve.log")
        wait_for(lambda: daemon.poll() is not None or
                 topo.listening(topo.isp, "t", RELAY_PORT), 30, "the relay")
        if daemon.poll() is not None:
            raise RuntimeError((self.folder / "serve.log").read_text())

    def committed(self) -> int:
        path = self.folder / "spool" / "queue.sqlite"
        if not path.exists():
            return 0
        with contextlib.closing(sqlite3.connect(path, timeout=5)) as db:
            return db.execute("SELECT count(*) FROM messages").fetchone()[0]


class TidepostSite:
    """`tidepost serve` in the site namespace, uplink held, smarthost the relay."""

    def __init__(self, topology: Topology, folder: Path, batch: bool):
        self.topology, self.folder = topology, folder / "site"
        self.folder.mkdir()
        self.config = self.folder / "tidepost.toml"
        self.config.write_text(SITE.format(spool=self.folder / "spool", port=SITE_PORT,
                                           relay=ISP_ADDRESS, relay_port=RELAY_PORT,
                                           batch="true" if batch else "false"))
        self.port = SITE_PORT

    def start(self) -> None:
        topo = self.topology
        daemon = topo.start(topo.in_ns(topo.site, *tidepost_argv(), "serve", "-c",
                                       str(self.config)), self.folder / "serve.log")
        wait_for(lambda: daemon.poll() is not None or
                 topo.listening(topo.site, "t", self.port), 30, "the site")

    def queued(self, count: int) -> None:
        """The 250s came after the commits."""

    def release(self) -> None:
        topo = self.topology
        subprocess.run(topo.in_ns(topo.site, *tidepost_argv(), "link", "up", "uplink", "-c",
                                  str(self.config)), check=True, capture_output=True, timeout=60)


def mail(count: int, mix: str, seed: int) -> list[tuple[str, bytes]]:
    """(recipient, message) pairs: the mix, to a handful of remote addresses."""
    return [(f"ops{i % 7}@remote{i % 3}.test", data)
            for i, (_, data) in enumerate(message_mix(count, seed, mix))]


def run(name: str, make_site, messages, profile: str, base: Path, args) -> Row:
    """Fresh namespaces, relay and site; queue held; release; time until all committed."""
    rate, delay = PROFILES[profile]
    folder = base / f"{profile}-{name.replace(' ', '-')}"
    folder.mkdir()
    folder.chmod(0o755)  # Postfix's daemons run as user postfix
    row = Row(f"{profile} {delay * 1000:.0f}ms", name, len(messages),
              sum(len(data) for _, data in messages), rate)
    topology = Topology(folder, delay, rate, 1)
    try:
        topology.build()
        link, relay = topology.link, Relay(topology, folder)
        relay.start()
        site = make_site(topology, folder)
        site.start()
        before = link.counts()["a_to_b"][0]
        print(f"  {profile} {name}: queueing {len(messages)} messages while held...",
              file=sys.stderr)
        subprocess.run(topology.in_ns(topology.site, sys.executable, "-c", SUBMIT,
                                      str(site.port)), input=pickle.dumps(messages),
                       check=True, timeout=600)
        site.queued(len(messages))
        time.sleep(args.settle)
        counts = link.counts()
        row.held = counts["a_to_b"][0] - before
        start_up, start_down, start_conn = counts["a_to_b"][1], counts["b_to_a"][1], \
            len(link.connections)
        print(f"  {profile} {name}: released, draining...", file=sys.stderr)
        released = time.monotonic()
        site.release()
        while time.monotonic() - released < args.timeout:
            row.delivered = relay.committed()
            if row.delivered >= len(messages):
                row.complete = True
                break
            time.sleep(0.05)
        row.drain = time.monotonic() - released
        time.sleep(1.0)  # the QUITs
        counts = link.counts()
        row.up = counts["a_to_b"][1] - start_up
        row.down = counts["b_to_a"][1] - start_down
        row.connections = len(link.connections) - start_conn
        row.delivered = relay.committed()
    finally:
        topology.close()
    return row


def print_table(rows: list[Row]) -> None:
    """One row per run; ratios to the floor and to plain SMTP on the same link."""
    print(f"{'link':<11}{'run':<16}{'msgs':>5}{'raw KiB':>8}{'held':>5}{'up KiB':>7}"
          f"{'up/raw':>7}{'dn KiB':>7}{'conn':>5}{'floor s':>8}{'drain s':>8}{'x floor':>8}"
          f"{'x smtp':>7}")
    plain = {r.link: r for r in rows if r.name == "tidepost smtp" and r.complete}
    for r in rows:
        drain = f"{r.drain:.1f}" if r.complete else f">{r.drain:.0f}"
        versus = plain.get(r.link)
        ratio = f"{r.drain / versus.drain:.2f}" if versus and r.complete else "-"
        print(f"{r.link:<11}{r.name:<16}{r.delivered:>5}{r.raw / 1024:>8.0f}{r.held:>5}"
              f"{r.up / 1024:>7.0f}{r.up / r.raw:>7.2f}{r.down / 1024:>7.0f}"
              f"{r.connections:>5}{r.floor:>8.1f}{drain:>8}"
              f"{(r.drain / r.floor if r.complete else 0):>8.2f}{ratio:>7}")


def codec_table(messages: list[tuple[str, bytes]]) -> None:
    """Ratio and CPU of the candidate codecs on the same messages, as one stream."""
    raw = b"".join(data for _, data in messages)
    codecs = [("zlib 6, one stream (used)", lambda: len(zlib.compress(raw, 6))),
              ("zlib 9, one stream", lambda: len(zlib.compress(raw, 9))),
              ("zlib 6, per message", lambda: sum(len(zlib.compress(d, 6))
                                                  for _, d in messages)),
              ("lzma 6, one stream", lambda: len(lzma.compress(raw, preset=6)))]
    with contextlib.suppress(ImportError):
        import zstandard
        codecs += [(f"zstd {level}, one stream",
                    lambda level=level: len(zstandard.ZstdCompressor(level=level).compress(raw)))
                   for level in (3, 19)]
    print(f"\n{'codec':<28}{'ratio':>7}{'CPU ms':>8}{'MB/s':>7}   ({len(raw) / 1024:.0f} KiB)")
    for name, compress in codecs:
        started = time.process_time()
        size = compress()
        cpu = time.process_time() - started
        print(f"{name:<28}{size / len(raw):>7.3f}{cpu * 1000:>8.0f}{len(raw) / cpu / 1e6:>7.1f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=100)
    parser.add_argument("--mix", choices=("text", "attachments"), default="text")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--profiles", default="56k,1m", help="comma list of 56k, 1m")
    parser.add_argument("--postfix", action="store_true", help="also a private Postfix")
    parser.add_argument("--settle", type=float, default=2.0)
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--codecs-only", action="store_true")
    parser.add_argument("--runs", default="batch,smtp", help="comma list of batch, smtp")
    parser.add_argument("--keep", metavar="DIR", help="keep the runs' folders (logs) here")
    args = parser.parse_args()
    messages = mail(args.messages, args.mix, args.seed)
    raw = sum(len(d) for _, d in messages)
    print(f"batch benchmark: {len(messages)} messages of the {args.mix!r} mix, "
          f"{raw / 1024:.0f} KiB raw, to a tidepost relay; {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}")
    if not args.codecs_only:
        problem = missing()
        if problem:
            print(problem, file=sys.stderr)
            return 1
        runs = [(f"tidepost {kind}", lambda t, f, batch=kind == "batch":
                 TidepostSite(t, f, batch=batch)) for kind in args.runs.split(",")]
        if args.postfix:
            runs.append(("postfix", lambda t, f: PostfixSite(
                t, f, f"relayhost = [{ISP_ADDRESS}]:{RELAY_PORT}\n")))
        rows = []
        with tempfile.TemporaryDirectory(prefix="tidepost-batch-", dir="/var/tmp") as base:
            base = args.keep or base
            Path(base).mkdir(parents=True, exist_ok=True)
            Path(base).chmod(0o755)  # Postfix's daemons run as user postfix
            for profile in args.profiles.split(","):
                for name, make_site in runs:
                    rows.append(run(name, make_site, messages, profile, Path(base), args))
        print_table(rows)
    codec_table(messages)
    return 0


if __name__ == "__main__":
    sys.exit(main())
