"""Fuzz tidepost's parsers: a million mutated inputs per target, in-process.

    .venv/bin/python bench/fuzz.py                      # every target, 1,000,000 each
    .venv/bin/python bench/fuzz.py -n 20000 -t session  # one target, quickly
    .venv/bin/python bench/fuzz.py --crashes /tmp/crashes --seed 7

The targets and their oracles are tests/fuzz_targets.py (the suite runs the
same ones under hypothesis and replays tests/corpus/).  This is a plain
mutation fuzzer, not a coverage-guided one: each input is a corpus entry
with one to four mutations (flip, insert, delete, duplicate or splice
bytes, insert a token of the target's grammar), and an input whose result
signature (what the target reports it did: a reply code, an error kind)
is new joins the corpus, a cheap stand-in for coverage that steers towards
new behaviour.  Why not atheris: its coverage guidance needs its own
libFuzzer main loop per process and a 35 MB binary wheel; for parsers this
size, a grammar-aware mutator finds the same classes of bug at 10-50 us an
input, with no dependency, and a fixed --seed replays a run exactly.

A crash is any exception but the target's defined ones (an oracle's
AssertionError included).  Prints one row per target: executions, crashes
(distinct by exception type and first line), the slowest input's time, and
the corpus size at the end; with --crashes, each distinct crash's input is
written there.  Goal: no crash, no input over 1 s.
"""

from __future__ import annotations

import argparse
import logging
import random
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import fuzz_targets  # noqa: E402 - tests/ is put on sys.path just above

HANG_SECONDS = 10          # an input running this long is a crash (a hang)
MAX_CORPUS = 4000          # entries kept per target
TOKENS: dict[str, list[bytes]] = {
    "command": [b"FROM:", b"TO:", b"<", b">", b"@", b"<>", b" SIZE=", b" BODY=8BITMIME",
                b" SMTPUTF8", b"\"", b"\\", b"[IPv6:::1]", b"[192.0.2.1]", b"@a,@b:", b"%",
                b"postmaster", b".", b"\xc3\xa9", b"\x00", b"=", b" ", b"9" * 25],
    "session": [b"\r\n", b"EHLO x\r\n", b"MAIL FROM:<a@b.test>\r\n",
                b"RCPT TO:<alice@relay.test>\r\n",
                b"DATA\r\n", b"\r\n.\r\n", b"ETRN ", b"ATRN ", b"AUTH CRAM-MD5\r\n",
                b"AUTH PLAIN ", b"AUTH LOGIN\r\n", b"*\r\n", b"=\r\n", b"STARTTLS\r\n",
                b"RSET\r\n", b"NOOP\r\n", b"QUIT\r\n", b"@fleet.test", b"#q", b"\n", b"\r",
                b"\xff", b"x" * 1100],
    "address": [b"<", b">", b"@", b".", b"\"", b"\\", b"[", b"]", b"IPv6:", b"::", b"@a,@b:",
                b"postmaster", b"\xc3\xa9", b"-", b"x" * 64, b"%", b"!"],
    "data": [b"\r\n", b".", b"\r\n.\r\n", b"\r\n..", b"\n.\n", b"\r", b"\n", b"\x00",
             b"x" * 1000, b"\r\n.", b".\r\n", b"\x80", b"\xc0"],
    "config": [b"\n[smtp]\n", b"\n[[route]]\n", b"\n[relay]\n", b"\n[queue]\n", b" = ",
               b"\"1h\"", b"\"10M\"", b"nan", b"inf", b"-1", b"1e999", b"[", b"]", b"{",
               b"}", b"\"", b"'''", b"true", b"max_connections", b"idle_timeout",
               b"reserved_connections", b"min_data_rate", b"schedule", b"name", b"domains",
               b"listen", b"relay_networks", b"\"every 1h\"", b"\"*\"", b",", b"#", b"\\u0000"],
    "aliases": [b":", b",", b"\n", b"\n ", b"@", b"|", b"/", b"#", b"+", b"postmaster",
                b"alice", b"\x00", b"\xc3\xa9", b"mailer-daemon"],
    "dsn": [b"\r\n", b"\r\n\r\n", b"\r", b"\n", b"\x00", b"Subject: ", b"x" * 1000,
            b"\xff", b"--", b"Content-Type: multipart/mixed; boundary=x\r\n"],
}
SEEDS: dict[str, list[bytes]] = {
    "command": [b"FROM:<a@b.example> SIZE=100 BODY=8BITMIME", b"TO:<c@d.example>",
                b"FROM:<>", b"TO:<postmaster>", b"FROM:<\"a b\"@[IPv6:2001:db8::1]> SMTPUTF8"],
    "session": [b"EHLO c.test\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<alice@relay.test>\r\n"
                b"DATA\r\nSubject: x\r\n\r\nhi\r\n.\r\nQUIT\r\n",
                b"EHLO c.test\r\nETRN @fleet.test\r\nETRN #q\r\nATRN\r\n",
                b"EHLO c.test\r\nAUTH CRAM-MD5\r\n"
                b"c2hpcCAwMTIzNDU2Nzg5YWJjZGVmMDEyMzQ1Njc4OWFiY2RlZg==\r\n"],
    "address": [b"<a@b.example>", b"<@x,@y:a.b@c.example>", b"<\"q\\\"x\"@[192.0.2.1]>", b"<>"],
    "data": [b"\x07Subject: x\r\n\r\nbody\r\n..dot\r\n.\r\nNOOP\r\n", b"\x87hello\r\n.line\r\n",
             b"\x41" + b"x" * 300 + b"\r\n.\r\n"],
    "config": [(Path(__file__).resolve().parents[1] / "src/tidepost/config/default.toml")
               .read_bytes(),
               b'hostname = "a.test"\n[smtp]\nmax_connections = 10\nidle_timeout = "5m"\n'
               b'[[route]]\nname = "up"\nschedule = ["every 1h"]\n'],
    "aliases": [b"postmaster: alice\nteam: alice, bob@far.test\n  carol\nloop: loop\n"],
    "dsn": [b"Subject: hi\r\nFrom: a@b\r\n\r\nbody\r\n", b"no headers at all"],
}


@dataclass
class Row:
    """What fuzzing one target found."""

    target: str
    executions: int = 0
    slowest: float = 0.0
    crashes: dict[str, bytes] = field(default_factory=dict)
    corpus: int = 0
    seconds: float = 0.0


class Hang(Exception):
    """An input ran longer than HANG_SECONDS."""


def _on_alarm(signum, frame):
    raise Hang(f"no answer within {HANG_SECONDS} s")


class Mutator:
    """Derives new inputs from a corpus with byte and token mutations."""

    def __init__(self, rng: random.Random, tokens: list[bytes]):
        self.rng, self.tokens = rng, tokens

    def mutate(self, data: bytes, other: bytes) -> bytes:
        """`data` with one to four mutations (`other` for splicing)."""
        out = bytearray(data)
        for _ in range(self.rng.randint(1, 4)):
            self._one(out, other)
        return bytes(out[:8192])

    def _one(self, out: bytearray, other: bytes) -> None:
        """Apply one random mutation in place."""
        rng = self.rng
        where = rng.randint(0, len(out))
        kind = rng.randrange(7)
        if kind == 0 and out:
            out[min(where, len(out) - 1)] ^= 1 << rng.randrange(8)
        elif kind == 1:
            out[where:where] = bytes([rng.randrange(256)])
        elif kind == 2 and out:
            del out[where:where + rng.randint(1, 8)]
        elif kind == 3 and out:
            start = rng.randrange(len(out))
            out[where:where] = out[start:start + rng.randint(1, 32)] * rng.randint(1, 4)
        elif kind == 4 and other:
            start = rng.randrange(len(other))
            out[where:] = other[start:start + rng.randint(1, 256)]
        else:
            out[where:where] = rng.choice(self.tokens)


def crash_key(crash: Exception) -> str:
    """What tells crashes apart: the exception type and its message's first line."""
    first = str(crash).splitlines()[0][:100] if str(crash) else ""
    return f"{type(crash).__name__}: {first}"


def fuzz(name: str, executions: int, seed: int) -> Row:
    """Run `executions` inputs against one target."""
    target = fuzz_targets.TARGETS[name]
    rng = random.Random(f"{seed}:{name}")
    corpus = SEEDS[name] + [p.read_bytes() for t, p in fuzz_targets.corpus_files() if t == name]
    seen: set[str] = set()
    mutator = Mutator(rng, TOKENS[name])
    row = Row(name)
    started = time.perf_counter()
    for index in range(executions):
        data = corpus[index] if index < len(corpus) else \
            mutator.mutate(rng.choice(corpus), rng.choice(corpus))
        signal.alarm(HANG_SECONDS)
        begin = time.perf_counter()
        try:
            signature = target(data)
        except Exception as crash:  # noqa: BLE001 - every escape is a finding
            signature = None
            row.crashes.setdefault(crash_key(crash), data)
        finally:
            signal.alarm(0)
        row.slowest = max(row.slowest, time.perf_counter() - begin)
        if signature is not None and signature not in seen:
            seen.add(signature)
            if len(corpus) < MAX_CORPUS:
                corpus.append(data)
    row.executions, row.corpus = executions, len(corpus)
    row.seconds = time.perf_counter() - started
    return row


def print_table(rows: list[Row]) -> None:
    """One line per target."""
    print(f"{'target':10} {'executions':>11} {'crashes':>8} {'slowest':>10} "
          f"{'corpus':>7} {'execs/s':>8}")
    for row in rows:
        print(f"{row.target:10} {row.executions:>11,} {len(row.crashes):>8} "
              f"{row.slowest * 1000:>8.1f}ms {row.corpus:>7} "
              f"{row.executions / row.seconds:>8,.0f}")
        for key in row.crashes:
            print(f"    crash: {key}")


def main() -> None:
    """Parse the arguments, fuzz each target, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", "--executions", type=int, default=1_000_000)
    parser.add_argument("-t", "--targets", default=",".join(fuzz_targets.TARGETS))
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--crashes", type=Path, help="write each distinct crash input here")
    args = parser.parse_args()
    signal.signal(signal.SIGALRM, _on_alarm)
    logging.disable(logging.CRITICAL)  # the session target logs every refusal it provokes
    rows = []
    for name in args.targets.split(","):
        rows.append(fuzz(name, args.executions, args.seed))
        if args.crashes:
            args.crashes.mkdir(parents=True, exist_ok=True)
            for number, data in enumerate(rows[-1].crashes.values()):
                (args.crashes / f"{name}-{number}").write_bytes(data)
        print(f"# {name} done in {rows[-1].seconds:.0f} s", file=sys.stderr, flush=True)
    print_table(rows)


if __name__ == "__main__":
    main()
