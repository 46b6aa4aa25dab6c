"""Link accounting: periods, the usage store, the meter, the connection budget, wire counts."""

from __future__ import annotations

import asyncio
import calendar
import socket
import time

import pytest

from tidepost.usage.wire import read_counts
from tidepost.testing.clock import FakeClock
from tidepost.usage.budget import START, connection_budget
from tidepost.usage.meter import RTT_MEMORY, LinkMeter
from tidepost.usage.periods import day_of, month_of, next_start
from tidepost.usage.store import CapHold, RouteUsage, UsageStore
from tidepost.usage.wire import WireCounts


@pytest.fixture
def utc(monkeypatch):
    """Local time is UTC for the test."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def at(text: str) -> float:
    """Unix time of a UTC "YYYY-MM-DD HH:MM"."""
    return float(calendar.timegm(time.strptime(text, "%Y-%m-%d %H:%M")))


def test_periods_are_local_calendar_days_and_months(utc):
    moment = at("2026-12-31 23:30")
    assert (day_of(moment), month_of(moment)) == ("2026-12-31", "2026-12")
    assert next_start("day", moment) == at("2027-01-01 00:00")
    assert next_start("month", at("2026-01-31 12:00")) == at("2026-02-01 00:00")


def test_store_adds_batches_and_sums_days_into_months(tmp_path):
    store = UsageStore(tmp_path / "usage.sqlite")
    store.add({("uplink", "2026-12-01"): RouteUsage(up=100, down=10, ip_up=152, ip_down=62,
                                                    messages=1, recipients=2, connections=1,
                                                    online=3.5)},
              {("alice@site.test", "uplink", "2026-12-01"): (90, 1)})
    store.add({("uplink", "2026-12-01"): RouteUsage(up=50, messages=1),
               ("uplink", "2026-12-02"): RouteUsage(up=7),
               ("lan", "2026-12-02"): RouteUsage(up=1000)},
              {("alice@site.test", "uplink", "2026-12-02"): (40, 1),
               ("bob@site.test", "uplink", "2026-12-02"): (5, 1)})
    assert store.totals("uplink", "2026-12-01").up == 150
    month = store.totals("uplink", "2026-12")
    assert (month.up, month.messages, month.connections, month.online) == (157, 2, 1, 3.5)
    assert [(r.period, r.route, r.usage.up) for r in store.rows("month")] == [
        ("2026-12", "lan", 1000), ("2026-12", "uplink", 157)]
    assert [(r.period, r.usage.up) for r in store.rows("day", "uplink")] == [
        ("2026-12-01", 150), ("2026-12-02", 7)]
    senders = store.sender_rows("month", "uplink")
    assert [(r.sender, r.sender_bytes, r.sender_messages) for r in senders] == [
        ("alice@site.test", 130, 2), ("bob@site.test", 5, 1)]
    store.set_cap(CapHold("uplink", "2026-12-02", 5.0, "data cap", False))
    store.set_cap(CapHold("uplink", "2026-12-02", 9.0, "data cap", True))  # told now
    assert store.caps() == [CapHold("uplink", "2026-12-02", 5.0, "data cap", True)]
    store.close()
    assert UsageStore(tmp_path / "usage.sqlite").totals("lan", "2026-12").up == 1000


def test_meter_counts_online_time_from_first_open_to_last_close(tmp_path):
    clock = FakeClock(at("2026-12-02 10:00"))
    meter = LinkMeter(UsageStore(tmp_path / "u.sqlite"), clock)

    async def main():
        meter.opened("uplink")
        clock.advance(10)
        meter.opened("uplink")        # a second connection: still one online span
        clock.advance(5)
        meter.closed("uplink")
        assert meter.online("uplink")
        clock.advance(5)
        meter.closed("uplink")
        meter.closed("uplink")        # a stray close counts nothing
        meter.traffic("uplink", WireCounts(4000, 400, 4, 2))
        meter.delivered("uplink", "alice@site.test", 3900, 2)
        meter.delivered("uplink", "", 1000, 1)  # a bounce: no sender to bill
        before = await meter.totals("uplink", "day")
        await meter.flush()
        after = await meter.totals("uplink", "day")
        return before, after
    before, after = asyncio.run(main())
    assert before == after  # pending counts and stored counts are the same totals
    assert (after.connections, after.online, after.up, after.billed) == (2, 20.0, 4000,
                                                                         4400 + 6 * 52)
    assert (after.messages, after.recipients) == (2, 3)
    rows = meter.store.sender_rows("day")
    assert [(r.sender, r.sender_bytes) for r in rows] == [("alice@site.test", 3900)]


def test_meter_flushes_on_its_own_and_keeps_nothing_twice(tmp_path):
    clock = FakeClock(at("2026-12-02 10:00"))
    meter = LinkMeter(UsageStore(tmp_path / "u.sqlite"), clock)

    async def main():
        stopping = asyncio.Event()
        task = asyncio.create_task(meter.run(stopping))
        meter.traffic("uplink", WireCounts(10, 1))
        await meter.flush()
        meter.traffic("uplink", WireCounts(5, 0))
        stopping.set()
        await task  # its last flush
        return await meter.totals("uplink", "month")
    assert asyncio.run(main()).up == 15
    assert meter.store.totals("uplink", "2026-12").up == 15


def test_round_trip_is_the_lowest_seen_lately():
    clock = FakeClock()
    meter = LinkMeter(None, clock)
    assert meter.round_trip("uplink") is None
    meter.round_trip_measured("uplink", 1.5)
    meter.round_trip_measured("uplink", 1.2)
    meter.round_trip_measured("uplink", 3.0)   # queueing, not the link
    meter.round_trip_measured("uplink", 0.0)   # unknown
    assert meter.round_trip("uplink") == 1.2
    clock.advance(RTT_MEMORY + 1)
    meter.round_trip_measured("uplink", 2.0)   # the old low is forgotten
    assert meter.round_trip("uplink") == 2.0


def test_connection_budget_fills_the_link_and_no_more():
    # 56 kbit/s, 1.2 s round trip, 4.4 KB messages: 0.63 s each; (1 + 1.9) x 1.5 -> 5
    assert connection_budget(56_000, 1.2, 4400, 20) == 5
    # 1 Mbit/s, 0.3 s: 35 ms a message; (1 + 8.5) x 1.5 -> 15
    assert connection_budget(1_000_000, 0.3, 4400, 20) == 15
    # more destinations waiting than that: one each, up to twice the budget
    assert connection_budget(56_000, 1.2, 4400, 20, destinations=7) == 7
    assert connection_budget(56_000, 1.2, 4400, 20, destinations=50) == 10
    assert connection_budget(1_000_000, 0.3, 4400, 6) == 6          # the route's cap
    assert connection_budget(56_000, 1.2, 2_000_000, 20) == 2       # big mail: few
    assert connection_budget(0, 1.2, 4400, 20) == 20                # no rate: the cap
    assert connection_budget(56_000, None, 4400, 20) == START       # before a round trip


def test_wire_counts_are_the_kernels_tcp_counters():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
        with client, server:
            client.sendall(b"x" * 5000)
            received = b""
            while len(received) < 5000:
                received += server.recv(65536)
            server.sendall(b"y" * 300)
            assert client.recv(65536)
            counts = read_counts(client)
    if counts is None:
        pytest.skip("this kernel keeps no TCP_INFO byte counters")
    assert (counts.sent, counts.received) == (5000, 300)
    assert counts.segments_out >= 2 and counts.min_rtt > 0
    up, down = counts.ip_bytes()
    assert up == 5000 + 52 * counts.segments_out


def test_wire_counts_of_a_connection_closed_under_uvloop_are_unknown():
    """uvloop hands out a socket view whose fd is -1 once the peer has gone."""
    uvloop = pytest.importorskip("uvloop")

    async def closed_socket_counts():
        server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        sock = writer.get_extra_info("socket")  # the view a session keeps
        await reader.read()                      # the peer hung up
        writer.close()
        await asyncio.sleep(0.05)                # the transport has let its fd go
        server.close()
        assert sock.fileno() == -1
        return read_counts(sock)

    assert uvloop.run(closed_socket_counts()) is None
