"""Pure data that flows between the layers: envelopes, queue entries, jobs.

Nothing here does I/O.  A message is stored once; each of its recipients is
a queue entry with its own state, so that one message can be delivered to
some recipients, deferred for others and bounced for the rest.  The states are
listed in docs/QUEUE.md.
"""

from __future__ import annotations

import enum
import sys
from dataclasses import dataclass, field
from typing import Mapping

from tidepost.address import Address


class RecipientState(enum.Enum):
    """Durable state of one recipient of a queued message (docs/QUEUE.md)."""

    QUEUED = "queued"        # waiting; eligible once next_try has passed
    CLAIMED = "claimed"      # leased by one queue runner; in flight
    HELD = "held"            # held by an admin (`tidepost queue hold`): never claimed
    DELIVERED = "delivered"  # final: accepted by the next hop or the mailbox
    BOUNCED = "bounced"      # final: permanently failed or expired; DSN queued


class BodyType(enum.Enum):
    """The BODY= parameter of MAIL FROM (RFC 6152)."""

    SEVEN_BIT = "7BIT"
    EIGHT_BIT_MIME = "8BITMIME"


@dataclass(frozen=True, slots=True)
class RecipientDsn:
    """The DSN request of one recipient (RFC 3461 NOTIFY and ORCPT), as stored.

    `notify` is "" when the client gave no NOTIFY (tidepost's default: failure
    reports and delay warnings, no success reports), "NEVER", or a
    comma-separated list of SUCCESS, FAILURE and DELAY in that order.
    `orcpt` is "addr-type;address" with the xtext already decoded, or "".
    """

    notify: str = ""
    orcpt: str = ""

    def wants(self, kind: str) -> bool:
        """True when a report of `kind` (SUCCESS, FAILURE, DELAY) is to be sent."""
        if not self.notify:
            return kind != "SUCCESS"
        return kind in self.notify.split(",")


NO_DSN_REQUEST = RecipientDsn()


@dataclass(frozen=True, slots=True)
class Envelope:
    """Sender and recipients of one message, with the ESMTP parameters kept."""

    sender: Address
    recipients: tuple[Address, ...]
    body_type: BodyType = BodyType.SEVEN_BIT
    smtputf8: bool = False
    # RFC 3461: RET ("", FULL or HDRS) and ENVID (xtext decoded) of MAIL FROM,
    # and the NOTIFY/ORCPT of those recipients that gave any.
    ret: str = ""
    envid: str = ""
    dsn: Mapping[Address, RecipientDsn] = field(default_factory=dict)

    @property
    def is_bounce(self) -> bool:
        """True for mail from the null sender, which must never be bounced."""
        return self.sender.is_null


@dataclass(frozen=True, slots=True)
class QueuedRecipient:
    """One recipient row as the queue holds it."""

    recipient_id: int
    message_id: int
    address: Address
    attempts: int = 0
    # Set when a queue runner died while holding this recipient: a delivery
    # may already have happened, so agents that can check (Maildir) do so.
    uncertain: bool = False
    dsn: RecipientDsn = NO_DSN_REQUEST  # NOTIFY and ORCPT (RFC 3461)


@dataclass(frozen=True, slots=True)
class ScheduleEntry:
    """What the scheduler needs to know about a queued recipient: no more."""

    recipient_id: int
    message_id: int
    domain: str
    next_try: float
    size: int = 0  # message size in bytes: routes may refuse large messages

    def __post_init__(self) -> None:
        # One string a domain, whoever made the entry (a store's walk, a
        # submission, a claim, a deferral): the scheduler keeps it while the
        # mail waits, and 20,000 deferred entries held 1.2 MB of copies.
        object.__setattr__(self, "domain", sys.intern(self.domain))


@dataclass(frozen=True, slots=True)
class MessageInfo:
    """Per-message facts that delivery and bounces need (not the body)."""

    message_id: int
    queue_id: str
    sender: Address
    arrival: float
    size: int
    body_type: BodyType = BodyType.SEVEN_BIT
    smtputf8: bool = False
    warned: bool = False  # a delay warning has been sent for this message
    ret: str = ""    # RFC 3461 RET: "", FULL or HDRS
    envid: str = ""  # RFC 3461 ENVID, xtext decoded


@dataclass(slots=True)
class DeliveryJob:
    """One message, some of its recipients, one route and next hop."""

    message: MessageInfo
    recipients: list[QueuedRecipient]
    route: str
    nexthop: str  # the recipient domain for MX delivery, or the smarthost
    body: bytes = field(default=b"", repr=False)
    # Why this attempt happens now ("new mail", "retry", "tidepost link up",
    # "ETRN example.org", "flush command"): the link ledger records it.
    cause: str = ""
