"""SmtpReader: command lines, DATA sections, findings, bounded buffering."""

from __future__ import annotations

import asyncio

import pytest

from tidepost.smtp_server.reader import (BareLineFeed, ClientDisconnected, LineTooLong,
                                         MessageData, SmtpReader)


class ChunkStream:
    """A stream that hands out the given chunks one read at a time."""

    def __init__(self, *chunks: bytes):
        self.chunks = list(chunks)
        self.reads = 0

    async def read(self, n: int = -1) -> bytes:
        """The next chunk (at most n octets of it), b"" when exhausted."""
        self.reads += 1
        if not self.chunks:
            return b""
        chunk = self.chunks.pop(0)
        if 0 < n < len(chunk):
            self.chunks.insert(0, chunk[n:])
            chunk = chunk[:n]
        return chunk


def run(coro):
    """Run one coroutine to completion."""
    return asyncio.run(coro)


def reader(*chunks: bytes) -> SmtpReader:
    """An SmtpReader over the given chunks."""
    return SmtpReader(ChunkStream(*chunks))


def test_lines_split_across_chunks_and_pipelined():
    r = reader(b"EHLO a", b".test\r\nMAIL FROM:<>\r\nRCPT")

    async def scenario():
        assert await r.read_line(512) == b"EHLO a.test"
        assert r.has_line()
        assert await r.read_line(512) == b"MAIL FROM:<>"
        assert not r.has_line() and r.buffered == 4
        with pytest.raises(ClientDisconnected):
            await r.read_line(512)
    run(scenario())


def test_bare_lf_line():
    r = reader(b"NOOP\nQUIT\r\n")

    async def scenario():
        with pytest.raises(BareLineFeed):
            await r.read_line(512)
        assert await r.read_line(512) == b"QUIT"
    run(scenario())


def test_over_long_line_is_discarded_with_bounded_buffer():
    stream = ChunkStream(*[b"x" * 1000] * 200, b"x\r\nNOOP\r\n")
    r = SmtpReader(stream)

    async def scenario():
        with pytest.raises(LineTooLong):
            await r.read_line(2048)
        assert await r.read_line(2048) == b"NOOP"
    run(scenario())


def test_line_limit_counts_crlf():
    r = reader(b"x" * 510 + b"\r\n" + b"y" * 511 + b"\r\n")

    async def scenario():
        assert await r.read_line(512) == b"x" * 510
        with pytest.raises(LineTooLong):
            await r.read_line(512)
    run(scenario())


def data(*chunks: bytes, max_size: int = 10_000) -> tuple[MessageData, bytes]:
    """read_data over the chunks; also return what is left buffered."""
    r = reader(*chunks)

    async def scenario():
        result = await r.read_data(max_size)
        return result, bytes(r._buffer)
    return run(scenario())


def test_empty_message():
    assert data(b".\r\n") == (MessageData(b"", 0), b"")


def test_terminator_split_across_chunks_leaves_pipelined_bytes():
    result, rest = data(b"Subject: x\r\n\r\nbody\r", b"\n", b".", b"\r", b"\nQUIT\r\n")
    assert result == MessageData(b"Subject: x\r\n\r\nbody\r\n", 20)
    assert rest == b"QUIT\r\n"


def test_dot_unstuffing():
    result, _ = data(b"..leading\r\nmid\r\n...two\r\n.\r\n")
    assert result.body == b".leading\r\nmid\r\n..two\r\n"


@pytest.mark.parametrize("variant", [b"\n.\n", b"\r.\r", b"\n.\r\n", b"\r\n.\n",
                                     b"\r.\r\n", b"\r\n.\r"])
def test_smuggling_variants_do_not_end_data(variant):
    result, rest = data(b"a" + variant + b"MAIL FROM:<x@y>\r\n.\r\nNOOP\r\n")
    assert result.bare_cr or result.bare_lf
    assert b"MAIL FROM" in result.body
    assert rest == b"NOOP\r\n"


def test_findings():
    assert data(b"a\rb\r\n.\r\n")[0].bare_cr
    assert data(b"a\nb\r\n.\r\n")[0].bare_lf
    assert data(b"a\0b\r\n.\r\n")[0].nul
    assert data(b"x" * 999 + b"\r\n.\r\n")[0].long_line
    assert not data(b"x" * 998 + b"\r\n.\r\n")[0].long_line


def test_oversize_is_dropped_but_read_to_the_terminator():
    chunks = [b"y" * 65536] * 20 + [b"\r\n.\r\nQUIT\r\n"]
    result, rest = data(*chunks, max_size=4096)
    assert result.too_big and result.body == b""
    assert result.size >= 20 * 65536
    assert rest == b"QUIT\r\n"


def test_exactly_max_size_after_unstuffing_is_accepted():
    result, _ = data(b"..\r\n" * 100 + b".\r\n", max_size=300)
    assert not result.too_big and result.size == 300


def test_idle_timeout_raises():
    class Silent:
        async def read(self, n: int = -1) -> bytes:
            await asyncio.sleep(10)
            return b""

    async def scenario():
        with pytest.raises(TimeoutError):
            await SmtpReader(Silent(), idle_timeout=0.05).read_line(512)
    run(scenario())
