"""The link ledger: what tidepost sent through on-demand routes, and why.

Answers "what keeps bringing my link up?".  Each DNS query and each TCP
connection made for an on-demand route appends one JSON line to
SPOOL/ledger.jsonl:

    {"time": 1763781234.5, "route": "uplink", "what": "dns example.org MX",
     "queue_id": "1a2b3c", "cause": "released: tidepost link up"}

`what` is "dns NAME TYPE" or "connect HOST[ADDRESS]:PORT"; `queue_id` is the
message the traffic was for (may be empty); `cause` is the delivery job's
cause (new mail, retry, released: ..., flush command, a schedule).  Cache
hits send nothing and are not recorded; always-up routes are not recorded.

Writing: one `write()` of one line on an O_APPEND file, so lines from the
daemon and a `tidepost flush` do not interleave; no fsync (the ledger
explains, it does not account: a crash may lose the last lines).  When the
file passes `max_bytes` (1 MiB) it becomes ledger.jsonl.1, replacing the
previous one, so the ledger never holds more than twice that.

Reading: `recent(route, n)` gives the last records; `activations()` groups
records into activations, a burst of traffic after at least `idle_gap`
seconds of silence on the route, whose first record is what brought the
link up.  `read_ledger(spool)` opens the ledger of a spool for the CLI.
Readers parse whole files (2 MiB at most): call them off the event loop.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tidepost.clock import Clock

LEDGER_FILE = "ledger.jsonl"
MAX_BYTES = 1024 * 1024   # size at which the ledger file is rotated
IDLE_GAP = 120.0          # seconds of silence that end an activation


@dataclass(frozen=True, slots=True)
class LedgerRecord:
    """One thing sent through an on-demand route."""

    time: float       # Unix time
    route: str
    what: str         # "dns NAME TYPE" or "connect HOST[ADDRESS]:PORT"
    queue_id: str = ""
    cause: str = ""


@dataclass(slots=True)
class Activation:
    """A burst of traffic on one route: its first record and how much followed."""

    first: LedgerRecord
    last_time: float
    records: int = 1
    queue_ids: set[str] = field(default_factory=set)

    def as_dict(self) -> dict:
        """Plain data for the control socket and the CLI."""
        return {"time": self.first.time, "route": self.first.route, "cause": self.first.cause,
                "what": self.first.what, "queue_id": self.first.queue_id,
                "until": self.last_time, "records": self.records,
                "messages": len(self.queue_ids)}


class Ledger:
    """Appends and reads the link ledger of one spool."""

    def __init__(self, path: Path, clock: Clock | None = None, max_bytes: int = MAX_BYTES):
        self.path = Path(path)
        self._clock = clock
        self.max_bytes = max_bytes

    def record(self, route: str, what: str, queue_id: str = "", cause: str = "") -> None:
        """Append one record, stamped with the clock's time."""
        assert self._clock is not None, "a ledger opened for reading cannot record"
        entry = LedgerRecord(self._clock.now(), route, what, queue_id, cause)
        line = (json.dumps(asdict(entry), separators=(",", ":")) + "\n").encode()
        self._rotate_if_full()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)

    def recent(self, route: str | None = None, n: int = 20) -> list[LedgerRecord]:
        """The last `n` records, oldest first; of one route when `route` is given."""
        records = [r for r in self._read() if route is None or r.route == route]
        return records[-n:] if n > 0 else []

    def activations(self, route: str | None = None, n: int = 5,
                    idle_gap: float = IDLE_GAP) -> dict[str, list[Activation]]:
        """The last `n` activations of each route (or of `route`), oldest first."""
        found: dict[str, list[Activation]] = {}
        for record in self._read():
            if route is not None and record.route != route:
                continue
            bursts = found.setdefault(record.route, [])
            if bursts and record.time - bursts[-1].last_time < idle_gap:
                bursts[-1].last_time = record.time
                bursts[-1].records += 1
            else:
                bursts.append(Activation(record, record.time))
            if record.queue_id:
                bursts[-1].queue_ids.add(record.queue_id)
        return {name: bursts[-n:] for name, bursts in found.items()}

    def _rotate_if_full(self) -> None:
        """Move a full ledger aside (one old generation is kept)."""
        try:
            if self.path.stat().st_size >= self.max_bytes:
                os.replace(self.path, self.path.with_name(self.path.name + ".1"))
        except FileNotFoundError:
            pass

    def _read(self) -> list[LedgerRecord]:
        """Every readable record, the rotated file first; torn lines are skipped."""
        records = []
        for path in (self.path.with_name(self.path.name + ".1"), self.path):
            try:
                text = path.read_text(encoding="utf-8", errors="replace")
            except FileNotFoundError:
                continue
            for line in text.splitlines():
                try:
                    records.append(LedgerRecord(**json.loads(line)))
                except (ValueError, TypeError):
                    continue  # a line torn by a crash or a concurrent rotation
        records.sort(key=lambda r: r.time)
        return records


def read_ledger(spool: Path) -> Ledger:
    """The ledger of `spool`, for reading (`tidepost link status`)."""
    return Ledger(Path(spool) / LEDGER_FILE)


def last_activations(spool: Path, n: int = 5) -> dict[str, list[dict]]:
    """Per route, the last `n` activations as plain dicts, oldest first."""
    by_route = read_ledger(spool).activations(n=n)
    return {route: [a.as_dict() for a in bursts] for route, bursts in by_route.items()}
