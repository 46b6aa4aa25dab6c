#!/usr/bin/env python3
"""Accept-rate benchmark: durable messages per second taken in over SMTP.

Starts `tidepost serve` with its own config and spool in a temporary folder,
with the embedded default's route: `uplink` for every domain, held, so that
nothing is delivered while measuring.  N clients (1, then 20) share the
messages (default 2000 of about 4 KiB, to a remote domain) over one
connection each, one transaction after another, no pipelining; the clock
runs from the first connection to the last 250 after DATA.  Every run gets
a fresh daemon and spool.

Runs twice: with the durable SQLite queue (250 only after fsync) and with
`[queue] backend = "memory"` (no durability) as a reference, so the ratio
durable/memory shows what durability costs.  With --postfix, also a private
Postfix instance (needs root and /usr/sbin/postfix; mail held with
defer_transports) as a point of comparison.

Prints a table; asserts nothing.  Usage: python bench/accept.py --help
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from private_postfix import main_cf  # bench/ is on sys.path when run as a script

SENDER = "bench@localhost"
RECIPIENT = "someone@example.net"  # remote: queued on the held uplink route


@dataclass
class Result:
    """One measured run."""

    server: str
    clients: int
    messages: int
    seconds: float
    failed: int

    @property
    def rate(self) -> float:
        """Accepted messages per second."""
        return (self.messages - self.failed) / self.seconds if self.seconds else 0.0


# -- SMTP client -------------------------------------------------------------------------


async def reply(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """Read one (possibly multi-line) SMTP reply: its code and last line."""
    while True:
        line = await reader.readline()
        if not line:
            raise ConnectionError("server closed the connection")
        if line[3:4] != b"-":
            return int(line[:3]), line


async def command(reader, writer, data: bytes, want: int) -> bool:
    """Send `data`; True when the reply code is `want`."""
    writer.write(data)
    code, _ = await reply(reader)
    return code == want


async def client(port: int, count: int, body: bytes) -> int:
    """Send `count` messages over one connection; how many were refused."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    failed = 0
    try:
        await reply(reader)
        await command(reader, writer, b"EHLO bench.test\r\n", 250)
        for _ in range(count):
            ok = (await command(reader, writer, f"MAIL FROM:<{SENDER}>\r\n".encode(), 250)
                  and await command(reader, writer, f"RCPT TO:<{RECIPIENT}>\r\n".encode(), 250)
                  and await command(reader, writer, b"DATA\r\n", 354)
                  and await command(reader, writer, body + b".\r\n", 250))
            if not ok:
                failed += 1
                await command(reader, writer, b"RSET\r\n", 250)
        await command(reader, writer, b"QUIT\r\n", 221)
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
    return failed


async def load(port: int, clients: int, messages: int, body: bytes) -> tuple[float, int]:
    """Spread `messages` over `clients` connections; (seconds taken, refused)."""
    shares = [messages // clients + (i < messages % clients) for i in range(clients)]
    start = time.perf_counter()
    failed = await asyncio.gather(*(client(port, n, body) for n in shares if n))
    return time.perf_counter() - start, sum(failed)


def make_body(size: int) -> bytes:
    """A message of about `size` bytes: headers and 76-character lines, CRLF."""
    head = (f"From: {SENDER}\r\nTo: {RECIPIENT}\r\nSubject: accept benchmark\r\n"
            f"Message-ID: <bench@bench.test>\r\n\r\n").encode()
    line = b"abcdefghijklmnopqrstuvwxyz0123456789" * 2 + b"ABCD\r\n"
    return head + line * max((size - len(head)) // len(line), 1)


# -- servers -----------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_port(port: int, process: subprocess.Popen | None, timeout: float = 30.0) -> None:
    """Wait until 127.0.0.1:port accepts connections (or the process dies)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"server exited with status {process.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
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
max_connections_per_client = 1000

[local]
domains = ["localhost"]
system_users = false

[queue]
backend = "{backend}"

# the embedded default's route: everything on the uplink, held
[[route]]
name = "uplink"
domains = ["*"]
transport = "mx"
on_demand = true
start_held = true
"""


@contextlib.contextmanager
def tidepost(folder: Path, backend: str):
    """A running `tidepost serve` with a fresh spool; yields its SMTP port."""
    port = free_port()
    config = folder / "tidepost.toml"
    config.write_text(TIDEPOST_CONFIG.format(spool=folder / "spool", port=port,
                                             backend=backend))
    log = open(folder / "serve.log", "wb")
    process = subprocess.Popen([*tidepost_argv(), "serve", "-c", str(config)],
                               stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        wait_port(port, process)
        yield port
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


@contextlib.contextmanager
def postfix(folder: Path):
    """A private Postfix instance (own config, queue and port); yields its SMTP port."""
    port = free_port()
    conf = folder / "conf"
    conf.mkdir()
    (conf / "main.cf").write_text(main_cf(folder, "bench.test"))
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
    try:
        wait_port(port, None)
        yield port
    finally:
        subprocess.run([*postfix_cmd, "stop"], capture_output=True)
        time.sleep(1)  # master waits for its children before it goes


def postfix_missing() -> str:
    """Why the Postfix run cannot happen here, or ''."""
    if not Path("/usr/sbin/postfix").exists() or not Path("/etc/postfix/master.cf").exists():
        return "Postfix is not installed"
    if os.geteuid() != 0:
        return "Postfix needs root to start"
    return ""


# -- the benchmark -----------------------------------------------------------------------


def measure(name: str, server, folder: Path, clients: int, messages: int,
            body: bytes) -> Result:
    """One run against a fresh server."""
    with server(folder) as port:
        asyncio.run(load(port, 1, 5, body))  # warm up: imports, first fsync, caches
        seconds, failed = asyncio.run(load(port, clients, messages, body))
    return Result(name, clients, messages, seconds, failed)


def print_table(results: list[Result]) -> None:
    """The results and the durable/memory ratios."""
    print(f"{'server':<22}{'clients':>8}{'messages':>10}{'refused':>9}{'seconds':>10}"
          f"{'msg/s':>10}")
    for r in results:
        print(f"{r.server:<22}{r.clients:>8}{r.messages:>10}{r.failed:>9}{r.seconds:>10.2f}"
              f"{r.rate:>10.1f}")
    by = {(r.server, r.clients): r.rate for r in results}
    for clients in sorted({r.clients for r in results}):
        durable = by.get(("tidepost sqlite", clients))
        memory = by.get(("tidepost memory", clients))
        if durable and memory:
            print(f"durable/memory with {clients} client(s): {durable / memory:.2f}")
        if durable and by.get(("postfix", clients)):
            print(f"tidepost sqlite/postfix with {clients} client(s): "
                  f"{durable / by[('postfix', clients)]:.2f}")


def describe_machine(folder: Path) -> str:
    """CPU count, Python, and the file system the spools are on (fsync cost)."""
    fs = subprocess.run(["df", "-T", str(folder)], capture_output=True, text=True).stdout
    fstype = fs.splitlines()[-1].split()[1] if fs.strip() else "?"
    return (f"{os.cpu_count()} CPUs, Python {platform.python_version()}, "
            f"spools on {fstype} ({folder})")


def main() -> int:
    """Parse options, run every server with every client count, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000, help="messages per run")
    parser.add_argument("--size", type=int, default=4096, help="bytes per message")
    parser.add_argument("--clients", default="1,20", help="client counts, comma-separated")
    parser.add_argument("--backends", default="sqlite,memory", help="tidepost queue backends")
    parser.add_argument("--postfix", action="store_true", help="also measure Postfix")
    parser.add_argument("--dir", help="where the spools go (default: a temporary folder); "
                        "durability costs what fsync costs there")
    args = parser.parse_args()
    body = make_body(args.size)
    base = Path(tempfile.mkdtemp(prefix="tidepost-bench-", dir=args.dir))
    base.chmod(0o755)  # Postfix's daemons run as user postfix
    servers = [(f"tidepost {b}", lambda folder, b=b: tidepost(folder, b))
               for b in args.backends.split(",")]
    if args.postfix:
        if why := postfix_missing():
            print(f"postfix: skipped ({why})")
        else:
            servers.append(("postfix", postfix))
    print(f"accept benchmark: {args.messages} messages of {len(body)} bytes; "
          f"{describe_machine(base)}")
    results = []
    try:
        for name, server in servers:
            for clients in (int(c) for c in args.clients.split(",")):
                folder = base / f"{name.replace(' ', '-')}-{clients}"
                folder.mkdir()
                print(f"  running {name} with {clients} client(s)...", file=sys.stderr)
                results.append(measure(name, server, folder, clients, args.messages, body))
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print_table(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
