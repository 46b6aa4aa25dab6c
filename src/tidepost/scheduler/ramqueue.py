"""The default scheduler: a heap of recipients by next-try time, held per route.

Pure policy, no I/O (OpenSMTPD's scheduler_ramqueue): the manager inserts
entries, asks `next_batch(now, limit)` and gets either a Batch of due entries
(which leave the scheduler: the manager owns them until their outcome comes
back and it re-inserts the deferred ones) or a Sleep saying how long nothing
will be due.  An entry whose route is held is parked when it comes due and
comes back, due at once, when the route is released; parking is not an
attempt.  Stale heap items (entries removed or rescheduled) are skipped lazily.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import Callable

from tidepost.model import ScheduleEntry


@dataclass(frozen=True, slots=True)
class Batch:
    """Entries due now, to be claimed and delivered."""

    entries: list[ScheduleEntry]


@dataclass(frozen=True, slots=True)
class Sleep:
    """Nothing is due for `seconds` (None: nothing is scheduled at all)."""

    seconds: float | None


class RamQueue:
    """Scheduler keeping every queued recipient in memory."""

    def __init__(self, route_of: Callable[[ScheduleEntry], str | None]):
        self._route_of = route_of
        self._entries: dict[int, ScheduleEntry] = {}
        self._heap: list[tuple[float, int]] = []
        self._held_routes: set[str] = set()
        self._parked: dict[str, set[int]] = {}
        # Recipient ids by domain: an ETRN for one domain costs that domain's
        # entries, not a pass over the whole queue (1,000,000 held, say).
        # Dicts, not sets: a set grows fourfold and keeps 84 bytes an id at
        # 100 ids a domain, a dict 47 (tracemalloc), an eighth of the daemon's
        # memory per queued message.
        self._by_domain: dict[str, dict[int, None]] = {}

    def insert(self, entry: ScheduleEntry, now: float | None = None) -> None:
        """Add or reschedule a recipient.

        Given `now`, an entry already due on a held route is parked at once,
        as next_batch() would park it, with no heap item: 100,000 held
        messages loaded at start left their popped heap items behind as
        freed memory the process kept (bench/queue_memory.py).
        """
        self._entries[entry.recipient_id] = entry
        self._by_domain.setdefault(entry.domain, {})[entry.recipient_id] = None
        if now is not None and entry.next_try <= now and self._held_routes:
            route = self._route_of(entry) or ""
            if route in self._held_routes:
                self._parked.setdefault(route, set()).add(entry.recipient_id)
                return
        heapq.heappush(self._heap, (entry.next_try, entry.recipient_id))

    def remove(self, recipient_id: int) -> None:
        """Forget a recipient (delivered, bounced, or claimed elsewhere)."""
        entry = self._entries.pop(recipient_id, None)
        if entry is not None:
            route = self._route_of(entry) or ""
            self._parked.get(route, set()).discard(recipient_id)
            self._forget_domain(entry)

    def _forget_domain(self, entry: ScheduleEntry) -> None:
        """Drop `entry` from the domain index (it left the scheduler)."""
        ids = self._by_domain.get(entry.domain)
        if ids is not None:
            ids.pop(entry.recipient_id, None)
            if not ids:
                del self._by_domain[entry.domain]

    def __contains__(self, recipient_id: int) -> bool:
        return recipient_id in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def hold(self, route: str) -> None:
        """Stop handing out entries of `route`."""
        self._held_routes.add(route)

    def release(self, route: str, now: float) -> int:
        """Resume `route`; its parked entries become due at `now`. Returns their count."""
        self._held_routes.discard(route)
        parked = self._parked.pop(route, set())
        for recipient_id in parked:
            entry = self._entries[recipient_id]
            self.insert(ScheduleEntry(entry.recipient_id, entry.message_id, entry.domain,
                                      min(entry.next_try, now), entry.size))
        return len(parked)

    def is_held(self, route: str) -> bool:
        """True while `route` is held."""
        return route in self._held_routes

    def next_batch(self, now: float, limit: int) -> Batch | Sleep:
        """Due entries (up to `limit`), or how long until one is due."""
        due: list[ScheduleEntry] = []
        while self._heap and len(due) < limit:
            next_try, recipient_id = self._heap[0]
            if next_try > now:
                break
            heapq.heappop(self._heap)
            entry = self._entries.get(recipient_id)
            if entry is None or entry.next_try != next_try:
                continue  # stale: removed or rescheduled since pushed
            route = self._route_of(entry) or ""
            if route in self._held_routes:
                self._parked.setdefault(route, set()).add(recipient_id)
                continue
            del self._entries[recipient_id]
            self._forget_domain(entry)
            due.append(entry)
        if due:
            return Batch(due)
        return Sleep(self._heap[0][0] - now if self._heap else None)

    def entries_in_domains(self, route: str, wanted: Callable[[str], bool]
                           ) -> list[ScheduleEntry]:
        """Entries on `route` whose domain is `wanted`: O(domains + their entries)."""
        found = [self._entries[i] for domain, ids in self._by_domain.items() if wanted(domain)
                 for i in ids]
        return sorted((e for e in found if self._route_of(e) == route),
                      key=lambda e: e.recipient_id)

    def has_due(self, now: float) -> bool:
        """True when the earliest entry is due (it may be stale, or parked: a hint)."""
        return bool(self._heap) and self._heap[0][0] <= now

    def take_route(self, route: str, now: float) -> list[ScheduleEntry]:
        """Remove and return `route`'s due entries, held or not (a scheduled run)."""
        due = [e for e in self.entries_of_route(route) if e.next_try <= now]
        for entry in due:
            self.remove(entry.recipient_id)
        return due

    def entries_of_route(self, route: str) -> list[ScheduleEntry]:
        """Every entry currently scheduled (or parked) on `route`."""
        return [e for e in self._entries.values() if self._route_of(e) == route]

    def statistics(self) -> dict[str, int]:
        """Counts for `tidepost status`."""
        return {"scheduled": len(self._entries), "heap": len(self._heap),
                "parked": sum(len(p) for p in self._parked.values())}
