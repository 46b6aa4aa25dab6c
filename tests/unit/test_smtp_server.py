"""SMTP server transcripts: a real server on 127.0.0.1, a fake submission.

Each test is a short conversation; replies are compared with the named
constants in `tidepost.smtp_server.replies`, so a test reads like the
transcript it checks.  No pytest-asyncio: each test runs `asyncio.run`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import logging
import ssl
import zlib
from typing import AsyncIterator, Awaitable, Callable

import pytest

from tidepost.address import Address, domain_matches
from tidepost.config.schema import Config, LocalConfig, RelayConfig, SmtpServerConfig
from tidepost.model import BodyType, RecipientDsn
from tidepost.smtp_server import replies as S
from tidepost.smtp_server.binding import parse_listen
from tidepost.smtp_server.listeners import SmtpServer
from tidepost.smtp_server.replies import Reply
from tidepost.submission.submit import SubmissionRejected


class FakeSubmission:
    """Records submissions; local users alice and postmaster; routes as given."""
    transfers = None  # this fake takes no XTIDEPOST transfers
    inflow = None     # and never paces intake

    def __init__(self, routes: tuple[str, ...] = ("*",)):
        self.routes = routes
        self.submitted: list[tuple] = []
        self.gate: asyncio.Event | None = None
        self.failure: Exception | None = None

    def is_local_domain(self, domain: str) -> bool:
        """Local: local.example and the domainless postmaster."""
        return domain in ("", "local.example")

    def local_user_exists(self, local_part: str) -> bool:
        """Only alice and postmaster live here."""
        return local_part.lower() in ("alice", "postmaster")

    def has_route(self, domain: str) -> bool:
        """True when a configured pattern matches."""
        return any(domain_matches(domain, p) for p in self.routes)

    async def submit(self, envelope, body, client) -> str:
        """Wait for the gate if any, fail if told to, else record and name it."""
        if self.gate is not None:
            await self.gate.wait()
        if self.failure is not None:
            raise self.failure
        self.submitted.append((envelope, body, client))
        return f"Q{len(self.submitted)}"


def make_config(**smtp) -> Config:
    """A test config: local.example local, .customer.example relayed, no relay nets."""
    smtp = {"listen": ("127.0.0.1:0",), "relay_networks": (), **smtp}
    return dataclasses.replace(
        Config(), hostname="mx.test", smtp=SmtpServerConfig(**smtp),
        local=LocalConfig(domains=("local.example",)),
        relay=RelayConfig(domains=(".customer.example",)))


class Client:
    """A line-oriented SMTP client that returns each reply as a Reply."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer
        self.lines: list[str] = []

    async def reply(self, timeout: float = 5.0) -> Reply:
        """Read one (possibly multi-line) reply; its lines go to self.lines."""
        self.lines = []
        while True:
            line = await asyncio.wait_for(self.reader.readline(), timeout)
            assert line.endswith(b"\r\n"), f"connection closed or bad line: {line!r}"
            self.lines.append(line[:-2].decode())
            if line[3:4] == b" ":
                return Reply.parse(self.lines[-1])

    async def send(self, data: bytes) -> None:
        """Write raw bytes."""
        self.writer.write(data)
        await self.writer.drain()

    async def cmd(self, line: str | bytes) -> Reply:
        """Send one command line (CRLF added) and read its reply."""
        await self.send((line.encode() if isinstance(line, str) else line) + b"\r\n")
        return await self.reply()

    async def at_eof(self) -> bool:
        """True when the server has closed the connection."""
        return await asyncio.wait_for(self.reader.read(), 5.0) == b""

    async def ehlo(self) -> None:
        """Greeting and EHLO, both expected to succeed."""
        assert (await self.reply()).code == 220
        assert (await self.cmd("EHLO client.test")).code == 250

    async def message(self, body: bytes, rcpt: str = "alice@local.example") -> Reply:
        """One whole transaction; returns the reply after the data."""
        assert await self.cmd("MAIL FROM:<sender@origin.test>") == S.S250_SENDER_OK
        assert await self.cmd(f"RCPT TO:<{rcpt}>") == S.S250_RECIPIENT_OK
        assert await self.cmd("DATA") == S.S354_START_DATA
        await self.send(body)
        return await self.reply()


Scenario = Callable[[Callable[[], Awaitable[Client]], SmtpServer], Awaitable[None]]


@contextlib.asynccontextmanager
async def serving(config: Config, submission: FakeSubmission,
                  tls_context: ssl.SSLContext | None = None) -> AsyncIterator[tuple]:
    """Run an SmtpServer; yield (connect, server)."""
    server = SmtpServer(config, submission, tls_context)
    await server.start()
    host, port = server.addresses()[0]
    clients: list[Client] = []

    async def connect() -> Client:
        client = Client(*await asyncio.open_connection(host, port))
        clients.append(client)
        return client
    try:
        yield connect, server
    finally:
        for client in clients:
            client.writer.close()
        server.close()
        await server.wait_closed()


def run(scenario: Scenario, config: Config | None = None,
        submission: FakeSubmission | None = None,
        tls_context: ssl.SSLContext | None = None) -> FakeSubmission:
    """Run a scenario against a fresh server; return the fake submission."""
    submission = submission or FakeSubmission()

    async def main() -> None:
        async with serving(config or make_config(), submission, tls_context) as (connect,
                                                                                server):
            await asyncio.wait_for(scenario(connect, server), 20)
    asyncio.run(main())
    return submission


def test_greeting_and_ehlo_keywords():
    async def scenario(connect, server):
        c = await connect()
        assert await c.reply() == S.greeting("mx.test")
        assert (await c.cmd("EHLO client.test")).code == 250
        assert c.lines == ["250-mx.test", "250-PIPELINING", f"250-SIZE {25 * 1024 * 1024}",
                           "250-8BITMIME", "250-ENHANCEDSTATUSCODES", "250-SMTPUTF8", "250-DSN",
                           "250-CHUNKING", "250 XTIDEPOST BATCH"]
        assert await c.cmd("STARTTLS") == S.S454_TLS_UNAVAILABLE
        assert await c.cmd("HELO client.test") == Reply(250, "", "mx.test")
        assert await c.cmd("QUIT") == S.S221_BYE
        assert await c.at_eof()
    run(scenario)


def test_command_sequence_errors():
    async def scenario(connect, server):
        c = await connect()
        await c.reply()
        assert await c.cmd("MAIL FROM:<a@origin.test>") == S.S503_HELO_FIRST
        assert await c.cmd("EHLO") == S.S501_HELO_SYNTAX
        assert (await c.cmd("EHLO client.test")).code == 250
        assert await c.cmd("RCPT TO:<alice@local.example>") == S.S503_MAIL_FIRST
        assert await c.cmd("DATA") == S.S503_MAIL_FIRST
        assert await c.cmd("MAIL FROM:<a@origin.test>") == S.S250_SENDER_OK
        assert await c.cmd("MAIL FROM:<a@origin.test>") == S.S503_NESTED_MAIL
        assert await c.cmd("DATA") == S.S554_NO_VALID_RECIPIENTS
        assert await c.cmd("FROB") == S.S500_UNKNOWN_COMMAND
        assert await c.cmd("VRFY alice") == S.S252_CANNOT_VRFY
        assert await c.cmd("NOOP") == S.S250_OK
        assert await c.cmd("RSET") == S.S250_OK
        assert await c.cmd("HELP") == S.S214_HELP
    run(scenario)


def test_mail_parameters():
    async def scenario(connect, server):
        c = await connect()
        await c.ehlo()
        assert await c.cmd("MAIL FROM:<a@origin.test> FROB=1") == S.S555_UNKNOWN_PARAMETER
        assert await c.cmd("MAIL FROM:<a@origin.test> BODY=9BIT") == S.S501_SYNTAX
        assert await c.cmd(f"MAIL FROM:<a@origin.test> SIZE={10**9}") == S.S552_TOO_BIG
        assert await c.cmd("MAIL FROM:a@origin.test") == S.S501_MAIL_SYNTAX
        assert await c.cmd("MAIL FROM:<a@@origin.test>") == S.S501_BAD_SENDER
        assert await c.cmd("MAIL FROM:<δ@origin.test>") == S.S553_NEEDS_SMTPUTF8
        assert await c.cmd("MAIL FROM:<δ@origin.test> BODY=8BITMIME SMTPUTF8 SIZE=100"
                           ) == S.S250_SENDER_OK
        assert await c.cmd("RCPT TO:<alice@local.example> XFOO=NEVER"
                           ) == S.S555_UNKNOWN_PARAMETER
        assert await c.cmd("RCPT TO:<alice@local.example>") == S.S250_RECIPIENT_OK
        assert await c.cmd("DATA") == S.S354_START_DATA
        await c.send(b"Subject: hi\r\n\r\n..dotted\r\n.\r\n")
        assert await c.reply() == S.queued("Q1")
    submission = run(scenario)
    envelope, body, client = submission.submitted[0]
    assert envelope.body_type is BodyType.EIGHT_BIT_MIME and envelope.smtputf8
    assert body == b"Subject: hi\r\n\r\n.dotted\r\n"
    assert (client.address, client.helo, client.protocol) == ("127.0.0.1", "client.test",
                                                              "ESMTP")


def test_local_recipients():
    async def scenario(connect, server):
        c = await connect()
        await c.ehlo()
        await c.cmd("MAIL FROM:<>")
        assert await c.cmd("RCPT TO:<alice@LOCAL.EXAMPLE.>") == S.S250_RECIPIENT_OK
        assert await c.cmd("RCPT TO:<bob@local.example>") == S.S550_NO_SUCH_USER
        assert await c.cmd("RCPT TO:<Postmaster>") == S.S250_RECIPIENT_OK
        assert await c.cmd("RCPT TO:<bob>") == S.S501_BAD_RECIPIENT
        assert await c.cmd("RCPT TO:alice@local.example") == S.S501_RCPT_SYNTAX
        assert await c.cmd("RCPT TO:<user@sub.customer.example>") == S.S250_RECIPIENT_OK
    run(scenario)


DISGUISES = [
    "user@remote.example",
    "user%remote.example@local.example",          # percent hack
    '"user@remote.example"@local.example',        # quoted @ in the local part
    "@local.example:user@remote.example",         # source route
    "@local.example,@x.example:user@remote.example",
    "remote.example!user@local.example",          # bang path
    "user@[192.0.2.1]",                           # address literal
    "user@remote.example.",                       # trailing dot
    "USER@REMOTE.EXAMPLE",                        # case
    "user%remote.example@sub.customer.example",   # percent hack via a relay domain
]


@pytest.mark.parametrize("rcpt", DISGUISES)
def test_relay_denied_in_disguise(rcpt):
    async def scenario(connect, server):
        c = await connect()
        await c.ehlo()
        await c.cmd("MAIL FROM:<spammer@origin.test>")
        assert await c.cmd(f"RCPT TO:<{rcpt}>") == S.S550_RELAY_DENIED
        assert await c.cmd("DATA") == S.S554_NO_VALID_RECIPIENTS
    assert run(scenario).submitted == []


def test_relay_allowed_from_relay_network():
    async def scenario(connect, server):
        c = await connect()
        await c.ehlo()
        await c.cmd("MAIL FROM:<lan@local.example>")
        assert await c.cmd("RCPT TO:<USER@REMOTE.EXAMPLE>") == S.S250_RECIPIENT_OK
        assert await c.cmd("RCPT TO:<user%x@local.example>") == S.S550_NO_SUCH_USER
        assert await c.cmd("RCPT TO:<user@unrouted.test>") == S.S550_NO_ROUTE
    config = make_config(relay_networks=("127.0.0.0/8",))
    run(scenario, config, FakeSubmission(routes=(".example", "local.example")))


END_OF_DATA_VARIANTS = [b"\n.\n", b"\r.\r", b"\n.\r\n", b"\r\n.\n", b"\r.\r\n", b"\r\n.\r"]


@pytest.mark.parametrize("variant", END_OF_DATA_VARIANTS)
def test_smuggling_variants_submit_nothing(variant):
    smuggled = (b"Subject: outer\r\n\r\nhello" + variant
                + b"MAIL FROM:<admin@local.example>\r\nRCPT TO:<alice@local.example>\r\n"
                + b"DATA\r\nSubject: smuggled\r\n\r\nevil\r\n.\r\n")

    async def scenario(connect, server):
        c = await connect()
        await c.ehlo()
        assert await c.message(smuggled) == S.S554_BARE_CR_LF
        assert await c.cmd("NOOP") == S.S250_OK  # nothing else was read as a command
    assert run(scenario).submitted == []


def test_nul_and_long_text_lines_are_refused():
    async def scenario(connect, server):
        c = await connect()
        await c.ehlo()
        assert await c.message(b"a\0b\r\n.\r\n") == S.S554_NUL
        assert await c.message(b"x" * 999 + b"\r\n.\r\n") == S.S554_LINE_TOO_LONG
        assert await c.message(b"x" * 998 + b"\r\n.\r\n") == S.queued("Q1")
    assert len(run(scenario).submitted) == 1


def test_over_long_and_bare_lf_command_lines():
    async def scenario(connect, server):
        c = await connect()
        await c.ehlo()
        assert await c.cmd("NOOP " + "x" * 5000) == S.S500_LINE_TOO_LONG
        await c.send(b"NOOP\nNOOP\r\n")
        assert [await c.reply(), await c.reply()] == [S.S500_BARE_LF, S.S250_OK]
        assert await c.cmd(b"\xff\xfe\x00garbage") == S.S500_NOT_UTF8
        assert await c.cmd("NOOP") == S.S250_OK
    run(scenario)


def test_oversize_data_is_refused_and_session_continues():
    async def scenario(connect, server):
        c = await connect()
        await c.ehlo()
        assert await c.message(b"x" * 100 + b"\r\n" * 2000 + b".\r\n") == S.S552_TOO_BIG
        assert await c.message(b"small\r\n.\r\n") == S.queued("Q1")
    assert len(run(scenario, make_config(max_message_size=2048)).submitted) == 1


def test_too_many_recipients():
    async def scenario(connect, server):
        c = await connect()
        await c.ehlo()
        await c.cmd("MAIL FROM:<a@origin.test>")
        for _ in range(100):
            assert await c.cmd("RCPT TO:<alice@local.example>") == S.S250_RECIPIENT_OK
        assert await c.cmd("RCPT TO:<alice@local.example>") == S.S452_TOO_MANY_RECIPIENTS
    run(scenario)


def test_idle_timeout():
    async def scenario(connect, server):
        c = await connect()
        await c.ehlo()
        assert await c.reply() == S.S421_IDLE_TIMEOUT
        assert await c.at_eof()
    run(scenario, make_config(idle_timeout=0.2))


def test_error_count_disconnects():
    async def scenario(connect, server):
        c = await connect()
        await c.ehlo()
        assert await c.cmd("FROB") == S.S500_UNKNOWN_COMMAND
        assert await c.cmd("FROB") == S.S500_UNKNOWN_COMMAND
        assert await c.cmd("FROB") == S.S500_UNKNOWN_COMMAND
        assert await c.reply() == S.S421_TOO_MANY_ERRORS
        assert await c.at_eof()
        assert server.statistics().error_disconnects == 1
    run(scenario, make_config(max_errors=3))


def xbatch(records: bytes) -> bytes:
    """An XBATCH command carrying `records` as the first chunk of a batch stream."""
    deflate = zlib.compressobj()
    chunk = deflate.compress(records) + deflate.flush(zlib.Z_SYNC_FLUSH)
    return b"XBATCH %d\r\n" % len(chunk) + chunk


def test_refusals_inside_a_batch_count_as_errors(tmp_path):
    # XBATCH records go through the SMTP checks, and so through the error
    # limit: without it a client could harvest users or probe relaying in
    # one session, however low smtp.max_errors (docs/BATCH.md).
    record = (b"MSG h1 0 4\r\nMAIL FROM:<a@origin.test>\r\n"
              + b"".join(b"RCPT TO:<%s@local.example>\r\n" % u
                         for u in (b"ghost1", b"ghost2", b"alice", b"ghost3"))
              + b"DATA 4\r\nhi\r\nEND\r\n")

    async def scenario(connect, server):
        c = await connect()
        await c.ehlo()
        await c.send(xbatch(record))
        assert (await c.reply()).code == 250
        assert c.lines[:3] == [f"250-2.0.0 h1 {i} 550 5.1.1 No such user here"
                               for i in (0, 1, 3)]
        assert await c.reply() == S.S421_TOO_MANY_ERRORS
        assert await c.at_eof()
    config = dataclasses.replace(make_config(max_errors=3), spool=str(tmp_path))
    assert len(run(scenario, config).submitted) == 1


def test_a_partial_batch_message_is_resumed_only_by_its_own_client(tmp_path):
    head = b"Subject: part\r\n\r\n"
    record = (b"MSG p1 0 1000\r\nMAIL FROM:<a@origin.test>\r\n"
              b"RCPT TO:<alice@local.example>\r\nDATA %d\r\n" % len(head) + head)

    async def scenario(connect, server):
        c = await connect()
        await c.ehlo()
        await c.send(xbatch(record))
        assert await c.reply() == Reply(250, "2.0.0", "chunk 1 stored")
        host, port = server.addresses()[0]
        other = Client(*await asyncio.open_connection(host, port,
                                                      local_addr=("127.0.0.2", 0)))
        await other.ehlo()
        assert await other.cmd("XRESUME p1") == Reply(250, "2.0.0", "p1 0")
        assert await c.cmd("XRESUME p1") == Reply(250, "2.0.0", f"p1 {len(head)}")
        other.writer.close()
    run(scenario, dataclasses.replace(make_config(), spool=str(tmp_path)))


def test_pipelined_transaction_replies_in_order():
    async def scenario(connect, server):
        c = await connect()
        await c.reply()
        await c.send(b"EHLO client.test\r\nMAIL FROM:<a@origin.test>\r\n"
                     b"RCPT TO:<alice@local.example>\r\nRCPT TO:<bob@local.example>\r\n"
                     b"RCPT TO:<postmaster@local.example>\r\nDATA\r\n")
        assert (await c.reply()).code == 250
        assert [await c.reply() for _ in range(5)] == [
            S.S250_SENDER_OK, S.S250_RECIPIENT_OK, S.S550_NO_SUCH_USER,
            S.S250_RECIPIENT_OK, S.S354_START_DATA]
        await c.send(b"Subject: p\r\n\r\nbody\r\n.\r\nRSET\r\nQUIT\r\n")
        assert [await c.reply() for _ in range(3)] == [S.queued("Q1"), S.S250_OK, S.S221_BYE]
    submission = run(scenario)
    assert [str(a) for a in submission.submitted[0][0].recipients] == [
        "alice@local.example", "postmaster@local.example"]


def test_data_pipelined_before_354_is_refused():
    async def scenario(connect, server):
        c = await connect()
        await c.ehlo()
        await c.cmd("MAIL FROM:<a@origin.test>")
        await c.cmd("RCPT TO:<alice@local.example>")
        await c.send(b"DATA\r\nMAIL FROM:<x@origin.test>\r\n.\r\n")
        assert await c.reply() == S.S554_PIPELINED_DATA
        assert await c.at_eof()
    assert run(scenario).submitted == []


def test_250_only_after_submit_returns():
    submission = FakeSubmission()

    async def scenario(connect, server):
        submission.gate = asyncio.Event()
        c = await connect()
        await c.ehlo()
        await c.cmd("MAIL FROM:<a@origin.test>")
        await c.cmd("RCPT TO:<alice@local.example>")
        await c.cmd("DATA")
        await c.send(b"hello\r\n.\r\n")
        with pytest.raises(asyncio.TimeoutError):
            await c.reply(timeout=0.3)
        assert submission.submitted == []
        submission.gate.set()
        assert await c.reply() == S.queued("Q1")
    run(scenario, submission=submission)


def test_submission_failures_are_not_acknowledged():
    submission = FakeSubmission()

    async def scenario(connect, server):
        c = await connect()
        await c.ehlo()
        submission.failure = OSError("disk full")
        assert await c.message(b"x\r\n.\r\n") == S.S451_LOCAL_ERROR
        submission.failure = SubmissionRejected(554, "5.4.6", "Mail loop")
        assert await c.message(b"x\r\n.\r\n") == Reply(554, "5.4.6", "Mail loop")
        assert server.statistics().messages_rejected == 2
    assert run(scenario, submission=submission).submitted == []


def test_connections_per_client_limit():
    async def scenario(connect, server):
        first = await connect()
        assert (await first.reply()).code == 220
        second = await connect()
        assert await second.reply() == S.S421_TOO_MANY_FROM_CLIENT
        assert await second.at_eof()
        assert server.statistics().connections_refused == 1
    run(scenario, make_config(max_connections_per_client=1))


def test_parse_listen():
    assert parse_listen("127.0.0.1:25") == ("127.0.0.1", 25)
    assert parse_listen("[::1]:2525") == ("::1", 2525)
    assert parse_listen("*:25") == (None, 25)


def self_signed(tmp_path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A server context with a fresh self-signed mx.test certificate, and a client one."""
    crypto = pytest.importorskip("cryptography.x509")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    key = ec.generate_private_key(ec.SECP256R1())
    name = crypto.Name([crypto.NameAttribute(crypto.oid.NameOID.COMMON_NAME, "mx.test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (crypto.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(crypto.SubjectAlternativeName([crypto.DNSName("mx.test")]), False)
            .sign(key, hashes.SHA256()))
    (tmp_path / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    client = ssl.create_default_context(cafile=tmp_path / "cert.pem")
    return server, client


def test_starttls_resets_state_and_drops_pipelined_plaintext(tmp_path):
    server_context, client_context = self_signed(tmp_path)

    async def scenario(connect, server):
        c = await connect()
        await c.ehlo()
        assert c.lines[-2:] == ["250-STARTTLS", "250 XTIDEPOST BATCH"]
        await c.send(b"STARTTLS\r\nNOOP\r\n")  # NOOP is plaintext injected after STARTTLS
        assert await c.reply() == S.S220_READY_FOR_TLS
        await c.writer.start_tls(client_context, server_hostname="mx.test")
        assert await c.cmd("MAIL FROM:<a@origin.test>") == S.S503_HELO_FIRST
        assert (await c.cmd("EHLO client.test")).code == 250
        assert "250-STARTTLS" not in c.lines and c.lines[-2] == "250-CHUNKING"
        assert await c.message(b"secret\r\n.\r\n") == S.queued("Q1")
    submission = run(scenario, tls_context=server_context)
    assert submission.submitted[0][2].protocol == "ESMTPS"


def test_helo_with_control_characters_and_reply_injection():
    submission = FakeSubmission()

    async def scenario(connect, server):
        c = await connect()
        await c.reply()
        assert await c.cmd("EHLO bad\x01name") == S.S501_HELO_SYNTAX
        assert (await c.cmd("EHLO client.test")).code == 250
        submission.failure = SubmissionRejected(550, "5.7.1", "no\r\n250 2.0.0 Ok")
        assert await c.message(b"x\r\n.\r\n") == Reply(550, "5.7.1", "no  250 2.0.0 Ok")
        assert await c.cmd("NOOP") == S.S250_OK
    run(scenario, submission=submission)


def test_starttls_session_eof_logs_no_asyncio_warning(tmp_path, caplog):
    server_context, client_context = self_signed(tmp_path)

    async def scenario(connect, server):
        c = await connect()
        await c.ehlo()
        assert await c.cmd("STARTTLS") == S.S220_READY_FOR_TLS
        await c.writer.start_tls(client_context, server_hostname="mx.test")
        assert (await c.cmd("EHLO client.test")).code == 250
        assert c.writer.transport.get_extra_info("ssl_object") is not None
        c.writer.close()  # EOF (close_notify) while the server waits for a command
        await c.writer.wait_closed()
        for _ in range(50):  # until the server's conversation has ended
            if server.statistics().connections_active == 0:
                break
            await asyncio.sleep(0.02)
        assert server.statistics().connections_active == 0
    with caplog.at_level(logging.DEBUG, logger="asyncio"):
        run(scenario, tls_context=server_context)
    assert not [r for r in caplog.records if r.name == "asyncio"
                and "eof_received" in r.getMessage()]


def test_dsn_parameters_are_parsed_checked_and_submitted():
    """RFC 3461: RET/ENVID on MAIL, NOTIFY/ORCPT on RCPT; bad ones 501, unknown or twice 555."""
    async def scenario(connect, server):
        c = await connect()
        await c.ehlo()
        for bad in ("RET=BODY", "ENVID=" + "x" * 101, "ENVID=a+2", "ENVID=a+0D+0Ab",
                    "RET"):
            assert (await c.cmd(f"MAIL FROM:<a@origin.test> {bad}")).code == 501, bad
        assert await c.cmd("MAIL FROM:<a@origin.test> RET=FULL RET=HDRS"
                           ) == S.S555_UNKNOWN_PARAMETER
        assert await c.cmd("MAIL FROM:<a@origin.test> ret=hdrs ENVID=QQ+2Bx+3D1"
                           ) == S.S250_SENDER_OK
        for bad in ("NOTIFY=NEVER,SUCCESS", "NOTIFY=SUCCESS,SUCCESS", "NOTIFY=SOMETIMES",
                    "NOTIFY", "ORCPT=rfc822", "ORCPT=;a@b", "ORCPT=rfc822;" + "a" * 500,
                    "ORCPT=rfc822;a+"):
            reply = await c.cmd(f"RCPT TO:<alice@local.example> {bad}")
            assert (reply.code, reply.status) == (501, "5.5.4"), bad
        assert await c.cmd("RCPT TO:<alice@local.example> NOTIFY=NEVER NOTIFY=NEVER"
                           ) == S.S555_UNKNOWN_PARAMETER
        assert await c.cmd("RCPT TO:<alice@local.example> notify=delay,Success "
                           "ORCPT=rfc822;Alice+2Bx@old.example") == S.S250_RECIPIENT_OK
        assert await c.cmd("RCPT TO:<postmaster@local.example>") == S.S250_RECIPIENT_OK
        assert await c.cmd("DATA") == S.S354_START_DATA
        await c.send(b"Subject: hi\r\n\r\nbody\r\n.\r\n")
        assert (await c.reply()).code == 250
    submission = run(scenario)
    envelope, _body, _client = submission.submitted[0]
    assert (envelope.ret, envelope.envid) == ("HDRS", "QQ+x=1")
    alice = Address("alice", "local.example")
    assert envelope.dsn == {alice: RecipientDsn("SUCCESS,DELAY", "rfc822;Alice+x@old.example")}
