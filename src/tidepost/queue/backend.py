"""The queue store interface, and `open_queue` to pick an implementation.

A QueueBackend stores messages and per-recipient state; it holds no policy.
The one commit point is `submit()`: when it returns, the message and its
envelope are on stable storage and the SMTP server may say 250 (docs/QUEUE.md).
`claim()` is the truth about who delivers what: the scheduler only proposes
recipients, and a recipient is delivered only by the runner whose claim
succeeded, so the daemon and any number of `tidepost flush` processes never
deliver a recipient twice.

Implementations: `sqlite` (default, `queue/sqlite.py`) and `memory`
(`queue/memory.py`, for tests and benchmarks).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol, Sequence

from tidepost.address import Address
from tidepost.errors import ConfigError
from tidepost.model import BodyType, MessageInfo, QueuedRecipient, ScheduleEntry
from tidepost.outcomes import Outcome


@dataclass(frozen=True, slots=True)
class NewMessage:
    """A message ready to be queued: envelope facts, final recipients and body."""

    sender: Address
    recipients: tuple[Address, ...]
    body: bytes
    arrival: float
    body_type: BodyType = BodyType.SEVEN_BIT
    smtputf8: bool = False
    queue_id: str = ""  # chosen by submission so that headers can carry it
    # Stored with the message in its commit; a submit naming a key already
    # stored raises AlreadyQueued and stores nothing (exactly-once receipt).
    transfer_keys: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class RecipientUpdate:
    """What an outcome does to a recipient row: final, or back to QUEUED."""

    outcome: Outcome
    next_try: float | None  # None: final (delivered or bounced)


@dataclass(slots=True)
class ClaimResult:
    """Recipients this runner now holds, grouped by message, and the stale rest."""

    claimed: list[tuple[MessageInfo, list[QueuedRecipient]]] = field(default_factory=list)
    # Proposed recipients that are still queued but not due (another runner
    # deferred them): the scheduler re-inserts these with the stored next_try.
    not_due: list[ScheduleEntry] = field(default_factory=list)


@dataclass(slots=True)
class Recorded:
    """What one `record` call did: DSNs queued, and messages that left the queue."""

    entries: list[ScheduleEntry] = field(default_factory=list)  # of the new DSNs
    removed: list[str] = field(default_factory=list)  # queue ids of finished messages


@dataclass(frozen=True, slots=True)
class QueueRow:
    """One recipient as `tidepost queue` lists it."""

    queue_id: str
    arrival: float
    size: int
    sender: str
    recipient: str
    domain: str
    state: str
    attempts: int
    next_try: float
    last_error: str


@dataclass(frozen=True, slots=True)
class PendingGroup:
    """QUEUED recipients of one domain and size class, due or not (`tidepost link plan`)."""

    domain: str
    size_class: int    # i: size <= size_bounds[i]; len(size_bounds): larger than all
    due: bool          # next_try <= now
    recipients: int
    messages: int      # distinct messages among them
    bytes: int         # the sizes of those messages, each counted once
    first_message: int  # lowest and highest message id: samples for an estimate
    last_message: int


@dataclass(frozen=True, slots=True)
class HoldState:
    """The persisted hold state of one route."""

    route: str
    held: bool
    changed: float
    cause: str


class QueueBackend(Protocol):
    """Durable storage of messages and recipient states."""

    async def submit(self, message: NewMessage) -> list[ScheduleEntry]:
        """Queue one message durably (the commit point); return its entries.

        Raises AlreadyQueued, storing nothing, when one of the message's
        transfer keys is already stored.
        """

    async def known_transfers(self, keys: Sequence[str]) -> dict[str, str]:
        """The queue ids stored under those of `keys` that are known."""

    async def forget_transfers(self, before: float) -> int:
        """Drop transfer keys stored before `before`; returns how many."""

    async def claim(self, recipient_ids: Sequence[int], owner: str, lease: float,
                    now: float, force: bool = False) -> ClaimResult:
        """Lease due, queued recipients to `owner` for `lease` seconds."""

    async def load_body(self, message_id: int) -> bytes:
        """The stored message bytes."""

    async def message_info(self, message_id: int) -> MessageInfo | None:
        """A queued message's facts (sender, size...), None once it left the queue."""

    async def record(self, owner: str, updates: Sequence[RecipientUpdate],
                     new_messages: Sequence[NewMessage] = (),
                     warned: Sequence[int] = ()) -> Recorded:
        """Apply outcomes, queue DSNs, mark warnings, drop finished messages: one transaction.

        Returns the new DSNs' schedule entries and the queue ids of the
        messages this call removed (every recipient final).
        """

    async def walk(self) -> list[ScheduleEntry]:
        """Every QUEUED recipient, to rebuild a scheduler."""

    async def entries_since(self, recipient_id: int) -> list[ScheduleEntry]:
        """QUEUED recipients with an id above `recipient_id` (queued elsewhere)."""

    async def recover_orphans(self, is_alive: Callable[[str], bool], now: float) -> int:
        """Return leases of dead runners to QUEUED, marked uncertain."""

    async def release_claims(self, owner: str) -> int:
        """Return every recipient leased by `owner` to QUEUED (clean shutdown)."""

    async def rows(self) -> list[QueueRow]:
        """Every undelivered recipient, oldest message first."""

    async def pending_summary(self, now: float, size_bounds: Sequence[int] = ()
                              ) -> list[PendingGroup]:
        """QUEUED recipients summed per domain, size class and due-or-not, in one query.

        `size_bounds` are ascending sizes (routes' max_message_size), so that
        the caller can tell which route serves each group without a row per
        message.  Ordered by domain, size class, due last.
        """

    async def holds(self) -> dict[str, HoldState]:
        """Persisted hold states by route name."""

    async def set_hold(self, route: str, held: bool, now: float, cause: str) -> None:
        """Persist a route's hold state."""

    async def reschedule(self, recipient_ids: Sequence[int], next_try: float) -> None:
        """Move QUEUED recipients' next attempt to `next_try` (release, flush)."""

    async def close(self) -> None:
        """Finish pending writes and close the store."""


def open_queue(name: str, spool: Path) -> QueueBackend:
    """The queue backend called `name`; an unknown name is a ConfigError."""
    if name == "sqlite":
        from tidepost.queue.sqlite import SqliteQueue
        return SqliteQueue(spool / "queue.sqlite")
    if name == "memory":
        from tidepost.queue.memory import MemoryQueue
        return MemoryQueue()
    raise ConfigError([f"queue.backend: unknown queue backend {name!r}"])
