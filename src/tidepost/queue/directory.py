"""The relay role's lists kept by the queue store for a whole cluster.

With `[queue] backend = "postgresql"` the customer domains and the SMTP
AUTH users live in the database beside the queue (queue/pg_directory.py),
so that one `tidepost customers add` or `tidepost passwd` on any node
changes every node at once.  This module is the interface the consumers
use (node_relay.py wires it to routing/customers.py and
smtp_server/credentials.py; cli/customers.py and cli/passwd.py manage it):

- `versions()`: a number per list that every change bumps; a node polls it
  (cheap) and re-reads a list only when its number moved;
- `customer_domains()`, `add_customer_domains`, `remove_customer_domains`;
- `credentials()`, `put_credential`, `remove_credential`;
- each change also sends a notice ("customers", "credentials") through the
  store's `on_notice`, so that running nodes re-read at once;
- `releases()`, `note_release`: the last ETRN/ATRN release of each customer
  domain, whichever node answered it (routing/releases.py; only read by
  `tidepost status`, so no version and no notice).

Stores without a cluster (SQLite, RAM) have none of it: `shared_directory`
returns None and the per-node files stay the only source.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, Sequence

CUSTOMERS = "customers"      # the list names: versions() keys and notice payloads
CREDENTIALS = "credentials"


@dataclass(frozen=True, slots=True)
class CredentialRecord:
    """One SMTP AUTH user as stored: never a password, only its scrypt hash.

    `cram_secret` is the opt-in CRAM-MD5 secret (smtp_server/credentials.py
    explains why it has to be password-equivalent); empty when not enabled.
    """

    user: str
    hashed: str
    domains: tuple[str, ...] = ()
    cram_secret: bytes = b""


@dataclass(frozen=True, slots=True)
class ReleaseRecord:
    """The last release of one customer pattern: when, by what (ETRN, ATRN), how many, where."""

    pattern: str
    time: float
    by: str
    count: int
    node: str


class SharedDirectory(Protocol):
    """What a cluster's store offers (queue/postgres.py implements it)."""

    async def versions(self) -> dict[str, int]: ...
    async def customer_domains(self) -> list[str]: ...
    async def add_customer_domains(self, patterns: Sequence[str]) -> list[str]: ...
    async def remove_customer_domains(self, patterns: Sequence[str]) -> list[str]: ...
    async def credentials(self) -> list[CredentialRecord]: ...
    async def put_credential(self, record: CredentialRecord) -> bool: ...
    async def remove_credential(self, user: str) -> bool: ...
    async def releases(self) -> list[ReleaseRecord]: ...
    async def note_release(self, record: ReleaseRecord) -> None: ...


def shared_directory(queue: Any) -> SharedDirectory | None:
    """The store's shared lists, or None for a single node's store."""
    return getattr(queue, "directory", None)
