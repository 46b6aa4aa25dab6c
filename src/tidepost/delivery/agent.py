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
"""

from __future__ import annotations

from typing import Protocol

from tidepost.config.schema import RouteConfig
from tidepost.model import DeliveryJob
from tidepost.outcomes import Outcome


class AgentSession(Protocol):
    """Delivers successive jobs to one destination."""

    # None while the destination works; else (status, reason) to defer with.
    destination_failed: tuple[str, str] | None

    async def deliver(self, job: DeliveryJob) -> list[Outcome]:
        """Deliver one job; one outcome per recipient of the job."""

    async def close(self) -> None:
        """Release the connection (QUIT), if any."""


class DeliveryAgent(Protocol):
    """Makes sessions for destinations of one transport."""

    def session(self, route: RouteConfig | None, nexthop: str) -> AgentSession:
        """A new, not yet connected session for `nexthop` on `route` (None: local)."""
