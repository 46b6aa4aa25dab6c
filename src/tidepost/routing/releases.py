"""The last release of each customer domain (relay role), remembered in the spool.

When a customer asks for its mail (ETRN, ATRN), the relay notes when, by
whom and how much went, in SPOOL/customer-releases.json, so that
`tidepost status` can show it with the daemon down.  node_relay.py writes
it; this module only knows where it is and how to read it, so that status
need not load the relay's wiring.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tidepost.config.schema import Config

RELEASES_FILE = "customer-releases.json"


def releases_path(config: Config) -> Path:
    """Where the last release of each customer domain is remembered."""
    return config.spool_path / RELEASES_FILE


def read_releases(config: Config) -> dict[str, dict[str, Any]]:
    """{pattern: {"time": unix seconds, "by": "ETRN from 192.0.2.1", "count": n}}."""
    try:
        return json.loads(releases_path(config).read_text())
    except (OSError, ValueError):
        return {}
