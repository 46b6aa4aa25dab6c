"""SQL for the queue views and admin changes of the PostgreSQL store.

Turns a Selection (queue/selection.py) into a WHERE clause over
`messages m` and `recipients r` with numbered parameters, and runs the
statements that list, count and tally recipients and the admin changes
(hold, release, requeue, delete), each inside the caller's transaction.
Lists of domains or queue ids go in as one array parameter.  The change
log is written under an advisory lock, so that change numbers are handed
out in commit order and a daemon reading "changes after N" never skips one
committed late (admin changes are rare; the lock costs nothing measurable).
"""

from __future__ import annotations

from typing import Any, Sequence

import asyncpg

from tidepost.model import RecipientState, ScheduleEntry
from tidepost.queue.selection import (CLAIMED, HELD, QUEUED, UNDELIVERED, Changed, Changes,
                                      Condition,
                                      Place, Selection, Tally, TallyKey)

CHANGE_MEMORY = 86400.0  # seconds the change log is kept, as in sqlite_views.py
CHANGE_LOCK = 0x7469_6466  # advisory lock key of change-log writers
NOTICE_CHANNEL = "tidepost_queue"  # LISTEN/NOTIFY channel of the cluster's wake-ups

ROW_COLUMNS = (
    "m.queue_id, m.arrival, m.size, m.sender, "
    "r.local || CASE WHEN r.domain='' THEN '' ELSE '@' || r.domain END, "
    "r.domain, r.state, r.attempts, r.next_try, r.last_error, m.id, r.id, "
    "CASE WHEN r.state = 'claimed' THEN coalesce((SELECT n.node FROM nodes n "
    "WHERE n.owner = r.lease_owner), '') ELSE '' END")
SOURCE = "recipients r JOIN messages m ON m.id = r.message_id"
UNDELIVERED_STATES = [s.value for s in (QUEUED, CLAIMED, HELD)]


class Args:
    """Numbered query parameters: `add(value)` returns its placeholder."""

    def __init__(self) -> None:
        self.values: list[Any] = []

    def add(self, value: Any) -> str:
        self.values.append(value)
        return f"${len(self.values)}"


def where(selection: Selection, args: Args) -> str:
    """The WHERE clause (without the word) for `selection`."""
    parts: list[str] = []
    if selection.queue_ids is not None:
        parts.append(f"m.queue_id = ANY({args.add(list(selection.queue_ids))}::text[])")
    if selection.sender is not None:
        parts.append(f"m.sender = {args.add(selection.sender)}")
    if selection.domain is not None:
        parts.append(f"(r.domain = {args.add(selection.domain)} OR "
                     f"right(r.domain, {args.add(len(selection.domain) + 1)}) = "
                     f"{args.add('.' + selection.domain)})")
    if selection.arrived_before is not None:
        parts.append(f"m.arrival < {args.add(selection.arrived_before)}")
    conditions = [_condition(c, args) for c in selection.any_of]
    parts.append("(" + " OR ".join(conditions or ["false"]) + ")")
    return " AND ".join(parts)


def _condition(condition: Condition, args: Args) -> str:
    """One condition as SQL."""
    states = sorted(s.value for s in condition.states)
    sql = [f"r.state = ANY({args.add(states)}::text[])"]
    if condition.places is not None:
        sql.append("(" + " OR ".join([_place(p, args) for p in condition.places] or ["false"])
                   + ")")
    if condition.due_by is not None:
        sql.append(f"r.next_try <= {args.add(condition.due_by)}")
    if condition.due_after is not None:
        sql.append(f"r.next_try > {args.add(condition.due_after)}")
    return "(" + " AND ".join(sql) + ")"


def _place(place: Place, args: Args) -> str:
    """One place as SQL."""
    sql = (f"(r.domain = ANY({args.add(sorted(place.domains))}::text[]) "
           f"AND m.size > {args.add(place.above)}")
    if place.up_to is not None:
        sql += f" AND m.size <= {args.add(place.up_to)}"
    return sql + ")"


def select_sql(selection: Selection) -> tuple[str, list]:
    """The listing query for `selection` (QueueBackend.select) and its arguments."""
    args = Args()
    clause = where(selection, args)
    return f"SELECT {ROW_COLUMNS} FROM {SOURCE} WHERE {clause} ORDER BY r.id", args.values


async def count_rows(conn: asyncpg.Connection, selection: Selection) -> int:
    """How many recipients `selection` picks."""
    args = Args()
    clause = where(selection, args)
    source = SOURCE if _needs_messages(selection) else "recipients r"
    return await conn.fetchval(f"SELECT count(*) FROM {source} WHERE {clause}", *args.values)


def _needs_messages(selection: Selection) -> bool:
    """True when `selection` looks at message columns (queue id, sender, arrival, size)."""
    return (selection.queue_ids is not None or selection.sender is not None or
            selection.arrived_before is not None or
            any(c.places is not None for c in selection.any_of))


async def tally_rows(conn: asyncpg.Connection, selection: Selection, by: TallyKey,
                     size_bounds: Sequence[int], age_bounds: Sequence[float],
                     now: float) -> list[Tally]:
    """Grouped counts of the selected recipients (QueueBackend.tally)."""
    key = {"domain": "r.domain", "sender": "m.sender"}[by]
    args = Args()
    size_sql = _classes("m.size <= {}", sorted(size_bounds), args)
    age_sql = _classes("m.arrival > {}", [now - b for b in sorted(age_bounds)], args)
    queued = args.add(QUEUED.value)
    clause = where(selection, args)
    rows = await conn.fetch(
        f"SELECT {key}, {size_sql}, {age_sql}, count(*), min(m.arrival), "
        f"min(CASE WHEN r.state = {queued} THEN r.next_try END) FROM {SOURCE} "
        f"WHERE {clause} GROUP BY 1, 2, 3", *args.values)
    return [Tally(*row) for row in rows]


def _classes(test: str, bounds: Sequence[float], args: Args) -> str:
    """A CASE giving the index of the first bound for which `test` holds, else len(bounds)."""
    if not bounds:
        return "0"
    whens = " ".join(f"WHEN {test.format(args.add(b))} THEN {i}" for i, b in enumerate(bounds))
    return f"CASE {whens} ELSE {len(bounds)} END"


async def _picked(conn: asyncpg.Connection, selection: Selection,
                  states: frozenset[RecipientState]) -> list[tuple[int, int, str]]:
    """(recipient id, message id, queue id) of the selected recipients in `states`, locked."""
    narrowed = Selection(tuple(Condition(c.states & states, c.places, c.due_by, c.due_after)
                               for c in selection.any_of),
                         selection.queue_ids, selection.sender, selection.domain,
                         selection.arrived_before)
    args = Args()
    clause = where(narrowed, args)
    # FOR UPDATE OF r: a recipient a node is claiming right now is skipped by
    # neither; the second waits and then sees the first's state.
    rows = await conn.fetch(f"SELECT r.id, m.id, m.queue_id FROM {SOURCE} WHERE {clause} "
                            "ORDER BY r.id FOR UPDATE OF r", *args.values)
    return [(r[0], r[1], r[2]) for r in rows]


def _changed(picked: list[tuple[int, int, str]]) -> list[Changed]:
    """One Changed per message among `picked`, in first-seen order."""
    counts: dict[str, int] = {}
    for _, _, queue_id in picked:
        counts[queue_id] = counts.get(queue_id, 0) + 1
    return [Changed(queue_id, n) for queue_id, n in counts.items()]


async def log_changes(conn: asyncpg.Connection, ids: list[int], now: float) -> None:
    """Note recipients in the change log (in commit order: see the module docstring).

    Admin holds, releases, requeues and deletes, and in a cluster also the
    recipients that became QUEUED again after a claim (a deferral, a dead
    node's lease), so that every node's scheduler learns them
    (QueueBackend.changes_since).
    """
    if not ids:
        return
    await conn.execute("SELECT pg_advisory_xact_lock($1)", CHANGE_LOCK)
    await conn.execute("DELETE FROM changes WHERE changed < $1", now - CHANGE_MEMORY)
    await conn.execute("INSERT INTO changes(recipient_id, changed) "
                       "SELECT unnest($1::int8[]), $2", ids, now)
    await conn.execute("SELECT pg_notify($1, 'changes')", NOTICE_CHANNEL)


async def hold(conn: asyncpg.Connection, selection: Selection, now: float) -> list[Changed]:
    """QUEUED -> HELD for the selected recipients; logged as changes."""
    picked = await _picked(conn, selection, frozenset({QUEUED}))
    ids = [p[0] for p in picked]
    await conn.execute("UPDATE recipients SET state = $1 WHERE id = ANY($2::int8[])",
                       HELD.value, ids)
    await log_changes(conn, ids, now)
    return _changed(picked)


async def release(conn: asyncpg.Connection, selection: Selection, now: float) -> list[Changed]:
    """HELD -> QUEUED, due now, for the selected recipients; logged as changes."""
    picked = await _picked(conn, selection, frozenset({HELD}))
    ids = [p[0] for p in picked]
    await conn.execute("UPDATE recipients SET state = $1, next_try = $2 "
                       "WHERE id = ANY($3::int8[])", QUEUED.value, now, ids)
    await log_changes(conn, ids, now)
    return _changed(picked)


async def requeue(conn: asyncpg.Connection, selection: Selection, now: float) -> list[Changed]:
    """QUEUED recipients due now; logged as changes."""
    picked = await _picked(conn, selection, frozenset({QUEUED}))
    ids = [p[0] for p in picked]
    await conn.execute("UPDATE recipients SET next_try = $1 WHERE id = ANY($2::int8[])",
                       now, ids)
    await log_changes(conn, ids, now)
    return _changed(picked)


async def delete(conn: asyncpg.Connection, selection: Selection, now: float) -> list[Changed]:
    """Delete the selected undelivered recipients, and messages left with none."""
    picked = await _picked(conn, selection, UNDELIVERED)
    await conn.execute("DELETE FROM recipients WHERE id = ANY($1::int8[])",
                       [p[0] for p in picked])
    messages = sorted({p[1] for p in picked})
    removed = {row[0] for row in await conn.fetch(
        "DELETE FROM messages WHERE id = ANY($1::int8[]) AND NOT EXISTS "
        "(SELECT 1 FROM recipients r WHERE r.message_id = messages.id "
        "AND r.state = ANY($2::text[])) RETURNING queue_id", messages, UNDELIVERED_STATES)}
    await log_changes(conn, [p[0] for p in picked], now)
    return [Changed(c.queue_id, c.recipients, c.queue_id in removed) for c in _changed(picked)]


async def changes_since(conn: asyncpg.Connection, change: int) -> Changes:
    """The latest change number, and the recipients changed after `change`."""
    latest = await conn.fetchval("SELECT coalesce(max(id), 0) FROM changes")
    # The ids first: a join with the change log could scan every recipient.
    ids = [row[0] for row in await conn.fetch(
        "SELECT DISTINCT recipient_id FROM changes WHERE id > $1 AND id <= $2 ORDER BY 1",
        change, latest)]
    rows = await conn.fetch(
        "SELECT r.id, r.message_id, r.domain, r.next_try, m.size FROM recipients r "
        "JOIN messages m ON m.id = r.message_id WHERE r.state = $1 AND r.id = ANY($2::int8[]) "
        "ORDER BY r.id", QUEUED.value, ids)
    return Changes.of(max(latest, change), ids, [ScheduleEntry(*row) for row in rows])
