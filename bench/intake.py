#!/usr/bin/env python3
"""Intake benchmark: does delivery keep up with 20 clients submitting flat out?

One `tidepost serve` relays everything to a Postfix smtp-sink on loopback
(smarthost route).  CLIENTS SMTP clients (threads, one connection each,
reused) submit ~3 KiB messages as fast as they can for SECONDS.  Every
half second the queue depth (recipients queued or in flight, read from
the spool's SQLite file) is sampled.  Printed: messages per second in
(250s the clients got), out (transactions the sink received in the same
time), peak and final depth, and the depth's growth per second over the
second half of the run (flat means bounded).

Runs: with `queue.in_flow_delay` 0 (intake never paced) as the reference,
and 1 s (the default); the ratio column compares each run's peak depth
with the reference's.  `--source DIR` runs the daemon from another
checkout's src/ (before and after; `--plain` for one that predates
in_flow_delay: one run with its defaults).  Needs smtp-sink (./run-tests installs it).
Usage: .venv/bin/python bench/intake.py [--seconds 30] [--clients 20]
"""

from __future__ import annotations

import argparse
import random
import sqlite3
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from crash import F, harness, smarthost  # noqa: E402  (bench/ is on the path)


RECIPIENTS = ["u1@example.test", "u2@example.test"]


def depth(spool: Path) -> int:
    """Recipients queued or in flight."""
    try:
        with sqlite3.connect(f"file:{spool / 'queue.sqlite'}?mode=ro", uri=True,
                             timeout=5) as conn:
            return conn.execute("SELECT COUNT(*) FROM recipients "
                                "WHERE state IN ('queued','claimed')").fetchone()[0]
    except sqlite3.Error:
        return -1


def sample(spool: Path, samples: list[tuple[float, int]], stop: threading.Event) -> None:
    """Append (time, depth) every half second until `stop`."""
    while not stop.is_set():
        samples.append((time.monotonic(), depth(spool)))
        stop.wait(0.5)


def run(seconds: float, clients: int, in_flow_delay: str, source: str | None) -> dict:
    """One run; its figures."""
    with tempfile.TemporaryDirectory(prefix="tidepost-intake-") as name:
        folder = Path(name)
        processes = F.Processes()
        try:
            port = F.free_port("127.0.0.2")
            (folder / "sink").mkdir()
            sink = F.SmtpSink(processes, folder / "sink", "127.0.0.2", port).start()
            (folder / "node").mkdir()
            queue = {"poll_interval": "1s"}
            if in_flow_delay:  # "" for a checkout without the key
                queue["in_flow_delay"] = in_flow_delay
            node = F.TidepostNode(processes, folder / "node", overrides={
                "route": smarthost(port, "127.0.0.2"), "queue": queue})
            if source:
                node.env = {"PYTHONPATH": source}
            node.start()
            submitters = [harness.Submitter(lambda: node.port, f"c{i}", RECIPIENTS,
                                            random.Random(i))
                          for i in range(clients)]
            samples: list[tuple[float, int]] = []
            stop = threading.Event()
            sampler = threading.Thread(target=sample, args=(node.spool, samples, stop),
                                       daemon=True)
            before = len(list((folder / "sink").iterdir()))
            started = time.monotonic()
            sampler.start()
            for submitter in submitters:
                submitter.start()
            time.sleep(seconds)
            for submitter in submitters:
                submitter.stopping.set()
            elapsed = time.monotonic() - started
            out = len(list((folder / "sink").iterdir())) - before
            stop.set()
            sampler.join()
            for submitter in submitters:
                submitter.join(30)
            accepted = sum(len(s.acknowledged) for s in submitters)
            node.stop()
            sink.stop()
        finally:
            processes.stop_all()
    half = [(t, d) for t, d in samples if t - started >= seconds / 2 and d >= 0]
    growth = (half[-1][1] - half[0][1]) / (half[-1][0] - half[0][0]) if len(half) > 1 else 0
    return {"in": accepted / elapsed, "out": out / elapsed,
            "peak": max((d for _, d in samples), default=0),
            "final": samples[-1][1] if samples else 0, "growth": growth}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--source", help="run the daemon from this src/ folder")
    parser.add_argument("--plain", action="store_true",
                        help="one run with the checkout's defaults, for a --source that "
                        "predates queue.in_flow_delay")
    args = parser.parse_args()
    rows = {}
    runs = ((("defaults (reference)", ""),) if args.plain else
            (("in_flow_delay 0 (reference)", "0s"), ("in_flow_delay 1s (default)", "1s")))
    for label, delay in runs:
        rows[label] = run(args.seconds, args.clients, delay, args.source)
        print(f"  {label}: {rows[label]}", flush=True)
    reference = next(iter(rows.values()))
    print(f"\n{args.clients} clients, {args.seconds:.0f} s, source "
          f"{args.source or 'this checkout'}")
    print(f"{'run':<30}{'in msg/s':>10}{'out msg/s':>11}{'peak depth':>12}"
          f"{'final':>8}{'growth/s':>10}{'peak ratio':>12}")
    for label, r in rows.items():
        ratio = r["peak"] / reference["peak"] if reference["peak"] else 0
        print(f"{label:<30}{r['in']:>10.0f}{r['out']:>11.0f}{r['peak']:>12}{r['final']:>8}"
              f"{r['growth']:>10.1f}{ratio:>12.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
