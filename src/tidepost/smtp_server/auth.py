"""SMTP AUTH (RFC 4954) for the relay role: PLAIN, LOGIN and CRAM-MD5.

`read_credentials(challenge, mechanism, initial, hostname)` runs the
challenge and response exchange on a conversation and returns `(user,
password)` for PLAIN and LOGIN, a `CramResponse` for CRAM-MD5 (RFC 2195),
or the `Reply` that ends the exchange (cancelled, undecodable, unknown
mechanism).  Checking is the caller's business (turn.py), as is where AUTH
is offered: PLAIN and LOGIN only over TLS or from loopback, so that
passwords never cross a network in clear text; CRAM-MD5, which sends no
password, also in clear (ODMR clients such as fetchmail use it).
"""

from __future__ import annotations

import base64
import binascii
import os
import time
from dataclasses import dataclass
from typing import Awaitable, Callable

from tidepost.address import client_ip
from tidepost.smtp_server.reader import BareLineFeed, LineTooLong
from tidepost.smtp_server.replies import Reply

MECHANISMS = ("PLAIN", "LOGIN")   # need TLS or loopback
CRAM_MD5 = "CRAM-MD5"             # offered when some user has a CRAM-MD5 secret
AUTH_LINE_LIMIT = 12288  # octets: RFC 4954 4 asks servers to accept at least 12288

S235_AUTHENTICATED = Reply(235, "2.7.0", "Authentication successful")
S501_CANCELLED = Reply(501, "5.7.0", "Authentication cancelled")
S501_UNDECODABLE = Reply(501, "5.5.2", "Cannot decode the response")
S500_AUTH_LINE_TOO_LONG = Reply(500, "5.5.6", "Authentication exchange line is too long")
S502_AUTH_UNAVAILABLE = Reply(502, "5.5.1", "AUTH not available")
S503_ALREADY_AUTHENTICATED = Reply(503, "5.5.1", "Already authenticated")
S503_AUTH_IN_TRANSACTION = Reply(503, "5.5.1", "AUTH not allowed during a mail transaction")
S504_UNKNOWN_MECHANISM = Reply(504, "5.5.4", "Unrecognized authentication type")
S530_AUTH_REQUIRED = Reply(530, "5.7.0", "Authentication required")
S535_BAD_CREDENTIALS = Reply(535, "5.7.8", "Authentication credentials invalid")
S538_NEEDS_TLS = Reply(538, "5.7.11", "Encryption required for requested authentication "
                                       "mechanism")

# Sends a 334 challenge (base64 text) and returns the client's response line.
Challenge = Callable[[str], Awaitable[str]]


def is_loopback(ip: str) -> bool:
    """True for 127.0.0.0/8, ::1 and IPv4-mapped loopback addresses."""
    address = client_ip(ip)
    return address is not None and address.is_loopback


@dataclass(frozen=True, slots=True)
class CramResponse:
    """A CRAM-MD5 answer: who, to which challenge, with which digest."""

    user: str
    challenge: bytes
    digest: str


async def read_credentials(challenge: Challenge, mechanism: str, initial: str,
                           hostname: str = "localhost"
                           ) -> tuple[str, str] | CramResponse | Reply:
    """Run one AUTH exchange; what the client proved, or the reply ending it."""
    mechanism = mechanism.upper()
    try:
        if mechanism == CRAM_MD5:
            if initial:
                return S501_UNDECODABLE  # CRAM-MD5 has no initial response
            return await _cram_md5(challenge, hostname)
        if mechanism == "PLAIN":
            response = initial or await challenge("")
            return _plain(_decode(response))
        if mechanism == "LOGIN":
            user = _decode(initial or await challenge(_b64("Username:")))
            password = _decode(await challenge(_b64("Password:")))
            return user.decode("utf-8"), password.decode("utf-8")
    except _Cancelled:
        return S501_CANCELLED
    except _NotPermitted:
        return S535_BAD_CREDENTIALS
    except (binascii.Error, ValueError):  # UnicodeDecodeError is a ValueError
        return S501_UNDECODABLE
    except (LineTooLong, BareLineFeed):
        return S500_AUTH_LINE_TOO_LONG
    return S504_UNKNOWN_MECHANISM


async def _cram_md5(challenge: Challenge, hostname: str) -> CramResponse:
    """Send a fresh `<random.time@host>` challenge; parse `user hexdigest`."""
    nonce = f"<{int.from_bytes(os.urandom(8), 'big')}.{int(time.time())}@{hostname}>"
    answer = _decode(await challenge(_b64(nonce))).decode("utf-8")
    user, _, digest = answer.rpartition(" ")
    if not user or len(digest) != 32:
        raise ValueError("CRAM-MD5 answer is 'user hexdigest'")
    return CramResponse(user, nonce.encode("ascii"), digest)


class _Cancelled(Exception):
    """The client answered a challenge with `*`."""


class _NotPermitted(Exception):
    """A well-formed PLAIN response asking to act for another identity (RFC 4616 2)."""


def _decode(response: str) -> bytes:
    """A base64 response; `*` cancels; `=` is the empty initial response."""
    response = response.strip()
    if response == "*":
        raise _Cancelled()
    if response == "=":
        return b""
    return base64.b64decode(response, validate=True)


def _plain(data: bytes) -> tuple[str, str]:
    """authzid NUL authcid NUL passwd (RFC 4616); authzid must be empty or authcid."""
    parts = data.split(b"\0")
    if len(parts) != 3:
        raise ValueError("PLAIN needs three fields")
    authzid, user, password = (p.decode("utf-8") for p in parts)
    if authzid and authzid != user:
        raise _NotPermitted("acting for another user is not supported")
    return user, password


def _b64(text: str) -> str:
    """Base64 of an ASCII challenge."""
    return base64.b64encode(text.encode("ascii")).decode("ascii")
