"""What one connection put on the wire and took off it, as the kernel counted it.

Linux keeps per-connection counters in `struct tcp_info` (getsockopt
TCP_INFO): TCP payload bytes sent, retransmissions included
(`tcpi_bytes_sent`, RFC 4898 HCDataOctetsOut), payload bytes received
(`tcpi_bytes_received`), segments each way, and the smallest round-trip time
seen (`tcpi_min_rtt`).  Payload means everything above TCP: SMTP commands,
message bytes, and TLS records and handshakes exactly as they crossed the
link.  IP and TCP headers are not in it; `ip_bytes` adds an estimate of them
(20 + 32 octets per segment for IPv4 with timestamps, 40 + 32 for IPv6).

`read_counts(sock)` gives None where the kernel has no such counters (not
Linux, or a kernel older than 4.19); callers then fall back to the bytes
the SMTP client itself wrote and read, which leave TLS out.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

TCP_INFO_SIZE = 232           # enough for every field read here (Linux 4.19+)
_SEGS = struct.Struct("=II")  # tcpi_segs_out, tcpi_segs_in at offset 136
_U64 = struct.Struct("=Q")
OFFSET_BYTES_RECEIVED = 128
OFFSET_SEGS = 136
OFFSET_MIN_RTT = 148          # microseconds
OFFSET_BYTES_SENT = 200
HEADER_V4, HEADER_V6 = 52, 72  # IP + TCP header with the timestamp option


@dataclass(frozen=True, slots=True)
class WireCounts:
    """Bytes and segments of one connection, each way, and its lowest RTT."""

    sent: int = 0          # TCP payload bytes, retransmissions included
    received: int = 0
    segments_out: int = 0
    segments_in: int = 0
    min_rtt: float = 0.0   # seconds; 0 when unknown
    ipv6: bool = False

    def ip_bytes(self) -> tuple[int, int]:
        """(up, down) with the IP and TCP headers added: what a link meters."""
        header = HEADER_V6 if self.ipv6 else HEADER_V4
        return (self.sent + header * self.segments_out,
                self.received + header * self.segments_in)

    def __sub__(self, other: WireCounts) -> WireCounts:
        return WireCounts(self.sent - other.sent, self.received - other.received,
                          self.segments_out - other.segments_out,
                          self.segments_in - other.segments_in, self.min_rtt, self.ipv6)


def read_counts(sock: socket.socket | None) -> WireCounts | None:
    """The kernel's counters for `sock`, or None when it keeps none we can read."""
    level = getattr(socket, "IPPROTO_TCP", None)
    option = getattr(socket, "TCP_INFO", None)
    if sock is None or level is None or option is None:
        return None
    try:
        info = sock.getsockopt(level, option, TCP_INFO_SIZE)
    except (OSError, ValueError):  # ValueError: uvloop's view of a socket already closed
        return None
    if len(info) < OFFSET_BYTES_SENT + 8:
        return None
    out, into = _SEGS.unpack_from(info, OFFSET_SEGS)
    return WireCounts(
        sent=_U64.unpack_from(info, OFFSET_BYTES_SENT)[0],
        received=_U64.unpack_from(info, OFFSET_BYTES_RECEIVED)[0],
        segments_out=out, segments_in=into,
        min_rtt=struct.unpack_from("=I", info, OFFSET_MIN_RTT)[0] / 1e6,
        ipv6=sock.family == socket.AF_INET6)
