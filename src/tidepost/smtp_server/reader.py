"""Reading SMTP commands and DATA with exact, bounded line handling.

`SmtpReader` wraps an `asyncio.StreamReader` (or anything with an async
`read(n)`) and keeps its own buffer, so that bytes a client pipelines after
a command or after end-of-data stay there for the next command.

- `read_line(limit)` returns one command line without its CRLF.  A line
  ended by a bare LF raises `BareLineFeed`; a line longer than `limit` octets
  (CRLF included) raises `LineTooLong` after it has been read and discarded,
  without buffering more than about `limit` + one chunk.
- `read_data(max_size)` reads a DATA section up to the one end-of-data mark
  RFC 5321 4.1.1.4 allows, CRLF "." CRLF (the CRLF ending the DATA command
  counts as the first CRLF, so an empty message is just "." CRLF).  Variants
  such as LF "." LF are NOT end of data (SMTP smuggling, CVE-2023-51764): they
  stay in the body and are reported as bare CR/LF for the caller to reject.
  Once the message certainly exceeds `max_size`, the body is dropped and only
  a 4-octet tail is kept to find the terminator.
- `read_octets(n)` reads exactly n octets (an XBATCH chunk, docs/BATCH.md);
  `examine(body, max_size)` reports the same problems as read_data for a
  message that came as is, without dot-stuffing.

Every read from the stream waits at most `idle_timeout` seconds (None: no
limit) and then raises `TimeoutError`; a closed stream raises
`ClientDisconnected`.  Slow clients are bounded as a whole, not per read, so
that a byte every few seconds holds no slot for ever: a command line must
be complete within `line_deadline` seconds of the first wait for it (only a
complete line resets the clock), else `CommandTimeout`; a DATA section
must keep up `min_data_rate` octets/s over each `data_rate_window`
(pace.py), else `DataTooSlow`.  Findings use whole-body bytes operations
(count, find, split run in C), never a Python loop per line.
"""

from __future__ import annotations

import asyncio
import dataclasses
from dataclasses import dataclass
from typing import Protocol

from tidepost.smtp_server.pace import DataPace

CHUNK = 64 * 1024
END_OF_DATA = b"\r\n.\r\n"
MAX_TEXT_LINE = 1000  # octets including CRLF (RFC 5321 4.5.3.1.6)


class ReaderError(Exception):
    """A line could not be read as SMTP requires."""


class ClientDisconnected(ReaderError):
    """The client closed the connection (EOF)."""


class LineTooLong(ReaderError):
    """A command line exceeded the limit; it has been discarded."""


class BareLineFeed(ReaderError):
    """A command line ended with LF alone instead of CRLF."""


class ClientTooSlow(ReaderError):
    """The client did not keep up with a deadline; the session must end."""


class CommandTimeout(ClientTooSlow):
    """A command line was not complete within its deadline."""


class DataTooSlow(ClientTooSlow):
    """A DATA section arrived below the minimum data rate."""


class ByteStream(Protocol):
    """What SmtpReader reads from (asyncio.StreamReader fits)."""

    async def read(self, n: int = -1) -> bytes:
        """Up to n bytes; b"" at end of stream."""


@dataclass(frozen=True, slots=True)
class MessageData:
    """A DATA section, dot-unstuffed, with what was wrong with it."""

    body: bytes              # CRLF line endings, ends with CRLF; b"" if too big
    size: int                # octets received before the terminator
    too_big: bool = False
    bare_cr: bool = False
    bare_lf: bool = False
    nul: bool = False
    long_line: bool = False  # a line over 1000 octets including CRLF


class SmtpReader:
    """A buffered reader of SMTP command lines and DATA sections."""

    def __init__(self, stream: ByteStream, idle_timeout: float | None = None, *,
                 line_deadline: float | None = None, min_data_rate: float = 0.0,
                 data_rate_window: float = 30.0):
        self._stream = stream
        self._buffer = bytearray()
        self.idle_timeout = idle_timeout
        self.line_deadline = line_deadline
        self.min_data_rate = min_data_rate
        self.data_rate_window = data_rate_window
        self.bytes_read = 0

    @property
    def stream(self) -> ByteStream:
        """The stream read from (ODMR turns the connection around on it)."""
        return self._stream

    @property
    def buffered(self) -> int:
        """Octets received but not yet consumed."""
        return len(self._buffer)

    def has_line(self) -> bool:
        """True when a complete line is already buffered (pipelined)."""
        return b"\n" in self._buffer

    async def read_line(self, limit: int) -> bytes:
        """One command line without CRLF; LineTooLong, BareLineFeed, CommandTimeout."""
        deadline = asyncio.timeout(self.line_deadline)
        try:
            async with deadline:
                return await self._read_line(limit)
        except TimeoutError:
            if deadline.expired():  # the whole line's deadline, not one read's
                raise CommandTimeout() from None
            raise

    async def _read_line(self, limit: int) -> bytes:
        """read_line() without its deadline."""
        scanned = 0
        while True:
            end = self._buffer.find(b"\n", scanned)
            if end >= 0:
                return self._take_line(end, limit)
            if len(self._buffer) > limit:
                await self._discard_line()
                raise LineTooLong()
            scanned = len(self._buffer)
            await self._fill()

    def _take_line(self, end: int, limit: int) -> bytes:
        """Remove the line ending at index `end` (its LF) and check it."""
        line = bytes(self._buffer[:end + 1])
        del self._buffer[:end + 1]
        if len(line) > limit:
            raise LineTooLong()
        if not line.endswith(b"\r\n"):
            raise BareLineFeed()
        return line[:-2]

    async def _discard_line(self) -> None:
        """Drop input up to and including the next LF, holding one chunk at most."""
        while True:
            end = self._buffer.find(b"\n")
            if end >= 0:
                del self._buffer[:end + 1]
                return
            self._buffer.clear()
            await self._fill()

    async def _fill(self) -> None:
        """Append one chunk from the stream; raise at EOF or idle timeout."""
        async with asyncio.timeout(self.idle_timeout):
            data = await self._stream.read(CHUNK)
        self._take(data)

    def _take(self, data: bytes) -> None:
        """Append what one read returned; b"" is the client's EOF."""
        if not data:
            raise ClientDisconnected()
        self.bytes_read += len(data)
        self._buffer += data

    async def _fill_paced(self, pace: DataPace | None) -> None:
        """Append one chunk of DATA; DataTooSlow when a window ends short of the rate."""
        if pace is None:
            return await self._fill()
        loop = asyncio.get_running_loop()
        idle_end = loop.time() + self.idle_timeout if self.idle_timeout else None
        while True:
            until = pace.window_end if idle_end is None else min(idle_end, pace.window_end)
            try:
                async with asyncio.timeout_at(until):
                    data = await self._stream.read(CHUNK)
            except TimeoutError:
                now = max(loop.time(), until)  # timers may fire a hair early
                if idle_end is not None and now >= idle_end:
                    raise
                if not pace.received(0, now):
                    raise DataTooSlow() from None
                continue
            if not pace.received(len(data), loop.time()):
                raise DataTooSlow()
            return self._take(data)

    def _pace(self) -> DataPace | None:
        """The rate judge for a DATA section starting now, if a minimum is set."""
        if self.min_data_rate <= 0:
            return None
        start = asyncio.get_running_loop().time()
        return DataPace(self.min_data_rate, self.data_rate_window, start)

    async def read_octets(self, count: int) -> bytes:
        """Exactly `count` octets (an XBATCH chunk), at the DATA rate's pace."""
        pace = self._pace()
        while len(self._buffer) < count:
            await self._fill_paced(pace)
        octets = bytes(self._buffer[:count])
        del self._buffer[:count]
        return octets

    async def read_data(self, max_size: int) -> MessageData:
        """Read a DATA section up to CRLF "." CRLF; see the module docstring."""
        work = bytearray(b"\r\n")  # the CRLF that ended the DATA command
        work += self._buffer
        self._buffer.clear()
        # Dot-unstuffing removes at most one octet per 4-octet line, so a raw
        # section longer than this is certainly over max_size.
        keep_limit = max_size + max_size // 3 + 8
        dropped = 0
        scan = 0
        pace = self._pace()
        while (end := work.find(END_OF_DATA, scan)) < 0:
            if len(work) > keep_limit:
                dropped += len(work) - 4
                del work[:-4]
            scan = max(0, len(work) - 4)
            await self._fill_paced(pace)
            work += self._buffer
            self._buffer.clear()
        self._buffer += work[end + 5:]
        if dropped:
            return MessageData(b"", dropped + end, too_big=True)
        return inspect(bytes(work[:end + 2]), max_size)


def inspect(raw: bytes, max_size: int) -> MessageData:
    """Dot-unstuff `raw` (which starts with CRLF) and report its problems."""
    body = raw.replace(b"\r\n.", b"\r\n")[2:]
    found = examine(raw[2:], max_size)  # the problems of the text as it was sent
    return dataclasses.replace(found, body=body if len(body) <= max_size else b"",
                               size=len(body), too_big=len(body) > max_size)


def examine(body: bytes, max_size: int) -> MessageData:
    """The problems of a message received as is (no dot-stuffing: XBATCH)."""
    crlf = body.count(b"\r\n")
    return MessageData(
        body=body if len(body) <= max_size else b"",
        size=len(body),
        too_big=len(body) > max_size,
        bare_cr=body.count(b"\r") != crlf,
        bare_lf=body.count(b"\n") != crlf,
        nul=b"\0" in body,
        long_line=_has_long_line(body),
    )


def _has_long_line(raw: bytes) -> bool:
    """True when some line of `raw` exceeds 1000 octets including its CRLF."""
    if len(raw) <= MAX_TEXT_LINE - 2:
        return False
    return max(map(len, raw.split(b"\r\n"))) > MAX_TEXT_LINE - 2
