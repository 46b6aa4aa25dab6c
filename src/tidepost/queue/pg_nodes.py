"""The nodes of a cluster: who is alive, by heartbeat rows in the database.

Each running node has a row in `nodes` keyed by its lease owner
(`HOST:PID:START`, queue/owner.py) with a heartbeat that it renews every
third of `node_timeout`; each beat also renews the node's leases, so that a
live node's claims never expire under it however long a delivery takes.  A
node whose heartbeat is older than `node_timeout` is dead: any other node's
`recover_orphans` returns its leases to the queue (marked uncertain).  A
node that stops cleanly returns its leases and marks its row stopped;
`tidepost status` lists the rows (docs/CLUSTER.md).

After a database outage every node's heartbeat is old, because none could
write it.  So a node judges the others by heartbeat only once it has itself
reached the database for `node_timeout` without a failed beat: by then
every node that is alive has beaten again, and the deliveries they did
during the outage are not taken from them and sent twice.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import asyncpg

from tidepost.model import RecipientState

log = logging.getLogger("tidepost.queue")

FORGET_STOPPED = 86400.0  # seconds a stopped node stays listed
LEASE_RENEWAL = 3600.0  # seconds a beat extends the node's leases by (the manager's lease)


@dataclass(frozen=True, slots=True)
class NodeRow:
    """One node as the cluster sees it."""

    owner: str
    node: str
    started: float
    heartbeat: float
    stopped: bool
    in_flight: int


class Nodes:
    """The `nodes` table: join, beat, leave, and who has gone silent."""

    def __init__(self, pool: asyncpg.Pool, timeout: float):
        self._pool = pool
        self.timeout = timeout
        self._beating: asyncio.Task | None = None
        self._reachable_since: float | None = None  # a node's last beat that followed a failure

    async def join(self, owner: str, node: str) -> None:
        """Register this node and start its heartbeat."""
        now = time.time()
        await self._pool.execute("DELETE FROM nodes WHERE stopped AND heartbeat < $1",
                                 now - FORGET_STOPPED)
        await self._pool.execute(
            "INSERT INTO nodes(owner, node, started, heartbeat) VALUES ($1, $2, $3, $3) "
            "ON CONFLICT (owner) DO UPDATE SET node = excluded.node, "
            "heartbeat = excluded.heartbeat, stopped = false", owner, node, now)
        self._reachable_since = now - self.timeout  # no outage seen: judge the others now
        self._beating = asyncio.ensure_future(self._beat(owner))

    async def _beat(self, owner: str) -> None:
        """Renew the heartbeat and this node's leases until cancelled."""
        while True:
            await asyncio.sleep(self.timeout / 3)
            now = time.time()
            try:
                async with self._pool.acquire() as conn, conn.transaction():
                    await conn.execute("UPDATE nodes SET heartbeat = $2 WHERE owner = $1",
                                       owner, now)
                    await conn.execute(
                        "UPDATE recipients SET lease_until = $2 WHERE state = $3 "
                        "AND lease_owner = $1 AND lease_until < $2",
                        owner, now + LEASE_RENEWAL, RecipientState.CLAIMED.value)
            except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
                if self._reachable_since is not None:
                    log.warning("queue database: heartbeat failed: %s", exc)
                self._reachable_since = None
            else:
                if self._reachable_since is None:
                    log.warning("queue database: heartbeat written again")
                    self._reachable_since = now

    async def leave(self, owner: str) -> None:
        """Stop the heartbeat and mark this node stopped (its claims are released first)."""
        if self._beating is not None:
            self._beating.cancel()
            await asyncio.gather(self._beating, return_exceptions=True)
        await self._pool.execute("UPDATE nodes SET stopped = true, heartbeat = $2 "
                                 "WHERE owner = $1", owner, time.time())

    async def silent(self) -> set[str]:
        """Owners of nodes that stopped or whose heartbeat is older than the timeout.

        By the wall clock, as the heartbeats are written (not the caller's clock).
        A node that has not reached the database for a timeout since its
        last failed beat names none by heartbeat (see the module docstring).
        """
        if self._beating is not None and (
                self._reachable_since is None
                or time.time() - self._reachable_since < self.timeout):
            rows = await self._pool.fetch("SELECT owner FROM nodes WHERE stopped")
            return {row[0] for row in rows}
        rows = await self._pool.fetch("SELECT owner FROM nodes WHERE stopped OR heartbeat < $1",
                                      time.time() - self.timeout)
        return {row[0] for row in rows}

    async def rows(self) -> list[NodeRow]:
        """Every node with the count of recipients it holds in flight."""
        rows = await self._pool.fetch(
            "SELECT n.owner, n.node, n.started, n.heartbeat, n.stopped, "
            "(SELECT count(*) FROM recipients r WHERE r.state = $1 AND r.lease_owner = n.owner) "
            "FROM nodes n ORDER BY n.node, n.started", RecipientState.CLAIMED.value)
        return [NodeRow(*row) for row in rows]
