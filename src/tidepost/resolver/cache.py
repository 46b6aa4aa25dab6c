"""The persistent DNS cache: answers with their TTLs in SPOOL/dns-cache.sqlite.

Role: sits in front of the network resolver's `query()` (`CachedResolver`),
so that a site resolves its usual destinations without a packet, also after
a restart.  Every answer is stored until it expires: MX, A and AAAA records,
and negative answers too, NXDOMAIN (`exists=False`) and NODATA (no records).

TTLs: positive answers keep their own TTL, at most MAX_TTL (1 day, as
unbound's cache-max-ttl).  Negative answers keep the SOA minimum that
dnspython derives (RFC 2308); when it gives none (0), DEFAULT_NEGATIVE_TTL
(300 s); at most MAX_NEGATIVE_TTL (3 h, RFC 2308 section 5).  A TTL of 0 is
not stored.  Failures (timeout, SERVFAIL, REFUSED) are never cached.

Expired answers are never served, not even while the route is held.  A held
route sends no query and delivers nothing, so a stale answer would buy
nothing; after release the first lookup is fresh, and it rides on the link
that the delivery brings up anyway.  (Serve-stale, RFC 8767, would only
matter if delivery could happen without the uplink.)

Storage: one table keyed by (name, type).  Every SQLite call runs in a worker
thread; the file is opened on first use, so building a node touches nothing.
WAL and synchronous=NORMAL: a power cut can lose the last answers, which
costs a lookup, never mail.  Several processes (the daemon, `tidepost flush`)
share the file.  If the file cannot be used, lookups go to the network and
the error is logged once.  `statistics()`: hits, misses, entries;
`read_statistics(path, now)` (resolver/cache_file.py, without dnspython) gives
`tidepost status` the same from the file.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import threading
from pathlib import Path
from typing import Any, Callable

from tidepost.clock import Clock
from tidepost.durable import private_file
from tidepost.errors import RouteHeld
from tidepost.resolver.cache_file import CACHE_FILE, read_statistics  # noqa: F401 - re-exported
from tidepost.resolver.resolver import Answer, Guard, Lookups

log = logging.getLogger("tidepost.resolver.cache")

MAX_TTL = 86400                # seconds a positive answer is kept at most
DEFAULT_NEGATIVE_TTL = 300     # seconds, when a negative answer carries no SOA minimum
MAX_NEGATIVE_TTL = 3 * 3600    # seconds a negative answer is kept at most
PURGE_EVERY = 256              # stores between deletions of expired rows

SCHEMA = """
CREATE TABLE IF NOT EXISTS answers (
    name    TEXT NOT NULL,
    rdtype  TEXT NOT NULL,
    records TEXT NOT NULL,     -- JSON list of rdata in presentation form
    exists_ INTEGER NOT NULL,  -- 0 for NXDOMAIN
    expires REAL NOT NULL,     -- Unix time
    PRIMARY KEY (name, rdtype)
) WITHOUT ROWID
"""


def cache_ttl(answer: Answer) -> int:
    """Seconds to keep `answer`: its TTL, capped; the negative default when it has none."""
    if answer.exists and answer.records:
        return min(max(answer.ttl, 0), MAX_TTL)
    return min(answer.ttl if answer.ttl > 0 else DEFAULT_NEGATIVE_TTL, MAX_NEGATIVE_TTL)


def _key(name: str) -> str:
    """The name as stored: lower case, no final dot."""
    return name.rstrip(".").lower()


class DnsCache:
    """Answers by (name, type) with expiry times, in one SQLite file."""

    def __init__(self, path: Path, clock: Clock):
        self.path = Path(path)
        self._clock = clock
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self._broken = False
        self._stores = 0
        self._stats = {"hits": 0, "misses": 0, "entries": 0}
        # Queries on their way, by (name, type): shared by concurrent askers.
        self.in_flight: dict[tuple[str, str], asyncio.Future] = {}

    def statistics(self) -> dict[str, int]:
        """Hits and misses of this process, and entries in the file (as last seen)."""
        return dict(self._stats)

    async def get(self, name: str, rdtype: str) -> Answer | None:
        """The stored answer while it is valid, with its remaining TTL; else None."""
        now = self._clock.now()
        row = await self._call(self._select, _key(name), rdtype)
        if row is None or row[2] <= now:
            self._stats["misses"] += 1
            return None
        self._stats["hits"] += 1
        records, exists, expires = row
        return Answer(name, rdtype, tuple(json.loads(records)), int(expires - now), bool(exists))

    async def put(self, answer: Answer) -> None:
        """Store `answer` until its TTL runs out (nothing for a TTL of 0)."""
        ttl = cache_ttl(answer)
        if ttl <= 0:
            return
        row = (_key(answer.name), answer.rdtype, json.dumps(list(answer.records)),
               int(answer.exists), self._clock.now() + ttl)
        self._stores += 1
        purge = self._stores % PURGE_EVERY == 0
        await self._call(self._insert, row, self._clock.now() if purge else None)

    async def close(self) -> None:
        """Close the file."""
        await self._call(self._close)

    # -- worker-thread side ---------------------------------------------------

    async def _call(self, function: Callable[..., Any], *args: Any) -> Any:
        """Run `function` on the connection in a worker thread; None once broken."""
        if self._broken:
            return None
        try:
            return await asyncio.to_thread(self._locked, function, *args)
        except sqlite3.Error as error:
            self._broken = True
            log.error("DNS cache %s unusable, looking up without it: %s", self.path, error)
            return None

    def _locked(self, function: Callable[..., Any], *args: Any) -> Any:
        """Call `function(*args)` under the lock, opening the file if needed."""
        with self._lock:
            if self._db is None:
                if function == self._close:
                    return None
                self._db = _open(self.path)
            return function(*args)

    def _select(self, name: str, rdtype: str) -> tuple[str, int, float] | None:
        """The row for (name, rdtype), if any."""
        assert self._db is not None
        return self._db.execute("SELECT records, exists_, expires FROM answers "
                                "WHERE name = ? AND rdtype = ?", (name, rdtype)).fetchone()

    def _insert(self, row: tuple, purge_before: float | None) -> None:
        """Replace the row; drop expired rows now and then; recount entries."""
        assert self._db is not None
        with self._db:
            self._db.execute("INSERT OR REPLACE INTO answers VALUES (?, ?, ?, ?, ?)", row)
            if purge_before is not None:
                self._db.execute("DELETE FROM answers WHERE expires <= ?", (purge_before,))
        self._stats["entries"] = self._db.execute("SELECT count(*) FROM answers").fetchone()[0]

    def _close(self) -> None:
        """Close the connection, if open."""
        if self._db is not None:
            self._db.close()
            self._db = None


def _open(path: Path) -> sqlite3.Connection:
    """Open (creating) the cache file in WAL mode."""
    db = sqlite3.connect(private_file(path), timeout=10.0, check_same_thread=False,
                         isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("BEGIN")
    db.execute(SCHEMA)
    db.execute("COMMIT")
    return db


class CachedResolver(Lookups):
    """`query()` from the cache while valid, else from `upstream` (and stored)."""

    def __init__(self, cache: DnsCache, upstream: Lookups):
        self.cache = cache
        self.upstream = upstream

    async def query(self, name: str, rdtype: str) -> Answer:
        """A valid cached answer, or the upstream's, which is then stored.

        Concurrent misses for one name and type share one query (sessions
        released together would otherwise each ask: 150 queries for 5
        domains in bench/drain.py).  Only the first asker's guard and ledger
        see it, which is right: only one query leaves.  If that asker's route
        turned out held, the others ask for themselves.
        """
        cached = await self.cache.get(name, rdtype)
        if cached is not None:
            return cached
        key = (_key(name), rdtype)
        shared = self.cache.in_flight.get(key)
        if shared is None:
            shared = asyncio.ensure_future(self._fetch(name, rdtype))
            self.cache.in_flight[key] = shared
            shared.add_done_callback(lambda _: self.cache.in_flight.pop(key, None))
            return await asyncio.shield(shared)
        try:
            return await asyncio.shield(shared)
        except RouteHeld:
            return await self._fetch(name, rdtype)

    async def _fetch(self, name: str, rdtype: str) -> Answer:
        """Ask upstream and store the answer."""
        answer = await self.upstream.query(name, rdtype)
        await self.cache.put(answer)
        return answer

    def guarded(self, guard: Guard) -> CachedResolver:
        """The same cache in front of a guarded upstream (the guard sees misses only)."""
        return CachedResolver(self.cache, self.upstream.guarded(guard))

    def statistics(self) -> dict[str, int]:
        """The cache's counters."""
        return self.cache.statistics()
