"""Gated routes decide their runs from a controllable clock."""

from datetime import datetime

from tidepost.config.schema import RouteConfig
from tidepost.manager.gates import RouteGates
from tidepost.testing.clock import FakeClock

SCHEDULED = RouteConfig(name="uplink", schedule=("every 15m",))
BATCHED = RouteConfig(name="sat", batch_messages=10, batch_age=3600)
PLAIN = RouteConfig(name="lan", on_demand=False)


def test_only_routes_with_rules_are_gated():
    gates = RouteGates((SCHEDULED, BATCHED, PLAIN), 0)
    assert gates.routes() == ["uplink", "sat"] and "lan" not in gates


def test_scheduled_runs_follow_the_clock():
    clock = FakeClock(datetime(2026, 11, 23, 9, 7).timestamp())
    gates = RouteGates((SCHEDULED,), clock.now())
    nothing = lambda route: (0, 0.0)  # noqa: E731
    assert gates.due(clock.now(), nothing) == []
    assert gates.next_wake() == datetime(2026, 11, 23, 9, 15).timestamp()
    clock.advance(8 * 60)
    assert gates.due(clock.now(), nothing) == [("uplink", "schedule")]
    assert gates.due(clock.now(), nothing) == []  # once per run time
    assert gates.next_run("uplink") == datetime(2026, 11, 23, 9, 30).timestamp()


def test_batch_rule_runs_early():
    gates = RouteGates((BATCHED,), 0)
    assert gates.due(100, lambda route: (9, 60.0)) == []
    assert gates.due(100, lambda route: (10, 60.0)) == [("sat", "batch rule")]
    assert gates.due(100, lambda route: (1, 3600.0)) == [("sat", "batch rule")]
