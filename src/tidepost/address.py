"""Mail addresses: parsed once, at the edge, into an `Address`.

Everything inside tidepost passes `Address` objects; nothing downstream
re-parses a string (STYLE habit 6).  The parser follows RFC 5321 section 4.1.2
(Mailbox = Local-part "@" ( Domain / address-literal )), and accepts and drops
an A-d-l source route as section 4.1.1.3 requires, so that the relay check sees
the final mailbox only.

Routing characters that older MTAs interpreted (`%`, `!`, a quoted `@`) are
kept in the local part verbatim; `has_routing_characters` lets the access
policy refuse them for clients that may not relay.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from dataclasses import dataclass

MAX_LOCAL_PART = 64      # RFC 5321 4.5.3.1.1
MAX_DOMAIN = 255         # RFC 5321 4.5.3.1.2
MAX_PATH = 256           # RFC 5321 4.5.3.1.3

_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~\-\x80-\U0010ffff]+"
_DOT_STRING = re.compile(rf"{_ATOM}(?:\.{_ATOM})*\Z")
_QUOTED = re.compile(r'"(?:[\x20\x21\x23-\x5b\x5d-\x7e\x80-\U0010ffff]|\\[\x20-\x7e])*"\Z')
_LABEL = re.compile(r"(?!-)[A-Za-z0-9\-\x80-\U0010ffff]{1,63}(?<!-)\Z")
_ROUTE = re.compile(r"@[^,:]+(?:,@[^,:]+)*:")


class AddressError(ValueError):
    """The text is not a valid RFC 5321 mailbox; the message says why."""


@dataclass(frozen=True, slots=True)
class Address:
    """A mailbox; the empty address (`<>`) is the null sender."""

    local: str
    domain: str  # lower case, no trailing dot; "" only for the null sender

    @property
    def is_null(self) -> bool:
        """True for the null reverse-path `<>` used by bounces."""
        return not self.local and not self.domain

    @property
    def is_domain_literal(self) -> bool:
        """True for `user@[192.0.2.1]`-style addresses."""
        return self.domain.startswith("[")

    @property
    def has_routing_characters(self) -> bool:
        """True when the local part carries %, ! or @ (old routing syntaxes)."""
        return any(c in self.local for c in "%!@")

    @property
    def is_ascii(self) -> bool:
        """False when delivery needs SMTPUTF8."""
        return str(self).isascii()

    def __str__(self) -> str:
        return f"{self.local}@{self.domain}" if self.domain else self.local


NULL_SENDER = Address("", "")


def parse_path(text: str, *, allow_null: bool = False) -> Address:
    """Parse `<local@domain>` (angle brackets optional) into an Address."""
    text = text.strip()
    if text.startswith("<") and text.endswith(">"):
        text = text[1:-1]
    elif "<" in text or ">" in text:
        raise AddressError("unbalanced angle brackets")
    if text == "":
        if allow_null:
            return NULL_SENDER
        raise AddressError("empty address")
    if len(text) > MAX_PATH:
        raise AddressError("address longer than 256 characters")
    route = _ROUTE.match(text)
    if route:
        text = text[route.end():]
    return parse_mailbox(text)


def parse_mailbox(text: str) -> Address:
    """Parse `local@domain` (no brackets, no route) into an Address."""
    if text.lower() == "postmaster":
        return Address("postmaster", "")
    at = text.rfind("@")
    if at <= 0:
        raise AddressError("address has no domain")
    local, domain = text[:at], text[at + 1:]
    check_local_part(local)
    return Address(local, normalise_domain(domain))


def check_local_part(local: str) -> None:
    """Raise AddressError unless `local` is an RFC 5321 Local-part."""
    if len(local.encode()) > MAX_LOCAL_PART:
        raise AddressError("local part longer than 64 octets")
    if _DOT_STRING.match(local) or _QUOTED.match(local):
        return
    raise AddressError("invalid local part")


def normalise_domain(domain: str) -> str:
    """Lower-case a domain or address literal, drop one trailing dot, validate it."""
    if domain.startswith("["):
        return _check_literal(domain)
    if domain.endswith("."):
        domain = domain[:-1]
    domain = domain.lower()
    if not domain or len(domain) > MAX_DOMAIN:
        raise AddressError("invalid domain length")
    if not all(_LABEL.match(label) for label in domain.split(".")):
        raise AddressError(f"invalid domain {domain!r}")
    return domain


def _check_literal(literal: str) -> str:
    """Validate an address literal such as [192.0.2.1] or [IPv6:2001:db8::1]."""
    if not literal.endswith("]"):
        raise AddressError("unterminated address literal")
    inner = literal[1:-1]
    try:
        if inner.lower().startswith("ipv6:"):
            return f"[IPv6:{ipaddress.IPv6Address(inner[5:])}]"
        return f"[{ipaddress.IPv4Address(inner)}]"
    except ValueError:
        raise AddressError("invalid address literal") from None


@functools.lru_cache(maxsize=4096)  # asked several times per session, by few peers
def client_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """A peer's IP address (zone id dropped, IPv4-mapped IPv6 unwrapped), or None."""
    try:
        address = ipaddress.ip_address(text.partition("%")[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return address.ipv4_mapped
    return address


def in_networks(ip: str, networks) -> bool:
    """True when the peer address `ip` lies in one of `networks` (ip_network objects)."""
    address = client_ip(ip)
    return address is not None and any(address in network for network in networks)


def domain_matches(domain: str, pattern: str) -> bool:
    """True when `domain` equals `pattern`, or is below it for a `.pattern`."""
    if pattern == "*":
        return True
    if pattern.startswith("."):
        return domain.endswith(pattern) or domain == pattern[1:]
    return domain == pattern
