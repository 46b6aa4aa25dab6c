"""Delivery status notifications (RFC 3464): bounces, delay warnings, success reports.

A DSN is a multipart/report with a human-readable part, a
message/delivery-status part (one block per recipient) and the original
message's headers only (text/rfc822-headers): on a metered link, returning
a 20 MB attachment to say it failed is waste.  A sender that asked for the
whole message (RET=FULL, RFC 3461 4.3) gets it back in a failure report as
message/rfc822; success and delay reports return headers only, as RFC 3461
recommends.  The ENVID and ORCPT the client gave (RFC 3461) come back as
Original-Envelope-Id and Original-Recipient fields; a report naming a UTF-8
recipient (RFC 6533) has a message/global-delivery-status part instead.  Whatever octets the original
holds (a local submission may carry bare CRs, NULs, endless lines, or no
blank line at all, so that its "header section" is the whole message), the
DSN is well formed: at most `MAX_RETURNED_HEADERS` octets of them are
returned, every line ends in CRLF and has at most 998 octets (RFC 5322
2.1.1), and NULs are dropped, so that any SMTP server, tidepost included,
accepts it.

Never bounce a bounce: a message from the null sender gets no DSN (the
caller checks `Envelope.is_bounce` / `MessageInfo.sender.is_null`), and every
DSN is itself sent from the null sender, so a DSN that fails is dropped.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from email.utils import formatdate

from tidepost.address import NULL_SENDER
from tidepost.model import BodyType, MessageInfo, QueuedRecipient
from tidepost.outcomes import Outcome
from tidepost.queue.backend import NewMessage
from tidepost.queue.sqlite import new_queue_id
from tidepost.submission.headers import MAX_LINE, header_section

MAX_RETURNED_HEADERS = 64 * 1024  # octets of the original's header section a DSN returns
_LINE_BREAK = re.compile(r"\r\n|\r|\n")


# The kinds of report, as RFC 3461 NOTIFY names what a recipient asked for.
FAILURE, DELAY, SUCCESS = "FAILURE", "DELAY", "SUCCESS"
_SUBJECTS = {FAILURE: "Undelivered Mail Returned to Sender",
             DELAY: "Delayed Mail (still being retried)",
             SUCCESS: "Successful Mail Delivery Report"}


@dataclass(frozen=True, slots=True)
class Failure:
    """One recipient to report on, with the outcome that explains it."""

    recipient: QueuedRecipient
    outcome: Outcome


def make_dsn(message: MessageInfo, original: bytes, failures: list[Failure],
             hostname: str, now: float, *, kind: str = FAILURE) -> NewMessage:
    """Build the DSN of `kind` for `failures` of `message`, addressed to its sender."""
    queue_id = new_queue_id()
    boundary = f"{queue_id}.{secrets.token_hex(8)}/{hostname}"
    subject = _SUBJECTS[kind]
    head = (
        f"From: Mail Delivery System <MAILER-DAEMON@{hostname}>\r\n"
        f"To: <{message.sender}>\r\n"
        f"Subject: {subject}\r\n"
        f"Date: {formatdate(now, localtime=True)}\r\n"
        f"Message-ID: <{queue_id}.{int(now)}@{hostname}>\r\n"
        "Auto-Submitted: auto-replied\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: multipart/report; report-type=delivery-status;\r\n"
        f"\tboundary=\"{boundary}\"\r\n"
        "Content-Transfer-Encoding: 8bit\r\n\r\n"
    )
    parts = [
        _part("text/plain; charset=utf-8",
              _human_text(message, failures, hostname, kind)),
        _status_part(_status_fields(message, failures, hostname, now, kind)),
        _returned(message, original, kind),
    ]
    body = head + "".join(f"--{boundary}\r\n{p}" for p in parts) + f"--{boundary}--\r\n"
    return NewMessage(NULL_SENDER, (message.sender,), body.encode(), now,
                      BodyType.EIGHT_BIT_MIME, not message.sender.is_ascii, queue_id)


def _returned(message: MessageInfo, original: bytes, kind: str) -> str:
    """The original as the report returns it: whole for RET=FULL failures, else headers."""
    if kind == FAILURE and message.ret == "FULL":
        return _part("message/rfc822", original.decode("utf-8", "replace"))
    return _part("text/rfc822-headers",
                 header_section(original)[:MAX_RETURNED_HEADERS].decode("utf-8", "replace"))


def _status_part(fields: str) -> str:
    """The delivery-status part: message/global-delivery-status once it is not
    ASCII (a UTF-8 recipient, RFC 6533 3), since message/delivery-status is 7-bit."""
    kind = "message/delivery-status" if fields.isascii() else "message/global-delivery-status"
    return _part(kind, fields)


def _part(content_type: str, text: str) -> str:
    """One MIME body part: CRLF line endings, lines of at most 998 octets, no NUL."""
    lines = [_cut(line) for line in _LINE_BREAK.split(text.replace("\0", ""))]
    if lines[-1] == "":
        lines.pop()
    body = "".join(line + "\r\n" for line in lines)
    return f"Content-Type: {content_type}\r\n\r\n{body}\r\n"


def _cut(line: str) -> str:
    """`line` shortened to MAX_LINE octets of UTF-8, never inside a character."""
    if len(line) * 4 <= MAX_LINE:  # short enough whatever its characters
        return line
    return line.encode("utf-8")[:MAX_LINE].decode("utf-8", "ignore")


def _human_text(message: MessageInfo, failures: list[Failure], hostname: str,
                kind: str) -> str:
    """The part a person reads first."""
    intro = f"This is the mail system at host {hostname}.\n\n"
    if kind == DELAY:
        intro += ("Your message could not be delivered yet. It is still in the queue\n"
                  "and will be retried; you do not need to send it again.\n")
    elif kind == SUCCESS:
        intro += ("Your message was delivered to the recipients below, or handed on to\n"
                  "a mail system that sends no delivery reports, as you asked.\n")
    else:
        returned = "in full" if message.ret == "FULL" else "headers only"
        intro += ("Your message could not be delivered to one or more recipients.\n"
                  f"It has been returned below ({returned}).\n")
    lines = [f"<{f.recipient.address}>: {f.outcome.reason}" for f in failures]
    return intro + f"\nQueue ID: {message.queue_id}\n\n" + "\n".join(lines) + "\n"


def _status_fields(message: MessageInfo, failures: list[Failure], hostname: str,
                   now: float, kind: str) -> str:
    """The machine-readable message/delivery-status part (RFC 3464 2.2, 2.3)."""
    envid = f"Original-Envelope-Id: {message.envid}\n" if message.envid else ""
    blocks = [f"{envid}Reporting-MTA: dns; {hostname}\n"
              f"X-Tidepost-Queue-ID: {message.queue_id}\n"
              f"Arrival-Date: {formatdate(message.arrival, localtime=True)}\n"]
    for failure in failures:
        outcome = failure.outcome
        address = failure.recipient.address
        orcpt = failure.recipient.dsn.orcpt
        address_type = "rfc822" if address.is_ascii else "utf-8"
        block = (f"Original-Recipient: {orcpt}\n" if orcpt else "") + (
                 f"Final-Recipient: {address_type}; {address}\n"
                 f"Action: {_action(kind, outcome)}\n"
                 f"Status: {outcome.status}\n")
        if outcome.remote_mta:
            block += f"Remote-MTA: dns; {outcome.remote_mta}\n"
        block += f"Diagnostic-Code: {_diagnostic_code(outcome)}\n"
        block += f"Last-Attempt-Date: {formatdate(now, localtime=True)}\n"
        blocks.append(block)
    return "\n".join(blocks)


def _action(kind: str, outcome: Outcome) -> str:
    """The Action field (RFC 3464 2.3.3): failed, delayed, delivered or relayed."""
    if kind == SUCCESS:
        return outcome.action
    return "delayed" if kind == DELAY else "failed"


def _diagnostic_code(outcome: Outcome) -> str:
    """The remote server's own reply ("smtp; 550 5.1.1 ..."), else our diagnosis."""
    if outcome.diagnostic:
        return f"smtp; {_one_line(outcome.diagnostic)}"
    return f"x-tidepost; {_one_line(outcome.reason)}"


def _one_line(text: str) -> str:
    """Keep a diagnostic on one header-safe line."""
    return " ".join(text.split())[:900]
