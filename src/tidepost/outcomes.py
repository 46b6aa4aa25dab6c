"""The result of one delivery attempt for one recipient.

Every attempt ends in exactly one outcome per recipient (qmail's r/h/s,
Postfix's dsn): Delivered, Deferred or Bounced, each with an RFC 3463 status
code and the reason a person can read.  Agents return outcomes; they never
let an exception escape.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Verdict(enum.Enum):
    """What happened to one recipient in one attempt."""

    DELIVERED = "delivered"
    DEFERRED = "deferred"
    BOUNCED = "bounced"


@dataclass(frozen=True, slots=True)
class Outcome:
    """The verdict for one recipient, its RFC 3463 status and reason."""

    recipient_id: int
    verdict: Verdict
    status: str          # enhanced status code, e.g. "2.0.0", "4.4.1", "5.1.1"
    reason: str          # reply text or local diagnosis, one line
    remote_mta: str = ""  # host that gave the reply, for DSNs and logs
    # Seconds until the next attempt is allowed, when the cause is known to
    # last (a destination in backoff); None lets the backoff policy decide.
    retry_after: float | None = None
    # False when nothing was tried (the route was held): not a failed
    # attempt, so no backoff and no count towards the retry schedule.
    attempted: bool = True
    # For a Delivered outcome, the Action a success DSN reports (RFC 3464
    # 2.3.3): "delivered" into a mailbox, "relayed" to a next hop that sends
    # no DSNs, or "" when the next hop took the DSN request on (RFC 3461 5.2).
    action: str = "delivered"
    # The remote server's reply that decided the outcome, as it said it
    # ("550 5.1.1 <u@d>: no such user"): a DSN's "Diagnostic-Code: smtp;"
    # (RFC 3464 2.3.6).  Empty when the outcome is our own diagnosis.
    diagnostic: str = ""


def delivered(recipient_id: int, reason: str, remote_mta: str = "",
              action: str = "delivered", diagnostic: str = "") -> Outcome:
    """Build a Delivered outcome (`action`: see Outcome.action)."""
    return Outcome(recipient_id, Verdict.DELIVERED, "2.0.0", reason, remote_mta,
                   action=action, diagnostic=diagnostic)


def deferred(recipient_id: int, status: str, reason: str, remote_mta: str = "",
             retry_after: float | None = None, diagnostic: str = "") -> Outcome:
    """Build a Deferred outcome (status must be 4.x.x)."""
    return Outcome(recipient_id, Verdict.DEFERRED, status, reason, remote_mta, retry_after,
                   diagnostic=diagnostic)


def not_attempted(recipient_id: int, status: str, reason: str) -> Outcome:
    """A Deferred outcome for a recipient that was not tried at all (route held)."""
    return Outcome(recipient_id, Verdict.DEFERRED, status, reason, attempted=False)


def bounced(recipient_id: int, status: str, reason: str, remote_mta: str = "",
            diagnostic: str = "") -> Outcome:
    """Build a Bounced outcome (status must be 5.x.x)."""
    return Outcome(recipient_id, Verdict.BOUNCED, status, reason, remote_mta,
                   diagnostic=diagnostic)
