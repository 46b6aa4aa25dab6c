"""Which recipients a queue view or an admin command means: a Selection.

`tidepost queue` (the listing, `--count`, `--json`, `summary`), `tidepost
status` and the queue administration commands (hold, release, requeue,
delete) describe the recipients they want as a Selection, and every
QueueBackend evaluates it inside its query (an SQL WHERE clause for SQLite
and PostgreSQL, a predicate for the RAM store): nothing is read only to be
thrown away, and an admin change selects and changes in one transaction.

A recipient is selected when it passes every filter of the Selection
(queue ids, sender, domain, arrival) and matches at least one of its
Conditions.  A Condition names recipient states, and optionally places and
a range of next-try times.

Routes are not stored with recipients: which route serves one is the
Router's decision (routing/routes.py) under the configuration in force,
with customer domains from a file that changes at run time.  So a caller
that wants "route uplink" first asks the store which recipient domains and
message-size classes it holds (`QueueBackend.tally`), lets the Router name
the route of each, and selects the matching Places.  The store stays free of
routing policy and a changed configuration is seen at once.

`Tally` is the other half of a view: counts of selected recipients grouped
by domain or sender, message-size class and age class, for the summary and
`tidepost status`, which need counts, not rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

from tidepost.model import RecipientState, ScheduleEntry

QUEUED, CLAIMED, HELD = RecipientState.QUEUED, RecipientState.CLAIMED, RecipientState.HELD
# Recipients still waiting for delivery: what the queue views show.
UNDELIVERED = frozenset({QUEUED, CLAIMED, HELD})
EVERY_STATE = frozenset(RecipientState)
TallyKey = Literal["domain", "sender"]


@dataclass(frozen=True, slots=True)
class Place:
    """Recipients at one of `domains` whose message size is in (`above`, `up_to`]."""

    domains: frozenset[str]
    above: int = -1              # message size in bytes > above
    up_to: int | None = None     # message size <= up_to; None: no upper bound

    def contains(self, domain: str, size: int) -> bool:
        """True for a recipient at `domain` of a message of `size` bytes."""
        return domain in self.domains and size > self.above and \
            (self.up_to is None or size <= self.up_to)


@dataclass(frozen=True, slots=True)
class Condition:
    """Recipients in one of `states`, at one of `places`, due in a range."""

    states: frozenset[RecipientState] = UNDELIVERED
    places: tuple[Place, ...] | None = None  # None: anywhere; (): nowhere
    due_by: float | None = None              # next_try <= due_by
    due_after: float | None = None           # next_try > due_after

    def matches(self, state: RecipientState, domain: str, size: int, next_try: float) -> bool:
        """True when a recipient with these facts meets this condition."""
        if state not in self.states:
            return False
        if self.places is not None and not any(p.contains(domain, size) for p in self.places):
            return False
        if self.due_by is not None and next_try > self.due_by:
            return False
        return self.due_after is None or next_try > self.due_after


@dataclass(frozen=True, slots=True)
class Selection:
    """Recipients passing every filter and matching at least one condition."""

    any_of: tuple[Condition, ...] = (Condition(),)
    queue_ids: tuple[str, ...] | None = None  # None: any message; exact queue ids
    sender: str | None = None       # the stored sender exactly ("" is the null sender)
    domain: str | None = None       # recipient domain is this one or a subdomain of it
    arrived_before: float | None = None  # message arrival < this (Unix time)

    def matches(self, queue_id: str, sender: str, arrival: float, domain: str, size: int,
                state: RecipientState, next_try: float) -> bool:
        """True when a recipient with these facts is selected (the RAM store's test)."""
        if self.queue_ids is not None and queue_id not in self.queue_ids:
            return False
        if self.sender is not None and sender != self.sender:
            return False
        if self.domain is not None and not in_domain(domain, self.domain):
            return False
        if self.arrived_before is not None and arrival >= self.arrived_before:
            return False
        return any(c.matches(state, domain, size, next_try) for c in self.any_of)


def in_domain(domain: str, parent: str) -> bool:
    """True when `domain` is `parent` or one of its subdomains (both normalised)."""
    return domain == parent or domain.endswith("." + parent)


@dataclass(frozen=True, slots=True)
class Tally:
    """Selected recipients that share a key, a size class and an age class."""

    key: str             # the recipient domain or the stored sender, as asked
    size_class: int      # number of size bounds below the message size
    age_class: int       # number of age bounds the message's age has reached
    recipients: int
    oldest: float        # earliest arrival among them
    next_try: float | None  # earliest next_try among the QUEUED ones (None: none QUEUED)


def size_class(size: int, bounds: Sequence[int]) -> int:
    """How many of the ascending `bounds` lie below `size` (size <= bounds[i]: class i)."""
    return sum(1 for bound in bounds if size > bound)


def age_class(age: float, bounds: Sequence[float]) -> int:
    """How many of the ascending `bounds` (seconds) `age` has reached (age < bounds[i]: class i)."""
    return sum(1 for bound in bounds if age >= bound)


@dataclass(frozen=True, slots=True)
class Changed:
    """What an admin change did to one message."""

    queue_id: str
    recipients: int      # how many of its recipients changed state (or were deleted)
    removed: bool = False  # delete only: the message left the queue with them


@dataclass(frozen=True, slots=True)
class Changes:
    """What the change log says since a change number (QueueBackend.changes_since)."""

    latest: int                  # the change number to pass next time
    due: list[ScheduleEntry]     # changed and QUEUED now: (re)schedule them
    gone: list[int]              # changed and not QUEUED now (held, deleted, claimed): forget them

    @classmethod
    def of(cls, latest: int, changed: list[int], due: list[ScheduleEntry]) -> Changes:
        """Changes whose `changed` ids are gone unless among the QUEUED `due`."""
        queued = {entry.recipient_id for entry in due}
        return cls(latest, due, [i for i in changed if i not in queued])
