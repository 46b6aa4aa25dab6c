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


def from_local_input(raw: bytes, dot_ends_input: bool) -> bytes:
    """CRLF-normalise standard input; a lone '.' line ends it unless -i; no leading From_.

    A bare CR inside a line becomes a line break and NUL octets are dropped,
    as no SMTP server (tidepost's own included) accepts them in a message;
    for the same reason a line over MAX_LINE octets is broken with CRLF SPACE
    (RFC 5321 4.5.3.1.6; Postfix's smtp_line_length_limit does the same).
    """
    raw = raw.replace(b"\0", b"")
    lines = raw.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    while lines and lines[0].lstrip(b">").startswith(b"From "):
        del lines[0]  # an mbox From_ line (or UUCP's >From): Postfix's sendmail drops them too
    out = []
    for line in lines:
        line = line[:-1] if line.endswith(b"\r") else line
        if dot_ends_input and line == b".":
            break
        for part in line.split(b"\r"):
            out.extend(_broken(part))
    return b"".join(line + b"\r\n" for line in out)


def _broken(line: bytes) -> list[bytes]:
    """`line` as lines of at most MAX_LINE octets, each continuation after a space."""
    if len(line) <= MAX_LINE:
        return [line]
    step = MAX_LINE - 1
    return [line[:MAX_LINE]] + [b" " + line[i:i + step] for i in range(MAX_LINE, len(line), step)]


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
