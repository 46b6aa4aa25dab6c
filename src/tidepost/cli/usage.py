"""`tidepost link usage`: what each route's link carried, per day or month, for billing.

Reads SPOOL/usage.sqlite (usage/store.py) directly, so it works with the
daemon down; a running daemon writes its counts every few seconds
(usage/meter.py FLUSH_SECONDS), so the last seconds may be missing.

Per route and period: bytes up and down as the link meters them (IP level:
TCP payload, TLS included, retransmissions included, plus an estimate of
the IP and TCP headers), the TCP payload alone, messages whose content went
out, recipients accepted, connections opened, and online seconds (time with
at least one connection open).  With --senders: per envelope sender, route
and period, the bytes of message content sent and the messages (mail for
customer domains, relayed for others, and bounces are not billed to anyone).
Output: a table, or CSV / JSON for an office's billing.
"""

from __future__ import annotations

import csv
import json
import sys

from rich.console import Console
from rich.table import Table

from tidepost.config.schema import Config
from tidepost.sizes import human_bytes
from tidepost.usage.store import USAGE_FILE, UsageRow, UsageStore

ROUTE_FIELDS = ("period", "route", "bytes_up", "bytes_down", "payload_up", "payload_down",
                "messages", "recipients", "connections", "online_seconds")
SENDER_FIELDS = ("period", "route", "sender", "bytes", "messages")


def route_record(row: UsageRow) -> dict:
    """One route line as plain data (the CSV and JSON columns)."""
    u = row.usage
    return {"period": row.period, "route": row.route, "bytes_up": u.ip_up,
            "bytes_down": u.ip_down, "payload_up": u.up, "payload_down": u.down,
            "messages": u.messages, "recipients": u.recipients,
            "connections": u.connections, "online_seconds": round(u.online, 3)}


def sender_record(row: UsageRow) -> dict:
    """One sender line as plain data."""
    return {"period": row.period, "route": row.route, "sender": row.sender,
            "bytes": row.sender_bytes, "messages": row.sender_messages}


def show_usage(config: Config, route: str | None, period: str, senders: bool,
               output: str) -> int:
    """Print the usage rows in the chosen form; 0."""
    store = UsageStore(config.spool_path / USAGE_FILE)
    try:
        rows = store.sender_rows(period, route) if senders else store.rows(period, route)
    finally:
        store.close()
    records = [sender_record(r) if senders else route_record(r) for r in rows]
    fields = SENDER_FIELDS if senders else ROUTE_FIELDS
    if output == "json":
        json.dump(records, sys.stdout, indent=1)
        print()
    elif output == "csv":
        writer = csv.DictWriter(sys.stdout, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        writer.writerows(records)
    elif not records:
        print("no link usage recorded yet")
    else:
        Console().print(_table(records, TABLE_SENDER if senders else TABLE_ROUTE, period))
    return 0


# (column, field) shown in the table; CSV and JSON have every field
TABLE_ROUTE = (("PERIOD", "period"), ("ROUTE", "route"), ("UP", "bytes_up"),
               ("DOWN", "bytes_down"), ("MSGS", "messages"), ("RCPTS", "recipients"),
               ("CONNS", "connections"), ("ONLINE s", "online_seconds"))
TABLE_SENDER = (("PERIOD", "period"), ("ROUTE", "route"), ("SENDER", "sender"),
                ("SENT", "bytes"), ("MSGS", "messages"))


def _table(records: list[dict], columns: tuple[tuple[str, str], ...], period: str) -> Table:
    """The records as a table, byte counts in human units."""
    table = Table(title=f"link usage per {period} (bytes as the link meters them)", box=None,
                  header_style="bold", title_justify="left")
    for title, name in columns:
        table.add_column(title, justify="left" if name in ("period", "route", "sender")
                         else "right")
    for record in records:
        table.add_row(*(_human(name, record[name]) for _, name in columns))
    return table


def _human(name: str, value) -> str:
    """Byte counts in KiB/MiB, the rest as they are."""
    if name.startswith(("bytes", "payload")) and isinstance(value, int):
        return human_bytes(value)
    return str(value)

