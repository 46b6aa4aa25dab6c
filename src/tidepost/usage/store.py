"""The link accounting store: SPOOL/usage.sqlite, kept apart from the queue.

Rows per route and local day: bytes up and down as TCP payload (SMTP and
TLS exactly as the link carried them, retransmissions included) and with an
estimate of the IP and TCP headers (`ip_up`, `ip_down`: what a metered link
bills), messages and recipients delivered, connections opened and online
seconds (time with at least one connection open on the route).  Rows per
envelope sender, route and day: bytes of message content sent and
messages.  Months are sums of days.  And the caps: which route is held at
which period's cap since when, and whether the postmaster was told.

Writes come in batches from the meter (usage/meter.py), never from the
queue's hot path: one transaction per batch, WAL, synchronous=NORMAL (a
power cut may lose the last seconds of counts, never mail).  Every call is
blocking: callers run it in a thread.  Several processes (the daemon,
`tidepost flush`) may share the file.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, fields
from pathlib import Path

from tidepost.durable import private_file
from tidepost.errors import QueueError
from tidepost.usage.periods import DAY, MONTH, period_of

USAGE_FILE = "usage.sqlite"

SCHEMA = """
CREATE TABLE IF NOT EXISTS routes (
    route TEXT NOT NULL, day TEXT NOT NULL,
    up INTEGER NOT NULL DEFAULT 0, down INTEGER NOT NULL DEFAULT 0,
    ip_up INTEGER NOT NULL DEFAULT 0, ip_down INTEGER NOT NULL DEFAULT 0,
    messages INTEGER NOT NULL DEFAULT 0, recipients INTEGER NOT NULL DEFAULT 0,
    connections INTEGER NOT NULL DEFAULT 0, online REAL NOT NULL DEFAULT 0,
    PRIMARY KEY (route, day));
CREATE TABLE IF NOT EXISTS senders (
    sender TEXT NOT NULL, route TEXT NOT NULL, day TEXT NOT NULL,
    bytes INTEGER NOT NULL DEFAULT 0, messages INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (sender, route, day));
CREATE TABLE IF NOT EXISTS caps (
    route TEXT NOT NULL, period TEXT NOT NULL, since REAL NOT NULL,
    cause TEXT NOT NULL, told INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (route, period));
"""


@dataclass(slots=True)
class RouteUsage:
    """Counts of one route over some days (a day, a month, or pending deltas)."""

    up: int = 0
    down: int = 0
    ip_up: int = 0
    ip_down: int = 0
    messages: int = 0
    recipients: int = 0
    connections: int = 0
    online: float = 0.0

    def add(self, other: RouteUsage) -> None:
        """Add `other`'s counts to these."""
        for name in COUNTS:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    @property
    def billed(self) -> int:
        """Bytes both ways as the link meters them (IP level): what caps count."""
        return self.ip_up + self.ip_down


COUNTS = tuple(f.name for f in fields(RouteUsage))


@dataclass(frozen=True, slots=True)
class UsageRow:
    """One exported line: a route (or a sender on a route) in one period."""

    period: str
    route: str
    usage: RouteUsage
    sender: str = ""
    sender_bytes: int = 0
    sender_messages: int = 0


@dataclass(frozen=True, slots=True)
class CapHold:
    """A route held at its cap for one period."""

    route: str
    period: str    # the day (YYYY-MM-DD) or month (YYYY-MM) whose cap was reached
    since: float
    cause: str
    told: bool     # the postmaster was sent the notice


class UsageStore:
    """Blocking access to one usage database (call it from a thread)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._conn: sqlite3.Connection | None = None

    def _db(self) -> sqlite3.Connection:
        """The connection, opened (and the schema made) on first use."""
        if self._conn is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            try:
                conn = sqlite3.connect(private_file(self.path), isolation_level=None,
                                       timeout=30, check_same_thread=False)
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
                conn.executescript(SCHEMA)
            except sqlite3.Error as exc:  # a user's `link usage`: the CLI says exit 77
                raise QueueError(f"cannot open the link meter {self.path}: {exc}") from None
            self._conn = conn
        return self._conn

    def add(self, routes: dict[tuple[str, str], RouteUsage],
            senders: dict[tuple[str, str, str], tuple[int, int]]) -> None:
        """Add one batch of deltas: {(route, day): counts}, {(sender, route, day): (bytes, n)}."""
        db = self._db()
        columns = ", ".join(COUNTS)
        updates = ", ".join(f"{c}={c}+excluded.{c}" for c in COUNTS)
        with db:
            db.execute("BEGIN IMMEDIATE")
            db.executemany(
                f"INSERT INTO routes(route, day, {columns}) VALUES (?,?,{','.join('?' * len(COUNTS))}) "
                f"ON CONFLICT(route, day) DO UPDATE SET {updates}",
                [(route, day, *(getattr(u, c) for c in COUNTS))
                 for (route, day), u in routes.items()])
            db.executemany(
                "INSERT INTO senders(sender, route, day, bytes, messages) VALUES (?,?,?,?,?) "
                "ON CONFLICT(sender, route, day) DO UPDATE SET bytes=bytes+excluded.bytes, "
                "messages=messages+excluded.messages",
                [(sender, route, day, n, m) for (sender, route, day), (n, m) in senders.items()])

    def totals(self, route: str, period: str) -> RouteUsage:
        """A route's counts in one day (YYYY-MM-DD) or month (YYYY-MM)."""
        row = self._db().execute(
            f"SELECT {', '.join(f'COALESCE(SUM({c}), 0)' for c in COUNTS)} FROM routes "
            "WHERE route=? AND substr(day, 1, ?)=?", (route, len(period), period)).fetchone()
        return RouteUsage(*row)

    def rows(self, kind: str, route: str | None = None) -> list[UsageRow]:
        """Per route and day (kind "day") or month: every period recorded, oldest first."""
        width, where, args = _grouping(kind, route)
        found = self._db().execute(
            f"SELECT substr(day, 1, {width}) AS period, route, "
            f"{', '.join(f'SUM({c})' for c in COUNTS)} FROM routes {where} "
            "GROUP BY period, route ORDER BY period, route", args).fetchall()
        return [UsageRow(r[0], r[1], RouteUsage(*r[2:])) for r in found]

    def sender_rows(self, kind: str, route: str | None = None) -> list[UsageRow]:
        """Per sender, route and day or month: bytes and messages sent."""
        width, where, args = _grouping(kind, route)
        found = self._db().execute(
            f"SELECT substr(day, 1, {width}) AS period, route, sender, SUM(bytes), "
            f"SUM(messages) FROM senders {where} GROUP BY period, route, sender "
            "ORDER BY period, route, sender", args).fetchall()
        return [UsageRow(r[0], r[1], RouteUsage(), r[2], r[3], r[4]) for r in found]

    def caps(self) -> list[CapHold]:
        """Every cap hold recorded."""
        return [CapHold(r[0], r[1], r[2], r[3], bool(r[4])) for r in self._db().execute(
            "SELECT route, period, since, cause, told FROM caps ORDER BY since")]

    def set_cap(self, hold: CapHold) -> None:
        """Record (or update) a cap hold."""
        with self._db() as db:
            db.execute("INSERT INTO caps(route, period, since, cause, told) VALUES (?,?,?,?,?) "
                       "ON CONFLICT(route, period) DO UPDATE SET told=excluded.told",
                       (hold.route, hold.period, hold.since, hold.cause, int(hold.told)))

    def close(self) -> None:
        """Close the connection."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def _grouping(kind: str, route: str | None) -> tuple[int, str, tuple]:
    """Width of the period key (day YYYY-MM-DD, month YYYY-MM) and the route filter."""
    return (10 if kind == "day" else 7, *(("WHERE route=?", (route,)) if route else ("", ())))


def current_caps(spool: Path, now: float) -> dict[str, CapHold]:
    """The data cap holds of the day and month `now` falls in, by route (blocking)."""
    store = UsageStore(Path(spool) / USAGE_FILE)
    try:
        current = {period_of(DAY, now), period_of(MONTH, now)}
        return {hold.route: hold for hold in store.caps() if hold.period in current}
    finally:
        store.close()
