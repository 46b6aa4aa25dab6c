#!/usr/bin/env python3
"""Cluster benchmark: tidepost nodes on one PostgreSQL database, beside one SQLite node.

Needs the Debian packages postgresql, unbound and postfix (smtp-sink); run
as root or as a user PostgreSQL accepts.  Everything runs on this machine:
a private PostgreSQL server (tidepost/testing/pgcluster.py, fsync on), N
`tidepost serve` nodes, unbound answering the customer domains' MX records
with 127.0.0.1, and smtp-sink as every customer's server.

1. Durable acceptance: one `smtp-source` per node (Postfix's load
   generator, bench/accept.py's) with `--clients` sessions, each sending
   its share of `--messages` one transaction after another on its
   connection (`-d`); the clock runs from the first smtp-source's start to
   the last one's exit, and a 250 means committed (fsync'd).  Rows: SQLite single node, PostgreSQL
   with 1, 2 and 3 nodes.
2. ETRN flush: `--held` messages held for one customer domain, one ETRN to
   every node at the same moment; the clock runs until the last recipient
   has left the queue.  Same rows.
3. A large queue (`--large`, default 1,000,000 held messages over 1,000
   customer domains, PostgreSQL, one node): the time of `tidepost queue
   --count`, and of one domain's ETRN (its 1,000 messages) to the first
   delivery and to the last.

Prints tables with ratios against the single SQLite node; asserts nothing.
Usage: python bench/cluster.py --help
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import smtplib
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from accept import free_port, smtp_source, tidepost_argv, wait_port  # bench/ on sys.path
from tidepost.address import Address
from tidepost.queue.backend import NewMessage
from tidepost.queue.postgres import PostgresQueue
from tidepost.queue.sqlite import SqliteQueue
from tidepost.testing.dns import unbound_config
from tidepost.testing.pgcluster import PrivateCluster

UNBOUND = "/usr/sbin/unbound"
SMTP_SINK = "/usr/sbin/smtp-sink"
CUSTOMER = "cust0.test"
SETTLE = 15.0  # seconds between a large queue's load and the timed commands

NODE_CONFIG = """\
hostname = "relay{index}.test"
spool = "{spool}"

[smtp]
listen = ["127.0.0.1:{port}"]
max_connections_per_client = 1000

[local]
domains = ["localhost"]
system_users = false

[queue]
backend = "{backend}"
dsn = "{dsn}"
node = "node{index}"
poll_interval = "2s"

[relay]
customer_domains = [".test"]
etrn_rate = 100000

[dns]
nameservers = ["127.0.0.1:{dns_port}"]

[delivery]
smtp_port = {sink_port}

[system]
user = "root"

[[route]]
name = "uplink"
domains = ["*"]
transport = "mx"
on_demand = true
start_held = true
"""


@dataclass
class Row:
    """One measured line."""

    what: str
    nodes: int
    count: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.count / self.seconds if self.seconds else 0.0


class Nodes:
    """N running `tidepost serve` on one backend; stopped by close()."""

    def __init__(self, folder: Path, count: int, backend: str, dsn: str, dns_port: int,
                 sink_port: int):
        self.ports: list[int] = []
        self.configs: list[Path] = []
        self.processes: list[subprocess.Popen] = []
        for index in range(count):
            home = folder / f"node{index}"
            home.mkdir(parents=True, exist_ok=True)
            port = free_port()
            config = home / "tidepost.toml"
            config.write_text(NODE_CONFIG.format(index=index, spool=home / "spool", port=port,
                                                 backend=backend, dsn=dsn, dns_port=dns_port,
                                                 sink_port=sink_port))
            log = open(home / "serve.log", "wb")
            self.processes.append(subprocess.Popen(
                [*tidepost_argv(), "serve", "-c", str(config)], stdout=log,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL))
            self.ports.append(port)
            self.configs.append(config)
        for port, process in zip(self.ports, self.processes):
            wait_port(port, process, timeout=600)

    def close(self) -> None:
        for process in self.processes:
            process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def etrn(port: int, domain: str) -> None:
    with smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=60) as client:
        client.ehlo()
        client.docmd("ETRN", domain)


def make_body(size: int) -> bytes:
    """A message of about `size` bytes (the held messages of the ETRN runs)."""
    line = b"x" * 76 + b"\r\n"
    return b"Subject: bench\r\n\r\n" + line * max(size // len(line), 1)


def accept_all(ports: list[int], clients: int, messages: int, size: int) -> float:
    """Every node gets one smtp-source of `clients` sessions (connections reused, `-d`)
    and its share of `messages`; seconds from the first start to the last exit."""
    shares = [messages // len(ports) + (i < messages % len(ports)) for i in range(len(ports))]
    start = time.perf_counter()
    with ThreadPoolExecutor(len(ports)) as pool:
        list(pool.map(lambda job: smtp_source(job[0], job[1], clients, size, True),
                      zip(ports, shares)))
    return time.perf_counter() - start


def held_messages(count: int, domains: int, body: bytes) -> list[NewMessage]:
    sender = Address("bench", "far.test")
    return [NewMessage(sender, (Address(f"u{n}", f"cust{n % domains}.test"),), body,
                       time.time()) for n in range(count)]


async def fill(queue, messages: list[NewMessage]) -> None:
    """Queue `messages` through the store, 200 at a time (group commits)."""
    for start in range(0, len(messages), 200):
        await asyncio.gather(*(queue.submit(m) for m in messages[start:start + 200]))
    await queue.close()


class PgCounter:
    """Counts the recipients still in a PostgreSQL queue on one kept connection.

    A connection per count would start a database backend every 50 ms of
    the measured flush, on the CPUs the nodes and the database share.
    """

    def __init__(self, dsn: str):
        self._loop = asyncio.new_event_loop()
        self._conn = self._loop.run_until_complete(asyncpg.connect(dsn))

    def __call__(self) -> int:
        return self._loop.run_until_complete(self._conn.fetchval(
            "SELECT count(*) FROM recipients WHERE state IN ('queued', 'claimed', 'held')"))

    def close(self) -> None:
        self._loop.run_until_complete(self._conn.close())
        self._loop.close()


def sqlite_count(path: Path) -> int:
    import sqlite3
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return conn.execute("SELECT count(*) FROM recipients WHERE state IN "
                            "('queued', 'claimed', 'held')").fetchone()[0]


def wait_empty(count, timeout: float = 900.0) -> float:
    """Wait until `count()` is 0; the time it happened."""
    deadline = time.monotonic() + timeout
    while count() and time.monotonic() < deadline:
        time.sleep(0.05)
    return time.perf_counter()


class Environment:
    """PostgreSQL, unbound and smtp-sink for the whole run."""

    def __init__(self, base: Path):
        self.base = base
        self.pg = PrivateCluster().start()
        self.dns_port = free_port()
        # A redirect zone answers every name below test. with the apex's data:
        # each customer domain's MX is "test.", whose address is 127.0.0.1.
        zone = ["test. 300 MX 10 test.", "test. 300 A 127.0.0.1"]
        folder = base / "dns"
        folder.mkdir()
        config = unbound_config(folder, zone, port=self.dns_port).read_text()
        (folder / "unbound.conf").write_text(config.replace('local-zone: "test." static',
                                                            'local-zone: "test." redirect'))
        self.unbound = subprocess.Popen([UNBOUND, "-d", "-c", str(folder / "unbound.conf")],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.sink_port = free_port()
        self.dumps = base / "sink"
        self.dumps.mkdir()
        argv = [SMTP_SINK, "-d", f"{self.dumps}/%M%S."]
        if os.geteuid() == 0:
            argv += ["-u", "root"]
        self.sink = subprocess.Popen([*argv, f"127.0.0.1:{self.sink_port}", "1000"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.sink_port, self.sink)
        time.sleep(0.5)
        self.databases = 0

    def database(self) -> str:
        self.databases += 1
        return self.pg.create_database(f"bench{self.databases}")

    def first_delivery(self) -> float | None:
        """Wall-clock time of the first dump the sink wrote, if any."""
        times = [p.stat().st_mtime for p in self.dumps.iterdir()]
        return min(times) if times else None

    def clear_dumps(self) -> None:
        for path in self.dumps.iterdir():
            path.unlink()

    def close(self) -> None:
        for process in (self.sink, self.unbound):
            process.terminate()
            process.wait(10)
        self.pg.stop()


def measure_accept(env: Environment, backend: str, nodes: int, args, body: bytes) -> Row:
    folder = Path(tempfile.mkdtemp(dir=env.base))
    dsn = env.database() if backend == "postgresql" else ""
    running = Nodes(folder, nodes, backend, dsn, env.dns_port, env.sink_port)
    try:
        accept_all(running.ports[:1], 1, 5, args.size)  # warm up
        seconds = accept_all(running.ports, args.clients, args.messages, args.size)
    finally:
        running.close()
    return Row(f"accept {backend}", nodes, args.messages, seconds)


def measure_flush(env: Environment, backend: str, nodes: int, args, body: bytes) -> Row:
    folder = Path(tempfile.mkdtemp(dir=env.base))
    messages = held_messages(args.held, 1, body)
    if backend == "postgresql":
        dsn = env.database()
        asyncio.run(fill(PostgresQueue(dsn), messages))
        count = PgCounter(dsn)
    else:
        dsn = ""
        path = folder / "node0" / "spool" / "queue.sqlite"
        asyncio.run(fill(SqliteQueue(path), messages))
        count = lambda: sqlite_count(path)  # noqa: E731
    running = Nodes(folder, nodes, backend, dsn, env.dns_port, env.sink_port)
    try:
        start = time.perf_counter()
        for port in running.ports:  # one ETRN to each node, as fast as they come
            etrn(port, CUSTOMER)
        seconds = wait_empty(count) - start
    finally:
        running.close()
        if isinstance(count, PgCounter):
            count.close()
    env.clear_dumps()
    return Row(f"ETRN flush {backend}", nodes, args.held, seconds)


async def fill_large(dsn: str, count: int, domains: int) -> float:
    """`count` one-recipient messages over `domains` customer domains, in SQL; seconds."""
    start = time.perf_counter()
    store = PostgresQueue(dsn)  # creates the schema
    await store.close()
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            "INSERT INTO messages(queue_id, sender, arrival, size, body_type, smtputf8) "
            "SELECT 'L' || n, 'bench@far.test', extract(epoch from now()), 300, '7BIT', false "
            "FROM generate_series(1, $1) AS n", count)
        await conn.execute("INSERT INTO bodies(message_id, body) SELECT id, "
                           "convert_to('Subject: held ' || id || E'\\r\\n\\r\\nbody\\r\\n', "
                           "'UTF8') FROM messages")
        await conn.execute(
            "INSERT INTO recipients(message_id, local, domain, state, next_try) "
            "SELECT id, 'u' || id, 'cust' || (id % $1) || '.test', 'queued', arrival "
            "FROM messages ORDER BY id", domains)
        await conn.execute("VACUUM ANALYZE")
    finally:
        await conn.close()
    return time.perf_counter() - start


def measure_large(env: Environment, args) -> list[tuple[str, float]]:
    folder = Path(tempfile.mkdtemp(dir=env.base))
    dsn = env.database()
    filled = asyncio.run(fill_large(dsn, args.large, args.domains))
    started = time.perf_counter()
    running = Nodes(folder, 1, "postgresql", dsn, env.dns_port, env.sink_port)
    log = folder / "node0" / "serve.log"
    while b"queue loaded" not in log.read_bytes() and time.perf_counter() - started < 600:
        time.sleep(0.1)  # measured below on a running node, not one still reading
    load_seconds = time.perf_counter() - started
    # The scheduler's first pass parks every held entry (once, O(queue)):
    # ETRN is timed on a node that has done so, as it is in service.
    time.sleep(SETTLE)
    try:
        start = time.perf_counter()
        done = subprocess.run([*tidepost_argv(), "queue", "-c", str(running.configs[0]),
                               "--count"], capture_output=True, text=True, check=True)
        count_seconds = time.perf_counter() - start
        env.clear_dumps()
        domain_count = args.large // args.domains
        counter = PgCounter(dsn)
        before = counter()
        wall = time.time()
        start = time.perf_counter()
        etrn(running.ports[0], "cust1.test")
        first = None
        while first is None and time.perf_counter() - start < 120:
            first = env.first_delivery()
            time.sleep(0.01)
        wait_empty(lambda: counter() > before - domain_count, 600)
        last_seconds = time.perf_counter() - start
        counter.close()
    finally:
        running.close()
    return [(f"fill {args.large} held messages (SQL)", filled),
            (f"node start until its queue is loaded", load_seconds),
            (f"tidepost queue --count ({done.stdout.split()[0]})", count_seconds),
            (f"ETRN cust1.test to first delivery", (first - wall) if first else float("nan")),
            (f"ETRN cust1.test, all {domain_count} delivered", last_seconds)]


HEADER = f"{'run':<26}{'nodes':>6}{'messages':>10}{'seconds':>10}{'msg/s':>10}{'ratio':>8}"


def print_row(row: Row, rows: list[Row]) -> None:
    """One line as soon as it is measured; ratio: against the SQLite node's same run."""
    kind = row.what.rsplit(" ", 1)[0]
    base = next((r.rate for r in rows if r.what == f"{kind} sqlite"), None)
    ratio = f"{row.rate / base:.2f}" if base else "-"
    print(f"{row.what:<26}{row.nodes:>6}{row.count:>10}{row.seconds:>10.2f}"
          f"{row.rate:>10.1f}{ratio:>8}", flush=True)


def print_scaling(rows: list[Row]) -> None:
    """N PostgreSQL nodes against one."""
    by = {(r.what, r.nodes): r.rate for r in rows}
    for kind in ("accept", "ETRN flush"):
        one = by.get((f"{kind} postgresql", 1))
        for nodes in (2, 3):
            if one and by.get((f"{kind} postgresql", nodes)):
                print(f"{kind}: {nodes} PostgreSQL nodes / 1 node: "
                      f"{by[(f'{kind} postgresql', nodes)] / one:.2f}")


def on_sigterm(signum, frame) -> None:
    """SIGTERM ends the run through the finally clauses that stop every process."""
    raise KeyboardInterrupt


def main() -> int:
    signal.signal(signal.SIGTERM, on_sigterm)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=3000, help="messages accepted per run")
    parser.add_argument("--clients", type=int, default=20, help="SMTP clients per node")
    parser.add_argument("--size", type=int, default=4096, help="bytes per message")
    parser.add_argument("--nodes", default="1,2,3", help="PostgreSQL node counts")
    parser.add_argument("--held", type=int, default=2000, help="messages an ETRN flushes")
    parser.add_argument("--large", type=int, default=1_000_000,
                        help="held messages of the large-queue run (0: skip)")
    parser.add_argument("--domains", type=int, default=1000,
                        help="customer domains of the large queue")
    parser.add_argument("--skip", default="", help="comma-separated: accept,flush")
    args = parser.parse_args()
    for program in (UNBOUND, SMTP_SINK):
        if not Path(program).exists():
            print(f"needs {program}")
            return 2
    body = make_body(args.size)
    base = Path(tempfile.mkdtemp(prefix="tidepost-cluster-bench-"))
    base.chmod(0o755)
    env = Environment(base)
    counts = [int(n) for n in args.nodes.split(",")]
    rows: list[Row] = []
    skip = set(args.skip.split(","))
    print(f"cluster benchmark: {os.cpu_count()} CPUs, {args.messages} messages of "
          f"{len(body)} bytes, {args.clients} clients per node; PostgreSQL "
          f"{env.pg.bin.parent.name} on this machine (fsync on)", flush=True)
    try:
        print(HEADER, flush=True)
        for kind, measure in (("accept", measure_accept), ("flush", measure_flush)):
            if kind in skip:
                continue
            for backend, nodes in [("sqlite", 1)] + [("postgresql", n) for n in counts]:
                rows.append(measure(env, backend, nodes, args, body))
                print_row(rows[-1], rows)
        print_scaling(rows)
        if args.large:
            print(f"\nlarge queue: {args.large} held messages in PostgreSQL, 1 node")
            for what, seconds in measure_large(env, args):
                print(f"{what:<52}{seconds:>10.2f} s")
    finally:
        env.close()
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
