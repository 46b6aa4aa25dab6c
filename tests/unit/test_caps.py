"""Data caps: the policy (usage/caps.py) and the keeper (manager/caps.py)."""

from __future__ import annotations

import asyncio
import time

from tidepost.address import Address, parse_mailbox
from tidepost.config.schema import RouteConfig
from tidepost.manager.caps import CapKeeper
from tidepost.manager.notices import Notices
from tidepost.model import DeliveryJob, MessageInfo, QueuedRecipient
from tidepost.queue.backend import NewMessage
from tidepost.queue.memory import MemoryQueue
from tidepost.testing.clock import FakeClock
from tidepost.usage.caps import cap_reached, is_urgent
from tidepost.usage.meter import LinkMeter
from tidepost.usage.store import UsageStore
from tidepost.usage.wire import WireCounts

MIB = 2 ** 20
ROUTE = RouteConfig(name="uplink", cap_day=1 * MIB, cap_month=10 * MIB,
                    urgent_senders=("captain@ship.test", "@ops.test"))
PLAIN = b"From: a@ship.test\r\nSubject: hello\r\n\r\nbody\r\n"
URGENT = b"From: a@ship.test\r\nX-Tidepost-Urgent: yes\r\nSubject: help\r\n\r\nbody\r\n"


def test_the_day_cap_is_reached_first_then_the_month_cap():
    assert cap_reached(ROUTE, MIB - 1, 0) is None
    day = cap_reached(ROUTE, MIB, MIB)
    assert (day.kind, day.used, day.limit) == ("day", MIB, MIB)
    assert day.describe() == "data cap: 1.0 MiB of 1.0 MiB this day"
    assert cap_reached(RouteConfig(name="u", cap_day=40 * 1024), 41000, 0).describe() == \
        "data cap: 40.0 KiB of 40.0 KiB this day"
    assert cap_reached(ROUTE, 0, 10 * MIB).kind == "month"
    assert cap_reached(RouteConfig(name="free"), 10**12, 10**12) is None


def test_urgent_mail_by_header_or_by_sender():
    assert is_urgent(ROUTE, "a@ship.test", URGENT.split(b"\r\n\r\n")[0] + b"\r\n")
    assert is_urgent(ROUTE, "a@ship.test", b"Priority: urgent\r\n")
    assert is_urgent(ROUTE, "a@ship.test", b"priority:   URGENT  \r\n")
    assert not is_urgent(ROUTE, "a@ship.test", b"Subject: Priority: urgent\r\n")
    assert not is_urgent(ROUTE, "a@ship.test", b"X-Tidepost-Urgent: no\r\n")
    assert is_urgent(ROUTE, "Captain@Ship.test", b"")
    assert is_urgent(ROUTE, "watch@ops.test", b"")
    assert not is_urgent(ROUTE, "watch@notops.test.example", b"")
    strict = RouteConfig(name="uplink", cap_day=MIB, urgent_headers=False)
    assert not is_urgent(strict, "a@ship.test", b"X-Tidepost-Urgent: yes\r\n")


def at(text: str) -> float:
    """Unix time of a local "YYYY-MM-DD HH:MM"."""
    return time.mktime(time.strptime(text, "%Y-%m-%d %H:%M"))


class Told:
    """The notices that would have been queued."""

    def __init__(self):
        self.sent: list[tuple[Address, bytes]] = []

    async def submit(self, to: Address, message: bytes) -> str:
        self.sent.append((to, message))
        return "NOTICE"


def keeper(tmp_path, clock, queue=None) -> tuple[CapKeeper, LinkMeter, Told, list]:
    meter = LinkMeter(UsageStore(tmp_path / "usage.sqlite"), clock)
    told, changes = Told(), []
    notices = Notices("ship.test", clock.now)
    notices.submit = told.submit
    caps = CapKeeper((ROUTE, RouteConfig(name="lan")), meter, clock, queue or MemoryQueue(),
                     notices, on_change=lambda route, capped: changes.append((route, capped)))
    return caps, meter, told, changes


def job(body: bytes, sender: str = "a@ship.test") -> DeliveryJob:
    info = MessageInfo(1, "Q1", parse_mailbox(sender), 0.0, len(body))
    return DeliveryJob(info, [QueuedRecipient(7, 1, parse_mailbox("x@far.test"))], "uplink",
                       "far.test", body)


def test_at_its_cap_a_route_holds_itself_durably_and_the_postmaster_hears_once(tmp_path):
    clock = FakeClock(at("2026-12-02 10:00"))
    caps, meter, told, changes = keeper(tmp_path, clock)

    async def main():
        await caps.check()
        assert caps.holds("uplink") is None and caps.admit(job(PLAIN)) is None
        meter.traffic("uplink", WireCounts(MIB, 1000))   # past 1 MiB today
        await caps.check()
        await caps.check()                                # still at it: nothing new
        await caps._notices.wait_idle()
    asyncio.run(main())
    assert changes == [("uplink", True)]
    hold = caps.holds("uplink")
    assert (hold.period, hold.told) == ("2026-12-02", True)
    assert hold.cause.startswith("data cap: 1.0 MiB of 1.0 MiB this day")
    [(to, notice)] = told.sent
    assert to == Address("postmaster", "ship.test")
    assert b"Subject: Route uplink reached its data cap today" in notice
    assert b"Auto-Submitted: auto-generated" in notice
    refused = caps.admit(job(PLAIN))
    assert [(o.status, o.attempted) for o in refused] == [("4.4.0", False)]
    assert "route uplink is held at its data cap" in refused[0].reason
    assert caps.admit(job(URGENT)) is None                           # urgent header
    assert caps.admit(job(PLAIN, sender="captain@ship.test")) is None  # urgent sender


def test_a_job_past_the_cap_is_stopped_before_the_keeper_has_held_the_route(tmp_path):
    clock = FakeClock(at("2026-12-02 10:00"))
    caps, meter, _, changes = keeper(tmp_path, clock)

    async def main():
        await caps.check()                                # the store's sums are read
        meter.traffic("uplink", WireCounts(MIB, 1000))   # counted; not yet checked
        return caps.admit(job(PLAIN)), caps.admit(job(URGENT))
    refused, urgent = asyncio.run(main())
    assert changes == [] and caps.holds("uplink") is None
    assert [(o.status, o.attempted) for o in refused] == [("4.4.0", False)]
    assert "data cap: 1.0 MiB of 1.0 MiB this day" in refused[0].reason
    assert urgent is None


def test_a_restart_keeps_the_hold_and_tells_no_one_twice_and_a_new_day_ends_it(tmp_path):
    clock = FakeClock(at("2026-12-02 10:00"))
    caps, meter, told, _ = keeper(tmp_path, clock)

    async def first_run():
        meter.traffic("uplink", WireCounts(2 * MIB, 0))
        await caps.check()
        await caps._notices.wait_idle()
        await meter.close()
    asyncio.run(first_run())
    again, meter2, told2, changes = keeper(tmp_path, clock)   # the daemon restarted

    async def second_run():
        await again.load()
        held = again.holds("uplink") is not None
        clock.advance(24 * 3600)   # the next day: 2 MiB this month, under both caps
        await again.check()
        return held
    assert asyncio.run(second_run())
    assert len(told.sent) == 1 and told2.sent == []
    assert changes == [("uplink", True), ("uplink", False)]
    assert again.holds("uplink") is None


def test_urgent_entries_are_found_among_the_parked_mail(tmp_path):
    clock = FakeClock(at("2026-12-02 10:00"))
    queue = MemoryQueue()

    async def main():
        caps, meter, _, _ = keeper(tmp_path, clock, queue)
        plain = await queue.submit(NewMessage(parse_mailbox("a@ship.test"),
                                              (parse_mailbox("x@far.test"),), PLAIN, 0.0))
        urgent = await queue.submit(NewMessage(parse_mailbox("a@ship.test"),
                                               (parse_mailbox("y@far.test"),), URGENT, 0.0))
        boss = await queue.submit(NewMessage(parse_mailbox("watch@ops.test"),
                                             (parse_mailbox("z@far.test"),), PLAIN, 0.0))
        entries = plain + urgent + boss
        assert await caps.urgent_entries("uplink", entries) == []   # not capped: nothing
        meter.traffic("uplink", WireCounts(MIB, 0))
        await caps.check()
        found = await caps.urgent_entries("uplink", entries)
        return [e.recipient_id for e in found], [e.recipient_id for e in urgent + boss]
    found, wanted = asyncio.run(main())
    assert found == wanted
