"""One SMTP conversation, on any pair of byte streams.

`Conversation(config, submission, stream, writer, peer_ip=...)` greets the
client and serves commands until QUIT, end of input, a timeout (421 4.4.2:
silence over `smtp.idle_timeout`, a command line not complete within
`smtp.command_deadline`, DATA below `smtp.min_data_rate`, or a client
outside relay_networks and AUTH past `smtp.max_session_time`) or too many
errors (`smtp.max_errors`: 421 4.7.0).  It needs only an async
`stream.read(n)` and a writer with `write()`, `drain()` and `close()`, so it
serves TCP connections (listeners.py) and `tidepost sendmail -bs` on
stdin/stdout alike (pass `trusted=True`: a local user holds no connection
slot, so no deadline but idle_timeout applies to it).

State (state.py): `Session` lives as long as the connection (client, HELO, TLS, AUTH,
error count); `Transaction` from MAIL to the end of DATA (or BDAT LAST) or RSET.
Verbs are methods named `smtp_<VERB>` (sync or async; BDAT in chunking.py,
XBATCH in batch.py); a subclass adds ETRN,
ATRN or AUTH by defining more, and may override `extensions()` (EHLO lines)
and `check_recipient()` (policy hook).

Invariants: replies go out in command order, batched while the client has
pipelined complete lines (RFC 2920); 250 after DATA (or BDAT LAST) is sent
only after `submission.submit()` has returned; any failure there is 451 4.3.0 and the
message is not acknowledged.  DATA while input is already buffered behind it
(the client did not wait for 354, RFC 2920 3.1) is refused with 554 5.5.0
and the connection closed, so message text can never run as commands; a
trusted session (a local script on stdin, which is always fully buffered)
is exempt.
Every 5xx reply counts as an error, and so does every 452 for a recipient
past `smtp.max_recipients` beyond the first RECIPIENT_OVERSHOOT of them (as
Postfix's smtpd_recipient_overshoot_limit); the one that reaches `smtp.max_errors`
is followed by 421 4.7.0 and the connection is closed.  Every 4xx and 5xx
reply but our own shutdown's is logged as a `reject` event (rejections.py),
with the command it answered (CONNECT before the first one; for a timeout,
the last command seen, DATA while the message arrived).
Config keys read: hostname, smtp.max_message_size, smtp.max_recipients,
smtp.idle_timeout, smtp.command_deadline, smtp.min_data_rate,
smtp.data_rate_window, smtp.max_session_time, smtp.max_errors, smtp.chunking
(relay keys through AccessPolicy).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import ssl
from typing import Any, Awaitable, Callable

from tidepost.address import Address
from tidepost.config.schema import Config
from tidepost.eventloop import running_loop
from tidepost.smtp_server import replies as S
from tidepost.smtp_server.access import AccessPolicy
from tidepost.smtp_server.data import content_problem, submit_message
from tidepost.smtp_server.outbox import Outbox, Writer
from tidepost.smtp_server.parsing import parse_mail, parse_rcpt
from tidepost.smtp_server.batch import BatchVerbs
from tidepost.smtp_server.bodies import LargeBodies
from tidepost.smtp_server.chunking import ChunkingVerbs
from tidepost.smtp_server.reader import (BareLineFeed, ByteStream, ClientDisconnected,
                                         ClientTooSlow, CommandTimeout, LineTooLong,
                                         MessageData, SmtpReader)
from tidepost.smtp_server.rejections import log_reject, path_word
from tidepost.smtp_server.replies import Reply
from tidepost.smtp_server.state import Counters, Session, Transaction
from tidepost.submission import transfers
from tidepost.submission.submit import Submission

log = logging.getLogger("tidepost.smtp_server")

COMMAND_LINE_LIMIT = 2048  # octets incl. CRLF: 512 (RFC 5321) plus ESMTP parameters
FLUSH_THRESHOLD = 64 * 1024  # flush pending replies beyond this many octets
RECIPIENT_OVERSHOOT = 1000  # 452s past max_recipients that cost no error (Postfix's default)


TlsUpgrade = Callable[[Any, ssl.SSLContext], Awaitable[tuple[ByteStream, Writer]]]


def verb_name(word: bytes) -> str:
    """The command name a line starts with, as the log names it (UNKNOWN if none)."""
    if word.isalpha() and len(word) <= 16:
        return word.decode("ascii").upper()
    return "UNKNOWN"


class Conversation(BatchVerbs, ChunkingVerbs):
    """Serves one SMTP client over a stream and a writer."""

    def __init__(self, config: Config, submission: Submission, stream: ByteStream,
                 writer: Writer, *, peer_ip: str = "", trusted: bool = False,
                 access: AccessPolicy | None = None, tls_context: ssl.SSLContext | None = None,
                 tls_upgrade: TlsUpgrade | None = None, counters: Counters | None = None,
                 on_authenticated: Callable[[], None] = lambda: None,
                 large_bodies: LargeBodies | None = None):
        self.config = config
        self.limits = config.smtp
        self.submission = submission
        self.access = access or AccessPolicy(config, submission)
        self.counters = counters or Counters()
        self.session = Session(peer_ip=peer_ip, trusted=trusted)
        self.session.may_relay = self.access.may_relay(peer_ip, "", trusted)
        self.transaction: Transaction | None = None
        self._reader = self._new_reader(stream)
        self._outbox = Outbox(writer, self.limits.idle_timeout)
        self._tls_context = tls_context
        self._tls_upgrade = tls_upgrade
        self._on_authenticated = on_authenticated  # the listener moves us to the reserve
        self._large_bodies = large_bodies          # the server's bound on big DATA in memory
        self._closing = False
        self._session_end: float | None = None     # loop time past which we say 421
        self._command = "CONNECT"                  # what a refusal answers, for the log
        self._noted: tuple[str | None, str | None] = (None, None)  # its from=, to=

    def _new_reader(self, stream: ByteStream) -> SmtpReader:
        """A reader on `stream` with this server's deadlines."""
        limits = self.limits
        if self.session.trusted:  # a local user on stdin (sendmail -bs) holds no slot
            return SmtpReader(stream, limits.idle_timeout)
        return SmtpReader(stream, limits.idle_timeout, line_deadline=limits.command_deadline,
                          min_data_rate=limits.min_data_rate,
                          data_rate_window=limits.data_rate_window)

    async def run(self) -> None:
        """Greet, then serve commands until QUIT, EOF, a timeout or the error limit."""
        self.counters.sessions += 1
        if self.limits.max_session_time:
            now = running_loop().time()
            self._session_end = now + self.limits.max_session_time
        self.reply(S.greeting(self.config.hostname))
        try:
            while not self._closing:
                if not self._reader.has_line() or self._outbox.size > FLUSH_THRESHOLD:
                    await self.flush()
                await self._serve_command()
            await self.flush()
        except ClientTooSlow as slow:
            await self._timed_out(S.S421_COMMAND_TIMEOUT if isinstance(slow, CommandTimeout)
                                  else S.S421_DATA_TOO_SLOW)
        except TimeoutError:  # before OSError, of which it is a subclass
            await self._timed_out(S.S421_IDLE_TIMEOUT)
        except (ClientDisconnected, OSError):  # OSError: resets, broken pipes, TLS errors
            pass
        except asyncio.CancelledError:
            self._outbox.last_words(bytes(S.S421_SHUTTING_DOWN))
            raise
        finally:
            self.end_transaction()  # a message cut off mid-BDAT is not queued
            self._outbox.hang_up()
            self._reader.close()  # its timer would keep the connection's objects alive

    async def _timed_out(self, reply: Reply) -> None:
        """Say a final 421 to a client too slow, without waiting for it to read it."""
        self.counters.timeouts += 1
        self._log_reject(reply)
        self._outbox.last_words(bytes(reply))
        await self._outbox.linger(self._reader.stream)

    def reply(self, reply: Reply) -> None:
        """Queue a reply; count 5xx errors and hang up when there are too many."""
        self._outbox.add(bytes(reply))
        if reply.code >= 400:
            self._log_reject(reply)
        if reply.code >= 500:
            self.count_errors(1)

    def count_errors(self, count: int) -> None:
        """Count `count` 5xx errors; reaching smtp.max_errors queues 421 and hangs up."""
        if count <= 0:
            return
        self.session.errors += count
        self.counters.errors += count
        if self.session.errors >= self.limits.max_errors and not self._closing:
            self.counters.error_disconnects += 1
            self._log_reject(S.S421_TOO_MANY_ERRORS)
            self._outbox.add(bytes(S.S421_TOO_MANY_ERRORS))
            self._closing = True

    def _log_reject(self, reply: Reply) -> None:
        """The mail log's `reject` line for a refusal just given."""
        sender, recipient = self._noted
        if sender is None and self.transaction is not None:
            sender = f"<{self.transaction.sender}>"
        log_reject(self._command, self.session.peer_ip, self.session.helo, reply,
                   sender=sender, recipient=recipient)

    def note(self, sender: str | None = None, recipient: str | None = None) -> None:
        """The from= and to= a refusal of the current command is logged with."""
        self._noted = (sender, recipient)

    def note_transaction(self, transaction: Transaction) -> None:
        """Log a refusal of this message with its sender and first recipient."""
        first = transaction.recipients[0] if transaction.recipients else None
        self.note(f"<{transaction.sender}>", first and f"<{first}>")

    def end_transaction(self) -> None:
        """Forget the transaction; a BDAT message's chunks (and memory slot) go with it."""
        if self.transaction is not None and self.transaction.chunks is not None:
            self.transaction.chunks.release()
        self.transaction = None

    def reply_lines(self, code: int, lines: list[str]) -> None:
        """Queue a multi-line reply (EHLO, HELP)."""
        self._outbox.add(S.render_multiline(code, lines))

    def close_after_reply(self) -> None:
        """End the conversation once the queued replies are sent."""
        self._closing = True

    async def flush(self) -> None:
        """Send the queued replies; a client that does not read times out."""
        await self._outbox.flush()

    async def _serve_command(self) -> None:
        """Read one command line and dispatch it to its `smtp_<VERB>` method."""
        try:
            line = await self._reader.read_line(COMMAND_LINE_LIMIT)
        except (LineTooLong, BareLineFeed) as bad:
            self._command, self._noted = "UNKNOWN", (None, None)
            return self.reply(S.S500_LINE_TOO_LONG if isinstance(bad, LineTooLong)
                              else S.S500_BARE_LF)
        self._command = verb_name(line.partition(b" ")[0])
        self._noted = (None, None)
        if self._session_over():
            self.reply(S.S421_SESSION_TOO_LONG)
            return self.close_after_reply()
        self.counters.commands += 1
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            return self.reply(S.S500_NOT_UTF8)
        verb, _, arg = text.partition(" ")
        handler = self._handler(verb)
        if handler is None:
            return self.reply(S.S500_UNKNOWN_COMMAND)
        await self._call(handler, arg.strip(" "))

    def _session_over(self) -> bool:
        """True once an untrusted client has used up `smtp.max_session_time`."""
        if self._session_end is None or self.session.may_relay:
            return False  # relay networks, AUTH and local users are never cut off
        return running_loop().time() >= self._session_end

    def authenticated(self, user: str) -> None:
        """AUTH succeeded: the client may relay and counts in the reserve."""
        self.session.authenticated = user
        self.session.may_relay = self.access.may_relay(self.session.peer_ip, user,
                                                       self.session.trusted)
        self._on_authenticated()

    def _handler(self, verb: str) -> Callable[[str], Any] | None:
        """The `smtp_<VERB>` method for `verb`, or None for unknown verbs."""
        if not (verb.isascii() and verb.isalpha()):
            return None
        return getattr(self, "smtp_" + verb.upper(), None)

    async def _call(self, handler: Callable[[str], Any], arg: str) -> None:
        """Run a verb handler; a bug in it costs the transaction, not the session."""
        try:
            result = handler(arg)
            if inspect.isawaitable(result):
                await result
        except (ClientDisconnected, ClientTooSlow, OSError):  # OSError: TimeoutError too
            raise
        except Exception:
            log.exception("error handling SMTP command from %s", self.session.peer_ip)
            self.end_transaction()
            self.reply(S.S451_LOCAL_ERROR)

    def extensions(self) -> list[str]:
        """The EHLO keywords offered now (subclasses may add to them)."""
        keywords = ["PIPELINING", f"SIZE {self.limits.max_message_size}", "8BITMIME",
                    "ENHANCEDSTATUSCODES", "SMTPUTF8", "DSN"]
        keywords += self.chunking_keywords()
        if self._tls_available() and not self.session.tls:
            keywords.append("STARTTLS")
        features = (*self._xtidepost_features(), *self.batch_features())
        if features:  # tidepost-to-tidepost extensions, one keyword (docs/EXTENSIONS.md)
            keywords.append(" ".join((transfers.EXTENSION, *features)))
        return keywords

    def _xtidepost_features(self) -> tuple[str, ...]:
        """The XTIDEPOST TRANSFER feature word when this client may use it (docs/EXTENSIONS.md).

        TRANSFER only for clients whose transfers have a namespace
        (relay_networks or authenticated) and when this node keeps keys;
        BATCH (batch.py) is added beside it by `extensions`.
        """
        features: tuple[str, ...] = ()
        if self.submission.transfers is not None and transfers.namespace(
                self.session.authenticated, self.session.may_relay) is not None:
            features += (transfers.TRANSFER,)
        return features

    def auth_supported(self) -> bool:
        """True when this server takes AUTH (and so MAIL's AUTH=); subclasses say."""
        return False

    def check_recipient(self, rcpt: Address) -> Reply:
        """Policy hook: the reply to RCPT TO for a parsed recipient."""
        return self.access.check_recipient(rcpt, self.session.may_relay)

    def _tls_available(self) -> bool:
        """True when STARTTLS can be offered on this connection."""
        return self._tls_context is not None and self._tls_upgrade is not None

    def smtp_HELO(self, arg: str) -> None:
        """HELO: identify, plain SMTP."""
        self._greet(arg, esmtp=False)

    def smtp_EHLO(self, arg: str) -> None:
        """EHLO: identify and list the extensions."""
        self._greet(arg, esmtp=True)

    def _greet(self, arg: str, esmtp: bool) -> None:
        """Record the client's name, reset any transaction, reply."""
        name = arg.split()[0] if arg.split() else ""
        if not name or not name.isprintable():  # it ends up in the Received header
            return self.reply(S.S501_HELO_SYNTAX)
        self.session.helo = name
        self.session.esmtp = esmtp
        self.end_transaction()
        if esmtp:
            self.reply_lines(250, [self.config.hostname, *self.extensions()])
        else:
            self.reply(S.helo_ok(self.config.hostname))

    async def smtp_MAIL(self, arg: str) -> None:
        """MAIL FROM: start a transaction (paced while delivery is behind, inflow.py)."""
        if not self.session.helo:
            return self.reply(S.S503_HELO_FIRST)
        if self.transaction is not None:
            return self.reply(S.S503_NESTED_MAIL)
        if self.submission.inflow is not None:
            await self.submission.inflow.pace()
        self.note(sender=path_word(arg))
        started = self.mail_verdict(arg)
        if isinstance(started, Reply):
            return self.reply(started)
        self.transaction = started
        self.reply(S.S250_SENDER_OK)

    def mail_verdict(self, arg: str) -> Transaction | Reply:
        """The transaction a MAIL argument starts, or its refusal (also for XBATCH)."""
        command = parse_mail(arg, self.limits.max_message_size,
                             transfers.TRANSFER in self._xtidepost_features(),
                             auth=self.auth_supported())
        if isinstance(command, Reply):
            return command
        return Transaction(command.sender, command.body_type, command.smtputf8,
                           transfer_id=command.transfer_id, ret=command.ret,
                           envid=command.envid)

    def smtp_RCPT(self, arg: str) -> None:
        """RCPT TO: add a recipient if the policy allows it."""
        transaction = self.transaction
        self.note(recipient=path_word(arg))
        if transaction is None:
            return self.reply(S.S503_MAIL_FIRST)
        verdict = self.rcpt_verdict(transaction, arg)
        self.reply(verdict)
        if verdict is S.S452_TOO_MANY_RECIPIENTS:
            transaction.overshoot += 1
            if transaction.overshoot > RECIPIENT_OVERSHOOT:
                self.count_errors(1)

    def rcpt_verdict(self, transaction: Transaction, arg: str) -> Reply:
        """The reply to a RCPT argument; an accepted recipient joins `transaction`."""
        command = parse_rcpt(arg)
        if isinstance(command, Reply):
            return command
        rcpt = command.address
        if not rcpt.is_ascii and not transaction.smtputf8:
            return S.S553_NEEDS_SMTPUTF8
        if len(transaction.recipients) >= self.limits.max_recipients:
            return S.S452_TOO_MANY_RECIPIENTS
        verdict = self.check_recipient(rcpt)
        if verdict.code == 250:
            transaction.recipients.append(rcpt)
            if command.dsn.notify or command.dsn.orcpt:
                transaction.dsn[rcpt] = command.dsn
            self.counters.recipients_accepted += 1
        else:
            self.counters.recipients_rejected += 1
        return verdict

    def smtp_RSET(self, arg: str) -> None:
        """RSET: abandon the transaction."""
        if arg:
            return self.reply(S.S501_SYNTAX)
        self.end_transaction()
        self.batch_reset()
        self.reply(S.S250_OK)

    def smtp_NOOP(self, arg: str) -> None:
        """NOOP: do nothing (an argument is allowed and ignored)."""
        self.reply(S.S250_OK)

    def smtp_QUIT(self, arg: str) -> None:
        """QUIT: say goodbye and close."""
        self.reply(S.S221_BYE)
        self.close_after_reply()

    def smtp_VRFY(self, arg: str) -> None:
        """VRFY: never confirm users (address harvesting), RFC 5321 3.5.3."""
        self.reply(S.S252_CANNOT_VRFY if arg else S.S501_SYNTAX)

    def smtp_EXPN(self, arg: str) -> None:
        """EXPN: lists are not disclosed."""
        self.reply(S.S502_EXPN_DISABLED)

    def smtp_HELP(self, arg: str) -> None:
        """HELP: name the commands."""
        self.reply(S.S214_HELP)

    async def smtp_STARTTLS(self, arg: str) -> None:
        """STARTTLS: upgrade to TLS, forget everything said before (RFC 3207)."""
        if arg:
            return self.reply(S.S501_SYNTAX)
        if self.session.tls:
            return self.reply(S.S503_TLS_ACTIVE)
        if not self._tls_available():
            return self.reply(S.S454_TLS_UNAVAILABLE)
        self.reply(S.S220_READY_FOR_TLS)
        await self.flush()
        try:
            stream, self._outbox.writer = await self._tls_upgrade(self._outbox.writer,
                                                                  self._tls_context)
        except (ssl.SSLError, OSError, TimeoutError) as exc:
            log.info("TLS handshake with %s failed: %s", self.session.peer_ip, exc)
            raise ClientDisconnected() from exc
        # A new reader: plaintext pipelined after STARTTLS is never read (RFC 3207 4.2).
        self._reader.close()
        self._reader = self._new_reader(stream)
        ssl_object = getattr(self._outbox.writer, "get_extra_info", lambda name: None)(
            "ssl_object")
        self.forget_client()
        self.session.tls = True
        self.session.tls_version = ssl_object.version() if ssl_object is not None else "TLS"

    def forget_client(self) -> None:
        """After STARTTLS: forget all the client said in clear (RFC 3207 4.2).

        Its HELO name, transaction, AUTH identity (and so the relay right it
        gave) and XBATCH stream; only the address, the trust of a local
        user and the error count (our own knowledge) remain.  Subclasses
        forget their own client state too.
        """
        old = self.session
        self.session = Session(peer_ip=old.peer_ip, trusted=old.trusted, errors=old.errors)
        self.session.may_relay = self.access.may_relay(old.peer_ip, "", old.trusted)
        self.end_transaction()
        self.batch_reset()

    async def smtp_DATA(self, arg: str) -> None:
        """DATA: read the message, check it, submit it; 250 only after commit."""
        if arg:
            return self.reply(S.S501_SYNTAX)
        transaction = self.transaction
        self.end_transaction()
        if transaction is not None:
            self.note_transaction(transaction)
        if self._reader.buffered and not self.session.trusted:
            self.reply(S.S554_PIPELINED_DATA)
            return self.close_after_reply()
        if transaction is None:
            return self.reply(S.S503_MAIL_FIRST)
        if transaction.chunks is not None:
            return self.reply(S.S503_DATA_AFTER_BDAT)
        if not transaction.recipients:
            return self.reply(S.S554_NO_VALID_RECIPIENTS)
        self.reply(S.S354_START_DATA)
        await self.flush()
        ticket = self._large_bodies.ticket() if self._large_bodies is not None else None
        try:
            data = await self._reader.read_data(self.limits.max_message_size, ticket)
            self._command = "end-of-data"
            outcome = await self.accept_message(transaction, data)
        finally:
            if ticket is not None:
                ticket.done()  # the body is committed or refused: its memory is free
        self.reply(outcome)
        if outcome.code == 250:
            # Out at once, not behind commands the client pipelined after the
            # dot: until it arrives the client may send a second copy.
            await self.flush()

    async def accept_message(self, transaction: Transaction, data: MessageData) -> Reply:
        """Check a received message and queue it; the final reply (also for XBATCH)."""
        outcome = content_problem(data)
        if outcome is None:
            outcome = await submit_message(self.submission, transaction, data.body,
                                           self.session)
        if outcome.code == 250:
            self.counters.messages_accepted += 1
        else:
            self.counters.messages_rejected += 1
        return outcome
