"""Which route serves a recipient domain (Postfix trivial-rewrite, in small).

Local domains always go to the built-in `local` route (Maildir delivery);
customer domains (relay role, routing/customers.py) to the built-in held
route `customers`; every other domain goes to the first configured route
whose `domains` match (`*` matches all, `.example.org` matches the domain
and its subdomains).
A domain no route serves has no route: its mail is refused at RCPT time.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from tidepost.address import domain_matches
from tidepost.config.schema import CUSTOMERS_ROUTE, Config, RouteConfig
from tidepost.routing.customers import CustomerDomains

LOCAL_ROUTE = "local"


@dataclass(frozen=True, slots=True)
class Destination:
    """Where a delivery job goes: a route and its next hop."""

    route: str
    nexthop: str  # recipient domain (MX lookup), smarthost, or "" for local


class Router:
    """Maps recipient domains to routes and destinations."""

    def __init__(self, config: Config):
        self._local_domains = config.local_domains
        self._routes = config.route
        self.by_name: dict[str, RouteConfig] = {r.name: r for r in config.route}
        self.customers = CustomerDomains(config)
        self._candidates = lru_cache(maxsize=65536)(self._candidates_for)

    def refresh_customers(self, force: bool = False) -> bool:
        """Re-read the customer domains file if it changed; True when routes changed."""
        changed = self.customers.refresh(force)
        if changed:
            self._candidates.cache_clear()
        return changed

    def set_shared_customers(self, patterns: tuple[str, ...]) -> bool:
        """Take the cluster's customer domains (queue/directory.py); True when they changed."""
        changed = self.customers.set_shared(patterns)
        if changed:
            self._candidates.cache_clear()
        return changed

    def is_customer(self, domain: str) -> bool:
        """True for customer domains (held for the customer, relay role)."""
        return self.route_of(domain) == CUSTOMERS_ROUTE

    def is_local(self, domain: str) -> bool:
        """True for the host's own domains (and the domainless `postmaster`)."""
        return domain == "" or domain in self._local_domains

    def route_of(self, domain: str, size: int = 0) -> str | None:
        """Name of the route serving `domain` for a message of `size` bytes, or None.

        The first route whose domains match and whose `max_message_size`
        admits the message wins, so a large message falls through a metered
        route to the next one (typically held until an unmetered link is up).
        """
        for name, limit in self._candidates(domain):
            if not limit or size <= limit:
                return name
        return None

    def fell_through(self, domain: str, size: int) -> tuple[str, int] | None:
        """(route, its max_message_size) that `domain` would use but for the size, or None."""
        for name, limit in self._candidates(domain):
            if not limit or size <= limit:
                return None
            return name, limit
        return None

    def _candidates_for(self, domain: str) -> tuple[tuple[str, int], ...]:
        """Routes whose domains match `domain`, in order, with their size limits."""
        if self.is_local(domain):
            return ((LOCAL_ROUTE, 0),)
        if self.customers and self.customers.matches(domain):
            return ((CUSTOMERS_ROUTE, 0),)
        return tuple((route.name, route.max_message_size) for route in self._routes
                     if any(domain_matches(domain, pattern) for pattern in route.domains))

    def destination(self, domain: str, size: int = 0) -> Destination | None:
        """The destination for a message of `size` bytes to `domain`."""
        name = self.route_of(domain, size)
        if name is None:
            return None
        if name == LOCAL_ROUTE:
            return Destination(LOCAL_ROUTE, "")
        route = self.by_name[name]
        nexthop = route.smarthost if route.transport == "smarthost" else domain
        return Destination(name, nexthop)

    def route_names(self) -> list[str]:
        """All route names, `local` first."""
        return [LOCAL_ROUTE, *self.by_name]
