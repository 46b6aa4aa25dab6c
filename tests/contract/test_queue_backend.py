"""The QueueBackend contract: one suite, run against every queue store.

Each test reads as a transcript of queue calls.  Coroutines run through
`run` (asyncio.run), so plain pytest suffices.  The tests at the end hold
for SQLite only: several processes on one file, the commit point, and
group commit.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
from pathlib import Path

import pytest

from tidepost.address import NULL_SENDER, Address
from tidepost.errors import AlreadyQueued, QueueError
from tidepost.model import BodyType, MessageInfo, QueuedRecipient, RecipientDsn, ScheduleEntry
from tidepost.outcomes import bounced, deferred, delivered
from tidepost.queue.backend import HoldState, NewMessage, QueueRow, RecipientUpdate, open_queue
from tidepost.queue.selection import Selection
from tidepost.queue.sqlite import MIGRATIONS, SCHEMA, SCHEMA_VERSION, SqliteQueue

T0 = 1_700_000_000.0  # arrival of the first message
LEASE = 600.0
RUNNER = "mx1:100:5000"
OTHER = "mx1:200:6000"
ALICE = Address("alice", "example.org")
BOB = Address("bob", "example.net")
SENDER = Address("carol", "sender.example")


def run(coro):
    """Run one queue call to completion on a fresh event loop."""
    return asyncio.run(coro)


def message(*recipients: Address, arrival: float = T0, sender: Address = SENDER,
            body: bytes = b"Subject: hi\r\n\r\nhello\r\n", queue_id: str = "") -> NewMessage:
    """A NewMessage with defaults that tests override by keyword."""
    return NewMessage(sender, recipients or (ALICE,), body, arrival, queue_id=queue_id)


def ids(entries) -> list[int]:
    """The recipient ids of schedule entries or queued recipients."""
    return [e.recipient_id for e in entries]


def claimed_ids(result) -> list[int]:
    """Recipient ids a ClaimResult says we now hold."""
    return [r.recipient_id for _, rcpts in result.claimed for r in rcpts]


def final(outcome) -> RecipientUpdate:
    """An update that ends a recipient (delivered or bounced)."""
    return RecipientUpdate(outcome, None)


@pytest.fixture(params=["sqlite", "memory", "postgresql"])
def queue(request, tmp_path):
    """Each queue store, opened by name as the daemon opens it."""
    if request.param == "postgresql":
        from tidepost.queue.postgres import PostgresQueue
        store = PostgresQueue(request.getfixturevalue("pg_dsn"))
    else:
        store = open_queue(request.param, tmp_path)
    yield store
    run(store.close())


# -- submit, walk ------------------------------------------------------------

def test_submit_returns_one_entry_per_recipient_due_at_arrival(queue):
    first = run(queue.submit(message(ALICE, BOB)))
    second = run(queue.submit(message(ALICE, arrival=T0 + 5)))
    assert [(e.domain, e.next_try) for e in first] == [("example.org", T0), ("example.net", T0)]
    assert first[0].message_id == first[1].message_id != second[0].message_id
    assert ids(first)[0] < ids(first)[1] < ids(second)[0]
    size = len(message(ALICE).body)
    assert second == [ScheduleEntry(ids(second)[0], second[0].message_id, "example.org", T0 + 5,
                                    size)]  # the size lets the scheduler route by size


def test_walk_lists_queued_recipients_and_entries_since_only_newer_ones(queue):
    first = run(queue.submit(message(ALICE, BOB)))
    second = run(queue.submit(message(BOB)))
    assert run(queue.walk()) == first + second
    assert run(queue.entries_since(ids(first)[-1])) == second
    run(queue.claim(ids(first[:1]), RUNNER, LEASE, T0))
    assert run(queue.walk()) == first[1:] + second


def test_submit_keeps_the_queue_id_chosen_by_submission(queue):
    entries = run(queue.submit(message(queue_id="4F2A9C0B11DE")))
    result = run(queue.claim(ids(entries), RUNNER, LEASE, T0))
    assert result.claimed[0][0].queue_id == "4F2A9C0B11DE"
    assert run(queue.rows())[0].queue_id == "4F2A9C0B11DE"


# -- transfer keys (exactly-once receipt) -------------------------------------

def test_a_repeated_transfer_key_stores_nothing_and_names_the_first_copy(queue):
    first = dataclasses.replace(message(ALICE, queue_id="AAAA00000001"),
                                transfer_keys=("site/Q1/alice", "site/Q1/bob"))
    run(queue.submit(first))
    repeat = dataclasses.replace(message(ALICE, BOB, queue_id="AAAA00000002"),
                                 transfer_keys=("site/Q1/bob",))
    with pytest.raises(AlreadyQueued) as raised:
        run(queue.submit(repeat))
    assert (raised.value.key, raised.value.queue_id) == ("site/Q1/bob", "AAAA00000001")
    assert [row.queue_id for row in run(queue.rows())] == ["AAAA00000001"]
    assert run(queue.known_transfers(["site/Q1/alice", "site/Q2/x"])) == {
        "site/Q1/alice": "AAAA00000001"}


def test_transfer_keys_outlive_their_message_until_forgotten(queue):
    entries = run(queue.submit(dataclasses.replace(message(ALICE), transfer_keys=("k1",))))
    run(queue.claim(ids(entries), RUNNER, LEASE, T0))
    run(queue.record(RUNNER, [final(delivered(ids(entries)[0], "ok"))]))
    assert run(queue.rows()) == []
    assert list(run(queue.known_transfers(["k1"]))) == ["k1"]
    assert run(queue.forget_transfers(T0)) == 0
    assert run(queue.forget_transfers(T0 + 1)) == 1
    assert run(queue.known_transfers(["k1"])) == {}


# -- claim -------------------------------------------------------------------

def test_claim_leases_due_recipients_and_reports_the_rest_not_due(queue):
    now_due = run(queue.submit(message(ALICE, BOB)))
    later = run(queue.submit(message(ALICE, arrival=T0 + 100)))
    result = run(queue.claim(ids(now_due + later), RUNNER, LEASE, T0 + 10))
    info, recipients = result.claimed[0]
    assert len(result.claimed) == 1
    assert info == MessageInfo(now_due[0].message_id, info.queue_id, SENDER, T0,
                               len(b"Subject: hi\r\n\r\nhello\r\n"), BodyType.SEVEN_BIT,
                               False, False)
    assert recipients == [QueuedRecipient(ids(now_due)[0], info.message_id, ALICE),
                          QueuedRecipient(ids(now_due)[1], info.message_id, BOB)]
    assert result.not_due == later


def test_force_claims_recipients_that_are_not_due(queue):
    later = run(queue.submit(message(ALICE, arrival=T0 + 100)))
    result = run(queue.claim(ids(later), RUNNER, LEASE, T0, force=True))
    assert claimed_ids(result) == ids(later)
    assert result.not_due == []


def test_a_second_owner_cannot_claim_what_the_first_holds(queue):
    entries = run(queue.submit(message(ALICE, BOB)))
    run(queue.claim(ids(entries), RUNNER, LEASE, T0))
    stolen = run(queue.claim(ids(entries), OTHER, LEASE, T0, force=True))
    assert stolen.claimed == [] and stolen.not_due == []
    # Nor the holder again: they are in flight, and a second hand-out would
    # deliver them twice (this once happened, to the daemon's own poller).
    again = run(queue.claim(ids(entries), RUNNER, LEASE, T0))
    assert again.claimed == [] and again.not_due == []


def test_claim_skips_unknown_and_finished_recipients(queue):
    entries = run(queue.submit(message(ALICE, BOB)))
    run(queue.claim(ids(entries[:1]), RUNNER, LEASE, T0))
    run(queue.record(RUNNER, [final(delivered(ids(entries)[0], "250 ok"))]))
    result = run(queue.claim(ids(entries) + [9999], OTHER, LEASE, T0))
    assert claimed_ids(result) == ids(entries[1:])
    assert result.not_due == []


# -- record --------------------------------------------------------------------

def test_message_is_dropped_once_every_recipient_is_final(queue):
    entries = run(queue.submit(message(ALICE, BOB, body=b"the body", queue_id="AAAA000000B0")))
    message_id = entries[0].message_id
    run(queue.claim(ids(entries), RUNNER, LEASE, T0))
    first = run(queue.record(RUNNER, [final(delivered(ids(entries)[0], "250 ok"))]))
    assert first.removed == []
    assert [r.recipient for r in run(queue.rows())] == ["bob@example.net"]
    assert run(queue.load_body(message_id)) == b"the body"
    last = run(queue.record(RUNNER, [final(bounced(ids(entries)[1], "5.1.1", "no such user"))]))
    assert last.removed == ["AAAA000000B0"]
    assert run(queue.rows()) == []
    assert run(queue.walk()) == []
    with pytest.raises(QueueError):
        run(queue.load_body(message_id))


def test_deferred_recipient_is_queued_again_with_next_try_attempts_and_error(queue):
    entries = run(queue.submit(message(ALICE)))
    run(queue.claim(ids(entries), RUNNER, LEASE, T0))
    outcome = deferred(ids(entries)[0], "4.4.1", "connection refused")
    run(queue.record(RUNNER, [RecipientUpdate(outcome, T0 + 900)]))
    assert run(queue.walk()) == [ScheduleEntry(ids(entries)[0], entries[0].message_id,
                                               "example.org", T0 + 900, entries[0].size)]
    row, = run(queue.rows())
    assert (row.state, row.attempts, row.next_try, row.last_error) == \
        ("queued", 1, T0 + 900, "4.4.1 connection refused")
    assert run(queue.claim(ids(entries), RUNNER, LEASE, T0 + 60)).not_due == \
        run(queue.walk())
    result = run(queue.claim(ids(entries), RUNNER, LEASE, T0 + 900))
    assert result.claimed[0][1][0].attempts == 1


def test_expired_recipient_is_bounced_and_last_error_is_cut_to_500(queue):
    entries = run(queue.submit(message(ALICE, BOB)))
    run(queue.claim(ids(entries), RUNNER, LEASE, T0))
    expired = deferred(ids(entries)[0], "4.4.7", "x" * 600)  # a deferral past its lifetime
    again = deferred(ids(entries)[1], "4.4.7", "y" * 600)
    run(queue.record(RUNNER, [final(expired), RecipientUpdate(again, T0 + 60)]))
    row, = run(queue.rows())
    assert row.recipient == "bob@example.net"
    assert len(row.last_error) == 500


def test_record_by_a_runner_that_does_not_hold_the_lease_changes_nothing(queue):
    entries = run(queue.submit(message(ALICE)))
    run(queue.claim(ids(entries), RUNNER, LEASE, T0))
    run(queue.record(OTHER, [final(delivered(ids(entries)[0], "250 ok"))]))
    row, = run(queue.rows())
    assert (row.state, row.attempts) == ("claimed", 0)
    run(queue.record(RUNNER, [final(delivered(ids(entries)[0], "250 ok"))]))
    assert run(queue.rows()) == []


def test_record_queues_dsns_in_the_same_call(queue):
    entries = run(queue.submit(message(ALICE, queue_id="AAAA0000000F")))
    run(queue.claim(ids(entries), RUNNER, LEASE, T0))
    dsn = message(SENDER, sender=NULL_SENDER, arrival=T0 + 1, body=b"DSN")
    recorded = run(queue.record(RUNNER, [final(bounced(ids(entries)[0], "5.1.1", "unknown"))],
                                new_messages=[dsn]))
    new = recorded.entries
    assert recorded.removed == ["AAAA0000000F"]  # its only recipient is final
    assert run(queue.walk()) == new
    assert [(e.domain, e.next_try) for e in new] == [("sender.example", T0 + 1)]
    result = run(queue.claim(ids(new), RUNNER, LEASE, T0 + 1))
    assert result.claimed[0][0].sender == NULL_SENDER
    assert run(queue.load_body(new[0].message_id)) == b"DSN"


def test_record_that_fails_changes_nothing(queue):
    entries = run(queue.submit(message(ALICE, queue_id="AAAA00000001")))
    run(queue.claim(ids(entries), RUNNER, LEASE, T0))
    clash = message(SENDER, sender=NULL_SENDER, queue_id="AAAA00000001")
    # SQLite raises sqlite3.IntegrityError here; the contract only asks for atomicity.
    with pytest.raises(Exception):
        run(queue.record(RUNNER, [final(delivered(ids(entries)[0], "250 ok"))],
                         new_messages=[clash]))
    row, = run(queue.rows())
    assert (row.state, row.attempts) == ("claimed", 0)


def test_records_made_at_once_each_report_their_own_messages(queue):
    """A flush finishes jobs on many connections at once; the store may write
    their records in one transaction, but each record still gets its own DSNs
    and removals, and one that fails spoils none of the others."""
    a = run(queue.submit(message(ALICE, queue_id="AAAA000000C1")))
    b = run(queue.submit(message(ALICE, BOB, queue_id="AAAA000000C2")))
    c = run(queue.submit(message(ALICE, queue_id="AAAA000000C3")))
    run(queue.submit(message(BOB, queue_id="AAAA000000C4")))  # stays queued
    run(queue.claim(ids(a + b + c), RUNNER, LEASE, T0))
    dsn = message(SENDER, sender=NULL_SENDER, arrival=T0 + 1, body=b"DSN")
    clash = message(SENDER, sender=NULL_SENDER, queue_id="AAAA000000C4")

    async def at_once():
        return await asyncio.gather(
            queue.record(RUNNER, [final(delivered(ids(a)[0], "250 ok"))]),
            queue.record(RUNNER, [final(bounced(ids(b)[0], "5.1.1", "unknown"))],
                         new_messages=[dsn]),
            queue.record(RUNNER, [final(delivered(ids(b)[1], "250 ok"))]),
            queue.record(RUNNER, [final(delivered(ids(c)[0], "250 ok"))],
                         new_messages=[clash]),
            return_exceptions=True)
    first, with_dsn, last_of_b, failed = run(at_once())
    assert isinstance(failed, Exception)
    assert (first.removed, first.entries) == (["AAAA000000C1"], [])
    assert with_dsn.removed + last_of_b.removed == ["AAAA000000C2"]  # reported once
    assert [e.domain for e in with_dsn.entries] == ["sender.example"] and \
        last_of_b.entries == []
    rows = {(r.queue_id, r.state) for r in run(queue.rows())}
    assert rows == {("AAAA000000C3", "claimed"), ("AAAA000000C4", "queued"),
                    (dsn_queue_id(queue, with_dsn.entries[0]), "queued")}


def dsn_queue_id(queue, entry: ScheduleEntry) -> str:
    """The queue id of the message an entry belongs to."""
    return run(queue.message_by_id(entry.message_id)).queue_id


def test_record_marks_messages_warned(queue):
    entries = run(queue.submit(message(ALICE)))
    run(queue.claim(ids(entries), RUNNER, LEASE, T0))
    outcome = deferred(ids(entries)[0], "4.4.1", "timeout")
    run(queue.record(RUNNER, [RecipientUpdate(outcome, T0 + 60)],
                     warned=[entries[0].message_id]))
    result = run(queue.claim(ids(entries), RUNNER, LEASE, T0 + 60))
    assert result.claimed[0][0].warned is True


# -- orphans and shutdown ------------------------------------------------------

def test_dead_runners_claims_return_uncertain_and_live_runners_unexpired_claims_stay(queue):
    dead_held = run(queue.submit(message(ALICE)))
    live_held = run(queue.submit(message(BOB)))
    run(queue.claim(ids(dead_held), "mx1:1:1", LEASE, T0))
    run(queue.claim(ids(live_held), RUNNER, LEASE, T0))
    assert run(queue.recover_orphans(lambda owner: owner != "mx1:1:1", T0 + 30)) == 1
    assert run(queue.walk()) == dead_held  # next_try kept: it was already due
    result = run(queue.claim(ids(dead_held + live_held), OTHER, LEASE, T0 + 30))
    assert result.claimed[0][1] == [QueuedRecipient(ids(dead_held)[0],
                                                    dead_held[0].message_id, ALICE,
                                                    uncertain=True)]


def test_expired_leases_of_a_live_runner_return_uncertain(queue):
    entries = run(queue.submit(message(ALICE)))
    run(queue.claim(ids(entries), RUNNER, LEASE, T0))
    assert run(queue.recover_orphans(lambda owner: True, T0 + LEASE)) == 0
    assert run(queue.recover_orphans(lambda owner: True, T0 + LEASE + 1)) == 1
    result = run(queue.claim(ids(entries), OTHER, LEASE, T0 + LEASE + 1))
    assert result.claimed[0][1][0].uncertain is True


def test_recovered_recipient_is_due_at_once_and_a_deferral_clears_uncertain(queue):
    later = run(queue.submit(message(ALICE, arrival=T0 + 500)))
    run(queue.claim(ids(later), RUNNER, LEASE, T0, force=True))
    run(queue.recover_orphans(lambda owner: False, T0 + 10))
    assert [e.next_try for e in run(queue.walk())] == [T0 + 10]
    run(queue.claim(ids(later), OTHER, LEASE, T0 + 10))
    outcome = deferred(ids(later)[0], "4.2.0", "mailbox busy")
    run(queue.record(OTHER, [RecipientUpdate(outcome, T0 + 20)]))
    result = run(queue.claim(ids(later), OTHER, LEASE, T0 + 20))
    assert result.claimed[0][1][0].uncertain is False


def test_release_claims_returns_only_that_runners_recipients_unchanged(queue):
    mine = run(queue.submit(message(ALICE)))
    theirs = run(queue.submit(message(BOB)))
    run(queue.claim(ids(mine), RUNNER, LEASE, T0))
    run(queue.claim(ids(theirs), OTHER, LEASE, T0))
    assert run(queue.release_claims(RUNNER)) == 1
    assert run(queue.walk()) == mine
    result = run(queue.claim(ids(mine), OTHER, LEASE, T0))
    assert result.claimed[0][1] == [QueuedRecipient(ids(mine)[0], mine[0].message_id, ALICE)]
    assert run(queue.release_claims(RUNNER)) == 0


# -- holds, reschedule, rows ---------------------------------------------------

def test_hold_states_round_trip(queue):
    assert run(queue.holds()) == {}
    run(queue.set_hold("uplink", True, T0, "tidepost link down"))
    run(queue.set_hold("local", False, T0 + 1, "start"))
    run(queue.set_hold("uplink", False, T0 + 2, "ETRN"))
    assert run(queue.holds()) == {"uplink": HoldState("uplink", False, T0 + 2, "ETRN"),
                                  "local": HoldState("local", False, T0 + 1, "start")}


def test_reschedule_moves_queued_recipients_only(queue):
    queued = run(queue.submit(message(ALICE, arrival=T0 + 900)))
    claimed = run(queue.submit(message(BOB)))
    run(queue.claim(ids(claimed), RUNNER, LEASE, T0))
    run(queue.reschedule(ids(queued + claimed) + [9999], T0 + 5))
    assert [e.next_try for e in run(queue.walk())] == [T0 + 5]
    run(queue.release_claims(RUNNER))
    assert [e.next_try for e in run(queue.walk())] == [T0 + 5, T0]


def test_rows_list_undelivered_recipients_in_queue_order(queue):
    first = run(queue.submit(message(BOB, arrival=T0 + 60, body=b"12345", queue_id="B2")))
    second = run(queue.submit(message(ALICE, BOB, body=b"123", queue_id="A1")))
    run(queue.claim(ids(second[:1]), RUNNER, LEASE, T0))
    b2, a1 = first[0].message_id, second[0].message_id
    assert run(queue.rows()) == [
        QueueRow("B2", T0 + 60, 5, "carol@sender.example", "bob@example.net", "example.net",
                 "queued", 0, T0 + 60, "", b2, ids(first)[0]),
        QueueRow("A1", T0, 3, "carol@sender.example", "alice@example.org", "example.org",
                 "claimed", 0, T0, "", a1, ids(second)[0]),
        QueueRow("A1", T0, 3, "carol@sender.example", "bob@example.net", "example.net",
                 "queued", 0, T0, "", a1, ids(second)[1]),
    ]


def test_rows_show_the_null_sender_as_empty(queue):
    run(queue.submit(message(ALICE, sender=NULL_SENDER)))
    assert run(queue.rows())[0].sender == ""


# -- SQLite only: processes sharing one file, the commit point, group commit ----

def test_message_info_names_a_queued_message_until_it_leaves(queue):
    entries = run(queue.submit(message(ALICE, body=b"Subject: x\r\n\r\n12345\r\n",
                                       queue_id="ABC123")))
    info = run(queue.message_by_id(entries[0].message_id))
    assert (info.queue_id, info.sender, info.size) == ("ABC123", SENDER, 21)
    claimed = run(queue.claim(ids(entries), RUNNER, LEASE, T0))
    run(queue.record(RUNNER, [final(delivered(r.recipient_id, "250 ok"))
                              for _, rcpts in claimed.claimed for r in rcpts]))
    assert run(queue.message_by_id(entries[0].message_id)) is None


def test_pending_summary_sums_queued_recipients_per_domain_size_class_and_due(queue):
    small, large = b"x" * 100, b"y" * 5000
    first = run(queue.submit(message(ALICE, BOB, body=small)))
    run(queue.submit(message(ALICE, Address("dave", "example.org"), body=small)))
    third = run(queue.submit(message(ALICE, body=large)))
    run(queue.submit(message(BOB, body=large, arrival=T0 + 500)))  # not due yet at T0 + 10
    claimed = run(queue.claim([first[1].recipient_id], RUNNER, LEASE, T0))  # BOB's, in flight
    assert claimed_ids(claimed) == [first[1].recipient_id]
    groups = run(queue.pending_summary(T0 + 10, size_bounds=[1000]))
    got = [(g.domain, g.size_class, g.due, g.recipients, g.messages, g.bytes) for g in groups]
    assert got == [("example.net", 1, False, 1, 1, 5000),
                   ("example.org", 0, True, 3, 2, 200),   # two messages, each counted once
                   ("example.org", 1, True, 1, 1, 5000)]
    org_small = groups[1]
    assert org_small.first_message == first[0].message_id
    assert org_small.last_message == first[0].message_id + 1
    assert groups[2].first_message == third[0].message_id
    assert [g.size_class for g in run(queue.pending_summary(T0 + 10))] == [0, 0]  # no bounds


def test_two_processes_claiming_the_same_recipients_never_share_one(tmp_path: Path):
    path = tmp_path / "queue.sqlite"
    first, second = SqliteQueue(path), SqliteQueue(path)

    async def race() -> tuple[set[int], set[int], list[int]]:
        everyone = ids(await first.submit(message(*[Address(f"u{i}", "example.org")
                                                    for i in range(200)])))
        mine: set[int] = set()
        theirs: set[int] = set()
        for n, start in enumerate(range(0, len(everyone), 10)):  # one race per chunk
            chunk = everyone[start:start + 10]
            racers = [(first, RUNNER, mine), (second, OTHER, theirs)]
            if n % 2:
                racers.reverse()  # who starts alternates
            results = await asyncio.gather(*(q.claim(chunk, owner, LEASE, T0)
                                             for q, owner, _ in racers))
            for (_, _, won), result in zip(racers, results):
                won |= set(claimed_ids(result))
        return mine, theirs, everyone

    try:
        mine, theirs, everyone = run(race())
    finally:
        run(first.close())
        run(second.close())
    assert mine.isdisjoint(theirs)
    assert mine | theirs == set(everyone)


def test_a_submit_that_returned_is_visible_to_a_fresh_connection(tmp_path: Path):
    queue = SqliteQueue(tmp_path / "queue.sqlite")

    async def submit_then_look() -> tuple[int, int, int]:
        await queue.submit(message(ALICE, BOB))
        fresh = sqlite3.connect(tmp_path / "queue.sqlite")
        try:
            return tuple(fresh.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
                         for table in ("messages", "bodies", "recipients"))
        finally:
            fresh.close()

    try:
        assert run(submit_then_look()) == (1, 1, 2)
    finally:
        run(queue.close())


def test_fifty_concurrent_submits_all_commit(tmp_path: Path):
    queue = SqliteQueue(tmp_path / "queue.sqlite")

    async def burst() -> list:
        return await asyncio.gather(*(queue.submit(message(ALICE, queue_id=f"Q{i}"))
                                      for i in range(50)))

    try:
        entries = [e for batch in run(burst()) for e in batch]
        assert len({e.recipient_id for e in entries}) == 50
        assert len(run(queue.walk())) == 50
    finally:
        run(queue.close())


def test_one_failing_submit_does_not_spoil_its_group_commit(tmp_path: Path):
    queue = SqliteQueue(tmp_path / "queue.sqlite")

    async def burst() -> list:
        messages = [message(ALICE, queue_id=f"Q{i}") for i in range(20)] + \
            [message(BOB, queue_id="Q7")]
        return await asyncio.gather(*(queue.submit(m) for m in messages),
                                    return_exceptions=True)

    try:
        results = run(burst())
        assert [isinstance(r, Exception) for r in results] == [False] * 20 + [True]
        assert len(run(queue.walk())) == 20
    finally:
        run(queue.close())


def test_an_outcome_that_was_not_attempted_leaves_the_attempt_count(queue):
    from tidepost.outcomes import not_attempted
    entries = run(queue.submit(message(ALICE)))
    run(queue.claim(ids(entries), RUNNER, LEASE, T0))
    run(queue.record(RUNNER, [RecipientUpdate(not_attempted(ids(entries)[0], "4.4.0",
                                                            "route uplink is held"), T0)]))
    row, = run(queue.rows())
    assert (row.state, row.attempts) == ("queued", 0)


# -- DSN requests (RFC 3461) ------------------------------------------------------

def test_dsn_requests_are_kept_per_message_and_per_recipient(queue):
    asked = RecipientDsn("SUCCESS,FAILURE", "rfc822;old-alice@example.org")
    entries = run(queue.submit(dataclasses.replace(
        message(ALICE, BOB), ret="HDRS", envid="env 42+x", dsn={ALICE: asked})))
    result = run(queue.claim(ids(entries), RUNNER, LEASE, T0))
    [(info, recipients)] = result.claimed
    assert (info.ret, info.envid) == ("HDRS", "env 42+x")
    assert [(r.address, r.dsn) for r in recipients] == [(ALICE, asked), (BOB, RecipientDsn())]
    assert run(queue.message_by_id(info.message_id)) == info
    assert run(queue.message_info(info.queue_id)) == info


def test_mail_without_a_dsn_request_keeps_the_default_reports(queue):
    entries = run(queue.submit(message(ALICE)))
    [(info, [recipient])] = run(queue.claim(ids(entries), RUNNER, LEASE, T0)).claimed
    assert (info.ret, info.envid, recipient.dsn) == ("", "", RecipientDsn())
    assert recipient.dsn.wants("FAILURE") and recipient.dsn.wants("DELAY")
    assert not recipient.dsn.wants("SUCCESS")


def test_a_dsn_queued_by_record_keeps_its_own_request(queue):
    first = run(queue.submit(message(ALICE)))
    run(queue.claim(ids(first), RUNNER, LEASE, T0))
    report = dataclasses.replace(message(BOB, sender=NULL_SENDER), envid="dsn-1",
                                 dsn={BOB: RecipientDsn("NEVER")})
    recorded = run(queue.record(RUNNER, [final(bounced(ids(first)[0], "5.1.1", "no"))],
                                [report]))
    [(info, [recipient])] = run(queue.claim(ids(recorded.entries), RUNNER, LEASE, T0)).claimed
    assert (info.envid, recipient.dsn.notify) == ("dsn-1", "NEVER")


def old_spool(path: Path, schema: str, queue_id: str) -> None:
    """A spool made by an older tidepost (`schema`), holding one queued message."""
    old = sqlite3.connect(path)
    old.executescript(schema)
    old.execute("INSERT INTO messages(queue_id, sender, arrival, size, body_type, smtputf8) "
                "VALUES (?, 'a@b.example', 1.0, 3, '7BIT', 0)", (queue_id,))
    old.execute("INSERT INTO bodies VALUES (1, x'616263')")
    old.execute("INSERT INTO recipients(message_id, local, domain, state, next_try) "
                "VALUES (1, 'bob', 'example.net', 'queued', 1.0)")
    old.commit()
    old.close()


def test_a_version_1_spool_is_migrated_at_open_and_keeps_its_mail(tmp_path: Path):
    path = tmp_path / "queue.sqlite"
    old_spool(path, SCHEMA, "OLD000000001")  # the landed schema: no user_version, no transfers
    queue = SqliteQueue(path)
    try:
        assert [row.queue_id for row in run(queue.rows())] == ["OLD000000001"]
        assert run(queue.known_transfers(["x"])) == {}
    finally:
        run(queue.close())
    check = sqlite3.connect(path)
    assert check.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    check.close()


def test_a_version_2_spool_gets_the_change_log_and_keeps_its_mail(tmp_path: Path):
    path = tmp_path / "queue.sqlite"
    old_spool(path, SCHEMA + MIGRATIONS[0] + "PRAGMA user_version=2;", "OLD000000002")
    queue = SqliteQueue(path)
    try:
        run(queue.hold_recipients(Selection(), T0))
        run(queue.release_recipients(Selection(), T0))
        changes = run(queue.changes_since(0))
        assert [e.domain for e in changes.due] == ["example.net"] and changes.latest > 0
    finally:
        run(queue.close())


def test_a_version_3_spool_gets_dsn_columns_and_keeps_its_mail(tmp_path: Path):
    """The schema before DSN requests: its queued mail is delivered with the old defaults."""
    path = tmp_path / "queue.sqlite"
    old_spool(path, SCHEMA + MIGRATIONS[0] + MIGRATIONS[1] + "PRAGMA user_version=3;",
              "OLD000000003")
    queue = SqliteQueue(path)
    try:
        [row] = run(queue.rows())
        assert (row.queue_id, row.recipient, row.state) == ("OLD000000003", "bob@example.net",
                                                            "queued")
        [(info, [recipient])] = run(queue.claim([row.recipient_id], RUNNER, LEASE, T0)).claimed
        assert run(queue.load_body(info.message_id)) == b"abc"
        assert (info.ret, info.envid, recipient.dsn) == ("", "", RecipientDsn())
        asked = RecipientDsn("DELAY", "rfc822;x@example.net")
        entries = run(queue.submit(dataclasses.replace(message(ALICE), ret="FULL",
                                                       dsn={ALICE: asked})))
        [(new, [fresh])] = run(queue.claim(ids(entries), RUNNER, LEASE, T0)).claimed
        assert (new.ret, fresh.dsn) == ("FULL", asked)
    finally:
        run(queue.close())
    check = sqlite3.connect(path)
    assert check.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 4
    check.close()


def test_a_spool_from_a_newer_tidepost_is_refused(tmp_path: Path):
    path = tmp_path / "queue.sqlite"
    newer = sqlite3.connect(path)
    newer.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    newer.close()
    with pytest.raises(QueueError, match="newer"):
        SqliteQueue(path)
