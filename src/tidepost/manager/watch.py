"""How a daemon follows the queue: new mail by cursor, and wake-ups from other nodes.

`QueueWatch.everything()` reads every QUEUED recipient and remembers where
it stopped; `news()` reads only what was queued since, whoever queued it
(`tidepost sendmail`, a `tidepost flush`, another node), so a poll costs
what is new, not the whole queue.  The cursor is the store's own when it
has one (`queued_since`: PostgreSQL follows transaction snapshots, because
there a message with a lower id can commit after one with a higher id);
otherwise the highest recipient id seen (SQLite and the RAM store commit in
id order).

`wait(timeout)` returns early when the store tells of another node's
commit (PostgreSQL's LISTEN/NOTIFY: new mail, a release or requeue, a route
hold); a notice is only a hint that makes the next poll come sooner, and
the poll interval remains the fallback.
"""

from __future__ import annotations

import asyncio
from typing import Any

from tidepost.model import ScheduleEntry

NOTICE_GATHERING = 0.02  # seconds to wait after a notice for the ones right behind it


class QueueWatch:
    """Cursors over one queue store, and the notices it relays."""

    def __init__(self, queue: Any):
        self._queue = queue
        self._follows = hasattr(queue, "queued_since")
        self._cursor: str | None = None
        self._last_id = 0
        self._heard: set[str] = set()
        self._notice = asyncio.Event()

    async def listen(self) -> bool:
        """Subscribe to the store's notices, if it sends any; True if it does."""
        if not hasattr(self._queue, "on_notice"):
            return False
        await self._queue.on_notice(self._noticed)
        return True

    def _noticed(self, payload: str) -> None:
        self._heard.add(payload)
        self._notice.set()

    async def wait(self, timeout: float) -> set[str]:
        """Sleep until a notice or `timeout`; the kinds of notice heard ("changes", "holds"...)."""
        try:
            await asyncio.wait_for(self._notice.wait(), timeout)
            await asyncio.sleep(NOTICE_GATHERING)
        except asyncio.TimeoutError:
            pass
        self._notice.clear()
        heard, self._heard = self._heard, set()
        return heard

    async def everything(self) -> list[ScheduleEntry]:
        """Every QUEUED recipient; `news()` continues from here."""
        if self._follows:
            self._cursor, entries = await self._queue.queued_since(None)
        else:
            entries = await self._queue.walk()
        self._note(entries)
        return entries

    async def news(self) -> list[ScheduleEntry]:
        """QUEUED recipients queued since the last look."""
        if self._follows:
            self._cursor, entries = await self._queue.queued_since(self._cursor)
        else:
            entries = await self._queue.entries_since(self._last_id)
        self._note(entries)
        return entries

    def _note(self, entries: list[ScheduleEntry]) -> None:
        if entries:
            self._last_id = max(self._last_id, max(e.recipient_id for e in entries))
