"""The QueueBackend contract, part two: views (select, count, tally) and admin changes.

Same stores, same fixture and helpers as test_queue_backend.py (every store
that suite runs against runs these too).  Each test reads as a transcript
of queue calls.
"""

from __future__ import annotations

import contextlib

import pytest

from test_queue_backend import (ALICE, BOB, LEASE, OTHER, RUNNER, SENDER, T0, final, ids,
                                message, queue, run)  # noqa: F401 - `queue` is the fixture
from tidepost.address import NULL_SENDER, Address
from tidepost.errors import QueueError
from tidepost.model import RecipientState
from tidepost.outcomes import delivered
from tidepost.queue.backend import Recorded
from tidepost.queue.selection import (CLAIMED, EVERY_STATE, QUEUED, Changed, Changes, Condition,
                                      Place, Selection, Tally)

CAROL = Address("carol", "mail.example.org")   # a subdomain of ALICE's
DAVE = Address("dave", "badexample.org")       # a look-alike, not a subdomain


async def _rows(queue, selection: Selection) -> list:
    """Every row `selection` lists."""
    return [row async for row in queue.select(selection)]


def picked(queue, selection: Selection) -> list[str]:
    """The recipients `selection` lists, as address strings, in listing order."""
    return [row.recipient for row in run(_rows(queue, selection))]


def only(*states: RecipientState, **condition) -> Selection:
    """A selection of one condition."""
    return Selection((Condition(frozenset(states), **condition),))


# -- select and count ------------------------------------------------------------

def test_filters_queue_ids_sender_domain_and_arrival(queue):
    run(queue.submit(message(ALICE, CAROL, queue_id="Q1")))
    run(queue.submit(message(DAVE, sender=NULL_SENDER, arrival=T0 + 100, queue_id="Q2")))
    run(queue.submit(message(BOB, arrival=T0 + 200, queue_id="Q3")))
    assert picked(queue, Selection(queue_ids=("Q2", "Q3"))) == [str(DAVE), str(BOB)]
    assert picked(queue, Selection(sender="")) == [str(DAVE)]
    assert picked(queue, Selection(sender=str(SENDER))) == [str(ALICE), str(CAROL), str(BOB)]
    assert picked(queue, Selection(domain="example.org")) == [str(ALICE), str(CAROL)]
    assert picked(queue, Selection(arrived_before=T0 + 100)) == [str(ALICE), str(CAROL)]
    assert picked(queue, Selection(queue_ids=())) == []
    assert run(queue.count(Selection(domain="example.org", sender=str(SENDER)))) == 2


def test_conditions_select_by_state_place_and_next_try_any_of_them(queue):
    small = run(queue.submit(message(ALICE, BOB, body=b"x" * 100)))
    run(queue.submit(message(ALICE, body=b"x" * 101)))
    run(queue.claim(ids(small[:1]), RUNNER, LEASE, T0))
    at_org = Place(frozenset({"example.org"}), above=-1, up_to=100)  # up_to is inclusive
    assert picked(queue, only(QUEUED, CLAIMED, places=(at_org,))) == [str(ALICE)]
    bigger = Place(frozenset({"example.org"}), above=100)             # above is exclusive
    assert picked(queue, only(QUEUED, places=(bigger,))) == [str(ALICE)]
    assert run(queue.count(only(QUEUED, places=(bigger,)))) == 1
    assert picked(queue, only(CLAIMED)) == [str(ALICE)]
    assert picked(queue, only(QUEUED, places=())) == []
    assert picked(queue, Selection(())) == []
    either = Selection((Condition(frozenset({CLAIMED})),
                        Condition(frozenset({QUEUED}), (Place(frozenset({"example.net"})),))))
    assert picked(queue, either) == [str(ALICE), str(BOB)]
    assert run(queue.count(either)) == 2
    assert picked(queue, only(QUEUED, due_by=T0 - 1)) == []
    assert picked(queue, only(QUEUED, due_by=T0)) == [str(BOB), str(ALICE)]
    assert picked(queue, only(QUEUED, due_after=T0)) == []


def test_select_streams_a_long_queue_in_order_and_can_stop_early(queue):
    everyone = [Address(f"u{n}", "example.org") for n in range(5000)]
    for start in range(0, 5000, 500):
        run(queue.submit(message(*everyone[start:start + 500])))
    assert picked(queue, Selection()) == [str(a) for a in everyone]

    async def first_three() -> list[str]:
        async with contextlib.aclosing(queue.select(Selection())) as rows:
            seen = []
            async for row in rows:
                seen.append(row.recipient)
                if len(seen) == 3:
                    break
        return seen

    assert run(first_three()) == ["u0@example.org", "u1@example.org", "u2@example.org"]
    assert run(queue.count(Selection())) == 5000  # the store is still in good order


def test_final_recipients_are_selected_only_when_asked_for(queue):
    entries = run(queue.submit(message(ALICE, BOB, queue_id="Q1")))
    run(queue.claim(ids(entries[:1]), RUNNER, LEASE, T0))
    run(queue.record(RUNNER, [final(delivered(ids(entries)[0], "250 ok"))]))
    assert picked(queue, Selection()) == [str(BOB)]
    everything = Selection((Condition(EVERY_STATE),), queue_ids=("Q1",))
    rows = run(_rows(queue, everything))
    assert [(r.recipient, r.state) for r in rows] == [(str(ALICE), "delivered"),
                                                      (str(BOB), "queued")]


def test_message_info_finds_a_message_by_queue_id(queue):
    entries = run(queue.submit(message(ALICE, queue_id="Q1")))
    info = run(queue.message_info("Q1"))
    assert (info.message_id, info.queue_id, info.sender, info.arrival) == \
        (entries[0].message_id, "Q1", SENDER, T0)
    assert run(queue.message_info("NOPE")) is None


# -- tally -------------------------------------------------------------------------

def test_tally_groups_by_domain_size_class_and_age_class(queue):
    run(queue.submit(message(ALICE, body=b"x" * 100, arrival=T0)))         # age 300
    run(queue.submit(message(ALICE, body=b"x" * 101, arrival=T0 + 1)))     # age 299
    run(queue.submit(message(BOB, body=b"x" * 10, arrival=T0 + 250)))      # age 50
    tallies = run(queue.tally(Selection(), "domain", size_bounds=[100], age_bounds=[60, 300],
                              now=T0 + 300))
    assert sorted(tallies, key=lambda t: (t.key, t.size_class)) == [
        Tally("example.net", 0, 0, 1, T0 + 250, T0 + 250),
        Tally("example.org", 0, 2, 1, T0, T0),          # size == bound: class 0; age == bound
        Tally("example.org", 1, 1, 1, T0 + 1, T0 + 1),  # size above the bound: class 1
    ]


def test_tally_by_sender_counts_recipients_and_next_try_only_of_queued_ones(queue):
    entries = run(queue.submit(message(ALICE, BOB)))
    run(queue.submit(message(ALICE, sender=NULL_SENDER, arrival=T0 + 5)))
    run(queue.claim(ids(entries), RUNNER, LEASE, T0))
    tallies = run(queue.tally(Selection(), "sender"))
    assert sorted(tallies, key=lambda t: t.key) == [
        Tally("", 0, 0, 1, T0 + 5, T0 + 5),
        Tally(str(SENDER), 0, 0, 2, T0, None),  # both in flight: no queued next try
    ]
    assert run(queue.tally(Selection(domain="example.net"), "sender")) == [
        Tally(str(SENDER), 0, 0, 1, T0, None)]


# -- hold, release, requeue ------------------------------------------------------------

def test_a_held_recipient_is_never_claimed_until_released(queue):
    entries = run(queue.submit(message(ALICE, BOB, queue_id="Q1")))
    assert run(queue.hold_recipients(Selection(queue_ids=("Q1",)), T0)) == [Changed("Q1", 2)]
    assert run(queue.claim(ids(entries), RUNNER, LEASE, T0 + 9, force=True)).claimed == []
    assert run(queue.walk()) == []
    assert {row.state for row in run(queue.rows())} == {"held"}
    assert run(queue.hold_recipients(Selection(queue_ids=("Q1",)), T0)) == []  # already held
    assert run(queue.release_recipients(Selection(domain="example.net"), T0 + 50)) == \
        [Changed("Q1", 1)]
    assert [(e.domain, e.next_try) for e in run(queue.walk())] == [("example.net", T0 + 50)]
    result = run(queue.claim(ids(entries), RUNNER, LEASE, T0 + 50))
    assert [r.address for _, rcpts in result.claimed for r in rcpts] == [BOB]


def test_hold_leaves_recipients_in_flight_alone(queue):
    entries = run(queue.submit(message(ALICE, BOB, queue_id="Q1")))
    run(queue.claim(ids(entries[:1]), RUNNER, LEASE, T0))
    assert run(queue.hold_recipients(Selection(), T0)) == [Changed("Q1", 1)]
    assert [r.state for r in run(queue.rows())] == ["claimed", "held"]
    run(queue.record(RUNNER, [final(delivered(ids(entries)[0], "250 ok"))]))
    # The message stays for its held recipient (it once went when the rest was final).
    assert [(r.recipient, r.state) for r in run(queue.rows())] == [(str(BOB), "held")]
    assert run(queue.load_body(entries[0].message_id))


def test_admin_changes_are_logged_for_the_daemon(queue):
    held = run(queue.submit(message(ALICE, queue_id="Q1")))
    deferred_one = run(queue.submit(message(BOB, arrival=T0 + 900, queue_id="Q2")))
    start = run(queue.changes_since(0)).latest
    assert run(queue.changes_since(0)) == Changes(start, [], [])
    run(queue.hold_recipients(Selection(queue_ids=("Q1",)), T0))
    after_hold = run(queue.changes_since(start))
    assert after_hold.latest > start  # the daemon forgets a held recipient
    assert (after_hold.due, after_hold.gone) == ([], ids(held))
    run(queue.release_recipients(Selection(), T0 + 10))
    released = run(queue.changes_since(after_hold.latest))
    assert ids(released.due) == ids(held) and released.due[0].next_try == T0 + 10
    assert released.gone == []
    assert run(queue.requeue_recipients(Selection(queue_ids=("Q2",)), T0 + 20)) == \
        [Changed("Q2", 1)]
    requeued = run(queue.changes_since(released.latest))
    assert requeued.latest > released.latest
    assert [(e.recipient_id, e.next_try) for e in requeued.due] == \
        [(ids(deferred_one)[0], T0 + 20)]
    assert run(queue.changes_since(requeued.latest)) == Changes(requeued.latest, [], [])
    run(queue.claim(ids(held), RUNNER, LEASE, T0 + 20))
    since_start = run(queue.changes_since(start))
    assert ids(since_start.due) == ids(deferred_one)  # only QUEUED ones
    assert since_start.gone == ids(held)              # claimed since: not the scheduler's


def test_deleted_recipients_are_logged_as_gone_for_the_daemon(queue):
    entries = run(queue.submit(message(ALICE, BOB, queue_id="Q1")))
    start = run(queue.changes_since(0)).latest
    run(queue.delete_recipients(Selection(queue_ids=("Q1",)), T0))
    changes = run(queue.changes_since(start))
    assert changes.latest > start
    assert (changes.due, changes.gone) == ([], ids(entries))


def test_requeue_keeps_attempts_and_skips_held_and_claimed_recipients(queue):
    entries = run(queue.submit(message(ALICE, BOB, Address("eve", "example.com"),
                                       queue_id="Q1")))
    run(queue.claim(ids(entries[:1]), RUNNER, LEASE, T0))
    run(queue.hold_recipients(Selection(domain="example.com"), T0))
    assert run(queue.requeue_recipients(Selection(), T0 + 5)) == [Changed("Q1", 1)]
    rows = {r.recipient: r for r in run(queue.rows())}
    assert (rows[str(BOB)].next_try, rows[str(BOB)].attempts) == (T0 + 5, 0)
    assert rows["eve@example.com"].next_try == T0 and rows["eve@example.com"].state == "held"
    assert rows[str(ALICE)].state == "claimed"


# -- delete ------------------------------------------------------------------------------

def test_delete_by_queue_id_removes_the_message_and_its_body(queue):
    entries = run(queue.submit(message(ALICE, BOB, queue_id="Q1")))
    run(queue.submit(message(BOB, queue_id="Q2")))
    run(queue.hold_recipients(Selection(domain="example.net"), T0))
    assert run(queue.delete_recipients(Selection(queue_ids=("Q1",)), T0)) == \
        [Changed("Q1", 2, removed=True)]
    assert [r.queue_id for r in run(queue.rows())] == ["Q2"]
    assert run(queue.message_info("Q1")) is None
    with pytest.raises(QueueError):
        run(queue.load_body(entries[0].message_id))


def test_delete_by_domain_keeps_the_message_for_its_other_recipients(queue):
    entries = run(queue.submit(message(ALICE, BOB, queue_id="Q1")))
    assert run(queue.delete_recipients(Selection(domain="example.org"), T0)) == \
        [Changed("Q1", 1, removed=False)]
    assert [r.recipient for r in run(queue.rows())] == [str(BOB)]
    assert ids(run(queue.walk())) == ids(entries[1:])


def test_a_deleted_recipient_in_flight_records_nothing(queue):
    entries = run(queue.submit(message(ALICE, queue_id="Q1")))
    run(queue.claim(ids(entries), RUNNER, LEASE, T0))
    assert run(queue.delete_recipients(Selection(), T0)) == [Changed("Q1", 1, removed=True)]
    assert run(queue.record(RUNNER, [final(delivered(ids(entries)[0], "250 ok"))])) == \
        Recorded()
    assert run(queue.rows()) == []
    assert run(queue.claim(ids(entries), OTHER, LEASE, T0, force=True)).claimed == []
