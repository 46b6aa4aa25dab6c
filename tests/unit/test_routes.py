"""Routing: first match wins, local domains, and size limits that fall through."""

from tidepost.config.load import parse_config
from tidepost.routing.routes import Destination, Router

CONFIG = parse_config('''
hostname = "ship.test"
[local]
domains = ["ship.test"]
[[route]]
name = "lan"
domains = [".office.test"]
on_demand = false
[[route]]
name = "lte"
domains = ["*"]
max_message_size = "1M"
[[route]]
name = "dock"
domains = ["*"]
transport = "smarthost"
smarthost = "[relay.dock.test]:587"
start_held = true
''', "t")


def test_first_matching_route_wins():
    router = Router(CONFIG)
    assert router.route_of("ship.test") == "local"
    assert router.route_of("") == "local"
    assert router.route_of("a.office.test") == "lan"
    assert router.route_of("example.org") == "lte"


def test_large_messages_fall_through_to_the_next_route():
    router = Router(CONFIG)
    assert router.route_of("example.org", 1024 * 1024) == "lte"
    assert router.route_of("example.org", 1024 * 1024 + 1) == "dock"
    assert router.destination("example.org", 5_000_000) == \
        Destination("dock", "[relay.dock.test]:587")
    assert router.route_of("a.office.test", 5_000_000) == "lan"  # LAN has no limit


def test_no_route_when_every_route_refuses_the_size():
    config = parse_config('[[route]]\nname = "lte"\nmax_message_size = "1M"\n', "t")
    router = Router(config)
    assert router.route_of("example.org", 100) == "lte"
    assert router.route_of("example.org", 2 * 1024 * 1024) is None
