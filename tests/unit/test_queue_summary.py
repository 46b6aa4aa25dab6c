"""`tidepost queue summary`: age buckets, grouping by domain, route and sender, width."""

from __future__ import annotations

import asyncio
import io
import time

from queue_spool import queue_spool  # noqa: F401 - the fixture
from tidepost.address import Address
from tidepost.cli.queue_filters import Filters
from tidepost.cli.queue_summary import AGE_BOUNDS, AGE_LABELS, ranked, render, summarise
from tidepost.queue.backend import NewMessage
from tidepost.queue.selection import age_class

MINUTE = 60


def fill(spool, messages: list[tuple[str, float, int, str]]) -> None:
    """Queue (recipient, age in seconds, size, sender) messages into the spool."""
    async def go() -> None:
        queue = spool.open()
        now = time.time()
        for rcpt, age, size, sender in messages:
            local, domain = rcpt.split("@")
            from_ = Address(*sender.split("@")) if sender else Address("", "")
            await queue.submit(NewMessage(from_, (Address(local, domain),),
                                          b"S: x\r\n\r\n" + b"z" * size, now - age))
        await queue.close()
    asyncio.run(go())


def table(spool, by: str = "domain", top: int = 20, filters: Filters = Filters()) -> dict:
    """{line name: [T, bucket counts...]} of the summary."""
    out = io.StringIO()
    assert asyncio.run(summarise(spool.config, filters, by, top, out=out)) == 0
    header, *lines = out.getvalue().splitlines()
    assert header.split() == ["T", *AGE_LABELS]
    rows = {}
    for line in lines:
        name, *counts = line.rsplit(None, len(AGE_LABELS) + 1)
        rows[name.strip()] = [int(c) for c in counts]
    return rows


def counts(total: int, **buckets: int) -> list[int]:
    """[T, 5m, 10m, ...] with the named buckets set (`m5`, `m10`, ..., `d1`, `over`)."""
    names = ["m5", "m10", "m20", "m40", "m80", "m160", "m320", "m640", "d1", "over"]
    return [total] + [buckets.get(name, 0) for name in names]


def test_recipients_fall_into_doubling_age_buckets(queue_spool):
    fill(queue_spool, [("a@one.test", 1 * MINUTE, 10, "x@site.test"),
                       ("b@one.test", 7 * MINUTE, 10, "x@site.test"),
                       ("c@one.test", 30 * MINUTE, 10, "x@site.test"),
                       ("d@two.test", 100 * MINUTE, 10, "x@site.test"),
                       ("e@two.test", 600 * MINUTE, 10, "y@site.test"),
                       ("f@two.test", 20 * 3600, 10, "y@site.test"),
                       ("g@two.test", 3 * 86400, 10, "")])
    rows = table(queue_spool)
    assert rows["TOTAL"] == counts(7, m5=1, m10=1, m40=1, m160=1, m640=1, d1=1, over=1)
    assert rows["two.test"] == counts(4, m160=1, m640=1, d1=1, over=1)
    assert rows["one.test"] == counts(3, m5=1, m10=1, m40=1)
    assert list(rows) == ["TOTAL", "two.test", "one.test"]  # largest first
    by_sender = table(queue_spool, by="sender")
    assert by_sender["x@site.test"][0] == 4 and by_sender["<>"][0] == 1


def test_bucket_edges_are_the_upper_ends_of_the_labels():
    assert [age_class(age, AGE_BOUNDS) for age in (0, 299.9, 300, 599, 600)] == [0, 0, 1, 1, 2]
    assert [age_class(age, AGE_BOUNDS) for age in (86399, 86400, 10**7)] == [8, 9, 9]
    assert len(AGE_LABELS) == len(AGE_BOUNDS) + 1


def test_by_route_follows_size_limits_and_holds(queue_spool):
    fill(queue_spool, [("a@example.org", 60, 100, "x@site.test"),     # uplink (1k limit)
                       ("b@example.org", 60, 3000, "x@site.test"),    # too big: bulk
                       ("c@h.lan.test", 60, 3000, "x@site.test"),
                       ("d@cust.test", 60, 10, "x@site.test")])
    rows = table(queue_spool, by="route")
    assert {name: row[0] for name, row in rows.items()} == {
        "TOTAL": 4, "uplink": 1, "bulk": 1, "lan": 1, "customers": 1}
    only_bulk = table(queue_spool, by="domain", filters=Filters(route="bulk"))
    assert only_bulk == {"TOTAL": counts(1, m5=1), "example.org": counts(1, m5=1)}


def test_top_lines_then_the_rest_in_one():
    lines = {f"d{n}.test": [n] + [0] * 9 for n in range(1, 6)}
    names = [name for name, _ in ranked(lines, top=2)]
    assert names == ["TOTAL", "d5.test", "d4.test", "(3 more)"]
    assert ranked(lines, top=2)[-1][1][0] == 1 + 2 + 3
    assert len(ranked(lines, top=0)) == 6


def test_long_names_are_shortened_to_fit_the_width():
    rows = ranked({"a-very-long-destination-name.subdomain.example.org": [5] + [0] * 9,
                   "short.test": [123456] + [0] * 9}, top=0)
    lines = render(rows, 80)
    assert all(len(line) <= 80 for line in lines)
    assert any(line.startswith("…") and "example.org" in line for line in lines)
    assert any("a-very-long-destination-name.subdomain.example.org" in line
               for line in render(rows, None))
