"""What happens to a DATA section: the content checks and the client record.

Pure functions used by the session after `SmtpReader.read_data()`:
`content_problem(data)` returns the refusal for a message that must not be
queued, checked in this order: over `smtp.max_message_size` (552 5.3.4),
a bare CR or LF anywhere (550 5.6.0; this is what defeats SMTP smuggling,
since every non-CRLF end-of-data variant contains one), NUL (550 5.6.0),
a line over 1000 octets including CRLF (550 5.6.0).
`client_info(session)` builds the `ClientInfo` the submission records in
the Received header (protocol per RFC 3848: SMTP, ESMTP, ESMTPS, ESMTPA...).
"""

from __future__ import annotations

from tidepost.smtp_server import replies as S
from tidepost.smtp_server.reader import MessageData
from tidepost.smtp_server.replies import Reply
from tidepost.smtp_server.state import Session
from tidepost.submission.submit import ClientInfo


def content_problem(data: MessageData) -> Reply | None:
    """The reply refusing this message, or None when it may be queued."""
    if data.too_big:
        return S.S552_TOO_BIG
    if data.bare_cr or data.bare_lf:
        return S.S550_BARE_CR_LF
    if data.nul:
        return S.S550_NUL
    if data.long_line:
        return S.S550_LINE_TOO_LONG
    return None


def client_info(session: Session) -> ClientInfo:
    """The submission's record of who sent the message."""
    protocol = "ESMTP" if session.esmtp else "SMTP"
    if session.esmtp and (session.tls or session.authenticated):
        protocol += ("S" if session.tls else "") + ("A" if session.authenticated else "")
    if session.trusted and not session.peer_ip:
        protocol = "local"
    return ClientInfo(address=session.peer_ip, helo=session.helo, protocol=protocol,
                      authenticated=session.authenticated,
                      tls=session.tls_version if session.tls else "")
