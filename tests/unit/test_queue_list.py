"""`tidepost queue`: states, filters, 80-column lines, JSON lines, counts.

A real SQLite spool (queue_spool.py: one message per state); the listing is
run in-process into a StringIO.  The filter tests check the one thing that
could drift: that the query a filter becomes (queue_view.conditions) picks
exactly the recipients the listing shows in that state or on that route.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import re
import time

import pytest

from queue_spool import CONFIG, EXPECTED, RETRY_IN, queue_spool  # noqa: F401 - fixture
from tidepost.cli.queue_filters import Filters, UsageError, filters_from
from tidepost.cli.queue_list import compact_state, list_queue, shorten_address, size_text
from tidepost.cli.queue_view import Shown
from tidepost.config.load import parse_config


def listing(spool, filters: Filters = Filters(), **options) -> str:
    """What `tidepost queue` prints for `filters`."""
    out = io.StringIO()
    assert asyncio.run(list_queue(spool.config, filters, out=out, **options)) == 0
    return out.getvalue()


def json_rows(spool, filters: Filters = Filters()) -> list[dict]:
    """`tidepost queue --json`, parsed."""
    return [json.loads(line) for line in listing(spool, filters, as_json=True).splitlines()]


def recipients(spool, filters: Filters) -> set[str]:
    """The recipients a filtered listing shows."""
    return {row["recipient"] for row in json_rows(spool, filters)}


def test_every_state_reads_as_the_admin_expects(queue_spool):
    rows = {row["recipient"]: row for row in json_rows(queue_spool.fill())}
    shown = {rcpt: (row["state_text"], row["state"]) for rcpt, row in rows.items()}
    retry_at = time.localtime(rows["bob@b.lan.test"]["next_try"])
    expected = {rcpt: (text, kind) for rcpt, (text, kind, _) in EXPECTED.items()}
    expected["bob@b.lan.test"] = (f"retry {time.strftime('%H:%M', retry_at)}", "retry")
    if retry_at[:3] != time.localtime()[:3]:  # just before midnight: tomorrow's time
        expected["bob@b.lan.test"] = (f"retry {time.strftime('%a %H:%M', retry_at)}", "retry")
    # The harbour runs at 22:00: today's, or tomorrow's (with its weekday) after it.
    assert re.fullmatch(r"scheduled (\w{3} )?22:00", shown["carol@x.harbour.test"][0])
    expected["carol@x.harbour.test"] = shown["carol@x.harbour.test"]
    assert shown == expected
    assert rows["eve@example.org"]["route"] == "bulk"  # over uplink's max_message_size
    assert abs(rows["bob@b.lan.test"]["next_try"] - time.time() - RETRY_IN) < 60


def test_the_table_shows_states_errors_and_totals(queue_spool):
    text = listing(queue_spool.fill())
    lines = text.splitlines()
    assert lines[0].split() == ["ID", "AGE", "SIZE", "SENDER", "RECIPIENT", "ROUTE", "STATE"]
    dave = next(line for line in lines if "dave@example.org" in line)
    assert dave.split()[0] == queue_spool.queue_ids["dave@example.org"]
    assert dave.split()[-4:] == ["uplink", "held", "(route", "uplink)"]
    bob = lines.index(next(line for line in lines if "bob@b.lan.test" in line))
    assert lines[bob + 1].strip() == "(4.4.1 connection refused by mx.b.lan.test)"
    assert lines[-1] == "-- 8 messages, 8 recipients"


@pytest.mark.parametrize("kind", list(Shown))
def test_a_state_filter_picks_exactly_the_recipients_shown_in_that_state(queue_spool, kind):
    queue_spool.fill()
    everything = json_rows(queue_spool)
    wanted = {row["recipient"] for row in everything if row["state"] == kind.value}
    assert wanted, f"the spool has a recipient in state {kind.value}"
    assert recipients(queue_spool, Filters(shown=frozenset({kind}))) == wanted
    assert int(listing(queue_spool, Filters(shown=frozenset({kind})), count_only=True)) == \
        len(wanted)


@pytest.mark.parametrize("route", ["local", "lan", "harbour", "uplink", "bulk", "customers"])
def test_a_route_filter_picks_exactly_the_recipients_shown_on_that_route(queue_spool, route):
    queue_spool.fill()
    wanted = {row["recipient"] for row in json_rows(queue_spool) if row["route"] == route}
    assert recipients(queue_spool, Filters(route=route)) == wanted
    held_there = {row["recipient"] for row in json_rows(queue_spool)
                  if row["route"] == route and row["state"] == "held"}
    assert recipients(queue_spool, Filters(route=route, shown=frozenset({Shown.HELD}))) == \
        held_there


def test_a_route_filter_follows_a_changed_configuration(queue_spool):
    queue_spool.fill()
    assert recipients(queue_spool, Filters(route="uplink")) == {"dave@example.org"}
    text = CONFIG.format(spool=queue_spool.path).replace('max_message_size = "1k"',
                                                         'max_message_size = "4k"')
    bigger = dataclasses.replace(queue_spool, config=parse_config(text, "test.toml"))
    assert recipients(bigger, Filters(route="uplink")) == {"dave@example.org", "eve@example.org"}
    assert recipients(bigger, Filters(route="bulk")) == set()


def test_domain_sender_and_age_filters(queue_spool):
    queue_spool.fill()
    assert recipients(queue_spool, Filters(domain="lan.test")) == \
        {"alice@a.lan.test", "bob@b.lan.test", "gina@c.lan.test", "hank@d.lan.test"}
    assert recipients(queue_spool, Filters(domain="example.org")) == \
        {"dave@example.org", "eve@example.org"}
    assert recipients(queue_spool, Filters(sender="")) == set()
    assert len(recipients(queue_spool, Filters(sender="root@site.test"))) == 8
    assert recipients(queue_spool, Filters(older_than=86400)) == {"gina@c.lan.test",
                                                                   "hank@d.lan.test"}


def test_filters_are_parsed_at_the_edge(queue_spool):
    import argparse
    args = argparse.Namespace(route="uplink", state=["held,retry"], domain="Example.ORG.",
                              sender="<Root@SITE.test>", older_than="2h")
    filters = filters_from(args, queue_spool.config)
    assert filters == Filters("uplink", frozenset({Shown.HELD, Shown.RETRY}), "example.org",
                              "Root@site.test", 7200.0)
    for bad in ({"route": "nowhere"}, {"state": ["stuck"]}, {"domain": "a..b"},
                {"sender": "no at sign@"}, {"older_than": "soon"}):
        with pytest.raises(UsageError):
            filters_from(argparse.Namespace(**bad), queue_spool.config)


def test_lines_fit_80_columns_without_cutting_queue_ids(queue_spool, monkeypatch):
    from tidepost.address import Address
    from tidepost.queue.backend import NewMessage
    queue_spool.fill()
    long_one = Address("a.very.long.local.part.indeed", "some-long-subdomain.example.org")

    async def add() -> None:
        queue = queue_spool.open()
        await queue.submit(NewMessage(Address("another.long.sender.name", "site.test"),
                                      (long_one,), b"Subject: x\r\n\r\n", time.time(),
                                      queue_id="0123456789AB"))
        await queue.close()

    asyncio.run(add())
    monkeypatch.setenv("COLUMNS", "80")
    lines = listing(queue_spool).splitlines()
    assert all(len(line) <= 80 for line in lines), "\n".join(l for l in lines if len(l) > 80)
    row = next(line for line in lines if line.startswith("0123456789AB "))
    assert "…" in row and "long.local.part" not in row
    assert str(long_one) in recipients(queue_spool, Filters(domain="example.org"))  # JSON: full
    monkeypatch.delenv("COLUMNS")
    assert str(long_one) in listing(queue_spool)  # into a pipe nothing is cut


def test_an_empty_queue_says_so(queue_spool):
    assert listing(queue_spool) == "Mail queue is empty\n"
    assert listing(queue_spool, Filters(route="lan")) == "No queued recipient matches\n"
    assert listing(queue_spool, count_only=True) == "0\n"
    assert listing(queue_spool, as_json=True) == ""


def test_shortened_addresses_keep_their_domain():
    assert shorten_address("alice@example.org", 20) == "alice@example.org"
    assert shorten_address("alice.smith@example.org", 18) == "alice…@example.org"
    assert len(shorten_address("alice.smith@example.org", 18)) == 18
    assert shorten_address("alice@very.long.domain.example", 12) == "…ain.example"
    assert size_text(812) == "812" and size_text(4300) == "4.2K" and size_text(317440) == "310K"
    assert size_text(25 * 2**20) == "25M"


def test_a_narrow_terminal_says_long_states_shortly():
    assert compact_state("held (route customers)", 15) == "held (route)"
    assert compact_state("scheduled Mon 22:00", 15) == "sched Mon 22:00"
    assert compact_state("queued (no route)", 15) == "no route"
    assert compact_state("held (route uplink)", 19) == "held (route uplink)"
