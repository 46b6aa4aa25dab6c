"""Fuzz targets: arbitrary bytes in, one parser run, its answer checked.

Shared by the property tests (tests/unit/test_fuzz_properties.py), the
corpus replay (tests/unit/test_fuzz_corpus.py, inputs in tests/corpus/) and
bench/fuzz.py (a million inputs each).  A target raises AssertionError when
an oracle fails (the parser answered wrongly) and lets any other unexpected
exception escape (a crash); it returns a short signature of what happened,
which bench/fuzz.py uses to keep inputs that behave in a new way.

Targets (TARGETS): `command` (MAIL/RCPT argument parsing, parsing.py),
`session` (a whole SMTP conversation: the verb dispatch, ETRN, AUTH, ATRN),
`address` (address.py), `data` (the DATA reader, reader.py), `config`
(config/load.py), `aliases` (submission/aliases.py), `dsn` (manager/bounce.py).
"""

from __future__ import annotations

import asyncio
import dataclasses
import email
import math
import re
from email import policy
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

from replies_table import documented_replies

from tidepost.address import Address, AddressError, domain_matches, parse_path
from tidepost.config.load import parse_config
from tidepost.config.schema import Config, LocalConfig, SmtpServerConfig
from tidepost.errors import ConfigError
from tidepost.manager.bounce import Failure, make_dsn
from tidepost.model import MessageInfo, QueuedRecipient
from tidepost.outcomes import bounced
from tidepost.smtp_server import replies as S
from tidepost.smtp_server.credentials import Credentials, Identity
from tidepost.smtp_server.parsing import MailCommand, RcptCommand, parse_mail, parse_rcpt
from tidepost.smtp_server.ratelimit import RateLimiter
from tidepost.smtp_server.reader import ClientDisconnected, SmtpReader
from tidepost.smtp_server.replies import Reply
from tidepost.smtp_server.turn import RelayConversation, RelayServices
from tidepost.submission.aliases import Aliases, parse_aliases

CORPUS = Path(__file__).parent / "corpus"
MAX_SIZE = 10**6


# -- command: MAIL and RCPT arguments --------------------------------------------------

def command(data: bytes) -> str:
    """parse_mail and parse_rcpt on the same text: a parsed command or a refusal."""
    text = data.decode("utf-8", "replace")
    mail = parse_mail(text, MAX_SIZE)
    rcpt = parse_rcpt(text)
    if isinstance(mail, MailCommand):
        assert_round_trip(mail.sender, allow_null=True)
        assert mail.size is None or 0 <= mail.size <= MAX_SIZE
        assert mail.sender.is_ascii or mail.smtputf8
    else:
        assert_refusal(mail)
    if isinstance(rcpt, RcptCommand):
        assert_round_trip(rcpt.address, allow_null=False)
        assert not rcpt.address.is_null
        assert_dsn_request_is_header_safe(rcpt.dsn.notify + rcpt.dsn.orcpt + mail_envid(mail))
    else:
        assert_refusal(rcpt)
    return f"{_label(mail)}|{_label(rcpt)}"


def mail_envid(mail: Any) -> str:
    """The decoded ENVID of a parsed MAIL, "" for a refusal."""
    return mail.envid if isinstance(mail, MailCommand) else ""


def assert_dsn_request_is_header_safe(text: str) -> None:
    """Decoded DSN parameters end up in report header fields: printable ASCII only."""
    assert all(" " <= c <= "~" for c in text), text


def assert_refusal(reply: Any) -> None:
    """A parser's refusal: a documented 5xx Reply."""
    assert isinstance(reply, Reply), reply
    assert reply.code >= 500 and (reply.code, reply.status) in documented_replies(), reply


def assert_round_trip(address: Address, allow_null: bool) -> None:
    """An Address prints back to text that parses to the same Address."""
    assert parse_path(f"<{address}>", allow_null=allow_null) == address
    assert not address.domain.endswith(".")
    assert address.is_domain_literal or address.domain == address.domain.lower()


def _label(result: Any) -> str:
    """A short signature of a parse result."""
    return f"{result.code}{result.status}" if isinstance(result, Reply) else "ok"


# -- address ---------------------------------------------------------------------------

def address(data: bytes) -> str:
    """parse_path: an Address that round-trips, or AddressError."""
    text = data.decode("utf-8", "replace")
    try:
        parsed = parse_path(text, allow_null=True)
    except AddressError as exc:
        return "error:" + re.sub(r"'.*'", "", str(exc))
    assert_round_trip(parsed, allow_null=True)
    assert len(parsed.local.encode()) <= 64 and len(parsed.domain) <= 255
    return "null" if parsed.is_null else ("literal" if parsed.is_domain_literal else "ok")


# -- data: the DATA reader --------------------------------------------------------------

class ChunkStream:
    """Hands out `data` in chunks of `size` octets, then EOF."""

    def __init__(self, data: bytes, size: int):
        self.data, self.size = data, size

    async def read(self, n: int = -1) -> bytes:
        chunk, self.data = self.data[:min(n, self.size)], self.data[min(n, self.size):]
        return chunk


def data(data: bytes) -> str:
    """read_data: the first CRLF.CRLF ends it, the body unstuffs right, or EOF.

    The first octet chooses the chunk size, a small or large size limit, and
    the mode: the rest is either a raw DATA section (checked against a
    reference reading) or a body that is dot-stuffed, sent, and must come
    back exactly (the round trip).
    """
    mode = data[0] if data else 0
    payload, chunk = data[1:], 1 + mode % 61
    max_size = 200 if mode & 0x40 else MAX_SIZE
    if mode & 0x80:
        return _round_trip(payload, chunk, max_size)
    return _raw_section(payload, chunk, max_size)


def _read(stream: bytes, chunk: int, max_size: int) -> tuple[Any, bytes]:
    """Run read_data over `stream`; (MessageData or ClientDisconnected, what is unread)."""
    source = ChunkStream(stream, chunk)
    reader = SmtpReader(source)

    async def main() -> Any:
        try:
            return await reader.read_data(max_size)
        except ClientDisconnected as eof:
            return eof
    result = _loop().run_until_complete(main())
    # What the next command will read: the reader's buffer, then the stream.
    return result, bytes(reader._buffer) + source.data  # noqa: SLF001


def _raw_section(payload: bytes, chunk: int, max_size: int) -> str:
    """Compare with a reference: end at the first CRLF.CRLF, unstuff, flag."""
    result, leftover = _read(payload, chunk, max_size)
    whole = b"\r\n" + payload
    end = whole.find(b"\r\n.\r\n")
    if end < 0:
        assert isinstance(result, ClientDisconnected), result
        return "eof"
    assert not isinstance(result, ClientDisconnected)
    assert leftover == whole[end + 5:]
    raw = whole[:end + 2]
    body = raw.replace(b"\r\n.", b"\r\n")[2:]
    assert result.too_big == (len(body) > max_size)
    if result.too_big:
        assert result.body == b""
        return "too-big"
    assert (result.body, result.size) == (body, len(body))
    text = raw[2:]
    assert result.bare_cr == (text.count(b"\r") != text.count(b"\r\n"))
    assert result.bare_lf == (text.count(b"\n") != text.count(b"\r\n"))
    assert result.nul == (b"\0" in text)
    assert result.long_line == any(len(line) > 998 for line in text.split(b"\r\n"))
    return "".join(k[0] for k in ("bare_cr", "bare_lf", "nul", "long_line")
                   if getattr(result, k)) or "clean"


def _round_trip(body: bytes, chunk: int, max_size: int) -> str:
    """A body dot-stuffed and sent comes back unchanged, the next command intact."""
    if body and not body.endswith(b"\r\n"):
        body += b"\r\n"
    stuffed = (b"\r\n" + body).replace(b"\r\n.", b"\r\n..")[2:]
    result, leftover = _read(stuffed + b".\r\nNOOP\r\n", chunk, max_size)
    assert not isinstance(result, ClientDisconnected)
    assert leftover == b"NOOP\r\n"
    assert result.too_big == (len(body) > max_size)
    assert result.too_big or result.body == body
    return "round-trip" + ("-too-big" if result.too_big else "")


# -- session: a whole conversation -----------------------------------------------------

class Writer:
    """Collects what the server sends."""

    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: bytes) -> None:
        self.data += data

    async def drain(self) -> None:
        pass

    def close(self) -> None:
        pass


class Directory:
    """Local domain relay.test (users alice, postmaster); customers .fleet.test."""
    transfers = None  # this fake takes no XTIDEPOST transfers
    inflow = None     # and never paces intake

    def is_local_domain(self, domain: str) -> bool:
        return domain in ("", "relay.test")

    def local_user_exists(self, local: str) -> bool:
        return local.lower() in ("alice", "postmaster")

    def has_route(self, domain: str) -> bool:
        return True

    def is_customer_domain(self, domain: str) -> bool:
        return domain_matches(domain, ".fleet.test")

    async def submit(self, envelope: Any, body: bytes, client: Any) -> str:
        return "Q1"


SESSION_CONFIG = dataclasses.replace(
    Config(), hostname="relay.test", local=LocalConfig(domains=("relay.test",)),
    smtp=SmtpServerConfig(relay_networks=(), max_errors=10**6, max_message_size=10**5))
REPLY_LINE = re.compile(rb"(\d{3})([ -])([ -~]*)\Z")


async def _flush(domain: str, subdomains: bool) -> int:
    return 2


def _relay() -> RelayServices:
    """ETRN for .fleet.test; CRAM-MD5 for `ship` (PLAIN needs TLS: 538)."""
    ship = Identity("ship", "scrypt$AA$AA", (".fleet.test",), cram_secret=b"pw")
    return RelayServices(flush_domain=_flush, is_customer=Directory().is_customer_domain,
                         etrn_limiter=RateLimiter(5), atrn_limiter=RateLimiter(5),
                         credentials=Credentials({"ship": ship}))


def session(data: bytes) -> str:
    """Every reply well-formed and documented; no handler ever fails (451 4.3.0)."""
    writer = Writer()

    async def main() -> None:
        stream = asyncio.StreamReader()
        stream.feed_data(data)
        stream.feed_eof()
        await RelayConversation(SESSION_CONFIG, Directory(), stream, writer,
                                peer_ip="198.51.100.7", relay=_relay()).run()
    _loop().run_until_complete(main())
    codes = []
    documented = documented_replies()
    for line in bytes(writer.data).split(b"\r\n")[:-1]:
        match = REPLY_LINE.match(line)
        assert match, line
        if match.group(2) == b" ":
            reply = Reply.parse(line.decode("ascii"))
            assert reply != S.S451_LOCAL_ERROR, "a verb handler raised"
            assert (reply.code, reply.status) in documented, reply
            codes.append(str(reply.code))
    return ",".join(sorted(set(codes)))


# -- config -------------------------------------------------------------------------------

def config(data: bytes) -> str:
    """parse_config: a Config inside the schema's bounds, or ConfigError."""
    text = data.decode("utf-8", "replace")
    try:
        loaded = parse_config(text, "fuzz.toml")
    except ConfigError as exc:
        return "error:" + re.sub(r"[\d'\"].*", "", problems_of(exc, "fuzz.toml")[0])
    assert_within_schema(loaded)
    return "ok"


def problems_of(error: ConfigError, source: str) -> list[str]:
    """The reasons of a ConfigError, each of which must name `source` first."""
    assert error.problems and all(p.startswith(source) for p in error.problems)
    return [p.split(": ", 2)[-1] for p in error.problems]


def assert_within_schema(value: Any, path: str = "") -> None:
    """Every number of a loaded config is finite and within its field's bounds."""
    for field in dataclasses.fields(value):
        item = getattr(value, field.name)
        items = item if isinstance(item, tuple) else (item,)
        for element in items:
            where = f"{path}.{field.name}"
            if dataclasses.is_dataclass(element):
                assert_within_schema(element, where)
            elif isinstance(element, (int, float)) and not isinstance(element, bool):
                low, high = field.metadata.get("low"), field.metadata.get("high")
                assert math.isfinite(element), where
                assert low is None or element >= low, where
                assert high is None or element <= high, where


# -- aliases ------------------------------------------------------------------------------

ALIASES_CONFIG = dataclasses.replace(
    Config(), hostname="site.test",
    local=LocalConfig(domains=("site.test",), users=("alice",), system_users=True))


def aliases(data: bytes) -> str:
    """parse_aliases, then every name expands to Addresses, in bounded time."""
    text = data.decode("utf-8", "replace")
    try:
        table = parse_aliases(text, "aliases")
    except ConfigError as exc:
        problems_of(exc, "aliases:")
        return "error"
    resolver = Aliases(ALIASES_CONFIG, table)
    for name in [*list(table)[:20], "postmaster", "alice+x", "nobody"]:
        resolver.exists(name)
        expanded = resolver.expand(name)
        assert expanded, name
        for target in expanded:
            assert_round_trip(target, allow_null=False)
    return f"ok:{min(len(table), 5)}"


# -- dsn ----------------------------------------------------------------------------------

SENDER = Address("alice", "site.test")
MAX_DSN = 80 * 1024  # octets: the human part, the status part and the headers returned


def dsn(original: bytes) -> str:
    """make_dsn: a well-formed RFC 3464 report, whatever the original's octets."""
    body = dsn_body(original)
    assert_well_formed_dsn(body)
    return "headers" if b"\r\n\r\n" in original else "no-body"


def dsn_body(original: bytes) -> bytes:
    """The DSN for one failed recipient of a message whose octets are `original`."""
    info = MessageInfo(7, "ABC123DEF456", SENDER, 0.0, len(original))
    failures = [Failure(QueuedRecipient(1, 7, Address("bob", "far.test")),
                        bounced(1, "5.1.1", "550 5.1.1 no such user", "mx.far.test"))]
    return make_dsn(info, original, failures, "site.test", 1000.0).body


BOUNDARY = re.compile(rb'\r\n\tboundary="([^"\r\n]+)"\r\n')
PART_TYPES = [b"text/plain", b"message/delivery-status", b"text/rfc822-headers"]
STATUS_FIELDS = (b"Reporting-MTA: dns; site.test", b"Final-Recipient: rfc822; bob@far.test",
                 b"Action: failed", b"Status: 5.1.1")


def assert_well_formed_dsn(body: bytes) -> None:
    """CRLF lines of at most 998 octets, no NUL, bounded; three parts, as RFC 3464 says.

    Octet checks only (fast enough for a million runs); the property test
    also has Python's email parser read the report (assert_parsed_dsn).
    """
    assert body.count(b"\n") == body.count(b"\r\n") == body.count(b"\r"), "bare CR or LF"
    assert b"\0" not in body
    assert all(len(line) <= 998 for line in body.split(b"\r\n")), "line over 998 octets"
    assert len(body) <= MAX_DSN, len(body)
    head, _, rest = body.partition(b"\r\n\r\n")
    assert b"Content-Type: multipart/report; report-type=delivery-status;" in head
    boundary = BOUNDARY.search(head + b"\r\n")
    assert boundary, head
    delimiter = b"--" + boundary.group(1)
    chunks = rest.split(delimiter + b"\r\n")
    assert chunks[0] == b"" and chunks[-1].endswith(delimiter + b"--\r\n")
    assert body.count(delimiter) == 4, "the boundary occurs only as a delimiter"
    parts = chunks[1:]
    assert [p.split(b"\r\n", 1)[0] for p in parts] == [b"Content-Type: " + t for t in
                                                         (PART_TYPES[0] + b"; charset=utf-8",
                                                          *PART_TYPES[1:])]
    for field in STATUS_FIELDS:
        assert b"\r\n" + field + b"\r\n" in parts[1], field


def assert_parsed_dsn(body: bytes) -> None:
    """Python's email parser reads a multipart/report with RFC 3464's three parts."""
    report = email.message_from_bytes(body, policy=policy.compat32)
    assert report.get_content_type() == "multipart/report"
    assert report.get_param("report-type") == "delivery-status"
    assert [p.get_content_type().encode() for p in report.get_payload()] == PART_TYPES
    status = report.get_payload()[1].as_bytes()
    assert all(field in status for field in STATUS_FIELDS)


# -- the table --------------------------------------------------------------------------

@lru_cache(maxsize=1)
def _loop() -> asyncio.AbstractEventLoop:
    """One event loop for every async target run in this process."""
    return asyncio.new_event_loop()


Target = Callable[[bytes], str]
TARGETS: dict[str, Target] = {
    "command": command, "session": session, "address": address, "data": data,
    "config": config, "aliases": aliases, "dsn": dsn,
}


def corpus_files() -> list[tuple[str, Path]]:
    """(target, file) for every input kept in tests/corpus/TARGET/."""
    return [(folder.name, path) for folder in sorted(CORPUS.iterdir()) if folder.is_dir()
            for path in sorted(folder.iterdir()) if path.is_file()]
