"""Gated routes: routes whose mail waits for a scheduled or batched run.

A route with a `schedule` or a batching rule is gated: the scheduler keeps
it held, and a run takes all its due mail at once, when the schedule says
(`config/windows.py`) or when enough mail waits (`batch_messages`) or the
oldest has waited long enough (`batch_age`).  A gated route that is also
held by the operator (`tidepost link down`) does not run at all; releasing
it runs it at once.

Policy only: `due(now, waiting)` says which routes run now and why; the
manager does the running.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from tidepost.config.schema import RouteConfig
from tidepost.config.windows import Schedule, batch_due


@dataclass
class _Gate:
    """One gated route's rules and its next scheduled run."""

    schedule: Schedule | None
    batch_messages: int
    batch_age: float
    next_run: float | None


class RouteGates:
    """When each gated route runs next."""

    def __init__(self, routes: tuple[RouteConfig, ...], now: float):
        self._gates = {
            route.name: _Gate(Schedule.parse(route.schedule) if route.schedule else None,
                              route.batch_messages, route.batch_age, None)
            for route in routes if route.schedule or route.batch_messages or route.batch_age}
        for gate in self._gates.values():
            gate.next_run = gate.schedule.next_run(now) if gate.schedule else None

    def __contains__(self, route: str) -> bool:
        return route in self._gates

    def routes(self) -> list[str]:
        """Names of the gated routes."""
        return list(self._gates)

    def due(self, now: float, waiting: Callable[[str], tuple[int, float]]) -> list[tuple[str, str]]:
        """(route, cause) for every gated route that should run at `now`.

        `waiting(route)` gives the number of recipients waiting on the route
        and how long the oldest has waited, in seconds.
        """
        runs = []
        for name, gate in self._gates.items():
            if gate.next_run is not None and now >= gate.next_run:
                gate.next_run = gate.schedule.next_run(now) if gate.schedule else None
                runs.append((name, "schedule"))
            elif gate.batch_messages or gate.batch_age:
                count, oldest = waiting(name)
                if batch_due(count, oldest, gate.batch_messages, gate.batch_age):
                    runs.append((name, "batch rule"))
        return runs

    def next_run(self, route: str) -> float | None:
        """The next scheduled run of `route`, for `tidepost status`."""
        gate = self._gates.get(route)
        return gate.next_run if gate else None

    def next_run_after(self, route: str, moment: float) -> float | None:
        """The first scheduled run of `route` after `moment` (a retry time), or None."""
        gate = self._gates.get(route)
        return gate.schedule.next_run(moment) if gate and gate.schedule else None

    def is_scheduled(self, route: str) -> bool:
        """True when `route` runs on a schedule (not only on a batching rule)."""
        gate = self._gates.get(route)
        return bool(gate and gate.schedule)

    def next_wake(self) -> float | None:
        """The earliest scheduled run of any gated route."""
        times = [g.next_run for g in self._gates.values() if g.next_run is not None]
        return min(times, default=None)
