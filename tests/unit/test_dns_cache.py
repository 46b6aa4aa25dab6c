"""The persistent DNS cache: TTLs, negative answers, restarts, and the guard behind it."""

import asyncio

from tidepost.resolver.cache import (DEFAULT_NEGATIVE_TTL, MAX_NEGATIVE_TTL, MAX_TTL,
                                     CachedResolver, DnsCache, cache_ttl, read_statistics)
from tidepost.resolver.resolver import Answer, Lookups
from tidepost.testing.clock import FakeClock


class CountingUpstream(Lookups):
    """Answers from a dict; counts the queries that reach it (the network)."""

    def __init__(self, answers, guard=None):
        self.answers = answers
        self.queries: list[tuple[str, str]] = []
        self.guard = guard

    async def query(self, name, rdtype):
        if self.guard:
            self.guard(name, rdtype)
        self.queries.append((name, rdtype))
        return self.answers[(name, rdtype)]

    def guarded(self, guard):
        view = CountingUpstream(self.answers, guard)
        view.queries = self.queries
        return view


ANSWERS = {
    ("d.test", "MX"): Answer("d.test", "MX", ("10 mx.d.test.",), 600),
    ("mx.d.test", "A"): Answer("mx.d.test", "A", ("192.0.2.1",), 60),
    ("mx.d.test", "AAAA"): Answer("mx.d.test", "AAAA", (), 120),           # NODATA
    ("gone.test", "MX"): Answer("gone.test", "MX", (), 0, exists=False),   # NXDOMAIN, no SOA
    ("zero.test", "MX"): Answer("zero.test", "MX", ("10 mx.zero.test.",), 0),
}


def run(coro):
    return asyncio.run(coro)


def test_ttls_positive_negative_and_caps():
    assert cache_ttl(ANSWERS[("d.test", "MX")]) == 600
    assert cache_ttl(ANSWERS[("mx.d.test", "AAAA")]) == 120
    assert cache_ttl(ANSWERS[("gone.test", "MX")]) == DEFAULT_NEGATIVE_TTL
    assert cache_ttl(ANSWERS[("zero.test", "MX")]) == 0
    assert cache_ttl(Answer("x", "A", ("192.0.2.1",), 10**9)) == MAX_TTL
    assert cache_ttl(Answer("x", "A", (), 10**9)) == MAX_NEGATIVE_TTL


def test_answers_are_served_until_they_expire(tmp_path):
    async def main():
        clock = FakeClock()
        upstream = CountingUpstream(ANSWERS)
        resolver = CachedResolver(DnsCache(tmp_path / "c.sqlite", clock), upstream)
        first = await resolver.query("d.test", "MX")
        clock.advance(500)
        second = await resolver.query("D.test.", "MX")   # same key: case, final dot
        clock.advance(101)
        third = await resolver.query("d.test", "MX")
        return first, second, third, upstream.queries, resolver.statistics()
    first, second, third, queries, stats = run(main())
    assert second.records == first.records and second.ttl == 100
    assert third.ttl == 600
    assert queries == [("d.test", "MX"), ("d.test", "MX")]
    assert stats == {"hits": 1, "misses": 2, "entries": 1}


def test_negative_answers_are_cached_and_zero_ttl_is_not(tmp_path):
    async def main():
        clock = FakeClock()
        upstream = CountingUpstream(ANSWERS)
        resolver = CachedResolver(DnsCache(tmp_path / "c.sqlite", clock), upstream)
        for _ in range(2):
            gone = await resolver.query("gone.test", "MX")
            nodata = await resolver.query("mx.d.test", "AAAA")
            await resolver.query("zero.test", "MX")
        return gone, nodata, upstream.queries
    gone, nodata, queries = run(main())
    assert not gone.exists and gone.records == ()
    assert nodata.exists and nodata.records == ()
    assert queries.count(("gone.test", "MX")) == 1
    assert queries.count(("mx.d.test", "AAAA")) == 1
    assert queries.count(("zero.test", "MX")) == 2


def test_cache_survives_a_restart_and_mx_lookups_use_it(tmp_path):
    clock = FakeClock()

    async def lookups():
        upstream = CountingUpstream(ANSWERS)
        cache = DnsCache(tmp_path / "c.sqlite", clock)
        resolver = CachedResolver(cache, upstream)
        mx = await resolver.mx("d.test")
        addresses = await resolver.addresses("mx.d.test")
        await cache.close()
        return mx, addresses, upstream.queries
    _, _, before = run(lookups())
    mx, addresses, after = run(lookups())
    assert len(before) == 3 and after == []
    assert mx.records[0].exchange == "mx.d.test" and addresses == ["192.0.2.1"]
    stats = read_statistics(tmp_path / "c.sqlite", clock.now())
    assert stats["entries"] == 3 and stats["valid"] == 3 and stats["negative"] == 1
    assert stats["bytes"] > 0
    assert read_statistics(tmp_path / "missing.sqlite", 0)["entries"] == 0


def test_the_guard_sees_only_misses(tmp_path):
    """A guarded view shares the cache: hits pass, misses reach the guard."""
    class Held(Exception):
        pass

    def refuse(name, rdtype):
        raise Held(name)

    async def main():
        resolver = CachedResolver(DnsCache(tmp_path / "c.sqlite", FakeClock()),
                                  CountingUpstream(ANSWERS))
        await resolver.query("d.test", "MX")
        held = resolver.guarded(refuse)
        hit = await held.query("d.test", "MX")
        try:
            await held.query("mx.d.test", "A")
        except Held:
            return hit, True
        return hit, False
    hit, refused = run(main())
    assert hit.records == ("10 mx.d.test.",) and refused


def test_expired_answer_is_not_used_while_held(tmp_path):
    """Decision: no serve-stale; a held route's lookup of an expired name is refused."""
    class Held(Exception):
        pass

    def refuse(name, rdtype):
        raise Held(name)

    async def main():
        clock = FakeClock()
        resolver = CachedResolver(DnsCache(tmp_path / "c.sqlite", clock),
                                  CountingUpstream(ANSWERS))
        await resolver.query("mx.d.test", "A")
        clock.advance(61)
        try:
            await resolver.guarded(refuse).query("mx.d.test", "A")
        except Held:
            return True
        return False
    assert run(main())


def test_an_unusable_file_means_no_cache_not_no_mail(tmp_path):
    async def main():
        (tmp_path / "c.sqlite").write_bytes(b"this is not a database" * 100)
        upstream = CountingUpstream(ANSWERS)
        resolver = CachedResolver(DnsCache(tmp_path / "c.sqlite", FakeClock()), upstream)
        await resolver.query("d.test", "MX")
        answer = await resolver.query("d.test", "MX")
        return answer, upstream.queries
    answer, queries = run(main())
    assert answer.records == ("10 mx.d.test.",) and len(queries) == 2


class SlowUpstream(CountingUpstream):
    """Takes a while to answer, as a query over a slow link does."""

    async def query(self, name, rdtype):
        await asyncio.sleep(0.05)
        return await super().query(name, rdtype)


def test_concurrent_misses_share_one_query(tmp_path):
    async def main():
        upstream = SlowUpstream(ANSWERS)
        resolver = CachedResolver(DnsCache(tmp_path / "c.sqlite", FakeClock()), upstream)
        sessions = [resolver.guarded(lambda name, rdtype: None) for _ in range(20)]
        answers = await asyncio.gather(*(s.query("d.test", "MX") for s in sessions))
        return answers, upstream.queries
    answers, queries = run(main())
    assert queries == [("d.test", "MX")]  # one packet, not twenty
    assert all(a.records == ("10 mx.d.test.",) for a in answers)


def test_a_held_first_asker_does_not_fail_the_others(tmp_path):
    from tidepost.errors import RouteHeld

    def held(name, rdtype):
        raise RouteHeld("dock")

    async def main():
        upstream = SlowUpstream(ANSWERS)
        resolver = CachedResolver(DnsCache(tmp_path / "c.sqlite", FakeClock()), upstream)
        first = asyncio.ensure_future(resolver.guarded(held).query("d.test", "MX"))
        await asyncio.sleep(0)
        second = await resolver.guarded(lambda name, rdtype: None).query("d.test", "MX")
        return first, second
    first, second = run(main())
    assert isinstance(first.exception(), RouteHeld)
    assert second.records == ("10 mx.d.test.",)
