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
  `read_octets_into(n, sink, room)` reads exactly n octets (a BDAT chunk)
  but keeps only the first `room` of them, so an announced size never
  decides what is held;
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

from tidepost.eventloop import running_loop
from tidepost.smtp_server.deadlines import Deadlines
from tidepost.smtp_server.pace import DataPace
from tidepost.submission.headers import MAX_LINE

CHUNK = 64 * 1024
END_OF_DATA = b"\r\n.\r\n"
MAX_TEXT_LINE = MAX_LINE + 2  # octets including CRLF (RFC 5321 4.5.3.1.6)


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


class LargeBody(Protocol):
    """What read_data() waits on before it holds a large section (bodies.py)."""

    threshold: int

    async def wait(self) -> None:
        """Return when the section may grow past `threshold`."""


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
        self._deadlines = Deadlines()

    def close(self) -> None:
        """Let go of the timer behind the read deadlines (the connection is over)."""
        self._deadlines.close()

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
        end = self._buffer.find(b"\n")
        if end >= 0:  # pipelined, already here: no timer to arm
            return self._take_line(end, limit)
        if self.line_deadline is None:
            return await self._read_line(limit, self.idle_timeout)
        token = self._deadlines.start(self.line_deadline)
        try:
            return await self._read_line(limit, self._idle_within_line())
        except asyncio.CancelledError:
            if self._deadlines.expired(token):  # the whole line's deadline, not one read's
                raise CommandTimeout() from None
            raise
        finally:
            self._deadlines.stop(token)

    def _idle_within_line(self) -> float | None:
        """The per-read idle timeout inside a line's deadline, None when it cannot fire.

        Every read of a line starts after the line's first wait, so an idle
        timeout no shorter than the deadline always ends after it: one timer
        a command instead of two (a timer costs as much as the parsing).
        """
        idle, deadline = self.idle_timeout, self.line_deadline
        if idle is not None and deadline is not None and idle >= deadline:
            return None
        return idle

    async def _read_line(self, limit: int, idle_timeout: float | None) -> bytes:
        """read_line() without its deadline; each read waits at most `idle_timeout`."""
        scanned = 0
        while True:
            end = self._buffer.find(b"\n", scanned)
            if end >= 0:
                return self._take_line(end, limit)
            if len(self._buffer) > limit:
                await self._discard_line(idle_timeout)
                raise LineTooLong()
            scanned = len(self._buffer)
            await self._fill(idle_timeout)

    def _take_line(self, end: int, limit: int) -> bytes:
        """Remove the line ending at index `end` (its LF) and check it."""
        line = bytes(self._buffer[:end + 1])
        del self._buffer[:end + 1]
        if len(line) > limit:
            raise LineTooLong()
        if not line.endswith(b"\r\n"):
            raise BareLineFeed()
        return line[:-2]

    async def _discard_line(self, idle_timeout: float | None) -> None:
        """Drop input up to and including the next LF, holding one chunk at most."""
        while True:
            end = self._buffer.find(b"\n")
            if end >= 0:
                del self._buffer[:end + 1]
                return
            self._buffer.clear()
            await self._fill(idle_timeout)

    async def _fill(self, idle_timeout: float | None) -> None:
        """Append one chunk from the stream; raise at EOF or after `idle_timeout` s."""
        if idle_timeout is None:
            data = await self._stream.read(CHUNK)
        else:
            data = await self._read_within(self._deadlines.start(idle_timeout))
        self._take(data)

    async def _read_within(self, token: int) -> bytes:
        """One chunk from the stream; TimeoutError once the deadline `token` passes."""
        try:
            return await self._stream.read(CHUNK)
        except asyncio.CancelledError:
            if self._deadlines.expired(token):
                raise TimeoutError() from None
            raise
        finally:
            self._deadlines.stop(token)

    def _take(self, data: bytes) -> None:
        """Append what one read returned; b"" is the client's EOF."""
        if not data:
            raise ClientDisconnected()
        self.bytes_read += len(data)
        self._buffer += data

    async def _read_paced(self, pace: DataPace | None) -> bytes:
        """One chunk of DATA; DataTooSlow when a window ends short of the rate."""
        if pace is None:
            if self.idle_timeout is None:
                return self._counted(await self._stream.read(CHUNK))
            return self._counted(await self._read_within(
                self._deadlines.start(self.idle_timeout)))
        loop = running_loop()
        idle_end = loop.time() + self.idle_timeout if self.idle_timeout else None
        while True:
            until = pace.window_end if idle_end is None else min(idle_end, pace.window_end)
            try:
                data = await self._read_within(self._deadlines.start_at(until))
            except TimeoutError:
                now = max(loop.time(), until)  # timers may fire a hair early
                if idle_end is not None and now >= idle_end:
                    raise
                if not pace.received(0, now):
                    raise DataTooSlow() from None
                continue
            if not pace.received(len(data), loop.time()):
                raise DataTooSlow()
            return self._counted(data)

    def _counted(self, data: bytes) -> bytes:
        """What one read returned, counted; b"" is the client's EOF."""
        if not data:
            raise ClientDisconnected()
        self.bytes_read += len(data)
        return data

    def _pace(self) -> DataPace | None:
        """The rate judge for a DATA section starting now, if a minimum is set."""
        if self.min_data_rate <= 0:
            return None
        start = running_loop().time()
        return DataPace(self.min_data_rate, self.data_rate_window, start)

    async def read_octets(self, count: int) -> bytes:
        """Exactly `count` octets (an XBATCH chunk), at the DATA rate's pace."""
        pace = self._pace()
        while len(self._buffer) < count:
            self._buffer += await self._read_paced(pace)
        octets = bytes(self._buffer[:count])
        del self._buffer[:count]
        return octets

    async def read_octets_into(self, count: int, sink: bytearray, room: int,
                               large: LargeBody | None = None) -> bool:
        """Exactly `count` octets (a BDAT chunk): the first `room` join `sink`, the rest go.

        At most one read chunk more than `sink` is held, whatever `count`
        says.  Once `sink` passes `large.threshold`, `await large.wait()`
        before reading on, as read_data() does; returns True if it did.
        """
        pace = self._pace()
        waited = False
        while count:
            if not self._buffer:
                if large is not None and not waited and len(sink) > large.threshold:
                    await large.wait()
                    waited, pace = True, self._pace()  # the wait is ours, not the client's
                self._buffer += await self._read_paced(pace)
            take = min(count, len(self._buffer))
            keep = max(0, min(take, room))
            sink += self._buffer[:keep]
            room -= keep
            del self._buffer[:take]
            count -= take
        return waited

    async def read_data(self, max_size: int, large: LargeBody | None = None) -> MessageData:
        """Read a DATA section up to CRLF "." CRLF; see the module docstring.

        Each octet is copied twice on its way to the body: from the stream
        into the section, and out of it once the end is found (a third time
        only if some line needs dot-unstuffing).  Once the section passes
        `large.threshold` octets, `await large.wait()` before reading on
        (bodies.py); the rate windows start again after it.
        """
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
            if large is not None and len(work) > large.threshold:
                await large.wait()
                large, pace = None, self._pace()  # the wait is ours, not the client's
            work += await self._read_paced(pace)
        self._buffer += work[end + 5:]
        if dropped:
            return MessageData(b"", dropped + end, too_big=True)
        with memoryview(work) as view:
            return inspect(bytes(view[2:end + 2]), max_size)


def inspect(raw: bytes, max_size: int) -> MessageData:
    """Dot-unstuff a DATA section (CRLF lines, no terminator) and report its problems."""
    found = examine(raw, max_size)  # the problems of the text as it was sent
    body = unstuff(raw)
    return dataclasses.replace(found, body=body if len(body) <= max_size else b"",
                               size=len(body), too_big=len(body) > max_size)


def examine(body: bytes, max_size: int) -> MessageData:
    """The problems of a message received as is (no dot-stuffing: XBATCH)."""
    crlf = body.count(b"\r\n")
    bare_lf = body.count(b"\n") != crlf
    return MessageData(
        body=body if len(body) <= max_size else b"",
        size=len(body),
        too_big=len(body) > max_size,
        bare_cr=body.count(b"\r") != crlf,
        bare_lf=bare_lf,
        nul=b"\0" in body,
        long_line=_has_long_line(body) if bare_lf else _has_long_crlf_line(body),
    )


def unstuff(raw: bytes) -> bytes:
    """Remove the dot RFC 5321 4.5.2 put before lines starting with one (no copy if none)."""
    body = raw.replace(b"\r\n.", b"\r\n") if b"\r\n." in raw else raw
    return body[1:] if body.startswith(b".") else body


def _has_long_line(raw: bytes) -> bool:
    """True when some line of `raw` exceeds 1000 octets including its CRLF."""
    if len(raw) <= MAX_TEXT_LINE - 2:
        return False
    return max(map(len, raw.split(b"\r\n"))) > MAX_TEXT_LINE - 2


LONG_LINE_BLOCK = (MAX_TEXT_LINE - 1) // 2  # 499: a longer line covers a whole block


def _has_long_crlf_line(raw: bytes) -> bool:
    """_has_long_line() for a section whose every LF follows a CR (no bare LF).

    There a line over the limit (999 octets or more before its CRLF) covers
    at least one whole aligned block of 499 octets, which then holds no LF:
    so only blocks are searched (one C search each, no list of lines), and
    only a line around an LF-free block is measured.
    """
    if len(raw) <= MAX_TEXT_LINE - 2:
        return False
    for start in range(0, len(raw) - LONG_LINE_BLOCK + 1, LONG_LINE_BLOCK):
        if raw.find(b"\n", start, start + LONG_LINE_BLOCK) < 0 and \
                _line_length_at(raw, start) > MAX_TEXT_LINE - 2:
            return True
    return False


def _line_length_at(raw: bytes, position: int) -> int:
    """Length without its CRLF of the line holding `position` (no bare LF in `raw`)."""
    first = raw.rfind(b"\n", 0, position) + 1
    end = raw.find(b"\n", position)
    return len(raw) - first if end < 0 else end - 1 - first
