"""Named SMTP replies, shared by the server and its tests.

Every reply the server sends is a `Reply` constant here, in turn.py (ETRN,
ATRN, ODMR) or in auth.py (AUTH), or is built by one of the small functions
beside them, so that tests read like transcripts:
`assert reply == S.S550_RELAY_DENIED`.  docs/REPLIES.md lists every one,
with the command it answers and when; tests/unit/test_replies_table.py
parses that table and checks it against these constants both ways, so the
two cannot drift apart.  Each reply carries an RFC 3463 enhanced status
code, because EHLO advertises ENHANCEDSTATUSCODES; RFC 2034 section 3
exempts only the greeting, the HELO/EHLO replies and 3xx replies (354),
whose `status` is "".

Code choices that are ours, not dictated by an RFC (documented here once):
- over-long command line: 500 5.5.2 (RFC 5321 4.5.3.1.4 suggests "500 Line
  too long"; X.5.2 is "syntax error"; X.5.6 would be RFC 4954's AUTH line);
- bare LF ending a command: 500 5.5.2, text says CRLF is required;
- MAIL FROM address syntax: 501 5.1.7 (bad sender address), RCPT: 501 5.1.3;
- bytes pipelined after DATA before its reply: 554 5.5.0, then we hang up;
- message content problems (bare CR/LF, NUL, lines over 1000 octets):
  554 5.6.0, "transaction failed" (RFC 5321 4.2.2, 4.2.5: 550 is about the
  mailbox, and the mailbox is fine); oversize: 552 5.3.4; submission
  failure: 451 4.3.0, but a full spool file system 452 4.3.1 (RFC 3463
  "mail system full", as Postfix says for a full queue);
- a client too slow (silent, a command line or DATA trickled, an untrusted
  session too long): 421 4.4.2 ("connection dropped", RFC 3463); over a
  connection limit or the error limit: 421 4.7.0 (a policy refusal).
"""

from __future__ import annotations

from dataclasses import dataclass

CRLF = "\r\n"


@dataclass(frozen=True, slots=True)
class Reply:
    """One SMTP reply: code, RFC 3463 status ("" where exempt) and text."""

    code: int
    status: str
    text: str

    def line(self) -> str:
        """The reply as one line of text, without CRLF."""
        if self.status:
            return f"{self.code} {self.status} {self.text}"
        return f"{self.code} {self.text}"

    def __bytes__(self) -> bytes:
        """The reply as sent: one line with CRLF."""
        return (self.line() + CRLF).encode("utf-8", "replace")

    @property
    def is_error(self) -> bool:
        """True for 4xx and 5xx replies."""
        return self.code >= 400

    @classmethod
    def parse(cls, line: str) -> Reply:
        """Parse `250 2.0.0 Ok` (or `250-...`) back into a Reply."""
        code, text = int(line[:3]), line[4:]
        first, _, rest = text.partition(" ")
        if _looks_like_status(first, code):
            return cls(code, first, rest)
        return cls(code, "", text)


def _looks_like_status(word: str, code: int) -> bool:
    """True when `word` is an enhanced status code matching the reply class."""
    parts = word.split(".")
    return (len(parts) == 3 and all(p.isdigit() for p in parts)
            and parts[0] == str(code)[0])


def render_multiline(code: int, lines: list[str]) -> bytes:
    """`250-first`, `250-...`, `250 last` as bytes (EHLO, HELP)."""
    out = [f"{code}-{text}" for text in lines[:-1]] + [f"{code} {lines[-1]}"]
    return (CRLF.join(out) + CRLF).encode("utf-8", "replace")


def greeting(hostname: str) -> Reply:
    """The 220 banner; RFC 2034 exempts it from enhanced status codes."""
    return Reply(220, "", f"{hostname} ESMTP tidepost")


def helo_ok(hostname: str) -> Reply:
    """The 250 to HELO; RFC 2034 exempts it from enhanced status codes."""
    return Reply(250, "", hostname)


def queued(queue_id: str) -> Reply:
    """The 250 after DATA, sent only once the message is committed."""
    return Reply(250, "2.0.0", f"Ok: queued as {queue_id}")


def chunk_received(octets: int) -> Reply:
    """The 250 to a BDAT chunk that is not the last (RFC 3030)."""
    return Reply(250, "2.0.0", f"Ok: {octets} octets received")


def batch_held(transfer_id: str, octets: int) -> Reply:
    """XRESUME: how many octets of a message an earlier session left here."""
    return Reply(250, "2.0.0", f"{transfer_id} {octets}")


def s554_batch_stream(why: str) -> Reply:
    """XBATCH: the batch stream is malformed (docs/BATCH.md); the rest of it is refused."""
    return Reply(554, "5.6.0", f"Batch stream refused: {why}")


def dsn_syntax(why: str) -> Reply:
    """MAIL or RCPT: a DSN parameter (RET, ENVID, NOTIFY, ORCPT) RFC 3461 does not allow."""
    return Reply(501, "5.5.4", f"Bad DSN parameter: {why}")


def rejected(code: int, status: str, text: str) -> Reply:
    """A reply given by the submission layer, made safe to send on one line."""
    text = "".join(c if c.isprintable() else " " for c in text) or "Rejected"
    return Reply(code, status, text)


S214_HELP = Reply(214, "2.0.0", "Commands: HELO EHLO MAIL RCPT DATA BDAT RSET NOOP QUIT "
                                "VRFY HELP STARTTLS; see RFC 5321")
S220_READY_FOR_TLS = Reply(220, "2.0.0", "Ready to start TLS")
S221_BYE = Reply(221, "2.0.0", "Bye")
S250_OK = Reply(250, "2.0.0", "Ok")
S250_SENDER_OK = Reply(250, "2.1.0", "Sender ok")
S250_RECIPIENT_OK = Reply(250, "2.1.5", "Recipient ok")
S252_CANNOT_VRFY = Reply(252, "2.5.0", "Cannot VRFY user, but will accept message "
                                       "and attempt delivery")
S354_START_DATA = Reply(354, "", "End data with <CR><LF>.<CR><LF>")

S421_IDLE_TIMEOUT = Reply(421, "4.4.2", "Idle timeout, closing connection")
S421_COMMAND_TIMEOUT = Reply(421, "4.4.2", "Command line not completed in time, closing "
                                           "connection")
S421_DATA_TOO_SLOW = Reply(421, "4.4.2", "Message data arriving too slowly, closing "
                                         "connection")
S421_SESSION_TOO_LONG = Reply(421, "4.4.2", "Session time limit reached, closing connection")
S421_TOO_MANY_CONNECTIONS = Reply(421, "4.7.0", "Too many connections, try again later")
S421_TOO_MANY_FROM_CLIENT = Reply(421, "4.7.0", "Too many connections from your address, "
                                                "try again later")
S421_CONNECTION_RATE = Reply(421, "4.7.0", "Too many connections from your address in the "
                                           "last minute, try again later")
S421_TOO_MANY_ERRORS = Reply(421, "4.7.0", "Too many errors, closing connection")
S421_SHUTTING_DOWN = Reply(421, "4.3.2", "Service shutting down, closing connection")
S451_LOCAL_ERROR = Reply(451, "4.3.0", "Local error in processing; message not accepted")
S452_NO_SPACE = Reply(452, "4.3.1", "Insufficient system storage; message not accepted")
S452_TOO_MANY_RECIPIENTS = Reply(452, "4.5.3", "Too many recipients")
S454_TLS_UNAVAILABLE = Reply(454, "4.7.0", "TLS not available")

S500_UNKNOWN_COMMAND = Reply(500, "5.5.1", "Command unrecognized")
S500_LINE_TOO_LONG = Reply(500, "5.5.2", "Line too long")
S500_BARE_LF = Reply(500, "5.5.2", "Command lines must end with CRLF, not a bare LF "
                                   "(RFC 5321 2.3.8)")
S500_NOT_UTF8 = Reply(500, "5.5.2", "Command is not valid UTF-8")
S501_SYNTAX = Reply(501, "5.5.4", "Syntax error in parameters or arguments")
S501_HELO_SYNTAX = Reply(501, "5.5.4", "Syntax: HELO/EHLO hostname")
S501_MAIL_SYNTAX = Reply(501, "5.5.4", "Syntax: MAIL FROM:<address> [parameters]")
S501_RCPT_SYNTAX = Reply(501, "5.5.4", "Syntax: RCPT TO:<address>")
S501_BAD_SENDER = Reply(501, "5.1.7", "Bad sender address syntax")
S501_BAD_RECIPIENT = Reply(501, "5.1.3", "Bad recipient address syntax")
S502_EXPN_DISABLED = Reply(502, "5.5.1", "EXPN not available")
S503_HELO_FIRST = Reply(503, "5.5.1", "Send HELO/EHLO first")
S503_NESTED_MAIL = Reply(503, "5.5.1", "Sender already specified")
S503_MAIL_FIRST = Reply(503, "5.5.1", "Send MAIL first")
S503_DATA_AFTER_BDAT = Reply(503, "5.5.1", "DATA cannot follow BDAT in one transaction "
                                           "(RFC 3030); the transaction is abandoned")
S503_TLS_ACTIVE = Reply(503, "5.5.1", "TLS already active")

S501_BDAT_SYNTAX = Reply(501, "5.5.4", "Syntax: BDAT octets [LAST]; closing")
S502_BDAT_DISABLED = Reply(502, "5.5.1", "BDAT not available here; its octets were "
                                         "discarded")

S550_NO_SUCH_USER = Reply(550, "5.1.1", "No such user here")
S550_RELAY_DENIED = Reply(550, "5.7.1", "Relaying denied")
S550_NO_ROUTE = Reply(550, "5.4.4", "Unable to route to this domain")
S552_TOO_BIG = Reply(552, "5.3.4", "Message size exceeds fixed maximum message size")
S553_NEEDS_SMTPUTF8 = Reply(553, "5.6.7", "Non-ASCII address needs MAIL FROM ... SMTPUTF8")
S554_BARE_CR_LF = Reply(554, "5.6.0", "Message contains a bare CR or LF; lines must "
                                      "end with CRLF (RFC 5321 2.3.8)")
S554_NUL = Reply(554, "5.6.0", "Message contains NUL characters")
S554_LINE_TOO_LONG = Reply(554, "5.6.0", "Message has a line over 1000 octets "
                                         "(RFC 5321 4.5.3.1.6)")
S554_NO_VALID_RECIPIENTS = Reply(554, "5.5.1", "No valid recipients")
S554_PIPELINED_DATA = Reply(554, "5.5.0", "Protocol error: data sent before the reply "
                                          "to DATA (RFC 2920 3.1)")
S555_UNKNOWN_PARAMETER = Reply(555, "5.5.4", "Unsupported MAIL/RCPT parameter")

# XTIDEPOST BATCH (smtp_server/batch.py, docs/BATCH.md)
S501_BATCH_SIZE = Reply(501, "5.5.4", "Syntax: XBATCH octets (1 to 1048576); closing")
S503_BATCH_IN_TRANSACTION = Reply(503, "5.5.1", "XBATCH and XRESUME are not allowed during "
                                                "a mail transaction")
S503_BATCH_BROKEN = Reply(503, "5.5.1", "The batch stream failed earlier; RSET starts a "
                                        "new one")
S451_BATCH_RESUME_LOST = Reply(451, "4.3.0", "The resumed part of this message is not held "
                                             "here (any more); send it whole")
