"""The queue store interface, and `open_queue` to pick an implementation.

A QueueBackend stores messages and per-recipient state; it holds no policy.
The one commit point is `submit()`: when it returns, the message and its
envelope are on stable storage and the SMTP server may say 250 (docs/QUEUE.md).
`claim()` is the truth about who delivers what: the scheduler only proposes
recipients, and a recipient is delivered only by the runner whose claim
succeeded, so the daemon and any number of `tidepost flush` processes never
deliver a recipient twice.

Views and administration (`tidepost queue`, `status`, `queue hold` ...)
name the recipients they mean with a `Selection` (queue/selection.py),
which the store evaluates in its own query; listings are streamed, and
each admin change is one transaction.  A recipient an admin holds is
HELD: no claim hands it out until it is released.

Implementations: `sqlite` (default, `queue/sqlite.py`), `postgresql`
(`queue/postgres.py`: several nodes on one database, docs/CLUSTER.md) and
`memory` (`queue/memory.py`, for tests and benchmarks).  The contract they share is
tests/contract/test_queue_backend.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import AsyncIterator, Callable, Mapping, Protocol, Sequence

from tidepost.address import Address
from tidepost.config.schema import Config
from tidepost.errors import ConfigError
from tidepost.model import (NO_DSN_REQUEST, BodyType, MessageInfo, QueuedRecipient,
                            RecipientDsn, ScheduleEntry)
from tidepost.outcomes import Outcome
from tidepost.queue.selection import Changed, Changes, Selection, Tally, TallyKey

# The notice (`on_notice`) a store sends after its notices may have been lost
# (its LISTEN connection to the database was down): listeners read everything.
NOTICE_RECONNECTED = "reconnected"


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
    # RFC 3461: RET and ENVID of the message, NOTIFY/ORCPT of the recipients
    # that asked (the others get NO_DSN_REQUEST).
    ret: str = ""
    envid: str = ""
    dsn: Mapping[Address, RecipientDsn] = field(default_factory=dict)

    def dsn_of(self, recipient: Address) -> RecipientDsn:
        """The DSN request stored for one of the recipients."""
        return self.dsn.get(recipient, NO_DSN_REQUEST)


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
    sender: str      # as stored: "" is the null sender
    recipient: str
    domain: str
    state: str       # a RecipientState value
    attempts: int
    next_try: float
    last_error: str
    message_id: int
    recipient_id: int
    node: str = ""   # in flight in a cluster: the node delivering it (else "")


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

    async def message_by_id(self, message_id: int) -> MessageInfo | None:
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
        """Every undelivered recipient, in queue order, as one list.

        The same rows as `select(Selection())`; for tests and small queues
        (views stream with `select`).
        """

    def select(self, selection: Selection) -> AsyncIterator[QueueRow]:
        """The selected recipients, streamed, in the order they were queued.

        Order: recipient id, which keeps a message's recipients together
        and messages in the order they were committed.  Rows
        are produced as they are read: the store holds a bounded number at
        a time, however many match, and the first arrives before the last
        is read.  Close the iterator (`contextlib.aclosing`) when stopping
        early.  A row shows the recipient as it was when its batch was read.
        """

    async def count(self, selection: Selection) -> int:
        """How many recipients `selection` picks (no rows are returned)."""

    async def tally(self, selection: Selection, by: TallyKey, size_bounds: Sequence[int] = (),
                    age_bounds: Sequence[float] = (), now: float = 0.0) -> list[Tally]:
        """Counts of the selected recipients, grouped.

        One Tally per (key, size class, age class) holding at least one
        recipient, in no particular order.  The key is the recipient domain
        (`by="domain"`) or the stored sender (`by="sender"`).  Size class:
        how many of the ascending `size_bounds` lie below the message size
        (`size <= size_bounds[0]` is class 0).  Age class: how many of the
        ascending `age_bounds` (seconds) the age `now - arrival` has reached
        (`age < age_bounds[0]` is class 0).  With no bounds, every class is 0.
        """

    async def message_info(self, queue_id: str) -> MessageInfo | None:
        """The stored facts of the message with this queue id, or None."""

    async def hold_recipients(self, selection: Selection, now: float) -> list[Changed]:
        """Hold the selected QUEUED recipients: they become HELD, in one transaction.

        HELD recipients are never claimed, never expire and do not count
        attempts, whatever their route's state, until released.  Recipients
        in other states (in flight, already held) are left as they are.
        Each held recipient is noted in the change log, so that a daemon's
        scheduler lets go of it.  Returns one Changed per message with at
        least one recipient held.
        """

    async def release_recipients(self, selection: Selection, now: float) -> list[Changed]:
        """Release the selected HELD recipients: QUEUED, due at `now`, in one transaction.

        Each released recipient is noted in the change log (`changes_since`)
        in the same transaction.  Returns one Changed per message with at
        least one recipient released.
        """

    async def requeue_recipients(self, selection: Selection, now: float) -> list[Changed]:
        """Make the selected QUEUED recipients due at `now`, in one transaction.

        Attempts and last errors are kept; each requeued recipient is noted
        in the change log.  Others (in flight, held) are left as they are.
        Returns one Changed per message with at least one recipient requeued.
        """

    async def delete_recipients(self, selection: Selection, now: float) -> list[Changed]:
        """Delete the selected undelivered recipients, in one transaction.

        QUEUED, HELD and CLAIMED (in flight) recipients alike: a runner that
        holds one finds it gone when it records its outcome, which then
        changes nothing.  A message left with no undelivered recipient is
        deleted with its body (Changed.removed); its transfer keys stay.
        Each deleted recipient is noted in the change log (a daemon's
        scheduler would keep it until its route's next run).  Returns one
        Changed per message with at least one recipient deleted.
        """

    async def changes_since(self, change: int) -> Changes:
        """Recipients held, released, requeued or deleted after change number `change`.

        Returns the latest change number, the schedule entries of those
        recipients that are QUEUED now, each once, and the ids of the others
        (held, deleted, or claimed since), each once.  Change numbers grow
        with each recipient changed and are never reused; the log keeps at
        least the last day.  A daemon passes back what it got last
        time, so it sees every change committed since (its scheduler is a
        cache; see docs/QUEUE.md).
        """

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


def open_configured_queue(config: Config, owner: str = "") -> QueueBackend:
    """The queue `config` names: the one place that opens the configured backend.

    `owner` is given by a running node (`tidepost serve`): with PostgreSQL it
    joins the cluster under that lease owner and keeps a heartbeat.  CLI
    commands open the queue without one.
    """
    queue = config.queue
    if queue.backend == "postgresql":
        try:
            from tidepost.queue.postgres import PostgresQueue
        except ImportError:
            raise ConfigError(["queue.backend: postgresql needs asyncpg "
                               "(pip install 'tidepost[postgresql]')"]) from None
        return PostgresQueue(queue.dsn, owner=owner,
                             node=config.node_name,
                             node_timeout=queue.node_timeout)
    return open_queue(queue.backend, config.spool_path)
