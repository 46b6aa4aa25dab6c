"""The network side of DNS lookups: dnspython asked for one name and type.

Role: the only module that imports dnspython, loaded by resolver.Resolver at
its first query (it is 5 MiB of the daemon's memory).  `DnsClient.query()`
returns an `Answer` and never raises for NXDOMAIN or an empty answer; a
timeout, SERVFAIL, REFUSED or no usable nameserver raises
`TempFailure("4.4.3")`.  An answer that is only a CNAME chain (a server
that does not follow it, as an authoritative one) names its end in
`Answer.cname`, for resolver.Resolver to ask again.  The guards of held routes are resolver.py's: nothing
here is called for a query they refused.
"""

from __future__ import annotations

import dns.asyncresolver
import dns.exception
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.resolver

from tidepost.config.schema import DnsConfig
from tidepost.errors import TempFailure
from tidepost.resolver.resolver import Answer


class DnsClient:
    """Queries to the configured nameservers, or resolv.conf's."""

    def __init__(self, dns_config: DnsConfig):
        self._dns = _make_dns_resolver(dns_config)

    async def query(self, name: str, rdtype: str) -> Answer:
        """The `rdtype` records of `name`, from the network."""
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
        alias = "" if records or answer.canonical_name == qname \
            else answer.canonical_name.to_text(omit_final_dot=True)
        return Answer(name, rdtype, records, answer.chaining_result.minimum_ttl, cname=alias)


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
