"""MX routing with a fake resolver: order, shuffle, null MX, implicit MX, failures."""

from __future__ import annotations

import asyncio
import random
import subprocess
import sys

import pytest

from tidepost.config.schema import DnsConfig
from tidepost.errors import PermFailure, TempFailure
from tidepost.resolver.network import _nameserver
from tidepost.resolver.resolver import MxAnswer, MxRecord, Resolver, _parse_mx
from tidepost.smtp_client.mx import (NextHop, Target, host_hops, literal_address, next_hops,
                                     order_mx, parse_smarthost)

NXDOMAIN = object()  # a host entry meaning "this name does not exist"


class FakeResolver:
    """MX records and addresses from dictionaries; records the names asked."""

    def __init__(self, mx: dict[str, object], hosts: dict[str, object] | None = None):
        self._mx, self._hosts = mx, hosts or {}
        self.asked: list[str] = []

    async def mx(self, domain: str) -> MxAnswer:
        self.asked.append(f"MX {domain}")
        records = self._mx.get(domain, [])
        if records is NXDOMAIN:
            return MxAnswer(domain, (), 60, exists=False)
        return MxAnswer(domain, tuple(MxRecord(p, h) for p, h in records), 300)

    async def addresses(self, host: str) -> list[str]:
        self.asked.append(f"ADDR {host}")
        found = self._hosts.get(host, [])
        if found is NXDOMAIN:
            raise PermFailure("5.1.2", f"host {host} not found (NXDOMAIN)")
        if isinstance(found, Exception):
            raise found
        return list(found)


def hops(resolver, domain: str, max_hosts: int = 5, seed: int = 1) -> list[NextHop]:
    """next_hops, run to completion."""
    return asyncio.run(next_hops(resolver, domain, max_hosts, random.Random(seed)))


def test_preference_order_then_addresses_v6_and_v4():
    resolver = FakeResolver({"d.test": [(20, "b.d.test"), (10, "a.d.test")]},
                            {"a.d.test": ["2001:db8::1", "192.0.2.1"], "b.d.test": ["192.0.2.2"]})
    assert hops(resolver, "d.test") == [("a.d.test", ["2001:db8::1", "192.0.2.1"]),
                                        ("b.d.test", ["192.0.2.2"])]


def test_equal_preferences_are_shuffled_but_stay_ahead_of_worse_ones():
    records = [MxRecord(10, f"mx{i}") for i in range(6)] + [MxRecord(20, "backup")]
    seen = {tuple(order_mx(records, random.Random(seed))[:6]) for seed in range(20)}
    assert len(seen) > 1
    assert all(order_mx(records, random.Random(s))[-1] == "backup" for s in range(20))
    assert all(sorted(order) == [f"mx{i}" for i in range(6)] for order in seen)


def test_null_mx_is_permanent_5_1_10():
    with pytest.raises(PermFailure) as caught:
        hops(FakeResolver({"d.test": [(0, ".")]}), "d.test")
    assert (caught.value.status, caught.value.reason) == (
        "5.1.10", "Domain does not accept mail (null MX)")


def test_no_mx_records_means_implicit_mx():
    resolver = FakeResolver({}, {"d.test": ["192.0.2.9"]})
    assert hops(resolver, "d.test") == [("d.test", ["192.0.2.9"])]


def test_no_mx_and_no_address_is_permanent():
    with pytest.raises(PermFailure) as caught:
        hops(FakeResolver({}, {}), "d.test")
    assert caught.value.status == "5.4.4"


def test_nxdomain_is_permanent_5_1_2():
    with pytest.raises(PermFailure) as caught:
        hops(FakeResolver({"d.test": NXDOMAIN}), "d.test")
    assert caught.value.status == "5.1.2"


def test_mx_hosts_without_addresses_are_skipped():
    resolver = FakeResolver({"d.test": [(10, "gone.d.test"), (20, "ok.d.test")]},
                            {"gone.d.test": [], "ok.d.test": ["192.0.2.3"]})
    assert hops(resolver, "d.test") == [("ok.d.test", ["192.0.2.3"])]


def test_all_mx_hosts_unresolvable_is_temporary():
    resolver = FakeResolver({"d.test": [(10, "a.d.test"), (20, "b.d.test")]},
                            {"a.d.test": [], "b.d.test": TempFailure("4.4.3", "timed out")})
    with pytest.raises(TempFailure) as caught:
        hops(resolver, "d.test")
    assert caught.value.status == "4.4.3"
    assert "timed out" in caught.value.reason


def test_every_mx_host_nxdomain_is_permanent():
    resolver = FakeResolver({"d.test": [(10, "a.d.test"), (20, "b.d.test")]},
                            {"a.d.test": NXDOMAIN, "b.d.test": NXDOMAIN})
    with pytest.raises(PermFailure) as caught:
        hops(resolver, "d.test")
    assert caught.value.status == "5.4.4"


def test_only_max_hosts_are_looked_up():
    resolver = FakeResolver({"d.test": [(i, f"mx{i}.d.test") for i in range(5)]},
                            {f"mx{i}.d.test": ["192.0.2.1"] for i in range(5)})
    assert [h.host for h in hops(resolver, "d.test", max_hosts=2)] == ["mx0.d.test", "mx1.d.test"]
    assert len([q for q in resolver.asked if q.startswith("ADDR")]) == 2


def test_address_literal_domain_needs_no_dns():
    resolver = FakeResolver({})
    assert hops(resolver, "[192.0.2.7]") == [("[192.0.2.7]", ["192.0.2.7"])]
    assert hops(resolver, "[IPv6:2001:db8::7]") == [("[IPv6:2001:db8::7]", ["2001:db8::7"])]
    assert resolver.asked == []


def test_mx_exchange_written_as_an_ip_address_is_dialled_without_dns():
    # RFC 5321 5.1 wants a name there, but sites publish "MX 10 192.0.2.9.";
    # Postfix (smtp_addr_one) and sendmail use the address, never look it up.
    resolver = FakeResolver({"d.test": [(10, "192.0.2.9"), (20, "backup.d.test")]},
                            {"backup.d.test": ["192.0.2.2"]})
    assert hops(resolver, "d.test") == [("192.0.2.9", ["192.0.2.9"]),
                                        ("backup.d.test", ["192.0.2.2"])]
    assert "ADDR 192.0.2.9" not in resolver.asked


@pytest.mark.parametrize("text, target", [
    ("relay.test", Target("relay.test", 25, True)),
    ("relay.test:587", Target("relay.test", 587, True)),
    ("[relay.test]", Target("relay.test", 25, False)),
    ("[relay.test]:2525", Target("relay.test", 2525, False)),
    ("[2001:db8::1]:26", Target("2001:db8::1", 26, False)),
])
def test_parse_smarthost(text, target):
    assert parse_smarthost(text) == target


def test_bracketed_smarthost_and_ip_literal():
    resolver = FakeResolver({}, {"relay.test": ["192.0.2.5"]})
    assert asyncio.run(host_hops(resolver, "relay.test")) == [("relay.test", ["192.0.2.5"])]
    assert asyncio.run(host_hops(resolver, "192.0.2.6")) == [("192.0.2.6", ["192.0.2.6"])]
    assert literal_address("relay.test") is None


def test_resolver_parses_records_and_nameserver_entries():
    assert _parse_mx("10 MX1.Example.") == MxRecord(10, "mx1.example")
    assert _parse_mx("0 .") == MxRecord(0, ".")
    assert (_nameserver("127.0.0.1:5353").address, _nameserver("127.0.0.1:5353").port) == \
        ("127.0.0.1", 5353)
    assert _nameserver("[::1]:53").address == "::1"
    assert _nameserver("192.0.2.53").port == 53


def test_resolver_guard_refuses_before_any_query():
    class Held(Exception):
        pass

    def guard(name: str, rdtype: str) -> None:
        raise Held(f"{rdtype} {name}")

    resolver = Resolver(DnsConfig(nameservers=("127.0.0.1:9",), timeout=0.5), guard=guard)
    with pytest.raises(Held):
        asyncio.run(resolver.mx("d.test"))


def test_resolver_timeout_is_temp_failure_4_4_3():
    resolver = Resolver(DnsConfig(nameservers=("127.0.0.1:9",), timeout=0.3))
    with pytest.raises(TempFailure) as caught:
        asyncio.run(resolver.addresses("d.test"))
    assert caught.value.status == "4.4.3"


# -- our own host among the MX hosts (RFC 5321 5.1) ------------------------------------

OURS = {"192.0.2.25"}


def hops_not_ours(resolver, domain: str) -> list[NextHop]:
    """next_hops with 192.0.2.25 as this host's address."""
    return asyncio.run(next_hops(resolver, domain, 5, random.Random(1), OURS.__contains__))


def test_as_a_backup_mx_we_hand_the_mail_to_the_better_hosts_only():
    resolver = FakeResolver(
        {"d.test": [(10, "primary.d.test"), (20, "us.d.test"), (20, "peer.d.test"),
                    (30, "worse.d.test")]},
        {"primary.d.test": ["192.0.2.1"], "us.d.test": ["2001:db8::9", "192.0.2.25"],
         "peer.d.test": ["192.0.2.2"], "worse.d.test": ["192.0.2.3"]})
    assert hops_not_ours(resolver, "d.test") == [NextHop("primary.d.test", ["192.0.2.1"])]
    assert [h.host for h in hops(resolver, "d.test")][-1] == "worse.d.test"  # no `ours`


def test_mail_looping_back_to_us_fails_permanently():
    resolver = FakeResolver(
        {"first.test": [(10, "us.test"), (20, "backup.test")],
         "alone.test": [(5, "us.test")]},
        {"us.test": ["192.0.2.25"], "backup.test": ["192.0.2.2"],
         "implicit.test": ["192.0.2.25"]})
    for domain in ("first.test", "alone.test", "implicit.test", "[192.0.2.25]"):
        with pytest.raises(PermFailure) as failure:
            hops_not_ours(resolver, domain)
        assert failure.value.status == "5.4.6"
        assert failure.value.reason == f"mail for {domain} loops back to myself"
    with pytest.raises(PermFailure, match=r"mail for \[us.test\] loops back to myself"):
        asyncio.run(host_hops(resolver, "us.test", OURS.__contains__))
    assert asyncio.run(host_hops(resolver, "backup.test", OURS.__contains__)) == [
        NextHop("backup.test", ["192.0.2.2"])]


def test_our_endpoints_are_listen_addresses_and_with_a_wildcard_the_interfaces(tmp_path):
    from tidepost.smtp_client.loops import OwnEndpoints, local_addresses
    fib = tmp_path / "fib_trie"
    fib.write_text("Main:\n  +-- 0.0.0.0/0 3 0 5\n     |-- 10.1.2.3\n        /32 host LOCAL\n"
                   "     |-- 10.1.2.255\n        /32 link BROADCAST\n"
                   "Local:\n     |-- 127.0.0.1\n        /32 host LOCAL\n")
    inet6 = tmp_path / "if_inet6"
    inet6.write_text("00000000000000000000000000000001 01 80 10 80       lo\n"
                     "20010db8000000000000000000000009 02 40 00 80     eth0\n")
    assert local_addresses(fib, inet6) == {"10.1.2.3", "127.0.0.1", "::1", "2001:db8::9"}
    own = OwnEndpoints([("127.0.0.1", 2525), (None, 25), ("::1", 587)], fib, inet6)
    assert ("127.0.0.1", 2525) in own and ("127.0.0.2", 2525) not in own
    assert ("10.1.2.3", 25) in own and ("2001:db8::9", 25) in own
    assert ("::ffff:10.1.2.3", 25) in own and ("10.1.2.3", 26) not in own
    assert ("10.1.2.255", 25) not in own and ("192.0.2.1", 25) not in own
    assert ("0:0::1", 587) in own
    assert own.ours(2525)("127.0.0.1") and not own.ours(25)("127.0.0.2")
    assert local_addresses(tmp_path / "none", tmp_path / "none6") == set()


def test_dnspython_is_loaded_at_the_first_query_not_with_the_daemon():
    # dnspython is 5 MiB of an idle daemon: a held site need not load it.
    script = (
        "import sys, asyncio\n"
        "import tidepost.node\n"
        "from tidepost.config.schema import DnsConfig\n"
        "from tidepost.resolver.resolver import Resolver\n"
        "resolver = Resolver(DnsConfig(nameservers=('127.0.0.1:9',), timeout=0.2))\n"
        "print('dns' in sys.modules)\n"
        "try:\n"
        "    asyncio.run(resolver.mx('d.test'))\n"
        "except Exception:\n"
        "    pass\n"
        "print('dns' in sys.modules)\n")
    loaded = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            check=True).stdout.split()
    assert loaded == ["False", "True"]


def test_guarded_views_share_one_dns_client():
    resolver = Resolver(DnsConfig(nameservers=("127.0.0.1:9",), timeout=0.2))
    view = resolver.guarded(lambda name, rdtype: None)
    assert view._network.client() is resolver._network.client()
