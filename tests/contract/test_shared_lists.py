"""The cluster's shared lists in PostgreSQL: customer domains, AUTH users, releases.

Two stores on one database stand for two nodes (or a node and a `tidepost
customers` command): what one writes the other reads, every change bumps
its list's version and wakes the other store's listeners; the LISTEN
connection comes back by itself after the server dropped it.  The last
release of each customer domain noted by one node is read by the other
(the later one stays), and its table comes to a running older cluster by
migration.
"""

from __future__ import annotations

import asyncio

import asyncpg

from test_queue_backend import run
from tidepost.queue.backend import NOTICE_RECONNECTED
from tidepost.queue.directory import CredentialRecord, ReleaseRecord, shared_directory
from tidepost.smtp_server.credentials import Credentials, new_record


def test_customer_domains_added_on_one_store_are_read_on_the_other(nodes):
    a, b = shared_directory(nodes()), shared_directory(nodes())
    assert run(a.customer_domains()) == []
    assert run(a.add_customer_domains(["site.test", ".far.test", "site.test"])) == \
        [".far.test", "site.test"]
    assert run(b.add_customer_domains(["site.test", "new.test"])) == ["new.test"]
    assert run(b.customer_domains()) == [".far.test", "new.test", "site.test"]
    assert run(a.remove_customer_domains(["site.test", "never.test"])) == ["site.test"]
    assert run(b.customer_domains()) == [".far.test", "new.test"]


def test_every_change_bumps_only_its_own_lists_version(nodes):
    directory = shared_directory(nodes())
    before = run(directory.versions())
    run(directory.add_customer_domains(["site.test"]))
    middle = run(directory.versions())
    assert middle["customers"] == before["customers"] + 1
    assert middle["credentials"] == before["credentials"]
    run(directory.put_credential(CredentialRecord("ship", "scrypt$a$b")))
    after = run(directory.versions())
    assert after["credentials"] == middle["credentials"] + 1
    assert after["customers"] == middle["customers"]


def test_a_user_stored_is_replaced_by_name_and_removed(nodes):
    a, b = shared_directory(nodes()), shared_directory(nodes())
    first = new_record("ship", "sekrit", ("site.test",))
    assert run(a.put_credential(first)) is False
    second = new_record("ship", "other", ("site.test", ".far.test"), cram_md5=True)
    assert run(b.put_credential(second)) is True
    [stored] = run(a.credentials())
    assert stored == second and stored.cram_secret == b"other"
    assert "other" not in stored.hashed  # a hash, never the password itself
    users = Credentials.combined(run(a.credentials()))
    assert users.check("ship", "other") and not users.check("ship", "sekrit")
    assert users.domains_of("ship") == ("site.test", ".far.test")
    assert run(a.remove_credential("ship")) is True
    assert run(a.remove_credential("ship")) is False
    assert run(b.credentials()) == []


def test_a_change_on_one_store_wakes_the_listeners_of_the_other(nodes):
    node, command = nodes(owner="mx1:1:1"), nodes()

    async def hear() -> list[str]:
        heard: asyncio.Queue = asyncio.Queue()
        await node.on_notice(heard.put_nowait)
        directory = shared_directory(command)
        await directory.add_customer_domains(["site.test"])
        await directory.put_credential(CredentialRecord("ship", "scrypt$a$b"))
        return [await asyncio.wait_for(heard.get(), 5) for _ in range(2)]
    assert run(hear()) == ["customers", "credentials"]


def test_the_listen_connection_comes_back_after_the_server_dropped_it(nodes, pg_dsn):
    node, command = nodes(owner="mx1:1:1"), nodes()

    async def drop_and_hear() -> list[str]:
        heard: asyncio.Queue = asyncio.Queue()
        await node.on_notice(heard.put_nowait)
        admin = await asyncpg.connect(pg_dsn)
        try:
            dropped = await admin.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE query LIKE 'LISTEN%' AND pid <> pg_backend_pid()")
        finally:
            await admin.close()
        assert dropped == 1
        back = await asyncio.wait_for(heard.get(), 10)
        await shared_directory(command).add_customer_domains(["site.test"])
        return [back, await asyncio.wait_for(heard.get(), 5)]
    assert run(drop_and_hear()) == [NOTICE_RECONNECTED, "customers"]


def test_a_release_noted_on_one_store_is_read_on_the_other_and_the_later_stays(nodes):
    a, b = shared_directory(nodes()), shared_directory(nodes())
    assert run(b.releases()) == []
    first = ReleaseRecord("site.test", 1000.0, "ETRN", 3, "mx1")
    run(a.note_release(first))
    run(a.note_release(ReleaseRecord(".far.test", 1001.0, "ATRN", 0, "mx1")))
    assert run(b.releases()) == [ReleaseRecord(".far.test", 1001.0, "ATRN", 0, "mx1"), first]
    later = ReleaseRecord("site.test", 1002.0, "ATRN", 1, "mx2")
    run(b.note_release(later))
    run(a.note_release(first))  # an ETRN answered earlier, recorded last: it does not win
    assert [r for r in run(a.releases()) if r.pattern == "site.test"] == [later]
    before = run(a.versions())
    assert run(b.versions()) == before  # no list changed: nothing for the nodes to re-read


RELEASES_STEP = 4  # the pg_schema migration that made customer_releases


def test_the_releases_table_comes_to_a_running_cluster_of_the_schema_before(nodes, pg_dsn):
    older = nodes(owner="mx1:1:1")  # a node still running, as if at the schema before

    async def back_to_the_schema_before():
        conn = await asyncpg.connect(pg_dsn)
        try:
            await conn.execute("DROP TABLE customer_releases")
            # and the step after it (5: DSN requests), which the open then repeats
            await conn.execute("ALTER TABLE messages DROP COLUMN ret, DROP COLUMN envid")
            await conn.execute("ALTER TABLE recipients DROP COLUMN notify, DROP COLUMN orcpt")
            await conn.execute("DELETE FROM schema_version WHERE version >= $1", RELEASES_STEP)
        finally:
            await conn.close()
    run(back_to_the_schema_before())
    run(shared_directory(older).add_customer_domains(["site.test"]))
    newer = shared_directory(nodes(owner="mx2:2:2"))  # its open migrates
    run(newer.note_release(ReleaseRecord("site.test", 1000.0, "ETRN", 2, "mx2")))
    assert [r.node for r in run(shared_directory(older).releases())] == ["mx2"]
    assert run(shared_directory(older).customer_domains()) == ["site.test"]  # kept


def test_a_single_node_store_has_no_shared_lists(tmp_path):
    from tidepost.queue.sqlite import SqliteQueue
    store = SqliteQueue(tmp_path / "queue.sqlite")
    try:
        assert shared_directory(store) is None
    finally:
        run(store.close())
