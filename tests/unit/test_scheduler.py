"""RamQueue and Backoff: pure policy, tested against virtual time."""

from tidepost.model import ScheduleEntry
from tidepost.scheduler.backoff import Backoff
from tidepost.scheduler.ramqueue import Batch, RamQueue, Sleep
from tidepost.testing.clock import FakeClock

ROUTES = {"lan.test": "lan", "example.test": "uplink"}


def make_queue() -> RamQueue:
    return RamQueue(lambda entry: ROUTES.get(entry.domain, "uplink"))


def entry(rid: int, domain: str, next_try: float) -> ScheduleEntry:
    return ScheduleEntry(rid, rid, domain, next_try)


def test_due_entries_come_out_in_time_order_and_leave_the_scheduler():
    clock = FakeClock()
    queue = make_queue()
    queue.insert(entry(2, "example.test", clock.now() + 5))
    queue.insert(entry(1, "example.test", clock.now()))
    assert queue.next_batch(clock.now(), 10) == Batch([entry(1, "example.test", clock.now())])
    assert queue.next_batch(clock.now(), 10) == Sleep(5)
    clock.advance(5)
    batch = queue.next_batch(clock.now(), 10)
    assert isinstance(batch, Batch) and [e.recipient_id for e in batch.entries] == [2]
    assert queue.next_batch(clock.now(), 10) == Sleep(None)
    assert len(queue) == 0


def test_limit_bounds_a_batch():
    queue = make_queue()
    for rid in range(10):
        queue.insert(entry(rid, "example.test", 0))
    batch = queue.next_batch(1, 3)
    assert isinstance(batch, Batch) and len(batch.entries) == 3
    assert len(queue) == 7


def test_held_route_parks_entries_and_release_makes_them_due_at_once():
    clock = FakeClock()
    queue = make_queue()
    queue.hold("uplink")
    queue.insert(entry(1, "example.test", clock.now()))
    queue.insert(entry(2, "lan.test", clock.now()))
    batch = queue.next_batch(clock.now(), 10)
    assert [e.recipient_id for e in batch.entries] == [2]  # LAN is not held
    assert queue.next_batch(clock.now(), 10) == Sleep(None)
    clock.advance(3600)
    assert queue.release("uplink", clock.now()) == 1
    batch = queue.next_batch(clock.now(), 10)
    assert [e.recipient_id for e in batch.entries] == [1]


def test_an_entry_inserted_due_on_a_held_route_is_parked_without_a_heap_item():
    clock = FakeClock()
    queue = make_queue()
    queue.hold("uplink")
    queue.insert(entry(1, "example.test", clock.now()), clock.now())  # due, held: parked
    queue.insert(entry(2, "example.test", clock.now() + 600), clock.now())  # not due yet
    queue.insert(entry(3, "lan.test", clock.now()), clock.now())  # due, not held
    assert queue.statistics() == {"scheduled": 3, "heap": 2, "parked": 1}
    batch = queue.next_batch(clock.now(), 10)
    assert [e.recipient_id for e in batch.entries] == [3]
    assert queue.entries_in_domains("uplink", lambda d: d == "example.test") == \
        [entry(1, "example.test", clock.now()), entry(2, "example.test", clock.now() + 600)]
    assert queue.release("uplink", clock.now()) == 1
    batch = queue.next_batch(clock.now(), 10)
    assert [e.recipient_id for e in batch.entries] == [1]  # due at once; 2 keeps its backoff
    assert queue.next_batch(clock.now(), 10) == Sleep(600)


def test_a_parked_entry_removed_is_not_released():
    queue = make_queue()
    queue.hold("uplink")
    queue.insert(entry(1, "example.test", 0), 10)
    queue.remove(1)  # claimed by an ETRN, say
    assert queue.release("uplink", 20) == 0
    assert queue.next_batch(20, 10) == Sleep(None) and len(queue) == 0


def test_release_keeps_backoff_of_entries_not_yet_due():
    clock = FakeClock()
    queue = make_queue()
    queue.hold("uplink")
    queue.insert(entry(1, "example.test", clock.now() + 600))  # backing off after a failure
    assert queue.release("uplink", clock.now()) == 0
    assert queue.next_batch(clock.now(), 10) == Sleep(600)


def test_reinsert_reschedules_and_remove_forgets():
    queue = make_queue()
    queue.insert(entry(1, "example.test", 0))
    queue.insert(entry(1, "example.test", 50))
    assert queue.next_batch(10, 10) == Sleep(40)
    queue.remove(1)
    assert queue.next_batch(100, 10) == Sleep(None)


def test_backoff_doubles_up_to_the_maximum():
    backoff = Backoff(min_backoff=300, max_backoff=4000, lifetime=5 * 86400, delay_warning=4 * 3600)
    assert [backoff.interval(n) for n in (1, 2, 3, 4, 5, 6)] == [300, 600, 1200, 2400, 4000, 4000]
    assert not backoff.expired(arrival=0, now=5 * 86400 - 1)
    assert backoff.expired(arrival=0, now=5 * 86400)
    assert not backoff.warning_due(arrival=0, now=4 * 3600 - 1)
    assert backoff.warning_due(arrival=0, now=4 * 3600)
    assert not Backoff(delay_warning=0).warning_due(0, 10**9)


def test_take_route_returns_due_entries_even_while_held():
    queue = make_queue()
    queue.hold("uplink")
    queue.insert(entry(1, "example.test", 10))
    queue.insert(entry(2, "example.test", 500))
    queue.insert(entry(3, "lan.test", 10))
    assert queue.next_batch(20, 10) == Batch([entry(3, "lan.test", 10)])
    assert queue.take_route("uplink", 20) == [entry(1, "example.test", 10)]
    assert queue.is_held("uplink") and len(queue) == 1


def test_entries_in_domains_finds_one_domains_entries_and_forgets_those_that_left():
    queue = make_queue()
    for rid, domain in enumerate(["a.example", "b.example", "a.example", "x.b.example"], 1):
        queue.insert(entry(rid, domain, 100.0))
    wanted = queue.entries_in_domains  # every domain here is on route uplink
    assert [e.recipient_id for e in wanted("uplink", lambda d: d == "a.example")] == [1, 3]
    assert wanted("lan", lambda d: d == "a.example") == []
    queue.remove(1)
    assert [e.recipient_id for e in wanted("uplink", lambda d: d == "a.example")] == [3]
    batch = queue.next_batch(200.0, 10)  # handed out: no longer in the scheduler
    assert isinstance(batch, Batch) and len(batch.entries) == 3
    assert wanted("uplink", lambda d: True) == []
