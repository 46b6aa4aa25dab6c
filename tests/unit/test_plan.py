"""`tidepost link plan`: the sums (routing/plan.py), the DNS check and the estimate (cli/plan.py)."""

from __future__ import annotations

import asyncio
import json
import zlib

from tidepost.cli.plan import compression_estimate, names_to_resolve, show_plan
from tidepost.config.schema import Config, RouteConfig
from tidepost.queue.backend import PendingGroup
from tidepost.resolver.cache import CACHE_FILE, DnsCache
from tidepost.resolver.resolver import Answer
from tidepost.routing.plan import plan_route, size_bounds
from tidepost.routing.routes import Router

ROUTES = (RouteConfig(name="uplink", domains=("*",), max_message_size=10_000, rate=56_000),
          RouteConfig(name="harbour", domains=("*",)))


def config(tmp_path, *routes: RouteConfig) -> Config:
    return Config(hostname="site.test", spool=str(tmp_path), route=routes or ROUTES)


def test_groups_go_to_the_route_their_domain_and_size_class_map_to(tmp_path):
    router = Router(config(tmp_path))
    bounds = size_bounds(router)
    assert bounds == [10_000]
    groups = [PendingGroup("a.test", 0, True, 3, 2, 9_000, 1, 4),
              PendingGroup("a.test", 0, False, 1, 1, 4_000, 7, 7),     # in backoff
              PendingGroup("a.test", 1, True, 1, 1, 2_000_000, 5, 5),  # too big: harbour
              PendingGroup("b.test", 0, True, 2, 2, 6_000, 2, 3)]
    uplink = plan_route(router, "uplink", groups, bounds)
    assert (uplink.messages, uplink.recipients, uplink.bytes) == (4, 5, 15_000)
    assert uplink.domains == ["a.test", "b.test"] and uplink.samples == [1, 4, 2, 3]
    assert uplink.waiting_recipients == 1
    harbour = plan_route(router, "harbour", groups, bounds)
    assert (harbour.messages, harbour.bytes, harbour.domains) == (1, 2_000_000, ["a.test"])
    # 15,000 octets, 4 messages, 5 recipients at 56 kbit/s
    assert round(uplink.wire_seconds(56_000), 2) == round(
        (15_000 * 1.04 + 4 * 100 + 5 * 30) * 8 / 56_000, 2)
    assert uplink.wire_seconds(0) is None


def test_the_dns_lookups_a_release_would_need_are_those_the_cache_cannot_answer(tmp_path):
    router = Router(config(tmp_path))
    plan = plan_route(router, "uplink", [PendingGroup(d, 0, True, 1, 1, 100, 1, 1) for d in
                                         ("known.test", "half.test", "new.test", "gone.test",
                                          "implicit.test")], [10_000])

    async def main():
        cache = DnsCache(tmp_path / CACHE_FILE, _Now())
        await cache.put(Answer("known.test", "MX", ("10 mx.known.test.",), 3600))
        await cache.put(Answer("mx.known.test", "A", ("192.0.2.1",), 3600))
        await cache.put(Answer("mx.known.test", "AAAA", (), 3600))           # NODATA: known
        await cache.put(Answer("half.test", "MX", ("10 mx.half.test.",), 3600))
        await cache.put(Answer("mx.half.test", "A", ("192.0.2.2",), 3600))   # no AAAA yet
        await cache.put(Answer("gone.test", "MX", (), 3600, exists=False))   # NXDOMAIN
        await cache.put(Answer("implicit.test", "MX", (), 3600))             # implicit MX
        await cache.close()
        return await names_to_resolve(config(tmp_path), router, "uplink", plan)
    assert asyncio.run(main()) == ["new.test MX", "mx.half.test AAAA",
                                   "implicit.test AAAA", "implicit.test A"]


class _Now:
    """The real time, as the CLI's SystemClock sees it."""

    def now(self) -> float:
        import time
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


def test_a_bracketed_smarthost_needs_only_its_addresses(tmp_path):
    route = RouteConfig(name="uplink", transport="smarthost", smarthost="[relay.test]:587")
    router = Router(config(tmp_path, route))
    plan = plan_route(router, "uplink", [PendingGroup("a.test", 0, True, 1, 1, 1, 1, 1)], [])
    got = asyncio.run(names_to_resolve(config(tmp_path, route), router, "uplink", plan))
    assert got == ["relay.test AAAA", "relay.test A"]


def test_the_compression_estimate_is_the_samples_ratio_applied_to_all_bytes():
    bodies = [b"Subject: report %d\r\n\r\n" % n + b"the same words again and again\r\n" * 50
              for n in range(4)]
    estimate = compression_estimate(bodies, 1_000_000)
    raw = b"".join(bodies)
    assert estimate["samples"] == 4
    if estimate["compression"].startswith("zlib"):
        assert estimate["compressed_bytes"] == round(1_000_000 * len(zlib.compress(raw, 6))
                                                     / len(raw))
        assert "plain SMTP sends it all" in estimate["compression"]
    assert estimate["compressed_bytes"] < 100_000
    assert compression_estimate([], 0)["compressed_bytes"] == 0


def test_the_plan_as_json_from_a_real_spool(tmp_path, capsys):
    from tidepost.address import parse_mailbox
    from tidepost.queue.backend import NewMessage
    from tidepost.queue.sqlite import SqliteQueue

    async def fill():
        queue = SqliteQueue(tmp_path / "queue.sqlite")
        for n in range(3):
            await queue.submit(NewMessage(parse_mailbox("a@site.test"),
                                          (parse_mailbox(f"x{n}@far.test"),),
                                          b"Subject: s\r\n\r\n" + b"text line\r\n" * 30, 0.0))
        await queue.close()
        await show_plan(config(tmp_path), "uplink", "json")
    asyncio.run(fill())
    report = json.loads(capsys.readouterr().out)
    assert (report["messages"], report["recipients"]) == (3, 3)
    assert report["dns_lookups"] == ["far.test MX"]
    assert report["seconds"] > 0 and report["held"] is False
