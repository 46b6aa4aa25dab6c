"""What the PostgreSQL store adds to the contract: several nodes on one database.

Each test opens two or more stores on one database, as two tidepost nodes
do, against the private server of tests/conftest.py (`pg_dsn`).
"""

from __future__ import annotations

import asyncio
import threading
import time

import asyncpg
import pytest

from test_queue_backend import ALICE, BOB, LEASE, OTHER, RUNNER, T0, ids, message, run
from tidepost.errors import QueueError
from tidepost.queue.pg_schema import SCHEMA_VERSION
from tidepost.queue.postgres import PostgresQueue


def claimed(result) -> list[int]:
    return [r.recipient_id for _, rcpts in result.claimed for r in rcpts]


def test_two_nodes_claiming_the_same_recipients_at_once_never_share_one(nodes):
    first, second = nodes(), nodes()
    entries = [e for n in range(200) for e in run(first.submit(message(ALICE, BOB)))]
    wanted = ids(entries)

    async def race():
        return await asyncio.gather(first.claim(wanted, RUNNER, LEASE, T0),
                                    second.claim(wanted, OTHER, LEASE, T0))
    a, b = run(race())
    assert not set(claimed(a)) & set(claimed(b))
    assert sorted(claimed(a) + claimed(b)) == wanted  # skipped rows are the other's


def test_mail_committed_late_with_a_lower_id_is_still_found_by_the_next_look(nodes, pg_dsn):
    store = nodes()
    cursor, _ = run(store.queued_since(None))

    async def late_then_early():
        slow = await asyncpg.connect(pg_dsn)
        transaction = slow.transaction()
        await transaction.start()  # takes the lower ids, commits last
        mid = await slow.fetchval("INSERT INTO messages(queue_id, sender, arrival, size, "
                                  "body_type, smtputf8) VALUES ('LATE', '', 0, 1, '7BIT', "
                                  "false) RETURNING id")
        await slow.execute("INSERT INTO recipients(message_id, local, domain, state, "
                           "next_try) VALUES ($1, 'late', 'example.org', 'queued', 0)", mid)
        early = await store.submit(message(BOB))
        seen_cursor, seen = await store.queued_since(cursor)
        await transaction.commit()
        await slow.close()
        return mid, early, seen_cursor, seen

    late_id, early, cursor, seen = run(late_then_early())
    assert ids(seen) == ids(early) and early[0].message_id > late_id
    cursor, seen = run(store.queued_since(cursor))
    assert [e.message_id for e in seen] == [late_id]
    assert run(store.queued_since(cursor))[1] == []


def test_a_silent_nodes_leases_return_and_a_live_nodes_stay(nodes, pg_dsn):
    live = nodes(owner="mx1:1:1", node="mx1", node_timeout=30)
    silent = nodes(owner="mx2:2:2", node="mx2", node_timeout=30)
    entries = run(live.submit(message(ALICE, BOB)))
    run(live.claim([entries[0].recipient_id], "mx1:1:1", LEASE, T0))
    run(silent.claim([entries[1].recipient_id], "mx2:2:2", LEASE, T0))

    async def stop_heartbeat():
        conn = await asyncpg.connect(pg_dsn)
        await conn.execute("UPDATE nodes SET heartbeat = $1 WHERE owner = 'mx2:2:2'",
                           time.time() - 60)
        await conn.close()
    run(stop_heartbeat())
    # Both processes look alive from here (other hosts): the heartbeat decides.
    assert run(live.recover_orphans(lambda owner: True, T0 + 1)) == 1
    states = {r.recipient_id: r.state for r in run(live.rows())}
    assert states == {entries[0].recipient_id: "claimed", entries[1].recipient_id: "queued"}


def test_a_node_row_lists_its_recipients_in_flight_and_is_marked_stopped_at_close(nodes):
    store = nodes(owner="mx1:1:1", node="mx1")
    entries = run(store.submit(message(ALICE, BOB)))
    run(store.claim(ids(entries), "mx1:1:1", LEASE, T0))
    rows = run(store.cluster_nodes())
    assert [(r.node, r.in_flight, r.stopped) for r in rows] == [("mx1", 2, False)]
    run(store.release_claims("mx1:1:1"))
    viewer = nodes()
    run(store.close())
    assert [(r.node, r.stopped) for r in run(viewer.cluster_nodes())] == [("mx1", True)]


def test_fifty_concurrent_submits_share_commits(nodes, pg_dsn):
    store = nodes()

    async def fifty():
        return await asyncio.gather(*(store.submit(message(ALICE)) for _ in range(50)))
    entries = run(fifty())
    assert len({e[0].message_id for e in entries}) == 50

    async def transactions():
        conn = await asyncpg.connect(pg_dsn)
        count = await conn.fetchval("SELECT count(DISTINCT committed) FROM messages")
        await conn.close()
        return count
    assert run(transactions()) < 10


def test_a_commit_on_one_node_wakes_the_other(nodes):
    sender, listener = nodes(owner="mx1:1:1"), nodes(owner="mx2:2:2")

    async def wake():
        heard: asyncio.Queue = asyncio.Queue()
        await listener.on_notice(heard.put_nowait)
        await sender.submit(message(ALICE))
        return await asyncio.wait_for(heard.get(), 5)
    assert run(wake()) == "mx1:1:1"


def test_nodes_starting_together_on_an_empty_database_migrate_once(pg_dsn):
    stores: list = []
    threads = [threading.Thread(target=lambda: stores.append(PostgresQueue(pg_dsn)))
               for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert len(stores) == 4
        versions = run(stores[0]._fetch("SELECT version FROM schema_version ORDER BY 1"))
        assert [v[0] for v in versions] == list(range(1, SCHEMA_VERSION + 1))
    finally:
        for store in stores:
            run(store.close())


def test_a_running_version_4_database_gets_dsn_columns_and_keeps_its_mail(pg_dsn):
    """Migration 5 on a database that holds mail: old rows get the default request."""
    from tidepost.model import RecipientDsn
    from tidepost.queue.pg_schema import MIGRATIONS

    async def version_4() -> None:
        conn = await asyncpg.connect(pg_dsn)
        try:
            await conn.execute("CREATE TABLE schema_version (version integer NOT NULL)")
            for version, step in enumerate(MIGRATIONS[:4], 1):
                await conn.execute(step)
                await conn.execute("INSERT INTO schema_version VALUES ($1)", version)
            await conn.execute(
                "INSERT INTO messages(queue_id, sender, arrival, size, body_type, smtputf8) "
                "VALUES ('OLD4', 'a@b.example', 1.0, 3, '7BIT', false)")
            await conn.execute("INSERT INTO bodies SELECT id, 'abc' FROM messages")
            await conn.execute("INSERT INTO recipients(message_id, local, domain, state, "
                               "next_try) SELECT id, 'bob', 'example.net', 'queued', 1.0 "
                               "FROM messages")
        finally:
            await conn.close()
    run(version_4())
    store = PostgresQueue(pg_dsn)
    try:
        [row] = run(store.rows())
        [(info, [recipient])] = run(store.claim([row.recipient_id], RUNNER, LEASE, T0)).claimed
        assert (info.queue_id, info.ret, info.envid) == ("OLD4", "", "")
        assert recipient.dsn == RecipientDsn()
        assert run(store.load_body(info.message_id)) == b"abc"
    finally:
        run(store.close())


def test_a_database_of_a_newer_tidepost_is_refused(nodes, pg_dsn):
    run(nodes()._fetch("INSERT INTO schema_version(version) VALUES ($1) RETURNING version",
                       SCHEMA_VERSION + 1))
    with pytest.raises(QueueError, match="newer"):
        PostgresQueue(pg_dsn)


def test_a_25_mb_body_comes_back_whole(nodes):
    store = nodes()
    body = b"Subject: big\r\n\r\n" + b"x" * (25 * 1024 * 1024)
    entries = run(store.submit(message(ALICE, body=body)))
    assert run(store.load_body(entries[0].message_id)) == body


def test_an_unreachable_database_is_a_queue_error():
    with pytest.raises(QueueError, match="cannot open the queue database"):
        PostgresQueue("postgresql://nobody@127.0.0.1:9/none")


def test_an_etrn_budget_is_shared_by_the_nodes(nodes):
    from tidepost.smtp_server.cluster_ratelimit import ClusterRateLimiter
    first, second = nodes(owner="mx1:1:1"), nodes(owner="mx2:2:2")

    async def spread():
        here = ClusterRateLimiter(first, "etrn", 3)
        there = ClusterRateLimiter(second, "etrn", 3)
        granted = [here.allow("192.0.2.7"), here.allow("192.0.2.7")]
        await asyncio.sleep(0.2)  # the background writes
        await there.refresh()
        granted += [there.allow("192.0.2.7"), there.allow("192.0.2.7"),
                    there.allow("198.51.100.1")]
        return granted
    assert run(spread()) == [True, True, True, False, True]  # 3 a minute, wherever asked
