"""DNS lookups for outbound mail: MX, A and AAAA, asynchronously.

Role: the only place that sends DNS queries.  `Resolver.query(name, rdtype)`
is the one method that touches the network; it returns an `Answer` (records
as text, TTL in seconds, and whether the name exists) and never raises for
NXDOMAIN or an empty answer, so that a persistent TTL cache (resolver/cache.py,
a later issue) can wrap it and store negative answers too.  `mx()` and
`addresses()` are thin interpretations of `query()`.

Errors: a timeout, SERVFAIL, REFUSED or no usable nameserver raises
`TempFailure("4.4.3")`.  `addresses()` raises `PermFailure("5.1.2")` when the
host name does not exist; `mx()` reports that as `MxAnswer.exists == False`.

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

import dns.asyncresolver
import dns.exception
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.resolver

from tidepost.config.schema import DnsConfig
from tidepost.errors import PermFailure, TempFailure

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
        self._dns = _make_dns_resolver(dns_config)

    async def query(self, name: str, rdtype: str) -> Answer:
        """Ask the network for `rdtype` records of `name` (the one query method)."""
        if self.guard is not None:
            self.guard(name, rdtype)
        try:
            qname = dns.name.from_text(name)
            answer = await self._dns.resolve(qname, rdtype, search=False,
                                             raise_on_no_answer=False)
        except dns.resolver.NXDOMAIN as error:
            return Answer(name, rdtype, (), _nxdomain_ttl(error), exists=False)
        except dns.exception.DNSException as error:
            raise TempFailure("4.4.3", f"DNS {rdtype} lookup of {name} failed: "
                              f"{_describe(error)}") from None
        records = tuple(rd.to_text() for rd in answer.rrset or ())
        return Answer(name, rdtype, records, answer.chaining_result.minimum_ttl)

    def guarded(self, guard: Guard) -> Resolver:
        """This resolver (same nameservers) with `guard` run after any existing guard."""
        view = copy.copy(self)
        view.guard = guard if self.guard is None else _both(self.guard, guard)
        return view


def _both(first: Guard, second: Guard) -> Guard:
    """A guard that runs `first`, then `second`."""
    def guard(name: str, rdtype: str) -> None:
        first(name, rdtype)
        second(name, rdtype)
    return guard


def _make_dns_resolver(dns_config: DnsConfig) -> dns.asyncresolver.Resolver:
    """A dnspython resolver for the configured nameservers, or resolv.conf's."""
    if not dns_config.nameservers:
        try:
            resolver = dns.asyncresolver.Resolver(configure=True)
        except dns.resolver.NoResolverConfiguration:
            # No resolv.conf: every query fails temporarily (NoNameservers)
            # instead of the node failing to start.
            resolver = dns.asyncresolver.Resolver(configure=False)
    else:
        resolver = dns.asyncresolver.Resolver(configure=False)
        resolver.nameservers = [_nameserver(entry) for entry in dns_config.nameservers]
    resolver.lifetime = dns_config.timeout
    resolver.timeout = min(resolver.timeout, dns_config.timeout)
    resolver.cache = None  # caching is resolver/cache.py's job, with persistence
    return resolver


def _nameserver(entry: str) -> dns.nameserver.Do53Nameserver:
    """Parse "HOST", "HOST:PORT", "[V6]" or "[V6]:PORT" into a nameserver."""
    host, port = entry, 53
    if entry.startswith("["):
        host, _, rest = entry[1:].partition("]")
        if rest.startswith(":"):
            port = int(rest[1:])
    elif entry.count(":") == 1:
        host, port_text = entry.split(":")
        port = int(port_text)
    return dns.nameserver.Do53Nameserver(host, port)


def _parse_mx(text: str) -> MxRecord:
    """Parse MX rdata text such as "10 mx1.example." or "0 ."."""
    preference, exchange = text.split(None, 1)
    if exchange != ".":
        exchange = exchange.rstrip(".").lower()
    return MxRecord(int(preference), exchange)


def _nxdomain_ttl(error: dns.resolver.NXDOMAIN) -> int:
    """The negative-caching TTL of an NXDOMAIN answer (SOA minimum), or 0."""
    try:
        response = next(iter(error.responses().values()))
        return response.resolve_chaining().minimum_ttl
    except Exception:  # an odd response only costs us negative caching
        return 0


def _describe(error: dns.exception.DNSException) -> str:
    """A one-line reason for a failed lookup."""
    if isinstance(error, dns.exception.Timeout):
        return "timed out"
    if isinstance(error, dns.resolver.NoNameservers):
        return "no nameserver answered (SERVFAIL or REFUSED)"
    return str(error).splitlines()[0] if str(error) else type(error).__name__
