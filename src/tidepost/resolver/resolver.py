"""DNS lookups for outbound mail: MX, A and AAAA, asynchronously.

Role: the only way to send DNS queries.  `Resolver.query(name, rdtype)` is
the one method that reaches the network (through resolver/network.py, the
only module that imports dnspython, loaded at the first query); it returns
an `Answer` (records as text, TTL in seconds, and whether the name exists)
and never raises for NXDOMAIN or an empty answer, so that the persistent TTL
cache (resolver/cache.py) can wrap it and store negative answers too.  `mx()` and
`addresses()` are thin interpretations of `query()`.

Errors: a timeout, SERVFAIL, REFUSED or no usable nameserver raises
`TempFailure("4.4.3")`.  `addresses()` raises `PermFailure("5.1.2")` when the
host name does not exist; `mx()` reports that as `MxAnswer.exists == False`.
A CNAME chain that the nameserver answered without its end's records is
followed with further queries (each through the guard), a looping or
overlong one is TempFailure.

Held routes: `guard(name, rdtype)`, when given, is called before every query
that would go to the network; it raises `RouteHeld` to refuse (and is where
the link ledger notes the query).  `guarded(guard)` gives a view of the same
resolver with one more guard: the SMTP agent makes one per destination,
bound to its route.  The persistent cache (resolver/cache.py) sits in front
of `query()` and answers from stored records without reaching the guard,
which is what lets a held site still resolve its usual destinations.
`Lookups` holds `mx()` and `addresses()` for any class with a `query()`.

Config read: [dns] nameservers ("HOST" or "HOST:PORT", "[v6]:PORT"; empty:
/etc/resolv.conf) and timeout (seconds for one lookup, all servers included).
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tidepost.config.schema import DnsConfig
from tidepost.errors import PermFailure, TempFailure

if TYPE_CHECKING:
    from tidepost.resolver.network import DnsClient

MAX_CNAME_QUERIES = 8  # queries one lookup may send along a CNAME chain (a loop ends here)

# Called with (name, rdtype) before a query leaves the host; raises to refuse.
Guard = Callable[[str, str], None]


@dataclass(frozen=True, slots=True)
class Answer:
    """One DNS answer as a cache stores it: rdata text, TTL, existence."""

    name: str
    rdtype: str                 # "MX", "A" or "AAAA"
    records: tuple[str, ...]    # rdata in presentation form, e.g. "10 mx1.example."
    ttl: int                    # seconds; the negative TTL for empty answers
    exists: bool = True         # False for NXDOMAIN
    cname: str = ""             # where a CNAME chain without such records ended, to ask next


@dataclass(frozen=True, slots=True)
class MxRecord:
    """One MX record; exchange is lower case without the final dot, "." for null MX."""

    preference: int
    exchange: str


@dataclass(frozen=True, slots=True)
class MxAnswer:
    """The MX records of a domain; empty records mean an implicit MX."""

    domain: str
    records: tuple[MxRecord, ...]
    ttl: int
    exists: bool = True


class Lookups:
    """MX and address lookups interpreted from `query()`, which subclasses provide."""

    async def query(self, name: str, rdtype: str) -> Answer:
        """The `rdtype` records of `name`."""
        raise NotImplementedError

    def guarded(self, guard: Guard) -> Lookups:
        """A view of these lookups that calls `guard` before any network query."""
        raise NotImplementedError

    async def mx(self, domain: str) -> MxAnswer:
        """The MX records of `domain`, parsed; NXDOMAIN sets exists=False."""
        answer = await self.query(domain, "MX")
        records = tuple(_parse_mx(text) for text in answer.records)
        return MxAnswer(domain, records, answer.ttl, answer.exists)

    async def addresses(self, host: str) -> list[str]:
        """IPv6 then IPv4 addresses of `host`, looked up in parallel."""
        results = await asyncio.gather(self.query(host, "AAAA"), self.query(host, "A"),
                                       return_exceptions=True)
        answers = [r for r in results if isinstance(r, Answer)]
        found = [address for answer in answers for address in answer.records]
        if found:
            return found
        failures = [r for r in results if isinstance(r, BaseException)]
        if failures:
            raise failures[0]
        if not any(answer.exists for answer in answers):
            raise PermFailure("5.1.2", f"host {host} not found (NXDOMAIN)")
        return []


class Resolver(Lookups):
    """Asynchronous MX/A/AAAA lookups against configured or system nameservers."""

    def __init__(self, dns_config: DnsConfig, *, guard: Guard | None = None):
        self.guard = guard
        self._network = _Network(dns_config)

    async def query(self, name: str, rdtype: str) -> Answer:
        """Ask the network for `rdtype` records of `name` (the one query method).

        A CNAME chain the server did not follow is followed here, as Postfix
        does, up to MAX_CNAME_QUERIES queries; the answer keeps `name`.
        """
        asked, ttl = name, None
        for _ in range(MAX_CNAME_QUERIES):
            if self.guard is not None:
                self.guard(asked, rdtype)
            answer = await self._network.client().query(asked, rdtype)
            ttl = answer.ttl if ttl is None else min(ttl, answer.ttl)
            if not answer.cname:
                return Answer(name, rdtype, answer.records, ttl, answer.exists)
            asked = answer.cname
        raise TempFailure("4.4.3", f"DNS {rdtype} lookup of {name}: CNAME chain too long")

    def guarded(self, guard: Guard) -> Resolver:
        """This resolver (same nameservers) with `guard` run after any existing guard."""
        view = copy.copy(self)
        view.guard = guard if self.guard is None else _both(self.guard, guard)
        return view


class _Network:
    """The dnspython client, made at the first query and shared by every guarded view.

    dnspython is 5 MiB of the daemon's memory (a fifth of it idle): a held
    site that answers from its DNS cache, or never sends, need not load it.
    """

    def __init__(self, dns_config: DnsConfig):
        self._config = dns_config
        self._client: DnsClient | None = None

    def client(self) -> DnsClient:
        if self._client is None:
            from tidepost.resolver.network import DnsClient
            self._client = DnsClient(self._config)
        return self._client


def _both(first: Guard, second: Guard) -> Guard:
    """A guard that runs `first`, then `second`."""
    def guard(name: str, rdtype: str) -> None:
        first(name, rdtype)
        second(name, rdtype)
    return guard


def _parse_mx(text: str) -> MxRecord:
    """Parse MX rdata text such as "10 mx1.example." or "0 ."."""
    preference, exchange = text.split(None, 1)
    if exchange != ".":
        exchange = exchange.rstrip(".").lower()
    return MxRecord(int(preference), exchange)
