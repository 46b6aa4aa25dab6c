"""Header work on raw message bytes: Received, counting hops, missing headers.

The body is never parsed as a whole; only the header section (up to the first
empty line) is looked at, with plain byte operations.
"""

from __future__ import annotations

import functools
from email.utils import formatdate
from typing import TYPE_CHECKING

# Octets a line of a message may have before its CRLF (RFC 5321 4.5.3.1.6,
# RFC 5322 2.1.1).
MAX_LINE = 998

if TYPE_CHECKING:
    from tidepost.model import Envelope
    from tidepost.submission.submit import ClientInfo


def header_section(body: bytes) -> bytes:
    """The header lines of a message, up to (not including) the empty line."""
    if body.startswith(b"\r\n"):
        return b""
    end = body.find(b"\r\n\r\n")
    return body if end < 0 else body[:end + 2]


def count_received(body: bytes) -> int:
    """Number of Received: headers (each hop adds one)."""
    headers = header_section(body).lower()
    return headers.startswith(b"received:") + headers.count(b"\r\nreceived:")


def has_header(body: bytes, name: bytes) -> bool:
    """True when the header section has a field called `name` (case-insensitive)."""
    headers = b"\r\n" + header_section(body).lower()
    return b"\r\n" + name.lower() + b":" in headers


def received_header(client: ClientInfo, hostname: str, queue_id: str,
                    envelope: Envelope, now: float) -> bytes:
    """The Received: line this hop prepends (RFC 5321 4.4)."""
    date = rfc5322_date(int(now))
    if client.protocol == "local":
        user = client.local_user or "unknown"
        uid = f" uid {client.uid}" if client.uid is not None else ""
        origin = f"by {hostname} (tidepost, from userid {_clean(user)}{uid})"
    else:
        helo = _clean(client.helo) or "unknown"
        origin = f"from {helo} ([{client.address}])\r\n\tby {hostname} (tidepost)"
        origin += f" with {client.protocol}"
    target = ""
    if len(envelope.recipients) == 1:
        target = f"\r\n\tfor <{envelope.recipients[0]}>"
    return f"Received: {origin} id {queue_id}{target};\r\n\t{date}\r\n".encode()


@functools.lru_cache(maxsize=4)
def rfc5322_date(second: int) -> str:
    """The RFC 5322 date of a second, local time (worked out once for a second's messages)."""
    return formatdate(second, localtime=True)


def _clean(text: str) -> str:
    """Keep a client-supplied name from breaking the header."""
    return "".join(c for c in text if c.isprintable() and c not in "()\\")[:255]
