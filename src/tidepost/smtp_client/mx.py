"""Where mail for a domain goes: MX hosts and their addresses (RFC 5321 5.1).

Input: a resolver (anything with `mx()` and `addresses()`, see
resolver/resolver.py) and a domain or smarthost.  Output: an ordered list of
`NextHop(host, addresses)`, IPv6 addresses before IPv4 for each host.

- MX records in preference order, shuffled among equal preferences.
- No MX records: the domain itself is the host (implicit MX).
- A single MX with exchange "." is a null MX (RFC 7505): PermFailure 5.1.10.
- NXDOMAIN for the domain: PermFailure 5.1.2.
- Only the first `max_hosts` MX hosts are looked up (each lookup may cost
  a metered link); hosts without addresses are skipped.  When none is left:
  PermFailure 5.4.4 if every host name is NXDOMAIN (the domain publishes MX
  hosts that do not exist, as Postfix and qmail treat it), otherwise
  TempFailure 4.4.3.  A domain with no MX and no address is PermFailure 5.4.4.
- An address literal ("[192.0.2.1]", "[IPv6:2001:db8::1]") or an IP address
  needs no DNS at all; so does an MX exchange written as an IP address
  ("MX 10 192.0.2.1.", not a name as RFC 5321 5.1 wants, but Postfix and
  sendmail dial it, and looking it up as a name can only fail).
- Given `ours` (address -> True when dialling it reaches this host, see
  loops.py), our own MX host and every host not more preferred than it are
  dropped (5.1: we are a backup MX and hand the mail to a better one); when
  nothing is left, or a domain's own address or a bracketed host is ours,
  PermFailure 5.4.6 "mail for DOMAIN loops back to myself", as Postfix says.

Smarthosts follow Postfix: "host[:port]" is looked up like a domain (MX,
then implicit MX); "[host]:port" skips the MX lookup.
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
from collections.abc import Callable, Sequence
from itertools import groupby
from typing import NamedTuple, Protocol

from tidepost.errors import DeliveryError, PermFailure, RouteHeld, TempFailure
from tidepost.resolver.resolver import MxAnswer, MxRecord

NULL_MX = "."

Ours = Callable[[str], bool]  # address -> True when it is this host's own listener


class MxResolver(Protocol):
    """The part of resolver.Resolver that MX routing uses."""

    async def mx(self, domain: str) -> MxAnswer: ...

    async def addresses(self, host: str) -> list[str]: ...


class NextHop(NamedTuple):
    """One host to try and its addresses, in the order to try them."""

    host: str
    addresses: list[str]


class Target(NamedTuple):
    """A parsed next hop: the name, the TCP port, and whether to look up MX."""

    host: str
    port: int
    mx_lookup: bool


def parse_smarthost(text: str, default_port: int = 25) -> Target:
    """Parse "host", "host:port", "[host]" or "[host]:port" (brackets: no MX lookup)."""
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = int(rest[1:]) if rest.startswith(":") else default_port
        return Target(host, port, mx_lookup=False)
    if text.count(":") == 1:
        host, port_text = text.split(":")
        return Target(host, int(port_text), mx_lookup=True)
    return Target(text, default_port, mx_lookup=True)


def literal_address(host: str) -> str | None:
    """The IP address in "192.0.2.1", "[192.0.2.1]" or "[IPv6:2001:db8::1]", else None."""
    inner = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if inner[:5].lower() == "ipv6:":
        inner = inner[5:]
    try:
        return str(ipaddress.ip_address(inner))
    except ValueError:
        return None


async def next_hops(resolver: MxResolver, domain: str, max_hosts: int,
                    rng: random.Random | None = None, ours: Ours | None = None) -> list[NextHop]:
    """The hosts that receive mail for `domain`, in the order to try them."""
    literal = literal_address(domain)
    if literal:
        return _not_ours(domain, [NextHop(domain, [literal])], ours)
    answer = await resolver.mx(domain)
    if not answer.exists:
        raise PermFailure("5.1.2", f"domain {domain} does not exist (NXDOMAIN)")
    if not answer.records:
        return _not_ours(domain, await _implicit_mx(resolver, domain), ours)
    if [r.exchange for r in answer.records] == [NULL_MX]:
        raise PermFailure("5.1.10", "Domain does not accept mail (null MX)")
    hosts = order_mx(answer.records, rng or random.Random())[:max_hosts]
    hops = await _resolve_mx_hosts(resolver, domain, hosts)
    return before_ourselves(domain, hops, answer.records, ours) if ours else hops


async def host_hops(resolver: MxResolver, host: str, ours: Ours | None = None) -> list[NextHop]:
    """The addresses of one named host, without an MX lookup."""
    literal = literal_address(host)
    if literal:
        return _not_ours(f"[{host}]", [NextHop(host, [literal])], ours)
    addresses = await resolver.addresses(host)
    if not addresses:
        raise TempFailure("4.4.3", f"host {host} has no address records")
    return _not_ours(f"[{host}]", [NextHop(host, addresses)], ours)


def before_ourselves(domain: str, hops: list[NextHop], records: Sequence[MxRecord],
                     ours: Ours) -> list[NextHop]:
    """The MX hosts more preferred than our own one (all of them when we are not listed)."""
    preference = {}
    for record in sorted(records, key=lambda r: r.preference, reverse=True):
        preference[record.exchange] = record.preference  # a name's best preference wins
    mine = [preference[hop.host] for hop in hops if _is_ours(hop, ours)]
    if not mine:
        return hops
    better = [hop for hop in hops if preference[hop.host] < min(mine)]
    if not better:
        raise _loop(domain)
    return better


def _not_ours(name: str, hops: list[NextHop], ours: Ours | None) -> list[NextHop]:
    """`hops`, unless one of them is this host."""
    if ours is not None and any(_is_ours(hop, ours) for hop in hops):
        raise _loop(name)
    return hops


def _is_ours(hop: NextHop, ours: Ours) -> bool:
    """True when any address of `hop` is this host (then the host is us)."""
    return any(ours(address) for address in hop.addresses)


def _loop(name: str) -> PermFailure:
    """The failure of mail that would come back to us."""
    return PermFailure("5.4.6", f"mail for {name} loops back to myself")


def order_mx(records: Sequence[MxRecord], rng: random.Random) -> list[str]:
    """Exchange names by preference, shuffled among equals, null MX entries dropped."""
    ordered: list[str] = []
    records = sorted(records, key=lambda record: record.preference)
    for _, group in groupby(records, key=lambda record: record.preference):
        names = [r.exchange for r in group if r.exchange != NULL_MX]
        rng.shuffle(names)
        ordered.extend(name for name in names if name not in ordered)
    return ordered


async def _implicit_mx(resolver: MxResolver, domain: str) -> list[NextHop]:
    """No MX records: the domain's own addresses (RFC 5321 5.1)."""
    addresses = await resolver.addresses(domain)
    if not addresses:
        raise PermFailure("5.4.4", f"domain {domain} has no MX and no address records")
    return [NextHop(domain, addresses)]


async def _resolve_mx_hosts(resolver: MxResolver, domain: str,
                            hosts: list[str]) -> list[NextHop]:
    """Look up the MX hosts in parallel; keep those that have addresses."""
    results = await asyncio.gather(*(_host_addresses(resolver, h) for h in hosts),
                                   return_exceptions=True)
    hops = [NextHop(h, r) for h, r in zip(hosts, results) if isinstance(r, list) and r]
    if hops:
        return hops
    for result in results:
        if isinstance(result, RouteHeld) or (isinstance(result, BaseException)
                                             and not isinstance(result, DeliveryError)):
            raise result
    if hosts and all(isinstance(r, PermFailure) for r in results):
        raise PermFailure("5.4.4", f"no MX host of {domain} exists: {', '.join(hosts)}")
    raise TempFailure("4.4.3", f"no MX host of {domain} has an address: {', '.join(hosts)}"
                      + _first_reason(results))


async def _host_addresses(resolver: MxResolver, host: str) -> list[str]:
    """The addresses of one MX host; an exchange written as an IP address is that address."""
    literal = literal_address(host)
    return [literal] if literal else await resolver.addresses(host)


def _first_reason(results: list[object]) -> str:
    """"; <reason>" of the first lookup failure among `results`, or ""."""
    for result in results:
        if isinstance(result, DeliveryError):
            return f"; {result.reason}"
    return ""
