"""Turn one job's outcomes into queue updates and DSNs (pure policy).

Delivered and Bounced are final.  Deferred goes back to the queue with the
next retry time from the backoff policy, unless the message has outlived the
queue lifetime, in which case it becomes Bounced with status 5.4.7.  Bounced
recipients produce one DSN per job to the sender; a message still deferred
past the delay-warning age produces one "delayed" DSN naming each of its
delayed recipients once (one per destination job).  Mail
from the null sender produces no DSN at all.

Each recipient's NOTIFY (RFC 3461) decides which reports it is in: none for
NEVER, no failure report without FAILURE, no delay warning without DELAY, a
success report ("delivered", or "relayed" to a next hop without DSN) only
with SUCCESS.  A recipient without NOTIFY gets failure and delay reports,
as before.
"""

from __future__ import annotations

from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field

from tidepost.manager.bounce import DELAY, FAILURE, SUCCESS, Failure, make_dsn
from tidepost.model import DeliveryJob
from tidepost.outcomes import Outcome, Verdict, bounced
from tidepost.queue.backend import NewMessage, RecipientUpdate
from tidepost.scheduler.backoff import Backoff


@dataclass(slots=True)
class Settlement:
    """What to write for one job: updates, DSNs, and whether a warning went out."""

    updates: list[RecipientUpdate] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    delays: list[Failure] = field(default_factory=list)
    successes: list[Failure] = field(default_factory=list)
    dsns: list[NewMessage] = field(default_factory=list)
    dsn_kinds: list[str] = field(default_factory=list)  # FAILURE, DELAY or SUCCESS, per DSN
    warned: bool = False


def settle(job: DeliveryJob, outcomes: list[Outcome], backoff: Backoff, now: float,
           already_warned: bool, warned_recipients: AbstractSet[int] = frozenset()
           ) -> Settlement:
    """Decide each recipient's next state; collect what the sender must hear.

    `already_warned`: the message's delay warning went out and it is not
    known to whom (an earlier life of the daemon, another node): none is
    sent again.  `warned_recipients`: those named in a warning already; the
    message's other recipients (its other destinations) are still told.
    """
    result = Settlement()
    by_id = {r.recipient_id: r for r in job.recipients}
    expired = backoff.expired(job.message.arrival, now)
    for outcome in outcomes:
        recipient = by_id[outcome.recipient_id]
        if not outcome.attempted:  # held route: waits, parked, for the release
            result.updates.append(RecipientUpdate(outcome, now))
            continue
        if outcome.verdict is Verdict.DEFERRED and expired:
            outcome = bounced(outcome.recipient_id, "5.4.7",
                              f"delivery time expired: {outcome.reason}", outcome.remote_mta,
                              outcome.diagnostic)
        if outcome.verdict is Verdict.DEFERRED:
            next_try = backoff.next_try(recipient.attempts + 1, now)
            if outcome.retry_after is not None:
                next_try = max(next_try, now + outcome.retry_after)
            result.updates.append(RecipientUpdate(outcome, next_try))
            if recipient.dsn.wants(DELAY) and outcome.recipient_id not in warned_recipients:
                result.delays.append(Failure(recipient, outcome))
            continue
        result.updates.append(RecipientUpdate(outcome, None))
        if outcome.verdict is Verdict.BOUNCED and recipient.dsn.wants(FAILURE):
            result.failures.append(Failure(recipient, outcome))
        elif outcome.verdict is Verdict.DELIVERED and outcome.action \
                and recipient.dsn.wants(SUCCESS):
            result.successes.append(Failure(recipient, outcome))
    result.warned = bool(result.delays) and not already_warned and \
        backoff.warning_due(job.message.arrival, now)
    return result


def add_dsns(result: Settlement, job: DeliveryJob, original: bytes, hostname: str,
             now: float) -> None:
    """Build the DSNs a settlement calls for (none for mail from <>)."""
    if job.message.sender.is_null:
        return
    for kind, reported in ((FAILURE, result.failures), (DELAY, result.delays),
                           (SUCCESS, result.successes)):
        if reported and (kind != DELAY or result.warned):
            result.dsns.append(make_dsn(job.message, original, reported, hostname, now,
                                        kind=kind))
            result.dsn_kinds.append(kind)


def needs_dsn(result: Settlement) -> bool:
    """True when the settlement calls for some report (the body is then loaded)."""
    return bool(result.failures or result.warned or result.successes)
