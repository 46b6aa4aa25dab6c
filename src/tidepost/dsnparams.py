"""The envelope parameters of RFC 3461 (SMTP DSN): values, xtext, checks.

The SMTP server parses them from MAIL FROM (RET=, ENVID=) and RCPT TO
(NOTIFY=, ORCPT=), `tidepost sendmail` from -R, -V and -N, the batch
transfer between tidepost nodes carries them, and the SMTP client writes
them again for a next hop that offers DSN.  Stored values are decoded
(model.RecipientDsn, MessageInfo.ret/envid); `xtext_encode` turns them back
into parameters.  Pure functions, no I/O: each parser returns the value or
raises DsnParameterError, which the caller turns into 501 5.5.4 or an exit.
"""

from __future__ import annotations

import re

NOTIFY_KINDS = ("SUCCESS", "FAILURE", "DELAY")  # the canonical order we store
RET_VALUES = ("FULL", "HDRS")
MAX_ENVID = 100   # RFC 3461 4.4: ENVID up to 100 characters (as sent, xtext)
MAX_ORCPT = 500   # RFC 3461 4.2: ORCPT up to 500 characters
_HEXCHAR = re.compile(r"\+([0-9A-Fa-f]{2})")
_ADDR_TYPE = re.compile(r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~]+\Z")  # an atom (RFC 3461 4.2)


class DsnParameterError(ValueError):
    """A NOTIFY, ORCPT, RET or ENVID value that RFC 3461 does not allow."""


def xtext_decode(text: str) -> str:
    """Decode RFC 3461 xtext ("+2B" is "+"); the result is printable US-ASCII.

    Printable only: the value is written into the header fields of a DSN
    (RFC 3461 4.2, 4.4), where a CR or LF would start a forged header.
    """
    out: list[str] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char == "+":
            match = _HEXCHAR.match(text, i)
            if match is None:
                raise DsnParameterError("malformed xtext: + must be followed by two hex digits")
            char = chr(int(match.group(1), 16))
            i += 3
        elif not "!" <= char <= "~" or char == "=":
            raise DsnParameterError("malformed xtext: character not allowed")
        else:
            i += 1
        if not " " <= char <= "~":
            raise DsnParameterError("xtext decodes to a control or non-ASCII character")
        out.append(char)
    return "".join(out)


def xtext_encode(value: str) -> str:
    """Encode a decoded value as xtext: "+", "=", space and the rest as +XX."""
    return "".join(c if "!" <= c <= "~" and c not in "+=" else f"+{ord(c):02X}"
                   for c in value)


def parse_notify(value: str | None) -> str:
    """NOTIFY=NEVER or a list of SUCCESS, FAILURE, DELAY -> the stored form."""
    if not value:
        raise DsnParameterError("NOTIFY needs a value")
    words = [w.upper() for w in value.split(",")]
    if words == ["NEVER"]:
        return "NEVER"
    if "NEVER" in words:
        raise DsnParameterError("NOTIFY=NEVER must stand alone")
    if len(set(words)) != len(words) or not set(words) <= set(NOTIFY_KINDS):
        raise DsnParameterError("NOTIFY takes SUCCESS, FAILURE and DELAY, each once")
    return ",".join(k for k in NOTIFY_KINDS if k in words)


def parse_orcpt(value: str | None) -> str:
    """ORCPT=addr-type;xtext -> "addr-type;decoded address"."""
    if not value or len(value) > MAX_ORCPT:
        raise DsnParameterError(f"ORCPT needs a value of at most {MAX_ORCPT} characters")
    addr_type, semicolon, address = value.partition(";")
    if not semicolon or not _ADDR_TYPE.match(addr_type) or not address:
        raise DsnParameterError("ORCPT must be addr-type;address")
    return f"{addr_type};{xtext_decode(address)}"


def parse_ret(value: str | None) -> str:
    """RET=FULL or RET=HDRS."""
    ret = (value or "").upper()
    if ret not in RET_VALUES:
        raise DsnParameterError("RET must be FULL or HDRS")
    return ret


def parse_envid(value: str | None) -> str:
    """ENVID=xtext -> the decoded envelope id."""
    if not value or len(value) > MAX_ENVID:
        raise DsnParameterError(f"ENVID needs a value of at most {MAX_ENVID} characters")
    return xtext_decode(value)


def orcpt_parameter(orcpt: str) -> str:
    """The ORCPT= value to send on for a stored "type;address"."""
    addr_type, _, address = orcpt.partition(";")
    return f"{addr_type};{xtext_encode(address)}"
