"""Reading docs/REPLIES.md: its table rows, and the (code, status) pairs it documents.

Used by tests/unit/test_replies_table.py (the table against the code) and
by the session fuzz target (every reply the server sends is in the table).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

TABLE = Path(__file__).resolve().parents[1] / "docs" / "REPLIES.md"
HEADER = ["reply", "code", "status", "command", "when"]


def table_rows() -> list[dict[str, str]]:
    """Every row of every table in REPLIES.md with the expected header, and its section."""
    rows, header, section = [], None, ""
    for line in TABLE.read_text(encoding="utf-8").splitlines():
        if line.startswith("## "):
            section = line[3:].strip()
        if not line.startswith("|"):
            header = None
            continue
        cells = [cell.strip().strip("`") for cell in line.strip().strip("|").split("|")]
        if header is None:
            header = cells
        elif set(line) - set("|-: ") and header == HEADER:
            rows.append({**dict(zip(header, cells)), "section": section})
    return rows


@lru_cache(maxsize=1)
def documented_replies() -> frozenset[tuple[int, str]]:
    """Every (code, enhanced status) the table lists."""
    return frozenset((int(row["code"]), row["status"]) for row in table_rows())
