"""Queue views on a large queue: `tidepost queue`, `--count`, `--json`, `summary`, `status`.

Fills a spool with N messages (default 100,000; `--million` adds a run with
1,000,000), one recipient each, over 1,000 destination domains, with mixed
ages (minutes to days) and states (queued, held on a route, scheduled,
retry, held by an admin, in flight).  The rows are written straight into
the real SQLite schema in bulk (opened and migrated by SqliteQueue first):
2.5 times faster than group-committed submits (bench/queue_memory.py's
fill), and it sets the states and ages that a submit cannot.

Then it runs each command as a user would, output to a pipe with
COLUMNS=80, twice, and prints the faster run's time from the start of the
process to its first line of data (after the table header), its total
time, and the command's peak RSS, beside `tidepost serve`'s RSS with the same spool
loaded (measured as bench/queue_memory.py does) and the goals of issue 12.
The modules are byte-compiled first (into a private cache), as they are in
an installed tidepost: compiling them at every start would be measured
otherwise.

    python bench/queue_views.py                 # 100,000 messages
    python bench/queue_views.py --million       # and 1,000,000 (needs ~3 GiB of disk)
    python bench/queue_views.py --counts 20000  # any sizes, comma-separated
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from queue_memory import daemon_rss, own_tidepost  # bench/: the daemon measured alike
from tidepost.queue.sqlite import SqliteQueue

TIME = "/usr/bin/time"  # GNU time (Debian package `time`)
REPEAT = 2  # runs of each command; the faster is shown (the machine may be shared)
DOMAINS = 1000
CUSTOMERS = [f"c{n}.example" for n in range(2, DOMAINS, 10)]
CONFIG = """hostname = "site.test"
spool = "{spool}"

[system]
user = "root"  # started as root, stay root: the spool is in this run's private folder

[smtp]
listen = ["127.0.0.1:{port}"]

[relay]
customer_domains = [{customers}]

[dns]
nameservers = ["127.0.0.1:9"]

[[route]]
name = "lan"
domains = [".lan.example"]
on_demand = false
transport = "smarthost"
smarthost = "[127.0.0.1]:9"

[[route]]
name = "harbour"
domains = [".harbour.example"]
schedule = ["every 6h"]

[[route]]
name = "uplink"
domains = ["*"]
start_held = true
max_message_size = "2k"

[[route]]
name = "bulk"
domains = ["*"]
start_held = true
"""
RUNS = [  # (label, arguments after `tidepost`, lines of header before the first row)
    ("queue", ["queue"], 1),
    ("queue --count", ["queue", "--count"], 0),
    ("queue --json", ["queue", "--json"], 0),
    ("queue --route uplink", ["queue", "--route", "uplink"], 1),
    ("queue summary", ["queue", "summary"], 1),
    ("queue summary --by route", ["queue", "summary", "--by", "route"], 1),
    ("status", ["status"], 0),
]
GOALS = {100_000: {"queue": (0.2, 2.0), "queue summary": (None, 1.0), "status": (None, 0.5)},
         1_000_000: {"queue": (None, 20.0), "queue summary": (None, 5.0)}}


def domain_of(n: int) -> str:
    """The destination domain of message n: LAN, scheduled, customer or uplink."""
    d = n % DOMAINS
    kind = d % 10
    if kind == 0:
        return f"d{d}.lan.example"
    if kind == 1:
        return f"d{d}.harbour.example"
    if kind == 2:
        return f"c{d}.example"
    return f"d{d}.example"


def ages(count: int, rng: random.Random) -> list[float]:
    """Message ages in seconds, oldest first (ids follow arrival, as in a real queue)."""
    return sorted((min(rng.expovariate(1 / 21600), 3 * 86400) for _ in range(count)),
                  reverse=True)


def rows_of(n: int, arrival: float, now: float) -> tuple[tuple, tuple, tuple]:
    """The messages, bodies and recipients rows of message n (ids n+1)."""
    body = b"Subject: bench %d\r\n\r\n" % n + b"x" * (700 + n * 37 % 2400)
    sender = "" if n % 100 == 0 else f"user{n % 50}@site.test"
    queue_id = f"{(n * 2654435761) % 16**12:012X}"
    state, attempts, next_try, error, owner, until = "queued", 0, arrival, "", None, None
    kind = n // 10 % 20  # states independent of the destination kind (n % 10)
    if kind == 0:
        state, owner, until = "claimed", "benchhost:1:1", now + 10**6
    elif kind == 1:
        state = "held"
    elif kind in (2, 3):
        attempts, next_try = 1 + n % 3, now + n % 3600
        error = f"4.4.1 connection to mx.{domain_of(n)} timed out"
    message = (n + 1, queue_id, sender, arrival, len(body), "7BIT", 0)
    recipient = (n + 1, n + 1, f"user{n}", domain_of(n), state, next_try, attempts, error,
                 owner, until)
    return message, (n + 1, body), recipient


def fill(path: Path, count: int, now: float) -> float:
    """Write `count` messages into the queue at `path`; seconds taken."""
    started = time.perf_counter()
    asyncio.run(SqliteQueue(path).close())  # creates and migrates the schema
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA synchronous=OFF")
    arrivals = [now - age for age in ages(count, random.Random(12))]
    for first in range(0, count, 50_000):
        batch = [rows_of(n, arrivals[n], now) for n in range(first, min(first + 50_000, count))]
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO messages(id, queue_id, sender, arrival, size, "
                         "body_type, smtputf8) VALUES (?,?,?,?,?,?,?)", [b[0] for b in batch])
        conn.executemany("INSERT INTO bodies(message_id, body) VALUES (?,?)",
                         [b[1] for b in batch])
        conn.executemany("INSERT INTO recipients(id, message_id, local, domain, state, "
                         "next_try, attempts, last_error, lease_owner, lease_until) "
                         "VALUES (?,?,?,?,?,?,?,?,?,?)", [b[2] for b in batch])
        conn.execute("COMMIT")
    conn.execute("INSERT INTO holds(route, held, changed, cause) VALUES "
                 "('uplink', 1, ?, 'bench'), ('bulk', 1, ?, 'bench'), "
                 "('customers', 1, ?, 'bench')", (now, now, now))
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return time.perf_counter() - started


def tidepost() -> str:
    """The tidepost script of the Python running this benchmark."""
    return own_tidepost()


def compiled_environment(folder: Path) -> dict[str, str]:
    """The environment for the commands: byte code cached in `folder`, 80 columns."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env.pop("PYTHONUNBUFFERED", None)  # a pipe is block-buffered, as for any user
    env.update(PYTHONPYCACHEPREFIX=str(folder / "pycache"), COLUMNS="80")
    import tidepost
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(Path(tidepost.__file__).parent)],
                   env=env, check=True, stdout=subprocess.DEVNULL)
    return env


def run_command(argv: list[str], header_lines: int,
                env: dict[str, str]) -> tuple[float, float, float, int, int]:
    """(s to the first data line, total s, CPU s, peak RSS KiB, lines) of one command.

    Run under /usr/bin/time, whose %M is the command's own peak RSS (a child
    forked from this big process would count this one's pages as its own).
    """
    started = time.perf_counter()
    proc = subprocess.Popen([TIME, "-f", "%M %U %S", tidepost(), *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)
    first, lines = None, 0
    while chunk := proc.stdout.read1(1 << 16):
        lines += chunk.count(b"\n")
        if first is None and lines > header_lines:
            first = time.perf_counter() - started
    err = proc.stderr.read()
    proc.wait()
    total = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"tidepost {' '.join(argv)} exited {proc.returncode}: {err[-500:]}")
    rss, user, system = err.split()[-3:]
    return (first if first is not None else total, total, float(user) + float(system),
            int(rss), lines)


def hold_everything(path: Path, now: float) -> None:
    """Hold every route, so that the daemon measured delivers nothing meanwhile."""
    conn = sqlite3.connect(path)
    with conn:
        conn.executemany("INSERT OR REPLACE INTO holds(route, held, changed, cause) "
                         "VALUES (?, 1, ?, 'bench')",
                         [(r, now) for r in ("lan", "harbour", "uplink", "bulk", "customers",
                                             "local")])
    conn.close()


def bench(count: int, folder: Path, env: dict[str, str]) -> list[tuple]:
    """Fill a spool of `count` messages and measure every command on it."""
    spool = folder / f"spool-{count}"
    spool.mkdir()
    config = folder / f"tidepost-{count}.toml"
    config.write_text(CONFIG.format(spool=spool, port=20000 + os.getpid() % 20000,
                                    customers=", ".join(f'"{c}"' for c in CUSTOMERS)))
    now = time.time()
    seconds = fill(spool / "queue.sqlite", count, now)
    size = (spool / "queue.sqlite").stat().st_size
    print(f"filled {count:,} messages in {seconds:.1f} s ({size / 2**20:.0f} MiB)",
          file=sys.stderr)
    os.sync()  # the fill's dirty pages on disk now, not written back while measuring
    run_command(["queue", "--count", "-c", str(config)], 0, env)  # warm the page cache
    results = []
    for label, argv, header in RUNS:
        runs = [run_command([*argv, "-c", str(config)], header, env) for _ in range(REPEAT)]
        results.append((count, label, *min(runs, key=lambda run: run[1])))
    hold_everything(spool / "queue.sqlite", now)
    rss, loaded = daemon_rss(config, env)
    results.append((count, "serve (queue loaded)", loaded, loaded, None, rss, 0))
    shutil.rmtree(spool)
    return results


def print_table(results: list[tuple], load: float) -> None:
    """One row per command and queue size, with the goals and the daemon's RSS."""
    print(f"queue views: {os.cpu_count()} CPUs, load average {load:.1f} at the start, "
          f"Python {sys.version.split()[0]}, SQLite {sqlite3.sqlite_version}")
    print(f"{'messages':>9} {'command':<26}{'first s':>8}{'total s':>8}{'goal s':>8}"
          f"{'CPU s':>7}{'RSS MiB':>8}{'x serve':>8}{'lines':>10}")
    daemon = {r[0]: r[5] for r in results if r[1].startswith("serve")}
    for count, label, first, total, cpu, rss, lines in results:
        goal = GOALS.get(count, {}).get(label)
        goal_text = "-" if goal is None else "/".join("-" if g is None else f"{g:g}" for g in goal)
        cpu_text = "-" if cpu is None else f"{cpu:.2f}"
        print(f"{count:>9,} {label:<26}{first:>8.2f}{total:>8.2f}{goal_text:>8}{cpu_text:>7}"
              f"{rss / 1024:>8.1f}{rss / daemon[count]:>8.2f}{lines:>10,}")
    print("first s: from the start to the first line of data (after the header); goal s: "
          "first/total (issue 12);\nCPU s: user+system; x serve: peak RSS against the "
          "daemon's on the same spool; the faster of two runs")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", default="100000", help="queue sizes, comma-separated")
    parser.add_argument("--million", action="store_true", help="also 1,000,000 messages")
    parser.add_argument("--dir", default=None, help="where the spools go (default: /tmp)")
    args = parser.parse_args()
    counts = [int(c) for c in args.counts.split(",")] + ([1_000_000] if args.million else [])
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        env = compiled_environment(Path(tmp))
        results = [r for count in counts for r in bench(count, Path(tmp), env)]
    print_table(results, load)


if __name__ == "__main__":
    main()
