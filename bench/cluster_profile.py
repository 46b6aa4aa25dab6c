#!/usr/bin/env python3
"""Where the CPU of durable acceptance goes: one PostgreSQL node beside one SQLite node.

The load of bench/cluster.py's acceptance run (one `smtp-source` of
`--clients` sessions, connections reused), against one `tidepost serve`
on SQLite and one on a private PostgreSQL server (fsync on), each on a
fresh spool or database, `--repeat` times alternately; the table shows
the medians of CPU-seconds per 1,000 messages, from /proc:

- node, loop: the daemon's main thread (SMTP sessions, submission, the
  event loop);
- node, others: its other threads (the PostgreSQL store's asyncpg loop, or
  the SQLite writer thread; Maildir and DNS workers are idle here);
- postgres: every process of the server (the backends of the node's
  connections, walwriter, checkpointer...; ended ones through the
  postmaster's cutime);
- smtp-source: the load generator;
- total, and the rate (msg/s) of the same runs.

`--pyspy SECONDS` also samples the PostgreSQL node with py-spy (`pip
install py-spy`) for that long during one more run and prints the
functions with the most samples, by own time and by total time.
Prints tables; asserts nothing.  Usage: python bench/cluster_profile.py --help
"""

from __future__ import annotations

import argparse
import collections
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from accept import CLOCK_TICKS, free_port, smtp_source, tidepost_argv, tree_cpu, wait_port
from cluster import NODE_CONFIG
from tidepost.testing.pgcluster import PrivateCluster

COLUMNS = ("node, loop", "node, others", "postgres", "smtp-source", "total")


def thread_cpu(pid: int) -> tuple[float, float]:
    """CPU-seconds of a process's main thread and of all its other threads (alive now)."""
    main = others = 0.0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        seconds = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
        if int(task.name) == pid:
            main += seconds
        else:
            others += seconds
    return main, others


def postmaster_pid(server: PrivateCluster) -> int:
    return int((server.data / "postmaster.pid").read_text().split()[0])


def children_cpu() -> float:
    """CPU-seconds of this process's children that were waited for (smtp-source)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class Node:
    """One `tidepost serve` on `backend`, started in `folder`."""

    def __init__(self, folder: Path, backend: str, dsn: str):
        folder.mkdir(parents=True)
        self.port = free_port()
        config = folder / "tidepost.toml"
        config.write_text(NODE_CONFIG.format(index=0, spool=folder / "spool", port=self.port,
                                             backend=backend, dsn=dsn, dns_port=free_port(),
                                             sink_port=free_port()))
        self.log = open(folder / "serve.log", "wb")
        self.process = subprocess.Popen([*tidepost_argv(), "serve", "-c", str(config)],
                                        stdout=self.log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL)
        wait_port(self.port, self.process, timeout=120)

    def close(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


def one_run(base: Path, server: PrivateCluster, backend: str, run: int, args,
            pyspy: float = 0.0) -> dict[str, float]:
    """CPU-seconds per 1,000 messages by column, and the rate."""
    dsn = server.create_database(f"profile{run}") if backend == "postgresql" else ""
    node = Node(base / f"{backend}{run}", backend, dsn)
    try:
        smtp_source(node.port, 20, 1, args.size, True)  # warm up: imports, first commits
        loop0, others0 = thread_cpu(node.process.pid)
        pg0 = tree_cpu(postmaster_pid(server))
        load0 = children_cpu()
        sampler = start_pyspy(node.process.pid, pyspy, base / "pyspy.txt") if pyspy else None
        seconds = smtp_source(node.port, args.messages, args.clients, args.size, True)
        loop1, others1 = thread_cpu(node.process.pid)
        pg1 = tree_cpu(postmaster_pid(server))
        load1 = children_cpu()
        if sampler is not None:
            sampler.join()
    finally:
        node.close()
    per = 1000 / args.messages
    result = {"node, loop": (loop1 - loop0) * per, "node, others": (others1 - others0) * per,
              # the SQLite node's runs measure the idle server too: its background work
              "postgres": (pg1 - pg0) * per if backend == "postgresql" else 0.0,
              "smtp-source": (load1 - load0) * per}
    result["total"] = sum(result.values())
    result["msg/s"] = args.messages / seconds
    return result


def start_pyspy(pid: int, seconds: float, out: Path) -> threading.Thread:
    """py-spy record (raw collapsed stacks, every thread) for `seconds`, in a thread."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    argv = [spy, "record", "--format", "raw", "--threads", "--rate", "200", "--nonblocking",
            "-d", str(int(seconds)), "-p", str(pid), "-o", str(out)]
    thread = threading.Thread(target=subprocess.run, args=(argv,),
                              kwargs={"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL})
    thread.start()
    time.sleep(0.5)  # attached before the load starts
    return thread


def print_pyspy(path: Path, top: int) -> None:
    """The functions with the most samples: own (leaf) and total (anywhere on the stack)."""
    if not path.exists():
        print("py-spy wrote nothing (is it installed? pip install py-spy)")
        return
    own: collections.Counter = collections.Counter()
    total: collections.Counter = collections.Counter()
    by_thread: collections.Counter = collections.Counter()
    samples = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        n = int(count)
        samples += n
        by_thread[frames[0].split(" ")[0] + " " + frames[0].split(" ")[-1]] += n
        names = [f.split(" (")[0] + " (" + f.split(" (")[-1].split(":")[0].rsplit("/", 1)[-1]
                 + ")" for f in frames[1:]]
        if names:
            own[names[-1]] += n
        for name in set(names):
            total[name] += n
    print(f"\npy-spy: {samples} samples of the PostgreSQL node (every thread; idle included)")
    for thread, n in by_thread.most_common():
        print(f"  {n / samples:6.1%}  {thread}")
    for title, counter in (("own time", own), ("total time", total)):
        print(f"top {top} by {title}:")
        for name, n in counter.most_common(top):
            print(f"  {n / samples:6.1%}  {name}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--clients", type=int, default=20, help="smtp-source sessions")
    parser.add_argument("--size", type=int, default=4096, help="bytes per message")
    parser.add_argument("--repeat", type=int, default=3, help="runs per backend (medians)")
    parser.add_argument("--pyspy", type=float, default=0.0,
                        help="seconds of py-spy sampling during one more PostgreSQL run")
    parser.add_argument("--top", type=int, default=25, help="functions listed by py-spy")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="tidepost-profile-"))
    base.chmod(0o755)
    server = PrivateCluster().start()
    results: dict[str, list[dict[str, float]]] = {"sqlite": [], "postgresql": []}
    try:
        for run in range(args.repeat):
            for backend in results:
                results[backend].append(one_run(base, server, backend, run, args))
        if args.pyspy:
            one_run(base, server, "postgresql", args.repeat, args, args.pyspy)
    finally:
        server.stop()
    print(f"CPU-seconds per 1,000 messages ({args.messages} messages of {args.size} bytes, "
          f"{args.clients} sessions, medians of {args.repeat}; {os.cpu_count()} CPUs, "
          f"load {os.getloadavg()[0]:.1f})")
    print(f"{'backend':<12}" + "".join(f"{c:>14}" for c in (*COLUMNS, "msg/s")))
    for backend, runs in results.items():
        print(f"{backend:<12}" + "".join(
            f"{statistics.median(r[c] for r in runs):>14.2f}" for c in (*COLUMNS, "msg/s")))
    if args.pyspy:
        print_pyspy(base / "pyspy.txt", args.top)
    shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
