"""Is a next hop this host itself?  (RFC 5321 5.1: mail must not loop back to us.)

A next hop is ours when we would dial one of our own listeners: its address
and port are those of a `smtp.listen` (or `relay.odmr_listen`) entry, or the
entry listens on all addresses (`*:PORT`) and the address is one of this
host's interface addresses.  Like Postfix (inet_interfaces), addresses
count, not names: a host name of ours in an MX record that points elsewhere
is not a loop.

Interface addresses are read from the kernel each time they are needed (a
dial-up link gets a new address at every call): IPv4 from
/proc/net/fib_trie (its LOCAL host routes), IPv6 from /proc/net/if_inet6.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from pathlib import Path

FIB_TRIE = Path("/proc/net/fib_trie")
IF_INET6 = Path("/proc/net/if_inet6")


class OwnEndpoints:
    """The (address, port) pairs this host's SMTP listeners answer on."""

    def __init__(self, listens: Iterable[tuple[str | None, int]],
                 interfaces: Path = FIB_TRIE, interfaces6: Path = IF_INET6):
        self._exact: set[tuple[str, int]] = set()
        self._wildcard_ports: set[int] = set()
        self._interfaces = (interfaces, interfaces6)
        for host, port in listens:
            if host is None:
                self._wildcard_ports.add(port)
            else:
                self._exact |= {(address, port) for address in _numeric(host, port)}

    def __contains__(self, endpoint: tuple[str, int]) -> bool:
        address, port = _normal(endpoint[0]), endpoint[1]
        if (address, port) in self._exact:
            return True
        return port in self._wildcard_ports and address in local_addresses(*self._interfaces)

    def ours(self, port: int):
        """`address -> bool`: the test for one destination port."""
        return lambda address: (address, port) in self


def local_addresses(interfaces: Path = FIB_TRIE, interfaces6: Path = IF_INET6) -> set[str]:
    """This host's interface addresses (empty when the kernel files cannot be read)."""
    found: set[str] = set()
    try:
        previous = ""
        for line in interfaces.read_text().splitlines():
            if "/32 host LOCAL" in line and previous.strip().startswith("|--"):
                found.add(previous.strip()[3:].strip())
            previous = line
    except OSError:
        pass
    try:
        for line in interfaces6.read_text().splitlines():
            found.add(str(ipaddress.IPv6Address(int(line.split()[0], 16))))
    except (OSError, ValueError, IndexError):
        pass
    return found


def _numeric(host: str, port: int) -> set[str]:
    """The addresses a listen host stands for (a name such as localhost is looked up once)."""
    try:
        return {_normal(info[4][0]) for info in socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM)}
    except OSError:
        return set()


def _normal(address: str) -> str:
    """One spelling per address (IPv6 compressed, IPv4-mapped unwrapped)."""
    try:
        parsed = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address
    if isinstance(parsed, ipaddress.IPv6Address) and parsed.ipv4_mapped:
        return str(parsed.ipv4_mapped)
    return str(parsed)
