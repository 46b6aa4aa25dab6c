"""SMTP replies as the client reads them (RFC 5321 4.2, RFC 2034, RFC 3463).

Input: lines from an asyncio StreamReader.  Output: a `Reply` with its code,
its text lines and its enhanced status code, parsed from the text when the
server sent one ("250 2.1.5 Ok") and derived from the code's class otherwise.
A multi-line reply ("250-..." lines then "250 ...") is one Reply.

I/O problems are not replies: a closed connection, a timeout or an unreadable
line raise `TempFailure` (4.4.2 or 4.5.0), and the caller treats the
connection as lost.  The code constants below are shared with the tests, so
that both read like transcripts.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass

from tidepost.errors import TempFailure

SERVICE_READY = 220
CLOSING = 221
OK = 250
START_MAIL_INPUT = 354
SERVICE_NOT_AVAILABLE = 421

MAX_REPLY_LINES = 100      # more than this is a broken or hostile server
MAX_LINE_BYTES = 4096      # RFC 5321 4.5.3.1.5 allows 512; be lenient

_LINE = re.compile(rb"([2-5][0-9][0-9])([ -]?)(.*)\Z", re.S)
_ENHANCED = re.compile(r"([245])\.([0-9]{1,3})\.([0-9]{1,3})(?=\s|\Z)")


@dataclass(frozen=True, slots=True)
class Reply:
    """One complete SMTP reply: a code and one or more lines of text."""

    code: int
    lines: tuple[str, ...] = ("",)

    @property
    def text(self) -> str:
        """The reply text on one line, continuation lines joined by spaces."""
        return " ".join(line for line in self.lines if line)

    @property
    def status(self) -> str:
        """The RFC 3463 enhanced status: from the text, else from the code class."""
        found = _ENHANCED.match(self.lines[0]) if self.lines else None
        if found and found.group(1) == str(self.code)[0]:
            return found.group(0)
        return f"{str(self.code)[0]}.0.0"

    @property
    def is_positive(self) -> bool:
        """2xx or 3xx: the command was accepted."""
        return self.code < 400

    @property
    def is_transient(self) -> bool:
        """4xx: try again later."""
        return 400 <= self.code < 500

    def __str__(self) -> str:
        return f"{self.code} {self.text}".rstrip()


async def read_reply(reader: asyncio.StreamReader, timeout: float,
                     max_lines: int = MAX_REPLY_LINES) -> Reply:
    """Read one (possibly multi-line) reply within `timeout` seconds."""
    try:
        async with asyncio.timeout(timeout):
            return await _read_lines(reader, max_lines)
    except TimeoutError:
        raise TempFailure("4.4.2", "conversation timed out") from None
    except OSError as error:
        raise TempFailure("4.4.2", f"lost connection: {error}") from None


async def _read_lines(reader: asyncio.StreamReader, max_lines: int) -> Reply:
    """Read continuation lines up to the last line of a reply."""
    lines: list[str] = []
    first_code = 0
    for _ in range(max_lines):
        code, last, text = parse_line(await _read_line(reader))
        if lines and code != first_code:
            raise TempFailure("4.5.0", "protocol error: reply code changed mid-reply")
        first_code = code
        lines.append(text)
        if last:
            return Reply(code, tuple(lines))
    raise TempFailure("4.5.0", "protocol error: reply has too many lines")


async def _read_line(reader: asyncio.StreamReader) -> bytes:
    """One reply line without its line ending; EOF raises TempFailure."""
    try:
        line = await reader.readuntil(b"\n")
    except asyncio.IncompleteReadError:
        raise TempFailure("4.4.2", "lost connection (server closed it)") from None
    except asyncio.LimitOverrunError:
        raise TempFailure("4.5.0", "protocol error: reply line too long") from None
    if len(line) > MAX_LINE_BYTES:
        raise TempFailure("4.5.0", "protocol error: reply line too long")
    return line.rstrip(b"\r\n")


def parse_line(line: bytes) -> tuple[int, bool, str]:
    """Split a reply line into (code, is_last_line, text)."""
    found = _LINE.match(line)
    if not found or (found.group(2) == b"" and found.group(3)):
        raise TempFailure("4.5.0", f"protocol error: malformed reply {line[:60]!r}")
    text = found.group(3).decode("utf-8", errors="replace")
    return int(found.group(1)), found.group(2) != b"-", text
