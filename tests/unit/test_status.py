"""`tidepost status`: counts per route and per customer domain from one grouped query."""

from __future__ import annotations

import asyncio
import json

from queue_spool import queue_spool  # noqa: F401 - the fixture
from tidepost.cli.routes_view import read_snapshot, route_states
from tidepost.cli.status import show


def test_routes_count_their_recipients_and_say_when_they_run(queue_spool):
    spool = queue_spool.fill()
    snap = asyncio.run(read_snapshot(spool.config))
    routes = {r["route"]: r for r in route_states(snap)}
    assert {name: r["queued"] for name, r in routes.items()} == {
        "local": 0, "lan": 4, "harbour": 1, "uplink": 1, "bulk": 1, "customers": 1}
    assert (routes["uplink"]["held"], routes["uplink"]["next_run_text"]) == \
        (True, "when released")
    assert routes["harbour"]["next_run"] is not None  # its schedule's next run
    assert routes["lan"]["next_run_text"] == "now"    # alice is due
    assert routes["bulk"]["held"] is False


def test_status_json_has_routes_and_held_customer_domains(queue_spool, capsys):
    spool = queue_spool.fill()
    assert asyncio.run(show(spool.config, as_json=True)) == 0
    status = json.loads(capsys.readouterr().out)
    assert [r["route"] for r in status["routes"]] == \
        ["local", "lan", "harbour", "uplink", "bulk", "customers"]
    [customer] = status["customer_domains"]
    assert (customer["domain"], customer["held"], customer["last_release"]) == \
        ("cust.test", 1, None)
    assert customer["oldest"] < status["time"] - 6000
    assert status["dns_cache"]["entries"] == 0


def test_status_prints_one_screen(queue_spool, capsys):
    spool = queue_spool.fill()
    assert asyncio.run(show(spool.config)) == 0
    out = capsys.readouterr().out
    assert "when released" in out and "cust.test" in out and "DNS cache" in out
