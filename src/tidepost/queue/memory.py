"""A queue store in RAM, for tests and benchmarks (OpenSMTPD's queue_ram).

Same semantics as `queue/sqlite.py`, minus durability: everything is lost
when the process ends, and other processes cannot see it.  Each method runs
to completion without awaiting, so on one event loop every call is atomic,
as one SQLite transaction is; `record` checks its DSNs before changing
anything, so a refused call changes nothing.  Recipient and message ids grow
from 1 and are never reused.  The contract both stores keep is written down
as tests in tests/contract/test_queue_backend.py.
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass
from typing import AsyncIterator, Callable, Iterable, Sequence

from tidepost.address import Address
from tidepost.errors import AlreadyQueued, QueueError
from tidepost.model import (NO_DSN_REQUEST, MessageInfo, QueuedRecipient, RecipientDsn,
                            RecipientState, ScheduleEntry)
from tidepost.outcomes import Verdict
from tidepost.queue.backend import (ClaimResult, HoldState, NewMessage, PendingGroup,
                                    QueueRow, RecipientUpdate, Recorded)
from tidepost.queue.selection import (EVERY_STATE, UNDELIVERED, Changed, Changes, Selection,
                                      Tally, TallyKey, age_class, size_class)
from tidepost.queue.sqlite import new_queue_id

QUEUED = RecipientState.QUEUED
CLAIMED = RecipientState.CLAIMED
HELD = RecipientState.HELD
CHANGE_MEMORY = 86400.0  # seconds the change log is kept, as in sqlite_views.py
ERROR_LIMIT = 500  # characters of last_error kept, as in sqlite.py


@dataclass(slots=True)
class _Message:
    """A stored message: its facts, body and recipient ids."""

    info: MessageInfo
    body: bytes
    recipient_ids: list[int]


@dataclass(slots=True)
class _Recipient:
    """A stored recipient row (the columns of sqlite.py's `recipients`)."""

    recipient_id: int
    message_id: int
    address: Address
    state: RecipientState
    next_try: float
    attempts: int = 0
    last_error: str = ""
    lease_owner: str | None = None  # set exactly while state is CLAIMED
    lease_until: float = 0.0
    uncertain: bool = False
    size: int = 0  # of its message, as the scheduler needs it for routing
    dsn: RecipientDsn = NO_DSN_REQUEST

    def entry(self) -> ScheduleEntry:
        """This recipient as the scheduler sees it."""
        return ScheduleEntry(self.recipient_id, self.message_id, self.address.domain,
                             self.next_try, self.size)

    def unlease(self, state: RecipientState) -> None:
        """Leave CLAIMED for `state`, dropping the lease."""
        self.state, self.lease_owner, self.lease_until = state, None, 0.0


class MemoryQueue:
    """QueueBackend held in dictionaries (see module docstring)."""

    def __init__(self) -> None:
        self._messages: dict[int, _Message] = {}
        self._recipients: dict[int, _Recipient] = {}  # ascending id order
        self._holds: dict[str, HoldState] = {}
        self._queue_ids: set[str] = set()
        self._transfers: dict[str, tuple[str, float]] = {}  # key -> (queue id, received)
        self._message_ids = itertools.count(1)
        self._recipient_ids = itertools.count(1)
        self._changes: list[tuple[int, int, float]] = []  # (change, recipient id, when)
        self._change_numbers = itertools.count(1)

    async def submit(self, message: NewMessage) -> list[ScheduleEntry]:
        """Queue one message; a duplicate queue id is a QueueError."""
        self._check_new([message])
        return self._insert(message)

    async def known_transfers(self, keys: Sequence[str]) -> dict[str, str]:
        """Queue ids stored under the known ones among `keys`."""
        return {k: self._transfers[k][0] for k in keys if k in self._transfers}

    async def forget_transfers(self, before: float) -> int:
        """Drop transfer keys older than `before`."""
        old = [k for k, (_, received) in self._transfers.items() if received < before]
        for key in old:
            del self._transfers[key]
        return len(old)

    async def claim(self, recipient_ids: Sequence[int], owner: str, lease: float,
                    now: float, force: bool = False) -> ClaimResult:
        """Lease due recipients to `owner`; report queued ones not yet due."""
        rows = sorted((self._recipients[i] for i in set(recipient_ids) if i in self._recipients),
                      key=lambda r: (r.message_id, r.recipient_id))
        result = ClaimResult()
        by_message: dict[int, list[QueuedRecipient]] = {}
        for row in rows:
            # Only what this call claims is returned: a recipient this owner
            # already holds is in flight, and handing it out again would
            # deliver it twice.
            if row.state is QUEUED and (force or row.next_try <= now):
                row.state, row.lease_owner, row.lease_until = CLAIMED, owner, now + lease
                by_message.setdefault(row.message_id, []).append(QueuedRecipient(
                    row.recipient_id, row.message_id, row.address, row.attempts, row.uncertain,
                    row.dsn))
            elif row.state is QUEUED:
                result.not_due.append(row.entry())
        result.claimed = [(self._messages[m].info, r) for m, r in by_message.items()]
        return result

    async def load_body(self, message_id: int) -> bytes:
        """The stored message bytes."""
        if message_id not in self._messages:
            raise QueueError(f"message {message_id} has no body")
        return self._messages[message_id].body

    async def message_by_id(self, message_id: int) -> MessageInfo | None:
        """A queued message's facts, None once it left the queue."""
        message = self._messages.get(message_id)
        return message.info if message is not None else None

    async def record(self, owner: str, updates: Sequence[RecipientUpdate],
                     new_messages: Sequence[NewMessage] = (),
                     warned: Sequence[int] = ()) -> Recorded:
        """Apply `owner`'s outcomes, queue DSNs, mark warnings, drop finished messages."""
        self._check_new(new_messages)
        for update in updates:
            self._apply(owner, update)
        for message_id in warned:
            if message_id in self._messages:
                stored = self._messages[message_id]
                stored.info = dataclasses.replace(stored.info, warned=True)
        entries = [e for m in new_messages for e in self._insert(m)]
        removed = self._drop_finished(u.outcome.recipient_id for u in updates
                                      if u.next_try is None)
        return Recorded(entries, removed)

    async def walk(self) -> list[ScheduleEntry]:
        """Every QUEUED recipient."""
        return await self.entries_since(0)

    async def entries_since(self, recipient_id: int) -> list[ScheduleEntry]:
        """QUEUED recipients with id above `recipient_id`, in id order."""
        return [r.entry() for r in self._recipients.values()
                if r.state is QUEUED and r.recipient_id > recipient_id]

    async def recover_orphans(self, is_alive: Callable[[str], bool], now: float) -> int:
        """Return dead runners' leases, and live runners' expired ones, marked uncertain."""
        alive: dict[str, bool] = {}
        count = 0
        for row in self._recipients.values():
            if row.state is not CLAIMED:
                continue
            owner = row.lease_owner or ""
            if owner not in alive:
                alive[owner] = is_alive(owner)
            if not alive[owner] or row.lease_until < now:
                row.unlease(QUEUED)
                row.uncertain, row.next_try = True, min(row.next_try, now)
                count += 1
        return count

    async def release_claims(self, owner: str) -> int:
        """Return all of `owner`'s leases to QUEUED unchanged."""
        mine = [r for r in self._recipients.values()
                if r.state is CLAIMED and r.lease_owner == owner]
        for row in mine:
            row.unlease(QUEUED)
        return len(mine)

    async def rows(self) -> list[QueueRow]:
        """Undelivered recipients, in queue order."""
        return [row async for row in self.select(Selection())]

    async def select(self, selection: Selection) -> AsyncIterator[QueueRow]:
        """Selected recipients, in queue order (recipient id)."""
        for row in list(self._selected(selection, EVERY_STATE)):  # ids ascend: queue order
            yield self._row(row)

    async def count(self, selection: Selection) -> int:
        """How many recipients `selection` picks."""
        return sum(1 for _ in self._selected(selection, EVERY_STATE))

    async def tally(self, selection: Selection, by: TallyKey, size_bounds: Sequence[int] = (),
                    age_bounds: Sequence[float] = (), now: float = 0.0) -> list[Tally]:
        """Grouped counts of the selected recipients (see QueueBackend.tally)."""
        groups: dict[tuple[str, int, int], list[_Recipient]] = {}
        for row in self._selected(selection, EVERY_STATE):
            info = self._messages[row.message_id].info
            key = row.address.domain if by == "domain" else str(info.sender)
            group = (key, size_class(info.size, sorted(size_bounds)),
                     age_class(now - info.arrival, sorted(age_bounds)))
            groups.setdefault(group, []).append(row)
        return [Tally(*group, len(rows), min(self._messages[r.message_id].info.arrival
                                             for r in rows),
                      min((r.next_try for r in rows if r.state is QUEUED), default=None))
                for group, rows in groups.items()]

    async def message_info(self, queue_id: str) -> MessageInfo | None:
        """The stored facts of one message."""
        return next((m.info for m in self._messages.values() if m.info.queue_id == queue_id),
                    None)

    async def hold_recipients(self, selection: Selection, now: float) -> list[Changed]:
        """Selected QUEUED recipients become HELD."""
        picked = list(self._selected(selection, frozenset({QUEUED})))
        for row in picked:
            row.state = HELD
        self._log_changes(picked, now)
        return self._changed(picked)

    async def release_recipients(self, selection: Selection, now: float) -> list[Changed]:
        """Selected HELD recipients become QUEUED, due now."""
        picked = list(self._selected(selection, frozenset({HELD})))
        for row in picked:
            row.state, row.next_try = QUEUED, now
        self._log_changes(picked, now)
        return self._changed(picked)

    async def requeue_recipients(self, selection: Selection, now: float) -> list[Changed]:
        """Selected QUEUED recipients become due now."""
        picked = list(self._selected(selection, frozenset({QUEUED})))
        for row in picked:
            row.next_try = now
        self._log_changes(picked, now)
        return self._changed(picked)

    async def delete_recipients(self, selection: Selection, now: float) -> list[Changed]:
        """Selected undelivered recipients, and messages left with none, are deleted."""
        picked = list(self._selected(selection, UNDELIVERED))
        changed = self._changed(picked)
        self._log_changes(picked, now)
        for row in picked:
            del self._recipients[row.recipient_id]
            self._messages[row.message_id].recipient_ids.remove(row.recipient_id)
        queue_ids = {r.message_id: self._messages[r.message_id].info.queue_id for r in picked}
        removed = {queue_ids[m] for m in queue_ids if self._drop_if_done(m)}
        return [dataclasses.replace(c, removed=c.queue_id in removed) for c in changed]

    async def changes_since(self, change: int) -> Changes:
        """Recipients changed after change number `change`."""
        wanted = sorted({rid for number, rid, _ in self._changes if number > change})
        latest = max((number for number, _, _ in self._changes), default=change)
        entries = [self._recipients[rid].entry() for rid in wanted
                   if rid in self._recipients and self._recipients[rid].state is QUEUED]
        return Changes.of(max(latest, change), wanted, entries)

    async def pending_summary(self, now: float, size_bounds: Sequence[int] = ()
                              ) -> list[PendingGroup]:
        """QUEUED recipients per domain, size class and due-or-not."""
        bounds = sorted(size_bounds)
        groups: dict[tuple[str, int, bool], dict[int, int]] = {}
        for rcpt in self._recipients.values():
            if rcpt.state is not QUEUED:
                continue
            size_class = next((i for i, b in enumerate(bounds) if rcpt.size <= b), len(bounds))
            key = (rcpt.address.domain, size_class, rcpt.next_try <= now)
            per_message = groups.setdefault(key, {})
            per_message[rcpt.message_id] = per_message.get(rcpt.message_id, 0) + 1
        return [PendingGroup(domain, size_class, due, sum(counts.values()), len(counts),
                             sum(self._messages[m].info.size for m in counts),
                             min(counts), max(counts))
                for (domain, size_class, due), counts in sorted(groups.items())]

    async def holds(self) -> dict[str, HoldState]:
        """Hold states by route name."""
        return dict(self._holds)

    async def set_hold(self, route: str, held: bool, now: float, cause: str) -> None:
        """Store a route's hold state."""
        self._holds[route] = HoldState(route, held, now, cause)

    async def reschedule(self, recipient_ids: Sequence[int], next_try: float) -> None:
        """Make QUEUED recipients due at `next_try`."""
        for rid in recipient_ids:
            row = self._recipients.get(rid)
            if row is not None and row.state is QUEUED:
                row.next_try = next_try

    async def close(self) -> None:
        """Nothing to flush: RAM is not durable."""

    def _check_new(self, messages: Sequence[NewMessage]) -> None:
        """Refuse queue ids already in use, before anything changes."""
        wanted = [m.queue_id for m in messages if m.queue_id]
        for queue_id in wanted:
            if queue_id in self._queue_ids or wanted.count(queue_id) > 1:
                raise QueueError(f"queue id {queue_id} is already in use")
        for key in (k for m in messages for k in m.transfer_keys):
            if key in self._transfers:
                raise AlreadyQueued(key, self._transfers[key][0])

    def _insert(self, message: NewMessage) -> list[ScheduleEntry]:
        """Store a message and its recipients; return their schedule entries."""
        message_id = next(self._message_ids)
        info = MessageInfo(message_id, message.queue_id or new_queue_id(), message.sender,
                           message.arrival, len(message.body), message.body_type,
                           message.smtputf8, ret=message.ret, envid=message.envid)
        rows = [_Recipient(next(self._recipient_ids), message_id, rcpt, QUEUED, message.arrival,
                           size=len(message.body), dsn=message.dsn_of(rcpt))
                for rcpt in message.recipients]
        self._messages[message_id] = _Message(info, message.body,
                                              [r.recipient_id for r in rows])
        self._recipients.update((r.recipient_id, r) for r in rows)
        self._queue_ids.add(info.queue_id)
        self._transfers.update((k, (info.queue_id, message.arrival))
                               for k in message.transfer_keys)
        return [r.entry() for r in rows]

    def _apply(self, owner: str, update: RecipientUpdate) -> None:
        """Write one outcome if `owner` holds the recipient: final, or QUEUED again."""
        outcome = update.outcome
        row = self._recipients.get(outcome.recipient_id)
        if row is None or row.state is not CLAIMED or row.lease_owner != owner:
            return
        delivered = outcome.verdict is Verdict.DELIVERED
        row.attempts += int(outcome.attempted)
        row.last_error = "" if delivered else f"{outcome.status} {outcome.reason}"[:ERROR_LIMIT]
        if update.next_try is None:
            row.unlease(RecipientState.DELIVERED if delivered else RecipientState.BOUNCED)
        else:
            row.unlease(QUEUED)
            row.next_try, row.uncertain = update.next_try, False

    def _drop_finished(self, recipient_ids: Iterable[int]) -> list[str]:
        """Forget messages of these recipients once none is undelivered; their queue ids."""
        message_ids = {self._recipients[i].message_id for i in recipient_ids
                       if i in self._recipients}
        queue_ids = {m: self._messages[m].info.queue_id for m in message_ids}
        return [queue_ids[m] for m in sorted(message_ids) if self._drop_if_done(m)]

    def _drop_if_done(self, message_id: int) -> bool:
        """Forget a message, and its rows, if none of its recipients is undelivered."""
        rows = [self._recipients[i] for i in self._messages[message_id].recipient_ids]
        if any(r.state in UNDELIVERED for r in rows):
            return False
        for row in rows:
            del self._recipients[row.recipient_id]
        self._queue_ids.discard(self._messages.pop(message_id).info.queue_id)
        return True

    def _selected(self, selection: Selection,
                  states: frozenset[RecipientState]) -> Iterable[_Recipient]:
        """Recipients in `states` that `selection` picks."""
        for row in list(self._recipients.values()):
            info = self._messages[row.message_id].info
            if row.state in states and selection.matches(
                    info.queue_id, str(info.sender), info.arrival, row.address.domain,
                    info.size, row.state, row.next_try):
                yield row

    def _log_changes(self, rows: list[_Recipient], now: float) -> None:
        """Note recipients in the change log; forget entries older than a day."""
        self._changes = [c for c in self._changes if c[2] >= now - CHANGE_MEMORY]
        self._changes += [(next(self._change_numbers), r.recipient_id, now) for r in rows]

    def _changed(self, rows: list[_Recipient]) -> list[Changed]:
        """One Changed per message among `rows`, in first-seen order."""
        counts: dict[str, int] = {}
        for row in rows:
            queue_id = self._messages[row.message_id].info.queue_id
            counts[queue_id] = counts.get(queue_id, 0) + 1
        return [Changed(queue_id, n) for queue_id, n in counts.items()]

    def _row(self, row: _Recipient) -> QueueRow:
        """One recipient as `tidepost queue` lists it."""
        info = self._messages[row.message_id].info
        return QueueRow(info.queue_id, info.arrival, info.size, str(info.sender),
                        str(row.address), row.address.domain, row.state.value,
                        row.attempts, row.next_try, row.last_error, row.message_id,
                        row.recipient_id)
