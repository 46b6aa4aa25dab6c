"""What a release of a route would send now: the sums behind `tidepost link plan` (pure).

Input: the queue's per-domain summary (QueueBackend.pending_summary, one
aggregate query, grouped by the size classes that routes' max_message_size
makes) and the router.  A group belongs to the route that its domain and
size class map to; due groups go out at a release, the others wait for
their retry time (a release does not undo backoff from real failures).

Messages are counted once per destination: exact for MX routes (one
transaction per message and domain), an upper bound for a smarthost route
(a message to two domains goes there once).  `wire_seconds` estimates the
time on the link: message bytes plus SMTP commands (about 100 octets a
message and 30 a recipient) plus TCP/IP headers (4 %), at the route's rate.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tidepost.queue.backend import PendingGroup
from tidepost.routing.routes import Router

COMMAND_BYTES, RECIPIENT_BYTES = 100, 30  # SMTP octets per message and per recipient
HEADER_SHARE = 0.04                        # TCP/IP headers on full segments


@dataclass(slots=True)
class RoutePlan:
    """What one route would send at a release, and what waits on it anyway."""

    route: str
    messages: int = 0
    recipients: int = 0
    bytes: int = 0
    domains: list[str] = field(default_factory=list)
    samples: list[int] = field(default_factory=list)   # message ids to estimate compression
    waiting_recipients: int = 0   # in backoff after a real failure: not sent at a release

    def wire_seconds(self, rate: float) -> float | None:
        """Seconds on a link of `rate` bits/s (None when the rate is unknown)."""
        if rate <= 0:
            return None
        octets = self.bytes * (1 + HEADER_SHARE) + self.messages * COMMAND_BYTES + \
            self.recipients * RECIPIENT_BYTES
        return octets * 8 / rate


def size_bounds(router: Router) -> list[int]:
    """The distinct max_message_size of all routes, ascending: the queue's size classes."""
    return sorted({r.max_message_size for r in router.by_name.values() if r.max_message_size})


def plan_route(router: Router, route: str, groups: list[PendingGroup],
               bounds: list[int]) -> RoutePlan:
    """Sum the groups that `route` serves; note up to two sample messages per group."""
    plan = RoutePlan(route)
    for group in groups:
        size = bounds[group.size_class] if group.size_class < len(bounds) else \
            (bounds[-1] + 1 if bounds else 0)
        if router.route_of(group.domain, size) != route:
            continue
        if not group.due:
            plan.waiting_recipients += group.recipients
            continue
        plan.messages += group.messages
        plan.recipients += group.recipients
        plan.bytes += group.bytes
        if group.domain not in plan.domains:
            plan.domains.append(group.domain)
        plan.samples += sorted({group.first_message, group.last_message})
    return plan
