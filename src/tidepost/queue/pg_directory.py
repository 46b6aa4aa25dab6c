"""The shared lists in PostgreSQL: customer domains, SMTP AUTH users, releases.

Tables of migrations 3 and 4 (queue/pg_schema.py).  Every change runs in one
transaction that also bumps the list's row in `directory_versions` and
sends a NOTIFY with the list's name, so a node that hears it re-reads the
list at once and a node that missed it sees the version move at its next
poll (queue/directory.py is the interface, node_relay.py the consumer).
The last release of each customer domain is only read by `tidepost status`,
which reads it afresh each time: it has no version and sends no notice.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Coroutine, Sequence

import asyncpg

from tidepost.queue.directory import CREDENTIALS, CUSTOMERS, CredentialRecord, ReleaseRecord
from tidepost.queue.pg_views import NOTICE_CHANNEL


class PgDirectory:
    """SharedDirectory on the store's pool; `call` runs each operation on the store's loop."""

    def __init__(self, pool: asyncpg.Pool, call: Callable[[Coroutine], Any]):
        self._pool = pool
        self._call = call

    async def versions(self) -> dict[str, int]:
        """{list name: version}."""
        async def op() -> dict[str, int]:
            rows = await self._pool.fetch("SELECT list, version FROM directory_versions")
            return {row[0]: row[1] for row in rows}
        return await self._call(op())

    async def customer_domains(self) -> list[str]:
        """Every customer domain pattern, sorted."""
        async def op() -> list[str]:
            rows = await self._pool.fetch("SELECT pattern FROM customer_domains ORDER BY pattern")
            return [row[0] for row in rows]
        return await self._call(op())

    async def add_customer_domains(self, patterns: Sequence[str]) -> list[str]:
        """Add normalised patterns; the ones that were not listed yet."""
        async def op(conn: asyncpg.Connection) -> list[str]:
            rows = await conn.fetch(
                "INSERT INTO customer_domains(pattern, added) SELECT DISTINCT p, $2::float8 "
                "FROM unnest($1::text[]) AS p ON CONFLICT DO NOTHING RETURNING pattern",
                list(patterns), time.time())
            return sorted(row[0] for row in rows)
        return await self._change(CUSTOMERS, op)

    async def remove_customer_domains(self, patterns: Sequence[str]) -> list[str]:
        """Remove patterns; the ones that were listed."""
        async def op(conn: asyncpg.Connection) -> list[str]:
            rows = await conn.fetch("DELETE FROM customer_domains WHERE pattern = ANY($1::text[]) "
                                    "RETURNING pattern", list(patterns))
            return sorted(row[0] for row in rows)
        return await self._change(CUSTOMERS, op)

    async def credentials(self) -> list[CredentialRecord]:
        """Every AUTH user, by name."""
        async def op() -> list[CredentialRecord]:
            rows = await self._pool.fetch("SELECT username, hashed, domains, cram_secret "
                                          "FROM credentials ORDER BY username")
            return [CredentialRecord(r[0], r[1], tuple(r[2]), bytes(r[3])) for r in rows]
        return await self._call(op())

    async def put_credential(self, record: CredentialRecord) -> bool:
        """Store a user (replacing one of that name); True when it replaced one."""
        async def op(conn: asyncpg.Connection) -> bool:
            return await conn.fetchval(
                "INSERT INTO credentials AS c(username, hashed, domains, cram_secret, changed) "
                "VALUES ($1, $2, $3, $4, $5) ON CONFLICT (username) DO UPDATE SET "
                "hashed = excluded.hashed, domains = excluded.domains, "
                "cram_secret = excluded.cram_secret, changed = excluded.changed "
                "RETURNING (xmax <> 0)", record.user, record.hashed, list(record.domains),
                record.cram_secret, time.time())
        return await self._change(CREDENTIALS, op)

    async def remove_credential(self, user: str) -> bool:
        """Remove a user; True when there was one."""
        async def op(conn: asyncpg.Connection) -> bool:
            status = await conn.execute("DELETE FROM credentials WHERE username = $1", user)
            return status != "DELETE 0"
        return await self._change(CREDENTIALS, op)

    async def releases(self) -> list[ReleaseRecord]:
        """The last release of every customer pattern released, by pattern."""
        async def op() -> list[ReleaseRecord]:
            rows = await self._pool.fetch("SELECT pattern, released, how, count, node "
                                          "FROM customer_releases ORDER BY pattern")
            return [ReleaseRecord(*row) for row in rows]
        return await self._call(op())

    async def note_release(self, record: ReleaseRecord) -> None:
        """Remember a release unless a later one of the pattern is stored already.

        Two nodes answering ETRNs for one domain at once: the later release
        stays, whichever commits last.
        """
        async def op() -> None:
            await self._pool.execute(
                "INSERT INTO customer_releases AS r(pattern, released, how, count, node) "
                "VALUES ($1, $2, $3, $4, $5) ON CONFLICT (pattern) DO UPDATE SET "
                "released = excluded.released, how = excluded.how, count = excluded.count, "
                "node = excluded.node WHERE excluded.released >= r.released",
                record.pattern, record.time, record.by, record.count, record.node)
        return await self._call(op())

    async def _change(self, name: str, change: Callable[[asyncpg.Connection], Coroutine]
                      ) -> Any:
        """Run `change` with the version bump and the notice, in one transaction."""
        async def op() -> Any:
            async with self._pool.acquire() as conn, conn.transaction():
                result = await change(conn)
                await conn.execute("UPDATE directory_versions SET version = version + 1 "
                                   "WHERE list = $1", name)
                await conn.execute("SELECT pg_notify($1, $2)", NOTICE_CHANNEL, name)
            return result
        return await self._call(op())
