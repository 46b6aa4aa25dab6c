"""The nodes of a cluster for `tidepost status` (queue backend postgresql).

One row per node that shares the database (queue/pg_nodes.py): its name,
lease owner, when it started, its last heartbeat, and the recipients it
holds in flight; a node whose heartbeat is older than queue.node_timeout is
shown as silent (its leases go back to the others).  Nothing for a
single-node store.
"""

from __future__ import annotations

import time

from rich.table import Table

from tidepost.cli.queue_view import span
from tidepost.config.schema import Config
from tidepost.queue.backend import open_configured_queue


async def read_nodes(config: Config) -> list[dict]:
    """The cluster's nodes as plain data ([] unless the queue is shared)."""
    queue = open_configured_queue(config)
    try:
        if not hasattr(queue, "cluster_nodes"):
            return []
        rows = await queue.cluster_nodes()
    finally:
        await queue.close()
    now = time.time()
    return [{"node": r.node, "owner": r.owner, "started": r.started, "heartbeat": r.heartbeat,
             "state": _state(r.stopped, now - r.heartbeat, config.queue.node_timeout),
             "in_flight": r.in_flight} for r in rows]


def _state(stopped: bool, silence: float, timeout: float) -> str:
    if stopped:
        return "stopped"
    return "silent" if silence > timeout else "running"


def nodes_table(nodes: list[dict], now: float) -> Table:
    """NODE, STATE, IN FLIGHT, HEARTBEAT, STARTED, OWNER."""
    table = Table(title="cluster nodes (one queue database)", box=None,
                  header_style="bold", title_justify="left")
    for column in ("NODE", "STATE", "IN FLIGHT", "HEARTBEAT", "STARTED", "OWNER"):
        table.add_column(column)
    for node in nodes:
        table.add_row(node["node"], node["state"], str(node["in_flight"]),
                      span(now - node["heartbeat"]) + " ago",
                      span(now - node["started"]) + " ago", node["owner"])
    return table
