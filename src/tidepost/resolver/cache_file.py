"""The DNS cache file's name, and its statistics read without the resolver.

`tidepost status` shows how many answers the cache holds; it reads them
here, with nothing but sqlite3, so that it need not load the resolver
(dnspython) to print one line.  The cache itself is resolver/cache.py.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

CACHE_FILE = "dns-cache.sqlite"


def read_statistics(path: Path, now: float) -> dict[str, int]:
    """Entries in a cache file, valid ones, negative ones, and its size in bytes.

    For `tidepost status`, which may run without the daemon; a missing file
    gives zeros.  Opens the file read-only and sends nothing anywhere.
    """
    path = Path(path)
    if not path.exists():
        return {"entries": 0, "valid": 0, "negative": 0, "bytes": 0}
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5.0)
    try:
        entries, valid, negative = db.execute(
            "SELECT count(*), count(*) FILTER (WHERE expires > ?), "
            "count(*) FILTER (WHERE expires > ? AND (exists_ = 0 OR records = '[]')) "
            "FROM answers", (now, now)).fetchone()
    except sqlite3.OperationalError:  # no table yet
        entries = valid = negative = 0
    finally:
        db.close()
    size = sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))
    return {"entries": entries, "valid": valid, "negative": negative, "bytes": size}
