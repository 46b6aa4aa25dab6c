#!/usr/bin/env python3
"""Plan benchmark: how long `tidepost link plan` takes on a large held queue.

Fills a fresh spool straight through the SQLite queue with N held messages
(default 100,000, one recipient each, 1,000 domains; bench/queue_memory.py's
filler), then times, each in a fresh process as an operator would run it:

- `tidepost link plan uplink`: one aggregate query (pending_summary), a few
  sample bodies compressed, the DNS cache looked up for each domain;
- `tidepost link status`: the route table, which reads every queued row
  (QueueBackend.rows) — the reference, since it is what one ran before to
  see what waits.

Prints a table with the ratio; asserts nothing.  No root needed, nothing
leaves the host (no daemon runs, the route is held).
Usage: .venv/bin/python bench/plan.py [N]
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from queue_memory import fill  # bench/ is on sys.path when run as a script

CONFIG = """\
hostname = "site.test"
spool = "{spool}"
[local]
domains = ["site.test"]
system_users = false
[[route]]
name = "uplink"
domains = ["*"]
start_held = true
rate = "56k"
"""


def tidepost_argv() -> list[str]:
    """The `tidepost` command of this Python."""
    script = Path(sys.executable).parent / "tidepost"
    return [str(script)] if script.exists() else [sys.executable, "-m", "tidepost.cli.main"]


def timed(*args: str) -> tuple[float, str]:
    """Seconds a `tidepost ARGS` process takes, and its output."""
    started = time.perf_counter()
    done = subprocess.run([*tidepost_argv(), *args], capture_output=True, text=True,
                          check=True, timeout=600)
    return time.perf_counter() - started, done.stdout


def main() -> int:
    """Fill, time, print."""
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    folder = Path(tempfile.mkdtemp(prefix="tidepost-plan-"))
    try:
        spool = folder / "spool"
        spool.mkdir()
        config = folder / "tidepost.toml"
        config.write_text(CONFIG.format(spool=spool))
        filled = asyncio.run(fill(spool, count))
        plan, output = timed("link", "plan", "uplink", "-c", str(config))
        status, _ = timed("link", "status", "-c", str(config))
        version, _ = timed("--version")
        print(f"plan benchmark: {count} held messages to 1000 domains (filled in {filled:.1f} s)")
        print(f"{'command':<28}{'seconds':>9}")
        for name, seconds in (("tidepost --version", version),
                              ("tidepost link plan uplink", plan),
                              ("tidepost link status", status)):
            print(f"{name:<28}{seconds:>9.2f}")
        print(f"link plan / link status: {plan / status:.2f} "
              f"(both include the {version:.2f} s a tidepost process needs to start)")
        print(output.rstrip())
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
