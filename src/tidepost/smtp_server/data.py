"""What happens to a DATA section: the content checks, the client record, the submit.

Used by the session after `SmtpReader.read_data()` (all but the last pure):
`content_problem(data)` returns the refusal for a message that must not be
queued, checked in this order: over `smtp.max_message_size` (552 5.3.4),
a bare CR or LF anywhere (554 5.6.0; this is what defeats SMTP smuggling,
since every non-CRLF end-of-data variant contains one), NUL (554 5.6.0),
a line over 1000 octets including CRLF (554 5.6.0).
`client_info(session)` builds the `ClientInfo` the submission records in
the Received header (protocol per RFC 3848: SMTP, ESMTP, ESMTPS, ESMTPA...).
`submit_message(submission, transaction, body, session)` hands a message
that passed them to the submission and returns the reply: 250 with the queue
id only once it is committed, the submission's own refusal, 452 4.3.1
when the spool's file system is full, or 451 4.3.0 for any other failure
(the message is then not acknowledged).  A transaction with a transfer id
(XTIDEPOST TRANSFER) is submitted with its transfer keys: a repeat gets
the 250 of the earlier copy, and nothing is stored again.
"""

from __future__ import annotations

import dataclasses
import logging

from tidepost.errors import QueueError, QueueFull
from tidepost.model import Envelope
from tidepost.smtp_server import replies as S
from tidepost.smtp_server.reader import MessageData
from tidepost.smtp_server.replies import Reply
from tidepost.smtp_server.state import Session, Transaction
from tidepost.submission import transfers
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
                         session: Session) -> Reply:
    """Queue the message; the reply reflects its commit."""
    envelope = Envelope(transaction.sender, tuple(transaction.recipients),
                        transaction.body_type, transaction.smtputf8, transaction.ret,
                        transaction.envid, transaction.dsn)
    try:
        if transaction.transfer_id and submission.transfers is not None:
            return await _submit_transfer(submission, envelope, body, session,
                                          transaction.transfer_id)
        queue_id = await submission.submit(envelope, body, client_info(session))
    except SubmissionRejected as exc:
        return S.rejected(exc.code, exc.status, exc.text)
    except QueueFull as exc:
        log.error("message from %s not queued: %s", session.peer_ip or "local", exc)
        return S.S452_NO_SPACE
    except QueueError as exc:  # the store is away (a cluster's database): a line, no trace
        log.error("message from %s not queued: %s", session.peer_ip or "local", exc)
        return S.S451_LOCAL_ERROR
    except Exception:
        log.exception("submission failed for a message from %s", session.peer_ip)
        return S.S451_LOCAL_ERROR
    return S.queued(queue_id)


async def _submit_transfer(submission: Submission, envelope: Envelope, body: bytes,
                           session: Session, transfer: str) -> Reply:
    """Submit under the transfer's keys; a repeat is answered as its first copy was."""
    space = transfers.namespace(session.authenticated, session.may_relay)
    assert space is not None and submission.transfers is not None  # parse_mail checked
    keys = submission.transfers.keys(space, transfer, envelope.recipients)
    client = dataclasses.replace(client_info(session), transfer=transfer)
    queue_id, _repeat = await submission.submit_transfer(envelope, body, client, keys)
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
