"""Mail from local users: one request format, one set of rules, whoever carries it.

A `tidepost sendmail` run becomes a `LocalRequest` (the recipients and flags
as typed, and the message bytes).  It reaches the queue by one of three
ways — the daemon's submission socket, a maildrop file the daemon picks up,
or, for the spool's own account, a direct write — and each ends here, in
`LocalSubmitter.submit(request, submitter)`, so the rules are the same:

- The submitter is known from the kernel (the socket's SO_PEERCRED, or the
  maildrop file's owner), never from the request.  The envelope sender is
  that user (`login@hostname`); `-f` is honoured only for trusted users
  (`system.trusted_users`, root, the daemon's account) or when it names the
  user's own address; otherwise the user's address is kept and an
  X-Authentication-Warning header says what was asked, as sendmail does.
- The Received header naming this host is ours: Received fields of a local
  message that claim to be by this host are renamed X-Untrusted-Received, so
  a user cannot forge the host's trace.  From, Date and Message-ID are added
  when missing; with `-t` the recipients come from To, Cc and Bcc, and Bcc
  is removed.
- Unknown local users and domains no route serves are refused (exit 67),
  bad addresses and oversize messages too (65); nothing is queued then.

Wire format (socket and maildrop file alike): the line `TIDEPOST-SUBMIT 1`,
one line of JSON (`recipients`, `from_headers`, `sender`, `full_name`,
`size`, and the optional DSN request `notify`, `ret`, `envid` of -N, -R,
-V: a bad one is refused, exit 64), then exactly `size` octets of message with CRLF line endings.
The header line is at most MAX_HEADER octets.  Config keys read: hostname,
local.domains, system.trusted_users, smtp.max_message_size.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from dataclasses import dataclass, field
from email.utils import getaddresses

from tidepost.address import Address, AddressError, parse_path
from tidepost.config.schema import Config
from tidepost.errors import AlreadyQueued, QueueError, QueueFull
from tidepost.dsnparams import (DsnParameterError, parse_envid, parse_notify, parse_ret,
                                xtext_encode)
from tidepost.model import BodyType, Envelope, RecipientDsn
from tidepost.submission.headers import header_section
from tidepost.submission.local_message import complete_headers, remove_bcc
from tidepost.submission.submit import ClientInfo, Submission, SubmissionRejected

log = logging.getLogger("tidepost.submission.local")

MAGIC = b"TIDEPOST-SUBMIT 1\n"
MAX_HEADER = 256 * 1024  # octets of the JSON line: thousands of recipients
EX_OK, EX_USAGE, EX_DATAERR, EX_NOUSER, EX_TEMPFAIL = 0, 64, 65, 67, 75


class RequestError(ValueError):
    """The bytes are not a well-formed local submission request."""


@dataclass(frozen=True, slots=True)
class LocalRequest:
    """What `tidepost sendmail` was asked to send."""

    recipients: tuple[str, ...]
    message: bytes                   # CRLF line endings (local_message.from_local_input)
    from_headers: bool = False       # -t
    sender: str | None = None        # -f / -r as typed
    full_name: str | None = None     # -F
    notify: str = ""                 # -N, -R, -V: the DSN request (RFC 3461), as stored
    ret: str = ""
    envid: str = ""

    def encode(self) -> bytes:
        """The request in the wire format (module docstring)."""
        head = {"recipients": list(self.recipients), "from_headers": self.from_headers,
                "sender": self.sender, "full_name": self.full_name,
                "notify": self.notify, "ret": self.ret, "envid": self.envid,
                "size": len(self.message)}
        return MAGIC + json.dumps(head).encode() + b"\n" + self.message


def decode_head(line: bytes) -> dict:
    """Check the JSON header line of a request; RequestError when it is malformed."""
    try:
        head = json.loads(line)
    except ValueError:
        raise RequestError("the request header is not JSON") from None
    if not isinstance(head, dict):
        raise RequestError("the request header is not an object")
    recipients = head.get("recipients")
    if not isinstance(recipients, list) or not all(isinstance(r, str) for r in recipients):
        raise RequestError("recipients must be a list of strings")
    for key in ("sender", "full_name", "notify", "ret", "envid"):
        if head.get(key) is not None and not isinstance(head[key], str):
            raise RequestError(f"{key} must be a string")
    size = head.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise RequestError("size must be a whole number")
    return head


def decode(data: bytes) -> LocalRequest:
    """A whole request from bytes (a maildrop file); RequestError when malformed."""
    if not data.startswith(MAGIC):
        raise RequestError("not a tidepost submission")
    end = data.find(b"\n", len(MAGIC), len(MAGIC) + MAX_HEADER + 1)
    if end < 0:
        raise RequestError("the request header is missing or too long")
    head = decode_head(data[len(MAGIC):end])
    message = data[end + 1:]
    if len(message) != head["size"]:
        raise RequestError(f"the message has {len(message)} octets, not {head['size']}")
    return request_from(head, message)


def request_from(head: dict, message: bytes) -> LocalRequest:
    """A LocalRequest from a checked header and its message bytes."""
    return LocalRequest(tuple(head["recipients"]), message, bool(head.get("from_headers")),
                        head.get("sender"), head.get("full_name"), head.get("notify") or "",
                        head.get("ret") or "", head.get("envid") or "")


@dataclass(frozen=True, slots=True)
class Submitter:
    """The local user a request came from, as the kernel tells it."""

    uid: int
    login: str
    trusted: bool            # may set the envelope sender
    way: str = "local"       # "local" (socket or direct) or "maildrop": the log's protocol


@dataclass(frozen=True, slots=True)
class LocalResult:
    """The answer to a request: a sysexits code, a message, the queue id."""

    code: int
    text: str = ""
    queue_id: str = ""

    def to_json(self) -> bytes:
        """The result as the socket sends it back (one line)."""
        return json.dumps({"code": self.code, "text": self.text,
                           "queue_id": self.queue_id}).encode() + b"\n"

    @classmethod
    def from_json(cls, line: bytes) -> LocalResult:
        """Parse the socket's answer; a malformed one is a temporary failure."""
        try:
            data = json.loads(line)
            return cls(int(data["code"]), str(data.get("text", "")),
                       str(data.get("queue_id", "")))
        except (ValueError, KeyError, TypeError):
            return cls(EX_TEMPFAIL, "the daemon's answer was not understood")


@dataclass(slots=True)
class _Prepared:
    """A request turned into an envelope and final message bytes."""

    envelope: Envelope
    body: bytes
    warnings: list[str] = field(default_factory=list)


class LocalSubmitter:
    """Applies the local submission rules and queues through the Submission."""

    def __init__(self, config: Config, submission: Submission):
        self._config = config
        self._submission = submission
        self._trusted = set(config.system.trusted_users)

    def is_trusted(self, login: str, uid: int, own_uid: int) -> bool:
        """True for root, the daemon's own account and system.trusted_users."""
        return uid in (0, own_uid) or login in self._trusted

    def check(self, request: LocalRequest, submitter: Submitter) -> LocalResult:
        """Every check `submit` makes before queueing, without queueing (maildrop)."""
        prepared = self._prepare(request, submitter)
        return prepared if isinstance(prepared, LocalResult) else LocalResult(EX_OK)

    async def submit(self, request: LocalRequest, submitter: Submitter,
                     transfer_key: str = "") -> LocalResult:
        """Queue the request durably; the result's code 0 means committed."""
        prepared = self._prepare(request, submitter)
        if isinstance(prepared, LocalResult):
            return prepared
        client = ClientInfo(protocol="local", local_user=submitter.login,
                            uid=submitter.uid, way=submitter.way)
        try:
            queue_id = await self._submission.submit(
                prepared.envelope, prepared.body, client,
                transfer_keys=(transfer_key,) if transfer_key else ())
        except SubmissionRejected as exc:
            code = EX_DATAERR if exc.code >= 500 else EX_TEMPFAIL
            return LocalResult(code, f"{exc.status} {exc.text}")
        except AlreadyQueued as repeat:
            return LocalResult(EX_OK, "queued before", repeat.queue_id)
        except QueueError as exc:  # the message is not stored: the user may try again
            status = "4.3.1 the spool is full" if isinstance(exc, QueueFull) else "4.3.0"
            return LocalResult(EX_TEMPFAIL, f"{status}: message not queued ({exc})")
        return LocalResult(EX_OK, "queued", queue_id)

    async def notify_refused(self, submitter: Submitter, reason: str, excerpt: bytes) -> None:
        """Tell a user whose maildrop file could not be queued, by local mail."""
        config = self._config
        domain = config.local.domains[0] if config.local.domains else config.hostname
        owner = Address(submitter.login, domain)
        text = (f"From: Mail Delivery System <MAILER-DAEMON@{config.hostname}>\r\n"
                f"To: <{owner}>\r\n"
                "Subject: Undelivered Mail: your message was not queued\r\n"
                "Auto-Submitted: auto-replied\r\n\r\n"
                f"A message you left for {config.hostname} while its mail daemon was\r\n"
                f"not running could not be queued:\r\n\r\n    {_header_safe(reason)}"
                "\r\nIts beginning follows.\r\n\r\n")
        quoted = excerpt.decode("utf-8", "replace").replace("\r\n", "\n").splitlines()
        body = text.encode() + "".join(f"> {line}\r\n" for line in quoted[:40]).encode()
        envelope = Envelope(Address("", ""), (owner,))
        try:
            await self._submission.submit(envelope, complete_headers(
                body, envelope.sender, None, config.hostname), ClientInfo(protocol="local",
                local_user="MAILER-DAEMON", way="maildrop"))
        except Exception as exc:  # noqa: BLE001 - the refusal itself is logged already
            log.error("could not tell %s that a maildrop file was refused: %s",
                      submitter.login, exc)

    def _prepare(self, request: LocalRequest, submitter: Submitter) -> _Prepared | LocalResult:
        """Parse and check the request: the envelope and message to queue, or the refusal."""
        config = self._config
        if len(request.message) > config.smtp.max_message_size:
            return LocalResult(EX_DATAERR, "message exceeds smtp.max_message_size")
        try:
            sender, warning = self._sender(request.sender, submitter)
            recipients = [self._address(r) for r in argument_recipients(request.recipients)]
            body = request.message
            if request.from_headers:
                recipients += [self._address(r) for r in header_recipients(body)]
                body = remove_bcc(body)
        except AddressError as exc:
            return LocalResult(EX_DATAERR, f"bad address: {exc}")
        if not recipients:
            return LocalResult(EX_USAGE, "no recipients given")
        dsn_refusal = _dsn_refusal(request)
        if dsn_refusal is not None:
            return dsn_refusal
        refusal = self._recipient_refusal(recipients)
        if refusal is not None:
            return refusal
        body = untrusted_received(body, config.hostname)
        if warning:
            body = warning + body
        body = complete_headers(body, sender, request.full_name, config.hostname)
        return _Prepared(_with_dsn(_envelope(sender, recipients, body), request), body)

    def _sender(self, asked: str | None, submitter: Submitter) -> tuple[Address, bytes]:
        """The envelope sender, and the warning header when -f was not honoured."""
        own = Address(submitter.login, self._config.hostname.lower())
        if asked is None:
            return own, b""
        wanted = Address("", "") if asked in ("", "<>") else self._address(asked)
        own_addresses = {Address(submitter.login, d) for d in self._config.local_domains}
        if submitter.trusted or wanted in own_addresses:
            return wanted, b""
        warning = (f"X-Authentication-Warning: {self._config.hostname}: {submitter.login} "
                   f"set sender to {asked or '<>'} using -f\r\n")
        return own, _header_safe(warning).encode()

    def _address(self, text: str) -> Address:
        """A command-line address; a bare name is a user of the primary local domain."""
        text = text.strip()
        if "@" not in text.strip("<>"):
            name = text.strip("<>")
            parse_path(f"<{name}@localhost>")  # validates the local part
            config = self._config
            domain = config.local.domains[0] if config.local.domains else config.hostname
            return Address(name.lower() if name.lower() == "postmaster" else name, domain)
        return parse_path(text if text.startswith("<") else f"<{text}>")

    def _recipient_refusal(self, recipients: list[Address]) -> LocalResult | None:
        """The refusal for an unknown local user or an unroutable domain, else None."""
        submission = self._submission
        for rcpt in recipients:
            if submission.is_local_domain(rcpt.domain) and \
                    not submission.local_user_exists(rcpt.local):
                return LocalResult(EX_NOUSER, f"{rcpt}: unknown local user")
            if not submission.has_route(rcpt.domain):
                return LocalResult(EX_NOUSER, f"{rcpt}: no route serves this domain")
        return None


def _envelope(sender: Address, recipients: list[Address], body: bytes) -> Envelope:
    """The envelope of a local message; BODY and SMTPUTF8 follow its content."""
    eight_bit = any(b >= 0x80 for b in body)
    return Envelope(sender, tuple(dict.fromkeys(recipients)),
                    BodyType.EIGHT_BIT_MIME if eight_bit else BodyType.SEVEN_BIT,
                    not all(a.is_ascii for a in (sender, *recipients)))


def _dsn_refusal(request: LocalRequest) -> LocalResult | None:
    """The refusal of a DSN request the command line should have refused (a maildrop file)."""
    try:
        if request.notify:
            parse_notify(request.notify)
        if request.ret:
            parse_ret(request.ret)
        if request.envid:
            parse_envid(xtext_encode(request.envid))
    except DsnParameterError as exc:
        return LocalResult(EX_USAGE, f"bad DSN request: {exc}")
    return None


def _with_dsn(envelope: Envelope, request: LocalRequest) -> Envelope:
    """The envelope with the request's -N (for every recipient), -R and -V."""
    dsn = {r: RecipientDsn(request.notify) for r in envelope.recipients} if request.notify else {}
    return dataclasses.replace(envelope, ret=request.ret, envid=request.envid, dsn=dsn)


def argument_recipients(arguments: tuple[str, ...]) -> list[str]:
    """Command-line recipients; an argument may be an address list ("a, b", "Bob <b@x>").

    As Postfix's sendmail reads them.  An argument that does not parse as a
    list of addresses whole is kept as typed, so that it is refused, not guessed at.
    """
    out: list[str] = []
    for argument in arguments:
        pairs = getaddresses([argument]) if "," in argument or "<" in argument else []
        residue = argument
        for name, addr in pairs:
            residue = residue.replace(addr, "", 1).replace(name, "", 1)
        whole = pairs and all(addr for _, addr in pairs) and not residue.strip(' \t,<>"()')
        out.extend([addr for _, addr in pairs] if whole else [argument])
    return out


def header_recipients(body: bytes) -> list[str]:
    """The addresses named in To, Cc and Bcc (for -t)."""
    headers = header_section(body).decode("utf-8", "replace").replace("\r\n", "\n")
    values: list[str] = []
    current: str | None = None
    for line in headers.split("\n"):
        if line[:1] in (" ", "\t") and current is not None:
            values[-1] += " " + line.strip()
            continue
        name, _, value = line.partition(":")
        current = name.strip().lower() if name.strip().lower() in ("to", "cc", "bcc") else None
        if current:
            values.append(value)
    return [addr for _, addr in getaddresses(values) if addr]


def untrusted_received(body: bytes, hostname: str) -> bytes:
    """Rename Received fields that claim to be by this host (a local user wrote them)."""
    headers = header_section(body)
    if not headers or b"eceived" not in headers:
        return body
    claim = re.compile(rb"(?im)^received:(?=(?:[^\r\n]|\r\n[ \t])*\bby\s+"
                       + re.escape(hostname.encode()) + rb"\b)")
    return claim.sub(b"X-Untrusted-Received:", headers) + body[len(headers):]


def _header_safe(text: str) -> str:
    """One header line: no CR, LF or other control characters but the final CRLF."""
    line = text.rstrip("\r\n")
    return "".join(c if c.isprintable() else "?" for c in line) + "\r\n"
