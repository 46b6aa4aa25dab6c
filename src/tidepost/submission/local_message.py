"""Messages typed or piped on this host: line endings, missing headers, Bcc.

Local programs write LF line endings and often omit From, Date and
Message-ID; RFC 5322 requires From and Date, and a Message-ID is expected,
so the submission adds them, as every sendmail does.  Only the header
section is touched (but for lines too long for SMTP, broken anywhere).
"""

from __future__ import annotations

import re
import secrets
from email.utils import formatdate

from tidepost.address import Address
from tidepost.submission.headers import MAX_LINE, has_header, header_section

_FIELD = re.compile(rb"[!-9;-~]+:")


_DOT_LINE = re.compile(rb"^\.\r?$", re.MULTILINE)  # a lone "." line, before CRs are split
BLOCK = (MAX_LINE + 1) // 2  # 499: a line over MAX_LINE covers a whole aligned block


def from_local_input(raw: bytes, dot_ends_input: bool) -> bytes:
    """CRLF-normalise standard input; a lone '.' line ends it unless -i; no leading From_.

    A bare CR inside a line becomes a line break and NUL octets are dropped,
    as no SMTP server (tidepost's own included) accepts them in a message;
    for the same reason a line over MAX_LINE octets is broken with CRLF SPACE
    (RFC 5321 4.5.3.1.6; Postfix's smtp_line_length_limit does the same).
    Whole-message passes, no list of lines: a 30 MB message held as 400,000
    line objects, twice, took 220 MB.
    """
    text = _without_from_lines(raw.replace(b"\0", b""))
    if dot_ends_input and (dot := _DOT_LINE.search(text)) is not None:
        text = text[:dot.start()]
    text = text.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    if text and not text.endswith(b"\n"):
        text += b"\n"
    if _has_long_line(text):
        text = b"".join(line + b"\n" for part in text[:-1].split(b"\n") for line in _broken(part))
    return text.replace(b"\n", b"\r\n")


def _broken(line: bytes) -> list[bytes]:
    """`line` as lines of at most MAX_LINE octets, each continuation after a space."""
    if len(line) <= MAX_LINE:
        return [line]
    step = MAX_LINE - 1
    return [line[:MAX_LINE]] + [b" " + line[i:i + step] for i in range(MAX_LINE, len(line), step)]


def _without_from_lines(text: bytes) -> bytes:
    """`text` without its leading mbox From_ lines (or UUCP's >From): Postfix's sendmail drops them too."""
    while True:
        end = text.find(b"\n")
        first = text if end < 0 else text[:end]
        if not first.lstrip(b">").startswith(b"From "):
            return text
        text = b"" if end < 0 else text[end + 1:]


def _has_long_line(text: bytes) -> bool:
    """True when a line of `text` (LF-terminated lines) is over MAX_LINE octets.

    Such a line covers at least one whole aligned block of BLOCK octets,
    which then holds no LF: one C search a block, and a line measured only
    around an LF-free block (as the SMTP server's DATA check does).
    """
    for start in range(0, len(text) - BLOCK + 1, BLOCK):
        if text.find(b"\n", start, start + BLOCK) < 0:
            first = text.rfind(b"\n", 0, start) + 1
            end = text.find(b"\n", start)
            if (len(text) if end < 0 else end) - first > MAX_LINE:
                return True
    return False


def complete_headers(body: bytes, sender: Address, full_name: str | None,
                     hostname: str) -> bytes:
    """Add From, Date and Message-ID when the message lacks them."""
    added = b""
    if not has_header(body, b"from"):
        display = f"{full_name} " if full_name else ""
        added += f"From: {display}<{sender or 'MAILER-DAEMON@' + hostname}>\r\n".encode()
    if not has_header(body, b"date"):
        added += f"Date: {formatdate(localtime=True)}\r\n".encode()
    if not has_header(body, b"message-id"):
        added += f"Message-ID: <{secrets.token_hex(10)}@{hostname}>\r\n".encode()
    if not added:
        return body
    starts_with_header = bool(_FIELD.match(body)) and bool(header_section(body))
    return added + body if starts_with_header else added + b"\r\n" + body


def remove_bcc(body: bytes) -> bytes:
    """Drop Bcc header fields (with their continuation lines)."""
    headers = header_section(body)
    if not headers:
        return body
    kept, skipping = [], False
    for line in headers.split(b"\r\n"):
        if line[:1] in (b" ", b"\t"):
            if not skipping:
                kept.append(line)
            continue
        skipping = line.lower().startswith(b"bcc:")
        if not skipping:
            kept.append(line)
    return b"\r\n".join(kept) + body[len(headers):]
