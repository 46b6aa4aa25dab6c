"""Data caps: when a route has used up its day's or month's bytes, and which mail still goes.

Pure policy.  A route's `cap_day` and `cap_month` count bytes both ways as
the link meters them (usage/store.py RouteUsage.billed), in the local
calendar day and month.  At a cap the route holds itself until the period
ends (manager/caps.py does that), except for urgent mail:

- a message whose header section has `X-Tidepost-Urgent: yes` (or true, 1)
  or `Priority: urgent` (RFC 2156), unless the route sets
  `urgent_headers = false` (then anyone could mark mail urgent);
- a message from a sender in the route's `urgent_senders`: an address
  (`captain@ship.example`), or `@domain` for every address of a domain.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from tidepost.config.schema import RouteConfig
from tidepost.sizes import human_bytes
from tidepost.usage.periods import DAY, MONTH

_URGENT = re.compile(rb"(?im)^(?:x-tidepost-urgent:[ \t]*(?:yes|true|1)|priority:[ \t]*urgent)"
                     rb"[ \t]*\r?$")


@dataclass(frozen=True, slots=True)
class CapReached:
    """Which cap a route has reached, and by how much."""

    kind: str    # DAY or MONTH
    used: int    # bytes this period
    limit: int

    def describe(self) -> str:
        """`data cap: 20.3 MiB of 20.0 MiB this day`."""
        return f"data cap: {human_bytes(self.used)} of {human_bytes(self.limit)} this {self.kind}"


def cap_reached(route: RouteConfig, day_bytes: int, month_bytes: int) -> CapReached | None:
    """The cap `route` has reached with these counts (the day's first), or None."""
    if route.cap_day and day_bytes >= route.cap_day:
        return CapReached(DAY, day_bytes, route.cap_day)
    if route.cap_month and month_bytes >= route.cap_month:
        return CapReached(MONTH, month_bytes, route.cap_month)
    return None


def has_caps(route: RouteConfig) -> bool:
    """True when the route has a day or month cap."""
    return bool(route.cap_day or route.cap_month)


def is_urgent(route: RouteConfig, sender: str, header_section: bytes) -> bool:
    """True when a message goes even past the route's cap (module docstring)."""
    sender = sender.lower()
    for wanted in route.urgent_senders:
        wanted = wanted.lower()
        if sender == wanted or (wanted.startswith("@") and sender.endswith(wanted)):
            return True
    return route.urgent_headers and bool(_URGENT.search(header_section))
