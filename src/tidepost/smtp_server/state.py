"""Conversation state, kept in two parts, and the server's counters.

`Session` is connection state: who the client is (address, HELO name, TLS,
AUTH identity, relay right) and its error count; it lives as long as the
connection (STARTTLS starts a new one: RFC 3207 4.2).  `Transaction` is one mail
transaction, from MAIL FROM to the end of DATA (or BDAT LAST) or RSET.  `Counters` are the
statistics all conversations of one server add to.  Pure data, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from tidepost.address import Address
from tidepost.model import BodyType, RecipientDsn

if TYPE_CHECKING:
    from tidepost.smtp_server.chunking import ChunkedBody


@dataclass(slots=True)
class Session:
    """Connection state: who the client is; survives transactions."""

    peer_ip: str = ""
    trusted: bool = False     # a local user on stdin (sendmail -bs)
    helo: str = ""
    esmtp: bool = False
    tls: bool = False
    tls_version: str = ""     # e.g. TLSv1.3, once STARTTLS succeeded
    authenticated: str = ""
    may_relay: bool = False
    errors: int = 0


@dataclass(slots=True)
class Transaction:
    """Transaction state: from MAIL FROM to the end of DATA or RSET."""

    sender: Address
    body_type: BodyType = BodyType.SEVEN_BIT
    smtputf8: bool = False
    recipients: list[Address] = field(default_factory=list)
    transfer_id: str = ""     # XTRANSFER= of a tidepost peer (docs/EXTENSIONS.md)
    ret: str = ""             # RFC 3461 RET= and ENVID= of MAIL FROM
    envid: str = ""
    dsn: dict[Address, RecipientDsn] = field(default_factory=dict)  # NOTIFY/ORCPT given
    chunks: ChunkedBody | None = None  # the message so far, once BDAT began (chunking.py)
    overshoot: int = 0        # RCPTs refused 452 past smtp.max_recipients (session.py)


@dataclass(slots=True)
class Counters:
    """Statistics shared by all conversations of one server."""

    sessions: int = 0
    commands: int = 0
    errors: int = 0
    timeouts: int = 0
    error_disconnects: int = 0
    recipients_accepted: int = 0
    recipients_rejected: int = 0
    messages_accepted: int = 0
    messages_rejected: int = 0
