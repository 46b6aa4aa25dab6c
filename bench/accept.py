#!/usr/bin/env python3
"""Accept-rate benchmark: tidepost against Postfix, durable acceptance, same load.

Both servers take the same load from Postfix's own load generator,
`smtp-source` (C, Debian package postfix), on loopback, in one run:

- `tidepost serve` with its own config and spool in a temporary folder, on
  the embedded default's route (`uplink` for every domain, held), so nothing
  is delivered; the SQLite queue fsyncs before the 250.
- a private Postfix instance (own config_directory, queue_directory and
  port in the temporary folder) that puts every message on its hold queue
  from smtpd (`check_client_access static:HOLD`), so nothing is delivered
  either; Postfix fsyncs a queue file before the 250 by default.

For each message size (4 KiB, 100 KiB), session count (1, 10, 50) and
connection use (one message per connection, or `smtp-source -d`: the
connection reused), the two servers run alternately, each time on a fresh
instance, `--repeat` times; the table shows the medians: msg/s, CPU-seconds
per 1,000 messages (every process of the instance: /proc/PID/stat of the
daemon, or of Postfix's master and its children, children that ended
included through the master's cutime/cstime), and the ratios.  The clock
runs around smtp-source, from its start to its exit; the messages stored
are counted afterwards (`stored`: the median run's count for both).

`--memory` also sends 200 messages of 25 MB at once to tidepost (200
smtp-source processes, one message each) and prints its peak resident
memory (VmHWM).  `--quick`: 1,000
messages, one run each.  Prints a table; asserts nothing.
Usage: python bench/accept.py --help
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from private_postfix import main_cf  # bench/ is on sys.path when run as a script

SENDER = "bench@localhost"
RECIPIENT = "someone@example.net"  # remote: held on the uplink route / Postfix's hold queue
SMTP_SOURCE = "/usr/sbin/smtp-source"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

# Postfix: every message to the hold queue, decided by smtpd, so that the
# queue manager never touches it (no delivery attempt, no defer log).
POSTFIX_HOLD = """\
smtpd_recipient_restrictions = check_client_access static:HOLD, permit_mynetworks,
    reject_unauth_destination
"""


@dataclass
class Run:
    """One measured run of one server."""

    seconds: float
    cpu: float       # CPU-seconds of the server's processes during the run
    sent: int
    stored: int

    @property
    def rate(self) -> float:
        """Stored messages per second."""
        return self.stored / self.seconds if self.seconds else 0.0

    @property
    def cpu_per_1000(self) -> float:
        """CPU-seconds per 1,000 stored messages."""
        return self.cpu * 1000 / self.stored if self.stored else 0.0


# -- CPU accounting ------------------------------------------------------------------


def proc_cpu(pid: int, children: bool = True) -> float:
    """utime+stime (and cutime+cstime: children waited for) of a process, seconds."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    ticks = int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
    if children:
        ticks += int(fields[13]) + int(fields[14])  # cutime, cstime
    return ticks / CLOCK_TICKS


def tree_cpu(root: int) -> float:
    """CPU-seconds of `root` and all its descendants alive now (ended ones via cutime)."""
    parent_of = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                parent_of[int(entry.name)] = int(
                    (entry / "stat").read_text().rpartition(")")[2].split()[1])
    tree, frontier = {root}, [root]
    while frontier:
        parent = frontier.pop()
        kids = [pid for pid, ppid in parent_of.items() if ppid == parent]
        tree.update(kids)
        frontier.extend(kids)
    return sum(proc_cpu(pid) for pid in tree)


def peak_rss_mib(pid: int) -> float:
    """VmHWM of a process, MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


# -- servers -------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_port(port: int, process: subprocess.Popen | None, timeout: float = 30.0) -> None:
    """Wait until 127.0.0.1:port greets (or the process dies)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"server exited with status {process.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port),
                                                                    0.5) as probe:
            if probe.recv(512).startswith(b"220"):
                probe.sendall(b"QUIT\r\n")
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


def tidepost_argv() -> list[str]:
    """The `tidepost` command of this Python (the venv's script, else -m)."""
    script = Path(sys.executable).parent / "tidepost"
    return [str(script)] if script.exists() else [sys.executable, "-m", "tidepost.cli.main"]


TIDEPOST_CONFIG = """\
hostname = "bench.test"
spool = "{spool}"

[smtp]
listen = ["127.0.0.1:{port}"]
max_connections = 1000
max_connections_per_client = 1000
max_connection_rate = 0

[local]
domains = ["localhost"]
system_users = false

# the embedded default's route: everything on the uplink, held
[[route]]
name = "uplink"
domains = ["*"]
transport = "mx"
on_demand = true
start_held = true
"""


@dataclass
class Server:
    """A running server: its port, the pid whose process tree does its work, a counter."""

    port: int
    pid: int
    stored: callable  # () -> messages on stable storage now

    def cpu(self) -> float:
        """CPU-seconds used by the server's processes so far."""
        return tree_cpu(self.pid)


@contextlib.contextmanager
def tidepost(folder: Path):
    """A running `tidepost serve` with a fresh spool."""
    port = free_port()
    config = folder / "tidepost.toml"
    config.write_text(TIDEPOST_CONFIG.format(spool=folder / "spool", port=port))
    log = open(folder / "serve.log", "wb")
    process = subprocess.Popen([*tidepost_argv(), "serve", "-c", str(config)],
                               stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def stored() -> int:
        done = subprocess.run([*tidepost_argv(), "queue", "--count", "-c", str(config)],
                              capture_output=True, text=True)
        words = done.stdout.split()
        return int(words[0]) if words and words[0].isdigit() else -1

    try:
        wait_port(port, process)
        yield Server(port, process.pid, stored)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


@contextlib.contextmanager
def postfix(folder: Path, recipe: str = "hold"):
    """A private Postfix instance (own config, queue and port).

    recipe "hold": smtpd puts every message on hold (what is measured);
    "defer": the old recipe, `defer_transports = smtp` (see bench/README.md).
    """
    port = free_port()
    conf = folder / "conf"
    conf.mkdir()
    text = main_cf(folder, "bench.test")
    if recipe == "hold":
        text = text.replace("defer_transports = smtp\n", "") + POSTFIX_HOLD
    (conf / "main.cf").write_text(text)
    master = Path("/etc/postfix/master.cf").read_text().splitlines()
    (conf / "master.cf").write_text("\n".join(
        f"127.0.0.1:{port}" + line[4:] if line.startswith("smtp ") and " inet " in line
        else line for line in master) + "\n")
    (folder / "queue").mkdir()
    (folder / "data").mkdir()
    shutil.chown(folder / "data", "postfix")
    postfix_cmd = ["/usr/sbin/postfix", "-c", str(conf)]
    started = subprocess.run([*postfix_cmd, "start"], capture_output=True, text=True)
    if started.returncode:
        log = folder / "maillog"
        raise RuntimeError(f"postfix start failed: {started.stderr}"
                           f"{log.read_text() if log.exists() else ''}")

    def stored() -> int:
        return sum(len(files) for queue in ("hold", "incoming", "active", "deferred")
                   for _, _, files in os.walk(folder / "queue" / queue))

    try:
        wait_port(port, None)
        master_pid = int((folder / "queue" / "pid" / "master.pid").read_text().split()[0])
        yield Server(port, master_pid, stored)
    finally:
        subprocess.run([*postfix_cmd, "stop"], capture_output=True)
        time.sleep(1)  # master waits for its children before it goes


def postfix_missing() -> str:
    """Why the Postfix runs cannot happen here, or ''."""
    if not Path("/usr/sbin/postfix").exists() or not Path("/etc/postfix/master.cf").exists():
        return "Postfix is not installed"
    if not Path(SMTP_SOURCE).exists():
        return "smtp-source is not installed"
    if os.geteuid() != 0:
        return "Postfix needs root to start"
    return ""


# -- the load --------------------------------------------------------------------------


def smtp_source(port: int, messages: int, sessions: int, size: int, reuse: bool) -> float:
    """Run smtp-source against 127.0.0.1:port; seconds it took."""
    argv = [SMTP_SOURCE, "-m", str(messages), "-s", str(sessions), "-l", str(size),
            "-f", SENDER, "-t", RECIPIENT, "-M", "bench.client"]
    if reuse:
        argv.append("-d")
    start = time.perf_counter()
    done = subprocess.run([*argv, f"127.0.0.1:{port}"], capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode:
        print(f"    smtp-source: status {done.returncode}: {done.stderr.strip()[:300]}",
              file=sys.stderr)
    return seconds


def independent_senders(port: int, senders: int, size: int) -> float:
    """`senders` smtp-source processes at once, one message each; seconds until all end.

    Separate processes, as separate sending MTAs are: one smtp-source with
    many sessions writes a message body with blocking writes, so a session
    the server makes wait (back-pressure) would stall all its others.
    """
    argv = [SMTP_SOURCE, "-m", "1", "-s", "1", "-l", str(size), "-f", SENDER,
            "-t", RECIPIENT, "-M", "bench.client", f"127.0.0.1:{port}"]
    start = time.perf_counter()
    processes = [subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                 for _ in range(senders)]
    failed = [p.stderr.read().decode().strip() for p in processes if p.wait()]
    seconds = time.perf_counter() - start
    if failed:
        print(f"    {len(failed)} smtp-source failed: {failed[0][:200]}", file=sys.stderr)
    return seconds


def measure(server_factory, folder: Path, messages: int, sessions: int, size: int,
            reuse: bool) -> Run:
    """One run against a fresh server instance."""
    folder.mkdir()
    try:
        with server_factory(folder) as server:
            smtp_source(server.port, 10, 1, size, reuse)  # warm up: imports, first fsync
            warm = server.stored()
            cpu_before = server.cpu()
            seconds = smtp_source(server.port, messages, sessions, size, reuse)
            cpu = server.cpu() - cpu_before
            return Run(seconds, cpu, messages, server.stored() - warm)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def median_run(runs: list[Run]) -> Run:
    """The run with the median rate."""
    return sorted(runs, key=lambda r: r.rate)[len(runs) // 2]


def memory_run(base: Path, sessions: int, size: int) -> tuple[float, Run]:
    """Peak RSS of tidepost (MiB) taking `sessions` messages of `size` at once."""
    folder = base / "memory"
    folder.mkdir()
    try:
        with tidepost(folder) as server:
            before = peak_rss_mib(server.pid)
            cpu_before = server.cpu()
            seconds = independent_senders(server.port, sessions, size)
            cpu = server.cpu() - cpu_before
            peak = peak_rss_mib(server.pid)
            print(f"  tidepost idle peak RSS: {before:.0f} MiB", file=sys.stderr)
            return peak, Run(seconds, cpu, sessions, server.stored())
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# -- the table ---------------------------------------------------------------------------


def header() -> str:
    """Column names."""
    return (f"{'size':>7} {'sess':>4} {'reuse':>5} | {'tidepost':>9} {'postfix':>8} "
            f"{'ratio':>6} | {'tp cpu':>7} {'pf cpu':>7} {'ratio':>6} | "
            f"{'tp stored':>9} {'pf stored':>9}")


def row(size: int, sessions: int, reuse: bool, tp: Run, pf: Run | None) -> str:
    """One line of the table: rates, ratio, CPU per 1,000 messages, ratio."""
    name = f"{size // 1024}KiB"
    reuse_text = "yes" if reuse else "no"
    if pf is None:
        return (f"{name:>7} {sessions:>4} {reuse_text:>5} | {tp.rate:>9.0f} {'-':>8} "
                f"{'-':>6} | {tp.cpu_per_1000:>7.2f} {'-':>7} {'-':>6} | "
                f"{tp.stored:>9} {'-':>9}")
    ratio = tp.rate / pf.rate if pf.rate else 0.0
    cpu_ratio = tp.cpu_per_1000 / pf.cpu_per_1000 if pf.cpu_per_1000 else 0.0
    return (f"{name:>7} {sessions:>4} {reuse_text:>5} | {tp.rate:>9.0f} {pf.rate:>8.0f} "
            f"{ratio:>6.2f} | {tp.cpu_per_1000:>7.2f} {pf.cpu_per_1000:>7.2f} "
            f"{cpu_ratio:>6.2f} | {tp.stored:>9} {pf.stored:>9}")


def describe_machine(folder: Path) -> str:
    """CPU count, load, Python, and the file system the spools are on (fsync cost)."""
    fs = subprocess.run(["df", "-T", str(folder)], capture_output=True, text=True).stdout
    fstype = fs.splitlines()[-1].split()[1] if fs.strip() else "?"
    load = os.getloadavg()[0]
    return (f"{os.cpu_count()} CPUs, load {load:.1f} at the start, "
            f"Python {platform.python_version()}, spools on {fstype} ({folder})")


def parse_args() -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=5000, help="messages per run")
    parser.add_argument("--sizes", default="4096,102400", help="payload bytes, comma-separated")
    parser.add_argument("--sessions", default="1,10,50", help="session counts")
    parser.add_argument("--reuse", default="no,yes",
                        help="no: a connection per message; yes: smtp-source -d")
    parser.add_argument("--repeat", type=int, default=3, help="runs per cell (median)")
    parser.add_argument("--quick", action="store_true", help="1,000 messages, one run each")
    parser.add_argument("--no-postfix", action="store_true", help="tidepost only")
    parser.add_argument("--postfix-recipe", default="hold", choices=("hold", "defer"),
                        help="hold: smtpd holds every message; defer: defer_transports = "
                        "smtp (the old recipe; see bench/README.md)")
    parser.add_argument("--memory", action="store_true",
                        help="also 200 sessions x 25 MB to tidepost: its peak RSS")
    parser.add_argument("--memory-sessions", type=int, default=200,
                        help="sessions (and 25 MB messages) of the --memory run")
    parser.add_argument("--memory-only", action="store_true",
                        help="only the --memory run")
    parser.add_argument("--dir", help="where the spools go (default: a temporary folder)")
    args = parser.parse_args()
    if args.memory_only:
        args.memory, args.sizes = True, ""
    if args.quick:
        args.messages, args.repeat = 1000, 1
    return args


def main() -> int:
    """Run every cell, both servers interleaved, and print the table."""
    args = parse_args()
    if not Path(SMTP_SOURCE).exists():
        print(f"{SMTP_SOURCE} not found (Debian package postfix; ./run-tests installs it)")
        return 1
    base = Path(tempfile.mkdtemp(prefix="tidepost-accept-", dir=args.dir))
    base.chmod(0o755)  # Postfix's daemons run as user postfix
    with_postfix = not args.no_postfix
    if with_postfix and (why := postfix_missing()):
        print(f"postfix: skipped ({why})")
        with_postfix = False
    print(f"accept benchmark: {args.messages} messages a run, smtp-source, medians of "
          f"{args.repeat}; {describe_machine(base)}")
    if with_postfix:
        print(f"postfix recipe: {args.postfix_recipe}")
    lines = []
    try:
        for size in (int(s) for s in args.sizes.split(",") if s):
            for reuse in (r == "yes" for r in args.reuse.split(",")):
                for sessions in (int(s) for s in args.sessions.split(",")):
                    tp_runs, pf_runs = [], []
                    for attempt in range(args.repeat):
                        print(f"  {size} bytes, {sessions} sessions, reuse={reuse}, "
                              f"run {attempt + 1}", file=sys.stderr)
                        tp_runs.append(measure(tidepost, base / f"tp-{attempt}",
                                               args.messages, sessions, size, reuse))
                        if with_postfix:
                            pf_runs.append(measure(
                                lambda f: postfix(f, args.postfix_recipe),
                                base / f"pf-{attempt}", args.messages, sessions, size,
                                reuse))
                    lines.append(row(size, sessions, reuse, median_run(tp_runs),
                                     median_run(pf_runs) if pf_runs else None))
                    print(lines[-1], file=sys.stderr)
        print(header())
        print("\n".join(lines))
        print("msg/s: stored messages / seconds of the smtp-source run; cpu: CPU-seconds "
              "per 1,000 messages, all processes of the instance; ratio: tidepost/postfix")
        if args.memory:
            peak, run = memory_run(base, args.memory_sessions, 25_000_000)
            print(f"memory: {args.memory_sessions} sessions x 25 MB at once: tidepost peak "
                  f"RSS {peak:.0f} MiB, {run.stored} of {args.memory_sessions} stored in "
                  f"{run.seconds:.1f} s")
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
