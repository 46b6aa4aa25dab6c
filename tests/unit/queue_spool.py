"""A spool with one recipient in each state `tidepost queue` shows, for the queue CLI tests.

The `queue_spool` fixture (import it into the test module) gives a QueueSpool:
a configuration with a LAN route, a scheduled route, a held uplink with a
size limit (larger mail falls through to `bulk`), a customer domain, and a
real SQLite queue in a temporary spool, filled by `fill()` with eight
messages, one per state.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tidepost.address import Address
from tidepost.config.load import parse_config
from tidepost.config.schema import Config
from tidepost.outcomes import deferred
from tidepost.queue.backend import NewMessage, RecipientUpdate
from tidepost.queue.selection import Selection
from tidepost.queue.sqlite import SqliteQueue

CONFIG = """hostname = "site.test"
spool = "{spool}"

[system]
user = "root"   # commands run in this process must not give up root (become_spool_owner)

[relay]
customer_domains = ["cust.test"]

[[route]]
name = "lan"
domains = [".lan.test"]
on_demand = false

[[route]]
name = "harbour"
domains = [".harbour.test"]
schedule = ["22:00-23:00 every 1h"]

[[route]]
name = "uplink"
domains = ["*"]
start_held = true
max_message_size = "1k"

[[route]]
name = "bulk"
domains = ["*"]
"""
SENDER = Address("root", "site.test")
SMALL = b"Subject: small\r\nX-Test: yes\r\n\r\nhello\r\n"
BIG = b"Subject: big\r\n\r\n" + b"y" * 2000 + b"\r\n"
RETRY_IN = 600.0
# recipient -> (state the listing shows, its kind, age in seconds)
EXPECTED = {
    "alice@a.lan.test": ("queued", "queued", 60),
    "bob@b.lan.test": ("retry", "retry", 400),
    "carol@x.harbour.test": ("scheduled 22:00", "scheduled", 700),
    "dave@example.org": ("held (route uplink)", "held", 1500),
    "eve@example.org": ("queued", "queued", 3000),          # 2 KB: over uplink's limit: bulk
    "frank@cust.test": ("held (route customers)", "held", 7000),
    "gina@c.lan.test": ("held (message)", "held", 90000),
    "hank@d.lan.test": ("in flight", "in-flight", 200000),
}


@dataclass
class QueueSpool:
    """A configured spool and the queue ids of what `fill()` queued, by recipient."""

    config: Config
    path: Path
    queue_ids: dict[str, str]

    def open(self) -> SqliteQueue:
        """The spool's queue (close it again)."""
        return SqliteQueue(self.path / "queue.sqlite")

    def fill(self) -> QueueSpool:
        """Queue one message per entry of EXPECTED, in that order, in its state."""
        asyncio.run(self._fill())
        return self

    async def _fill(self) -> None:
        queue = self.open()
        now = time.time()
        try:
            for number, (address, (_, _, age)) in enumerate(EXPECTED.items()):
                queue_id = f"Q{number:011d}"
                local, domain = address.split("@")
                body = BIG if local == "eve" else SMALL
                entries = await queue.submit(NewMessage(SENDER, (Address(local, domain),), body,
                                                        now - age, queue_id=queue_id))
                self.queue_ids[address] = queue_id
                await self._set_state(queue, local, [e.recipient_id for e in entries],
                                      queue_id, now)
        finally:
            await queue.close()

    @staticmethod
    async def _set_state(queue: SqliteQueue, local: str, ids: list[int], queue_id: str,
                         now: float) -> None:
        """Move a fresh recipient into the state its name stands for."""
        if local in ("bob", "hank"):
            await queue.claim(ids, "test:1:1", 3600, now, force=True)
        if local == "bob":
            outcome = deferred(ids[0], "4.4.1", "connection refused by mx.b.lan.test")
            await queue.record("test:1:1", [RecipientUpdate(outcome, now + RETRY_IN)])
        if local == "gina":
            await queue.hold_recipients(Selection(queue_ids=(queue_id,)), now)


@pytest.fixture
def queue_spool(tmp_path):
    """An empty QueueSpool; call fill() for the eight messages."""
    return QueueSpool(parse_config(CONFIG.format(spool=tmp_path), "test.toml"), tmp_path, {})
