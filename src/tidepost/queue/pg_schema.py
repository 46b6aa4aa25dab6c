"""The PostgreSQL queue schema and its migrations (queue/postgres.py's tables).

Same tables as the SQLite store (queue/sqlite.py), plus what a cluster of
nodes on one database needs:
- `messages.committed`: the transaction that queued the message (xid8), so
  that a node follows new mail by snapshot (QueueBackend.queued_since),
  which sequence numbers cannot do when transactions commit out of order;
- `nodes`: each running node's lease owner and heartbeat (queue/pg_nodes.py);
- `turn_requests`: ETRN/ATRN requests granted, for budgets shared by the
  nodes (smtp_server/cluster_ratelimit.py);
- `customer_domains`, `credentials`, `directory_versions`: the relay role's
  lists, one for the whole cluster (queue/pg_directory.py);
- `customer_releases`: the last ETRN/ATRN release of each customer domain,
  whichever node answered it (queue/pg_directory.py).
Bodies live in their own table, each in one row that PostgreSQL TOASTs out
of line: no scan of `messages` or `recipients` reads a body.

Migrations are append-only steps from version N to N+1, applied at open
under an advisory lock, each in its own transaction: the first node of a
cluster to run a newer tidepost upgrades the schema while the others keep
running (every step only adds), and a node older than the schema refuses
to start.
"""

from __future__ import annotations

import asyncpg

from tidepost.errors import QueueError

MIGRATION_LOCK = 0x7469_6465  # "tide": the advisory lock key of schema changes

MIGRATIONS: tuple[str, ...] = (
    # 1: the queue.
    """
    CREATE TABLE messages (
        id        bigserial PRIMARY KEY,
        queue_id  text NOT NULL UNIQUE,
        sender    text NOT NULL,
        arrival   float8 NOT NULL,
        size      bigint NOT NULL,
        body_type text NOT NULL,
        smtputf8  boolean NOT NULL,
        warned    boolean NOT NULL DEFAULT false,
        committed xid8 NOT NULL DEFAULT pg_current_xact_id()
    );
    CREATE INDEX messages_by_transaction ON messages(committed);
    CREATE TABLE bodies (
        message_id bigint PRIMARY KEY REFERENCES messages(id) ON DELETE CASCADE,
        body       bytea NOT NULL
    );
    ALTER TABLE bodies ALTER COLUMN body SET STORAGE EXTERNAL;
    CREATE TABLE recipients (
        id          bigserial PRIMARY KEY,
        message_id  bigint NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
        local       text NOT NULL,
        domain      text NOT NULL,
        state       text NOT NULL,
        next_try    float8 NOT NULL,
        attempts    integer NOT NULL DEFAULT 0,
        last_error  text NOT NULL DEFAULT '',
        lease_owner text,
        lease_until float8,
        uncertain   boolean NOT NULL DEFAULT false
    );
    CREATE INDEX recipients_by_state ON recipients(state, next_try);
    CREATE INDEX recipients_by_message ON recipients(message_id);
    CREATE INDEX recipients_by_domain ON recipients(domain);
    CREATE TABLE holds (
        route   text PRIMARY KEY,
        held    boolean NOT NULL,
        changed float8 NOT NULL,
        cause   text NOT NULL
    );
    CREATE TABLE transfers (
        key      text PRIMARY KEY,
        queue_id text NOT NULL,
        received float8 NOT NULL
    );
    CREATE INDEX transfers_by_age ON transfers(received);
    CREATE TABLE changes (
        id           bigserial PRIMARY KEY,
        recipient_id bigint NOT NULL,
        changed      float8 NOT NULL
    );
    CREATE INDEX changes_by_age ON changes(changed);
    """,
    # 2: the cluster: nodes and their heartbeats, shared rate-limit state.
    """
    CREATE TABLE nodes (
        owner     text PRIMARY KEY,
        node      text NOT NULL,
        started   float8 NOT NULL,
        heartbeat float8 NOT NULL,
        stopped   boolean NOT NULL DEFAULT false
    );
    CREATE TABLE turn_requests (
        kind   text NOT NULL,
        client text NOT NULL,
        at     float8 NOT NULL,
        owner  text NOT NULL
    );
    CREATE INDEX turn_requests_by_client ON turn_requests(kind, client, at);
    """,
    # 3: the relay role's lists, shared by the cluster (queue/pg_directory.py):
    # customer domain patterns and SMTP AUTH users (scrypt hashes, as the
    # credentials file), each list with a version that every change bumps.
    """
    CREATE TABLE customer_domains (
        pattern text PRIMARY KEY,
        added   float8 NOT NULL
    );
    CREATE TABLE credentials (
        username    text PRIMARY KEY,
        hashed      text NOT NULL,
        domains     text[] NOT NULL DEFAULT '{}',
        cram_secret bytea NOT NULL DEFAULT ''::bytea,
        changed     float8 NOT NULL
    );
    CREATE TABLE directory_versions (
        list    text PRIMARY KEY,
        version bigint NOT NULL
    );
    INSERT INTO directory_versions(list, version) VALUES ('customers', 0), ('credentials', 0);
    """,
    # 4: the last release of each customer domain (ETRN, ATRN), whichever
    # node made it, for `tidepost status` on any node (queue/pg_directory.py).
    # A single node keeps it in SPOOL/customer-releases.json instead.
    """
    CREATE TABLE customer_releases (
        pattern  text PRIMARY KEY,
        released float8 NOT NULL,
        how      text NOT NULL,
        count    integer NOT NULL,
        node     text NOT NULL
    );
    """,
    # 5: DSN requests (RFC 3461): RET and ENVID per message, NOTIFY and ORCPT
    # per recipient; '' is "not given".  A constant default is stored in the
    # catalogue (PostgreSQL 11+): no table rewrite, nodes still on version 4
    # keep inserting without the columns.
    """
    ALTER TABLE messages ADD COLUMN ret text NOT NULL DEFAULT '',
                         ADD COLUMN envid text NOT NULL DEFAULT '';
    ALTER TABLE recipients ADD COLUMN notify text NOT NULL DEFAULT '',
                           ADD COLUMN orcpt text NOT NULL DEFAULT '';
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)


async def migrate(conn: asyncpg.Connection) -> int:
    """Bring the schema up to SCHEMA_VERSION; returns the version found.

    Under an advisory lock, so that nodes starting together migrate once.
    """
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK)
    try:
        await conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version integer NOT NULL)")
        found = await conn.fetchval("SELECT max(version) FROM schema_version") or 0
        if found > SCHEMA_VERSION:
            raise QueueError(f"queue schema version {found} is newer than this tidepost "
                             f"({SCHEMA_VERSION}); upgrade tidepost")
        for version in range(found + 1, SCHEMA_VERSION + 1):
            async with conn.transaction():
                await conn.execute(MIGRATIONS[version - 1])
                await conn.execute("INSERT INTO schema_version(version) VALUES ($1)", version)
        return found
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK)
