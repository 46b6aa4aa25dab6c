"""Customer domains (relay role): config, the domains file, routing and access."""

import os

import pytest

from tidepost.address import Address
from tidepost.config.load import parse_config
from tidepost.errors import ConfigError
from tidepost.routing.customers import parse_domains_text
from tidepost.routing.routes import CUSTOMERS_ROUTE, Router
from tidepost.smtp_server import replies as S
from tidepost.smtp_server.access import AccessPolicy


def relay_config(tmp_path, inline='".example.org", "Shop.Test."', file=""):
    return parse_config(f'''
hostname = "relay.test"
spool = "{tmp_path}"
[local]
domains = ["relay.test"]
[relay]
customer_domains = [{inline}]
customer_domains_file = "{file}"
[[route]]
name = "internet"
domains = ["*"]
''', "test")


class Directory:
    transfers = None  # this fake takes no XTIDEPOST transfers
    inflow = None     # and never paces intake
    def __init__(self, router):
        self.router = router

    def is_local_domain(self, domain):
        return self.router.is_local(domain)

    def local_user_exists(self, local):
        return True

    def has_route(self, domain):
        return self.router.route_of(domain) is not None

    def is_customer_domain(self, domain):
        return self.router.is_customer(domain)


def test_customers_route_is_built_in_and_starts_held(tmp_path):
    config = relay_config(tmp_path)
    router = Router(config)
    assert router.route_names() == ["local", "internet", CUSTOMERS_ROUTE]
    route = router.by_name[CUSTOMERS_ROUTE]
    assert route.start_held and route.transport == "mx"
    assert config.relay.customer_domains == (".example.org", "shop.test")


def test_customer_domains_take_precedence_over_catch_all_routes(tmp_path):
    router = Router(relay_config(tmp_path))
    assert router.route_of("example.org") == CUSTOMERS_ROUTE
    assert router.route_of("a.b.example.org") == CUSTOMERS_ROUTE
    assert router.route_of("shop.test") == CUSTOMERS_ROUTE
    assert router.route_of("sub.shop.test") == "internet"
    assert router.route_of("relay.test") == "local"
    assert router.route_of("other.test") == "internet"


def test_no_customers_no_route(tmp_path):
    config = parse_config(f'spool = "{tmp_path}"\n', "test")
    assert CUSTOMERS_ROUTE not in Router(config).route_names()


def test_customer_wildcard_and_reserved_name_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="customer_domains"):
        relay_config(tmp_path, inline='"*"')
    with pytest.raises(ConfigError, match="taken"):
        parse_config('[[route]]\nname = "customers"\n', "test")
    with pytest.raises(ConfigError, match="etrn_networks"):
        parse_config('[relay]\netrn_networks = ["nonsense"]\n', "test")


def test_domains_file_syntax():
    patterns, problems = parse_domains_text(
        "# customers\nexample.org\n  .Fleet.Test.  # ships\n\n*\nbad..name\n")
    assert patterns == ("example.org", ".fleet.test")
    assert [p.split(":")[0] for p in problems] == ["line 5", "line 6"]


def test_domains_file_is_reread_when_it_changes(tmp_path):
    path = tmp_path / "customers"
    path.write_text("one.test\n")
    router = Router(relay_config(tmp_path, inline="", file=path))
    assert router.route_of("one.test") == CUSTOMERS_ROUTE
    assert router.route_of("two.test") == "internet"
    assert not router.refresh_customers()          # unchanged: the cache stays
    path.write_text("two.test\n")
    os.utime(path, ns=(1, 1))                       # a different mtime for sure
    assert router.refresh_customers()
    assert router.route_of("one.test") == "internet"
    assert router.route_of("two.test") == CUSTOMERS_ROUTE


def test_unreadable_file_keeps_the_previous_list(tmp_path):
    path = tmp_path / "customers"
    path.write_text("one.test\n")
    router = Router(relay_config(tmp_path, inline="", file=path))
    path.unlink()
    assert not router.refresh_customers()
    assert router.route_of("one.test") == CUSTOMERS_ROUTE
    assert "cannot read" in router.customers.problem


def test_customer_mail_is_accepted_from_anyone_but_relaying_stays_closed(tmp_path):
    config = relay_config(tmp_path)
    router = Router(config)
    policy = AccessPolicy(config, Directory(router))
    may_relay = policy.may_relay("203.0.113.9")
    assert not may_relay
    assert policy.check_recipient(Address("a", "x.example.org"), may_relay) == \
        S.S250_RECIPIENT_OK
    assert policy.check_recipient(Address("a", "other.test"), may_relay) == \
        S.S550_RELAY_DENIED
    assert policy.check_recipient(Address("a%b", "shop.test"), may_relay) == \
        S.S550_RELAY_DENIED


def test_the_first_matching_pattern_is_found_by_lookup_as_by_scanning(tmp_path):
    from tidepost.address import domain_matches
    inline = '"a.example.org", ".example.org", ".b.example.org", "example.net", ".org"'
    customers = Router(relay_config(tmp_path, inline=inline)).customers
    for domain in ("a.example.org", "b.example.org", "x.b.example.org", "example.org",
                   "example.net", "x.example.net", "org", "other.test", "sub.a.example.org"):
        scanned = next((p for p in customers.patterns if domain_matches(domain, p)), None)
        assert customers.pattern_for(domain) == scanned, domain
        assert customers.matches(domain) == (scanned is not None)


def cluster_config(tmp_path, inline='"shop.test"'):
    return parse_config(f'''
hostname = "relay.test"
spool = "{tmp_path}"
[local]
domains = ["relay.test"]
[queue]
backend = "postgresql"
dsn = "postgresql://tidepost@127.0.0.1/tidepost"
[relay]
customer_domains = [{inline}]
[[route]]
name = "internet"
domains = ["*"]
''', "test")


def test_a_cluster_routes_its_databases_customer_domains_beside_its_own(tmp_path):
    config = cluster_config(tmp_path)
    router = Router(config)
    assert config.has_customers and CUSTOMERS_ROUTE in router.by_name
    assert router.route_of("site.test") == "internet"  # cached before the change
    assert router.set_shared_customers((".site.test",)) is True
    assert router.route_of("site.test") == CUSTOMERS_ROUTE  # the cache was cleared
    assert router.route_of("a.site.test") == CUSTOMERS_ROUTE
    assert router.route_of("shop.test") == CUSTOMERS_ROUTE  # the node's own still counts
    assert router.set_shared_customers((".site.test",)) is False
    router.set_shared_customers(())
    assert router.route_of("site.test") == "internet"
    assert router.customers.local_patterns == ("shop.test",)


def test_a_cluster_with_no_customer_domain_yet_has_the_route_and_holds_nothing(tmp_path):
    router = Router(cluster_config(tmp_path, inline=""))
    assert router.customers and CUSTOMERS_ROUTE in router.by_name
    assert router.route_of("site.test") == "internet"
