"""The delivery agent interface and the registry of agents by transport.

The manager hands an agent one destination (route + next hop) at a time and
gets back an `AgentSession`, which delivers jobs one after another over one
connection where the transport has connections (SMTP reuses its TCP session
between messages).  Every job ends in exactly one Outcome per recipient;
`deliver()` never raises.

When a session finds the destination itself unusable (no MX host answers, a
421 greeting), it sets `destination_failed` with the reason, and the manager
defers that destination's other waiting jobs without connecting again:
backoff per destination, as RFC 5321 4.5.4.1 recommends.

Overlap (SMTP PIPELINING): a session whose `depth` is above 0 takes the next
job while the one before waits for its final reply.  Each job comes with an
`Overlap`: the session calls `mark_ready()` once the job has its place on
the connection (the next job may line up behind it), and holds the job's
message content until `gate` is set: the job `depth` places before it has
been recorded, so a crash can repeat at most `depth` transactions.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from tidepost.config.schema import RouteConfig
from tidepost.model import DeliveryJob
from tidepost.outcomes import Outcome


class Overlap:
    """One job's place among the jobs overlapping on a session."""

    def __init__(self, gate: asyncio.Event | None = None,
                 wake: asyncio.Event | None = None):
        self.gate = gate                  # the content waits for this (None: for nothing)
        self.ready = False                # the next job may line up behind this one
        self.recorded = asyncio.Event()   # this job's outcomes are written (set by the caller)
        self._wake = wake

    def mark_ready(self) -> None:
        """The session has placed the job on the connection."""
        self.ready = True
        if self._wake is not None:
            self._wake.set()


class AgentSession(Protocol):
    """Delivers successive jobs to one destination."""

    # None while the destination works; else (status, reason) to defer with.
    destination_failed: tuple[str, str] | None

    # Jobs whose content may be out before their outcome is recorded (0: one
    # job after another; read after each mark_ready, it may change).
    depth: int

    async def deliver(self, job: DeliveryJob, overlap: Overlap | None = None) -> list[Outcome]:
        """Deliver one job; one outcome per recipient of the job."""

    async def close(self) -> None:
        """Release the connection (QUIT), if any."""


class DeliveryAgent(Protocol):
    """Makes sessions for destinations of one transport."""

    def session(self, route: RouteConfig | None, nexthop: str) -> AgentSession:
        """A new, not yet connected session for `nexthop` on `route` (None: local)."""
