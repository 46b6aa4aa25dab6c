"""Memory of `tidepost serve` holding a large queue (SPEC §5, the 100,000-message goal).

Fills a spool with N queued messages (default 100,000, ~2 KiB each, one
recipient each, spread over 1,000 destination domains) on the held `uplink`
route, starts `tidepost serve` on it, waits until the queue is loaded, and
prints resident memory against the same daemon on an empty spool (the ratio
shows what the queue itself costs), plus the start-up time.

    python bench/queue_memory.py [N]
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tidepost.address import Address
from tidepost.queue.backend import NewMessage
from tidepost.queue.sqlite import SqliteQueue

BODY = b"Subject: bench\r\n\r\n" + (b"y" * 76 + b"\r\n") * 26


async def fill(spool: Path, count: int) -> float:
    """Queue `count` messages straight into the store; seconds taken."""
    queue = SqliteQueue(spool / "queue.sqlite")
    started = time.perf_counter()
    batch = 1000
    for first in range(0, count, batch):
        await asyncio.gather(*(queue.submit(NewMessage(
            Address("bench", "site.test"), (Address(f"u{n}", f"d{n % 1000}.example"),),
            BODY, time.time())) for n in range(first, min(first + batch, count))))
    await queue.close()
    return time.perf_counter() - started


def own_tidepost() -> str:
    """The tidepost script beside the Python running this (not another one on PATH)."""
    script = Path(sys.executable).parent / "tidepost"
    return str(script) if script.exists() else shutil.which("tidepost") or "tidepost"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def measure(spool: Path) -> tuple[int, float]:
    """Start serve on `spool`; RSS in KiB once the queue is loaded, and seconds to load."""
    config = spool.parent / f"{spool.name}.toml"
    config.write_text(f'hostname = "site.test"\nspool = "{spool}"\n'
                      f'[smtp]\nlisten = ["127.0.0.1:{free_port()}"]\n'
                      '[system]\nuser = "root"\n')  # as root, keep root: a private spool
    return daemon_rss(config)


def daemon_rss(config: Path, env: dict[str, str] | None = None) -> tuple[int, float]:
    """Start serve with `config`; RSS in KiB once its queue is loaded, and seconds to load."""
    tidepost = own_tidepost()
    started = time.perf_counter()
    proc = subprocess.Popen([tidepost, "serve", "-c", str(config)], stderr=subprocess.PIPE,
                            text=True, env=env)
    try:
        for line in proc.stderr:
            if "queue loaded" in line:
                break
        loaded = time.perf_counter() - started
        time.sleep(1.0)
        rss = int(next(line.split()[1] for line in open(f"/proc/{proc.pid}/status")
                       if line.startswith("VmRSS")))
        return rss, loaded
    finally:
        proc.terminate()
        proc.wait(timeout=120)


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    with tempfile.TemporaryDirectory() as tmp:
        empty, full = Path(tmp) / "empty", Path(tmp) / "full"
        empty.mkdir()
        full.mkdir()
        fill_seconds = asyncio.run(fill(full, count))
        base_rss, base_load = measure(empty)
        rss, load = measure(full)
        size = sum(f.stat().st_size for f in full.iterdir() if f.is_file())
    print(f"{'spool':<16}{'messages':>10}{'RSS MiB':>10}{'ratio':>8}{'load s':>8}")
    print(f"{'empty':<16}{0:>10}{base_rss / 1024:>10.1f}{1.0:>8.2f}{base_load:>8.2f}")
    print(f"{'queued, held':<16}{count:>10}{rss / 1024:>10.1f}{rss / base_rss:>8.2f}{load:>8.2f}")
    print(f"per queued message: {(rss - base_rss) * 1024 / count:.0f} bytes; "
          f"queue file {size / 2**20:.0f} MiB; filled in {fill_seconds:.1f} s")


if __name__ == "__main__":
    main()
