"""Who may send to what: the relay decision for each RCPT TO.

`AccessPolicy(config, submission)` answers two questions, with no I/O:
`may_relay(ip, authenticated, trusted)` (once per connection, again after
AUTH) and `check_recipient(address, may_relay)` (per RCPT), which returns the
reply to give.  The rules, in order:

1. `postmaster` without a domain is local and always accepted.
2. Clients that may not relay are refused (550 5.7.1) routing disguises:
   local parts with `%`, `!` or a quoted `@`, and address literals
   (`user@[192.0.2.1]`) unless that literal is a local domain.  Source routes
   (`<@a,@b:user@c>`) were already stripped by `tidepost.address`, so the
   final mailbox is what is checked.
3. A local domain: accepted when `submission.local_user_exists(local)`,
   else 550 5.1.1.
4. A relay domain (`relay.domains`; `.example.org` matches subdomains) or a
   customer domain (`relay.customer_domains[_file]`, held until the customer
   asks): accepted from anyone.  A `*` pattern is ignored: it would be an
   open relay.
5. Any other domain: only from relay networks (`smtp.relay_networks`),
   authenticated or trusted (command-line) clients, else 550 5.7.1.
6. A relayed domain no route serves: 550 5.4.4.

Domains arrive normalised by `tidepost.address` (lower case, no trailing
dot), so comparisons here are plain string matches.
Config keys read: relay.domains, smtp.relay_networks (customer domains
through the directory, i.e. the Router).
"""

from __future__ import annotations

import ipaddress
from typing import Protocol

from tidepost.address import (Address, AddressError, domain_matches, in_networks,
                              normalise_domain)
from tidepost.config.schema import Config
from tidepost.smtp_server import replies as S
from tidepost.smtp_server.replies import Reply


class RecipientDirectory(Protocol):
    """The part of `Submission` the policy asks about recipients."""

    def is_local_domain(self, domain: str) -> bool:
        """True when mail for `domain` is delivered on this host."""

    def local_user_exists(self, local_part: str) -> bool:
        """True when a local mailbox or alias answers to `local_part`."""

    def has_route(self, domain: str) -> bool:
        """True when some route serves `domain`."""

    def is_customer_domain(self, domain: str) -> bool:
        """True for customer domains (relay role): accepted from anyone."""


class AccessPolicy:
    """Decides, per recipient, whether a client may send to it."""

    def __init__(self, config: Config, submission: RecipientDirectory):
        self._directory = submission
        # "*" would make an open relay (SPEC 1: never); it is ignored here.
        self._relay_domains = tuple(_normalise_pattern(p) for p in config.relay.domains
                                    if p.strip(".") not in ("", "*"))
        self._networks = tuple(ipaddress.ip_network(n, strict=False)
                               for n in config.smtp.relay_networks)

    def in_relay_networks(self, ip: str) -> bool:
        """True when `ip` lies in one of `smtp.relay_networks`."""
        return in_networks(ip, self._networks)

    def may_relay(self, ip: str, authenticated: str = "", trusted: bool = False) -> bool:
        """True for clients allowed to send to any domain."""
        return trusted or bool(authenticated) or self.in_relay_networks(ip)

    def is_relay_domain(self, domain: str) -> bool:
        """True for relay and customer domains (accepted from anyone)."""
        if any(domain_matches(domain, pattern) for pattern in self._relay_domains):
            return True
        is_customer = getattr(self._directory, "is_customer_domain", None)
        return bool(is_customer and is_customer(domain))

    def check_recipient(self, rcpt: Address, may_relay: bool) -> Reply:
        """The reply to `RCPT TO:<rcpt>`: S250_RECIPIENT_OK or a refusal."""
        if rcpt.domain == "":
            return S.S250_RECIPIENT_OK  # the parser only lets `postmaster` through
        local = self._directory.is_local_domain(rcpt.domain)
        if not may_relay and self._is_disguised(rcpt, local):
            return S.S550_RELAY_DENIED
        if local:
            if self._directory.local_user_exists(rcpt.local):
                return S.S250_RECIPIENT_OK
            return S.S550_NO_SUCH_USER
        if not (may_relay or self.is_relay_domain(rcpt.domain)):
            return S.S550_RELAY_DENIED
        if not self._directory.has_route(rcpt.domain):
            return S.S550_NO_ROUTE
        return S.S250_RECIPIENT_OK

    @staticmethod
    def _is_disguised(rcpt: Address, local: bool) -> bool:
        """True for old routing syntaxes and non-local address literals."""
        return rcpt.has_routing_characters or (rcpt.is_domain_literal and not local)


def _normalise_pattern(pattern: str) -> str:
    """Lower-case a relay-domain pattern, keeping a leading dot; drop a trailing one."""
    dot = "." if pattern.startswith(".") else ""
    try:
        return dot + normalise_domain(pattern.lstrip("."))
    except AddressError:
        return pattern.lower().rstrip(".")
