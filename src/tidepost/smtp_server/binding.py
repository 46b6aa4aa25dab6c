"""Listening sockets, bound before anything else (and before root is given up).

`tidepost serve` started as root binds every SMTP and ODMR address first
(port 25 and 366 need root), then becomes its own account, and only then
builds the rest; the listeners adopt the sockets bound here.  `bind(entry)`
takes "HOST:PORT", "[v6]:PORT" or "*:PORT" (all IPv4 and IPv6 addresses)
and returns the bound, listening, non-blocking sockets.
"""

from __future__ import annotations

import socket

from tidepost.errors import ConfigError

BACKLOG = 1024  # a flood waits in the kernel, not in a refused SYN


def parse_listen(entry: str) -> tuple[str | None, int]:
    """"HOST:PORT" or "[v6]:PORT" -> (host, port); host None means all addresses."""
    host, colon, port = entry.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not colon or not port.isdigit() or int(port) > 65535 or not host:
        raise ConfigError([f"smtp.listen: {entry!r} is not HOST:PORT"])
    return (None if host == "*" else host), int(port)


def bind(entry: str) -> list[socket.socket]:
    """Bound, listening sockets for one listen entry (OSError when the port is taken)."""
    host, port = parse_listen(entry)
    targets = [("0.0.0.0", socket.AF_INET), ("::", socket.AF_INET6)] if host is None else [
        (info[4][0], info[0]) for info in socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST
            if _is_numeric(host) else 0)[:1]]
    bound: list[socket.socket] = []
    try:
        for address, family in targets:
            if family == socket.AF_INET6 and not socket.has_ipv6:
                continue
            bound.append(_listen(address, port if not bound else bound[0].getsockname()[1],
                                 family))
    except OSError:
        for sock in bound:
            sock.close()
        raise
    return bound


def bind_all(entries: tuple[str, ...], key: str = "smtp.listen"
             ) -> dict[str, list[socket.socket]]:
    """Sockets for every entry, by entry; OSError naming `key` and the entry that failed."""
    bound: dict[str, list[socket.socket]] = {}
    try:
        for entry in entries:
            bound[entry] = bind(entry)
    except OSError as exc:
        for sock in (sock for socks in bound.values() for sock in socks):
            sock.close()
        raise OSError(exc.errno, f"{key}: cannot listen on {entry}: "
                                 f"{exc.strerror or exc}") from exc
    return bound


def _listen(address: str, port: int, family: int) -> socket.socket:
    """One listening socket; IPv6 ones take only IPv6 (IPv4 has its own)."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((address, port))
        sock.listen(BACKLOG)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def _is_numeric(host: str) -> bool:
    """True for an IPv4 or IPv6 address literal (no name lookup needed)."""
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
    except OSError:
        return False
    return True
