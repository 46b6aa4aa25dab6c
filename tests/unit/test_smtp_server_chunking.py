"""CHUNKING (BDAT, RFC 3030) in the SMTP server: the parser, the reader, transcripts.

Transcripts run a real SmtpServer on 127.0.0.1 with the fake submission of
test_smtp_server; chunks are sent pipelined, in one write with the
commands around them, as a client using PIPELINING may.  A chunk's octets
always hold command-looking text (`QUIT`), so a server that ran them as
commands would fail the test.
"""

from __future__ import annotations

import asyncio

import pytest
from test_smtp_server import FakeSubmission, make_config, run, self_signed

from tidepost.smtp_server import replies as S
from tidepost.smtp_server.bodies import LargeBodies
from tidepost.smtp_server.chunking import parse_bdat
from tidepost.smtp_server.listeners import SmtpServer
from tidepost.smtp_server.reader import ClientDisconnected, SmtpReader

ENVELOPE = b"MAIL FROM:<sender@origin.test>\r\nRCPT TO:<alice@local.example>\r\n"
TRAP = b"QUIT\r\nRSET\r\n"  # chunk content that must never run as commands


def bdat(octets: bytes, last: bool = False) -> bytes:
    """A BDAT command with its chunk."""
    return b"BDAT %d%s\r\n" % (len(octets), b" LAST" if last else b"") + octets


@pytest.mark.parametrize("arg, parsed", [
    ("0 LAST", (0, True)), ("12", (12, False)), ("7 last", (7, True)),
    ("", None), ("x", None), ("-1", None), ("1 2", None), ("1 LAST x", None),
    ("1  LAST", None), ("1" * 21, None), ("١٢", None), ("+5", None)])
def test_parse_bdat(arg, parsed):
    assert parse_bdat(arg) == parsed


class Pieces:
    """A stream handing out `pieces`, then EOF."""

    def __init__(self, *pieces: bytes):
        self.pieces = list(pieces)

    async def read(self, n: int = -1) -> bytes:
        return self.pieces.pop(0) if self.pieces else b""


def test_read_octets_into_keeps_only_room_and_leaves_the_rest():
    async def main():
        reader = SmtpReader(Pieces(b"abcdef", b"ghij", b"NOOP\r\n"), 5)
        sink = bytearray(b">")
        assert not await reader.read_octets_into(10, sink, 3)
        assert sink == b">abc"
        assert await reader.read_line(100) == b"NOOP"
    asyncio.run(main())


def test_a_huge_announced_size_allocates_nothing_up_front():
    async def main():
        reader = SmtpReader(Pieces(*[b"x" * 65536] * 4), 5)
        sink = bytearray()
        with pytest.raises(ClientDisconnected):
            await reader.read_octets_into(10 ** 15, sink, 1000)
        assert len(sink) == 1000 and reader.buffered == 0
    asyncio.run(main())


def test_pipelined_chunks_make_one_message_replied_in_order():
    message = b"Subject: hi\r\n\r\nQUIT\r\n.\r\n..dots stay\r\n"

    async def scenario(connect, server):
        c = await connect()
        await c.ehlo()
        assert "250-CHUNKING" in c.lines
        await c.send(ENVELOPE + bdat(message[:14]) + bdat(message[14:30])
                     + bdat(message[30:], last=True) + b"NOOP\r\n")
        assert [await c.reply() for _ in range(6)] == [
            S.S250_SENDER_OK, S.S250_RECIPIENT_OK, S.chunk_received(14),
            S.chunk_received(16), S.queued("Q1"), S.S250_OK]
    submission = run(scenario)
    envelope, body, client = submission.submitted[0]
    assert body == message and client.protocol == "ESMTP"
    assert [str(r) for r in envelope.recipients] == ["alice@local.example"]


def test_bdat_0_last_ends_a_message_and_a_last_line_gets_its_crlf():
    async def scenario(connect, server):
        c = await connect()
        await c.ehlo()
        await c.send(ENVELOPE + bdat(b"one line") + bdat(b"", last=True))
        assert [await c.reply() for _ in range(4)][2:] == [S.chunk_received(8),
                                                           S.queued("Q1")]
        await c.send(ENVELOPE + bdat(b"", last=True))
        assert [await c.reply() for _ in range(3)][2] == S.queued("Q2")
    bodies = [body for _, body, _ in run(scenario).submitted]
    assert bodies == [b"one line\r\n", b""]


def test_a_crlf_split_between_chunks_is_one_line_end():
    async def scenario(connect, server):
        c = await connect()
        await c.ehlo()
        await c.send(ENVELOPE + bdat(b"a\r") + bdat(b"\nb\r\n", last=True))
        assert [await c.reply() for _ in range(4)][3] == S.queued("Q1")
    assert run(scenario).submitted[0][1] == b"a\r\nb\r\n"


@pytest.mark.parametrize("content, refusal", [
    (b"bare\nLF\r\n", S.S554_BARE_CR_LF), (b"bare\rCR\r\n", S.S554_BARE_CR_LF),
    (b"a\r\n.\nQUIT\r\n", S.S554_BARE_CR_LF), (b"nul\0\r\n", S.S554_NUL),
    (b"x" * 999 + b"\r\n", S.S554_LINE_TOO_LONG)])
def test_content_is_checked_as_data_is(content, refusal):
    async def scenario(connect, server):
        c = await connect()
        await c.ehlo()
        await c.send(ENVELOPE + bdat(content, last=True))
        assert [await c.reply() for _ in range(3)][2] == refusal
        assert await c.cmd("MAIL FROM:<a@origin.test>") == S.S250_SENDER_OK
    assert run(scenario).submitted == []


def test_bdat_without_a_transaction_is_refused_and_its_octets_consumed():
    async def scenario(connect, server):
        c = await connect()
        await c.ehlo()
        await c.send(bdat(TRAP) + bdat(TRAP, last=True) + b"NOOP\r\n")
        assert [await c.reply() for _ in range(3)] == [S.S503_MAIL_FIRST] * 2 + [S.S250_OK]
        await c.send(b"MAIL FROM:<a@origin.test>\r\nRCPT TO:<nobody@local.example>\r\n"
                     + bdat(TRAP, last=True) + b"NOOP\r\n")
        assert [await c.reply() for _ in range(4)] == [
            S.S250_SENDER_OK, S.S550_NO_SUCH_USER, S.S554_NO_VALID_RECIPIENTS, S.S250_OK]
        assert await c.cmd("RCPT TO:<alice@local.example>") == S.S503_MAIL_FIRST  # it ended
    assert run(scenario).submitted == []


@pytest.mark.parametrize("line", [b"BDAT", b"BDAT ten", b"BDAT 5 LATER", b"BDAT -5"])
def test_bad_size_syntax_is_501_and_closes(line):
    async def scenario(connect, server):
        c = await connect()
        await c.ehlo()
        await c.send(ENVELOPE + line + b"\r\n" + TRAP)
        assert [await c.reply() for _ in range(3)][2] == S.S501_BDAT_SYNTAX
        assert await c.at_eof()
    assert run(scenario).submitted == []


def test_over_the_size_limit_is_552_then_the_session_goes_on():
    async def scenario(connect, server):
        c = await connect()
        await c.ehlo()
        await c.send(ENVELOPE + bdat(b"x" * 1000) + bdat(b"y" * 2000)
                     + bdat(TRAP, last=True) + b"NOOP\r\n")
        assert [await c.reply() for _ in range(6)][2:] == [
            S.chunk_received(1000), S.S552_TOO_BIG, S.S503_MAIL_FIRST, S.S250_OK]
        await c.send(ENVELOPE + bdat(b"small\r\n", last=True))
        assert [await c.reply() for _ in range(3)][2] == S.queued("Q1")
    submission = run(scenario, make_config(max_message_size=2048))
    assert [body for _, body, _ in submission.submitted] == [b"small\r\n"]


def test_data_after_bdat_is_503_and_rset_aborts_a_chunked_message():
    async def scenario(connect, server):
        c = await connect()
        await c.ehlo()
        await c.send(ENVELOPE + bdat(b"part one\r\n"))
        assert [await c.reply() for _ in range(3)][2] == S.chunk_received(10)
        assert await c.cmd("DATA") == S.S503_DATA_AFTER_BDAT
        assert await c.cmd("RCPT TO:<alice@local.example>") == S.S503_MAIL_FIRST
        await c.send(ENVELOPE + bdat(b"forgotten\r\n") + b"RSET\r\n" + ENVELOPE
                     + bdat(b"kept\r\n", last=True))
        assert [await c.reply() for _ in range(7)][2:] == [
            S.chunk_received(11), S.S250_OK, S.S250_SENDER_OK, S.S250_RECIPIENT_OK,
            S.queued("Q1")]
    assert [body for _, body, _ in run(scenario).submitted] == [b"kept\r\n"]


def test_chunking_off_is_not_offered_and_bdat_is_502_with_its_octets_read():
    async def scenario(connect, server):
        c = await connect()
        await c.ehlo()
        assert "250-CHUNKING" not in c.lines
        await c.send(ENVELOPE + bdat(TRAP, last=True) + b"NOOP\r\n")
        assert [await c.reply() for _ in range(4)][2:] == [S.S502_BDAT_DISABLED, S.S250_OK]
    assert run(scenario, make_config(chunking=False)).submitted == []


def test_the_last_250_waits_for_the_commit():
    submission = FakeSubmission()
    submission.gate = asyncio.Event()

    async def scenario(connect, server):
        c = await connect()
        await c.ehlo()
        await c.send(ENVELOPE + bdat(b"body\r\n", last=True))
        assert [await c.reply() for _ in range(2)][1] == S.S250_RECIPIENT_OK
        with pytest.raises(asyncio.TimeoutError):
            await c.reply(timeout=0.3)
        submission.gate.set()
        assert await c.reply() == S.queued("Q1")
    run(scenario, submission=submission)


def test_starttls_forgets_a_chunked_message_begun_in_clear(tmp_path):
    server_context, client_context = self_signed(tmp_path)

    async def scenario(connect, server):
        c = await connect()
        await c.ehlo()
        await c.send(ENVELOPE + bdat(b"injected in clear\r\n"))
        assert [await c.reply() for _ in range(3)][2] == S.chunk_received(19)
        assert await c.cmd("STARTTLS") == S.S220_READY_FOR_TLS
        await c.writer.start_tls(client_context, server_hostname="mx.test")
        await c.send(bdat(b"x", last=True))
        assert await c.reply() == S.S503_MAIL_FIRST
        assert (await c.cmd("EHLO client.test")).code == 250 and "250-CHUNKING" in c.lines
        await c.send(ENVELOPE + bdat(b"secret\r\n", last=True))
        assert [await c.reply() for _ in range(3)][2] == S.queued("Q1")
    submission = run(scenario, tls_context=server_context)
    assert [(body, client.protocol) for _, body, client in submission.submitted] == [
        (b"secret\r\n", "ESMTPS")]


def test_a_connection_dropped_mid_bdat_queues_nothing_and_frees_its_slot():
    submission = FakeSubmission()
    large = LargeBodies(1, 64 * 1024)

    async def main() -> None:
        server = SmtpServer(make_config(), submission, large_bodies=large)
        await server.start()
        try:
            reader, writer = await asyncio.open_connection(*server.addresses()[0])
            writer.write(b"EHLO c.test\r\n" + ENVELOPE + b"BDAT 10000000 LAST\r\n"
                         + b"x" * 300_000)
            await writer.drain()
            while not large.held:
                await asyncio.sleep(0.01)
            writer.close()
            while large.held:
                await asyncio.sleep(0.01)
        finally:
            server.close()
            await server.wait_closed()
    asyncio.run(asyncio.wait_for(main(), 20))
    assert submission.submitted == [] and large.peak == 1
