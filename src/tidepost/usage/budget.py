"""How many connections a route's link needs to stay busy (pure policy).

A pipelined SMTP connection (smtp_client/pipeline.py) carries one message
per round trip plus the message's own time on the link: a message of S
bytes on a link of R bits/s takes t = 8 S / R seconds, so one connection
moves S bytes every RTT + t seconds, and the link is full with

    k = 1 + RTT / t

connections; half as many again (HEADROOM) absorbs the gaps (server
replies, queue records, uneven sizes).
More than that only queues data in the link (the emulator's or the modem's
buffer): the round trip grows, TCP's timers fire and data is sent twice,
every connection costs its handshake (several KB with TLS), and DNS
replies wait behind it all.  Measured in bench/drain.py.

Before the first round trip is measured, START connections: enough to
measure it and get going, few enough not to flood a slow link.

A connection serves one destination (an MX host), and a worker keeps its
connection until its destination has nothing left; with fewer connections
than destinations waiting, the last destination would drain alone, at a
fraction of the link.  So a route may open one connection per waiting
destination, up to twice its budget.
"""

from __future__ import annotations

import math

from tidepost.config.schema import RouteConfig
from tidepost.usage.meter import LinkMeter

START = 2
HEADROOM = 1.5


def connection_budget(rate: float, round_trip: float | None, message_bytes: float,
                      most: int, destinations: int = 1) -> int:
    """Connections for a link of `rate` bits/s (0: unknown, then `most`), 1..most.

    `destinations`: how many destinations have mail waiting on the route.
    """
    if rate <= 0:
        return most
    if round_trip is None:
        return max(1, min(most, START))
    seconds = max(message_bytes, 1.0) * 8 / rate
    needed = math.ceil((1 + round_trip / seconds) * HEADROOM)
    needed = max(needed, min(destinations, 2 * needed))
    return max(1, min(most, needed))


SIZE_WEIGHT = 0.1  # weight of each new message in the running mean of sizes


class RouteBudgets:
    """The connections each route may have open now: max_connections, or its link's budget.

    `note(route, size)` keeps a running mean of the sizes sent on each
    route; the round trip comes from the link meter.
    """

    def __init__(self, routes: dict[str, RouteConfig], meter: LinkMeter | None):
        self._routes = routes
        self._meter = meter
        self._sizes: dict[str, float] = {}

    def note(self, route: str, size: int) -> None:
        """A message of `size` bytes is about to go out on `route`."""
        known = self._sizes.get(route)
        self._sizes[route] = float(size) if known is None else \
            known + SIZE_WEIGHT * (size - known)

    def limit(self, route: str, destinations: int = 1) -> int:
        """Connections allowed at once on `route` (0: no limit of its own)."""
        config = self._routes.get(route)
        if config is None:
            return 0
        if not config.rate or self._meter is None:
            return config.max_connections
        return connection_budget(config.rate, self._meter.round_trip(route),
                                 self._sizes.get(route, 0.0), config.max_connections,
                                 destinations)
