"""What happens to a DATA section: the content checks, the client record, the submit.

Used by the session after `SmtpReader.read_data()` (all but the last pure):
`content_problem(data)` returns the refusal for a message that must not be
queued, checked in this order: over `smtp.max_message_size` (552 5.3.4),
a bare CR or LF anywhere (554 5.6.0; this is what defeats SMTP smuggling,
since every non-CRLF end-of-data variant contains one), NUL (554 5.6.0),
a line over 1000 octets including CRLF (554 5.6.0).
`client_info(session)` builds the `ClientInfo` the submission records in
the Received header (protocol per RFC 3848: SMTP, ESMTP, ESMTPS, ESMTPA...).
`submit_message(submission, transaction, body, session, transfer_keys)`
hands a message that passed them to the submission and returns the reply:
250 with the queue id only once it is committed (or when a transfer key
shows it was queued before: XBATCH's exactly-once receipt), the submission's own refusal, or 451 4.3.0
for any failure (the message is then not acknowledged).
"""

from __future__ import annotations

import logging

from tidepost.errors import AlreadyQueued
from tidepost.model import Envelope
from tidepost.smtp_server import replies as S
from tidepost.smtp_server.reader import MessageData
from tidepost.smtp_server.replies import Reply
from tidepost.smtp_server.state import Session, Transaction
from tidepost.submission.submit import ClientInfo, Submission, SubmissionRejected

log = logging.getLogger("tidepost.smtp_server")


def content_problem(data: MessageData) -> Reply | None:
    """The reply refusing this message, or None when it may be queued."""
    if data.too_big:
        return S.S552_TOO_BIG
    if data.bare_cr or data.bare_lf:
        return S.S554_BARE_CR_LF
    if data.nul:
        return S.S554_NUL
    if data.long_line:
        return S.S554_LINE_TOO_LONG
    return None


async def submit_message(submission: Submission, transaction: Transaction, body: bytes,
                         session: Session, transfer_keys: tuple[str, ...] = ()) -> Reply:
    """Queue the message; the reply reflects its commit (a known transfer: 250 too)."""
    envelope = Envelope(transaction.sender, tuple(transaction.recipients),
                        transaction.body_type, transaction.smtputf8)
    try:
        keys = {"transfer_keys": transfer_keys} if transfer_keys else {}  # plain SMTP: none
        queue_id = await submission.submit(envelope, body, client_info(session), **keys)
    except AlreadyQueued as repeat:  # a repeat between tidepost nodes: acknowledged again
        return S.queued(repeat.queue_id)
    except SubmissionRejected as exc:
        return S.rejected(exc.code, exc.status, exc.text)
    except Exception:
        log.exception("submission failed for a message from %s", session.peer_ip)
        return S.S451_LOCAL_ERROR
    return S.queued(queue_id)


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
