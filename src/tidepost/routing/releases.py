"""The last release of each customer domain (relay role): in the spool, or a cluster's database.

When a customer asks for its mail (ETRN, ATRN), the relay notes when, by
what and how much went, so that `tidepost status` can show it with the
daemon down.  Where depends on the queue:
- a single node (SQLite, RAM) keeps it in SPOOL/customer-releases.json
  (`FileReleases`);
- a cluster (PostgreSQL) keeps it in the database beside the customer
  domains (`SharedReleases`, queue/directory.py), so that `tidepost status`
  on any node shows the releases every node made, with the node's name.
`release_book(config, directory)` picks one; node_relay.py writes through it
and cli/routes_view.py reads through it, so that status need not load the
relay's wiring.  Both read as {pattern: {"time": unix seconds, "by": "ETRN",
"count": n}} (and "node" in a cluster).
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any, Protocol

from tidepost.config.schema import Config
from tidepost.queue.directory import ReleaseRecord, SharedDirectory

RELEASES_FILE = "customer-releases.json"


class ReleaseBook(Protocol):
    """Where the last release of each customer domain is kept."""

    async def read(self) -> dict[str, dict[str, Any]]: ...
    async def remember(self, pattern: str, by: str, count: int, now: float) -> None: ...


def release_book(config: Config, directory: SharedDirectory | None) -> ReleaseBook:
    """The cluster's book when the queue has shared lists, else the spool's file."""
    if directory is None:
        return FileReleases(config)
    return SharedReleases(directory, config.node_name)


def releases_path(config: Config) -> Path:
    """Where a single node remembers the last release of each customer domain."""
    return config.spool_path / RELEASES_FILE


def read_releases(config: Config) -> dict[str, dict[str, Any]]:
    """The spool file's releases ({} when there is none yet or it is unreadable)."""
    try:
        return json.loads(releases_path(config).read_text())
    except (OSError, ValueError):
        return {}


class FileReleases:
    """SPOOL/customer-releases.json, rewritten whole at each release (tmp, rename)."""

    def __init__(self, config: Config):
        self._config = config
        self._lock = asyncio.Lock()  # one rewrite at a time: none loses another's entry

    async def read(self) -> dict[str, dict[str, Any]]:
        """Every pattern's last release, from the file."""
        return read_releases(self._config)

    async def remember(self, pattern: str, by: str, count: int, now: float) -> None:
        """Replace the pattern's entry, the file rewritten off the event loop."""
        async with self._lock:
            await asyncio.to_thread(self._write, pattern, by, count, now)

    def _write(self, pattern: str, by: str, count: int, now: float) -> None:
        """Read, change one entry, write a temporary file and rename it over the old one."""
        releases = read_releases(self._config)
        releases[pattern] = {"time": now, "by": by, "count": count}
        path = releases_path(self._config)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(releases, indent=1, sort_keys=True))
        os.replace(tmp, path)


class SharedReleases:
    """A cluster's releases in its database, each with the node that made it."""

    def __init__(self, directory: SharedDirectory, node: str):
        self._directory = directory
        self._node = node

    async def read(self) -> dict[str, dict[str, Any]]:
        """Every pattern's last release in the database, with the node that made it."""
        return {r.pattern: {"time": r.time, "by": r.by, "count": r.count, "node": r.node}
                for r in await self._directory.releases()}

    async def remember(self, pattern: str, by: str, count: int, now: float) -> None:
        """Store the release as this node's (a later one already stored stays)."""
        await self._directory.note_release(ReleaseRecord(pattern, now, by, count, self._node))
