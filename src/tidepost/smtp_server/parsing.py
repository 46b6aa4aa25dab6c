"""Parsing the arguments of MAIL FROM and RCPT TO, once, at the edge.

`parse_mail(arg, max_size)` turns `FROM:<a@b> SIZE=123 BODY=8BITMIME
SMTPUTF8` into a `MailCommand`; `parse_rcpt(arg)` turns `TO:<c@d>
NOTIFY=FAILURE` into a `RcptCommand`.  On bad input each returns the `Reply` to give instead, so the
session never sees a half-parsed command.  Pure functions, no I/O.

Accepted MAIL parameters (RFC 1870, 6152, 6531, 3461): SIZE=digits, BODY=7BIT
or 8BITMIME, SMTPUTF8, RET=FULL|HDRS, ENVID=xtext; and XTRANSFER=id
(docs/EXTENSIONS.md) when the session offered it (`transfers=True`); AUTH=xtext
or AUTH=<> (RFC 4954 5) where the server offers AUTH (`auth=True`), checked and
dropped: tidepost never passes an AUTH= identity on, which that section allows.  RCPT
takes NOTIFY= and ORCPT= (RFC 3461; values checked in dsnparams.py).  Unknown or repeated parameters get
555 5.5.4, malformed ones 501 5.5.4, a declared SIZE over `max_size` 552 5.3.4.
Angle brackets around the path are required (RFC 5321 4.1.2); a space after
the colon is tolerated, as most servers do.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

from tidepost.address import Address, AddressError, parse_path
from tidepost.dsnparams import (DsnParameterError, parse_envid, parse_notify, parse_orcpt,
                                parse_ret, xtext_decode)
from tidepost.model import NO_DSN_REQUEST, BodyType, RecipientDsn
from tidepost.smtp_server import replies as S
from tidepost.smtp_server.replies import Reply
from tidepost.submission.transfers import PARAMETER as TRANSFER_PARAMETER, valid_transfer_id

# A path in angle brackets; a quoted local part may contain < > or spaces.
_PATH = re.compile(r'\s*(<(?:"(?:[^"\\]|\\.)*"|[^<>"\s])*>)(.*)\Z', re.S)
_KEYWORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9\-]*\Z")


@dataclass(frozen=True, slots=True)
class MailCommand:
    """A parsed MAIL FROM: the sender and its ESMTP parameters."""

    sender: Address
    size: int | None = None
    body_type: BodyType = BodyType.SEVEN_BIT
    smtputf8: bool = False
    transfer_id: str = ""   # XTRANSFER=, exactly-once between tidepost nodes
    ret: str = ""           # RET= (RFC 3461): "", FULL or HDRS
    envid: str = ""         # ENVID= (RFC 3461), xtext decoded


@dataclass(frozen=True, slots=True)
class RcptCommand:
    """A parsed RCPT TO: the recipient and its DSN request (RFC 3461)."""

    address: Address
    dsn: RecipientDsn = NO_DSN_REQUEST


def parse_mail(arg: str, max_size: int, transfers: bool = False,
               auth: bool = False) -> MailCommand | Reply:
    """Parse the argument of MAIL (`FROM:<addr> params`) or return a refusal.

    `transfers`: XTRANSFER= is allowed (the session offered XTIDEPOST TRANSFER);
    `auth`: AUTH= is allowed (the server supports AUTH).
    """
    split = split_path(arg, "FROM:")
    if split is None:
        return S.S501_MAIL_SYNTAX
    path, rest = split
    params = parse_parameters(rest)
    if isinstance(params, Reply):
        return params
    if auth and "AUTH" in params and not _valid_auth_parameter(params.pop("AUTH")):
        return S.S501_SYNTAX
    command = _mail_parameters(params, max_size, transfers)
    if isinstance(command, Reply):
        return command
    try:
        sender = parse_path(path, allow_null=True)
    except AddressError:
        return S.S501_BAD_SENDER
    if not sender.is_ascii and not command.smtputf8:
        return S.S553_NEEDS_SMTPUTF8
    return dataclasses.replace(command, sender=sender)


def parse_rcpt(arg: str) -> RcptCommand | Reply:
    """Parse the argument of RCPT (`TO:<addr> [NOTIFY=..] [ORCPT=..]`) or return a refusal."""
    split = split_path(arg, "TO:")
    if split is None:
        return S.S501_RCPT_SYNTAX
    path, rest = split
    params = parse_parameters(rest)
    if isinstance(params, Reply):
        return params
    if set(params) - {"NOTIFY", "ORCPT"}:
        return S.S555_UNKNOWN_PARAMETER
    try:
        dsn = RecipientDsn(parse_notify(params["NOTIFY"]) if "NOTIFY" in params else "",
                           parse_orcpt(params["ORCPT"]) if "ORCPT" in params else "")
    except DsnParameterError as exc:
        return S.dsn_syntax(str(exc))
    try:
        return RcptCommand(parse_path(path), dsn)
    except AddressError:
        return S.S501_BAD_RECIPIENT


def split_path(arg: str, keyword: str) -> tuple[str, str] | None:
    """Split `FROM:<path> rest` into ("<path>", "rest"); None if malformed."""
    if arg[:len(keyword)].upper() != keyword:
        return None
    match = _PATH.match(arg[len(keyword):])
    if match is None:
        return None
    rest = match.group(2)
    if rest and not rest[0].isspace():
        return None
    return match.group(1), rest.strip()


def parse_parameters(text: str) -> dict[str, str | None] | Reply:
    """`SIZE=10 SMTPUTF8` -> {"SIZE": "10", "SMTPUTF8": None}; upper-case keys."""
    params: dict[str, str | None] = {}
    for word in text.split():
        key, eq, value = word.partition("=")
        if not _KEYWORD.match(key) or (eq and not value):
            return S.S501_SYNTAX
        key = key.upper()
        if key in params:
            return S.S555_UNKNOWN_PARAMETER  # a repeated parameter is not supported
        params[key] = value if eq else None
    return params


def _mail_parameters(params: dict[str, str | None], max_size: int,
                     transfers: bool) -> MailCommand | Reply:
    """Check MAIL parameters; the sender field of the result is a placeholder."""
    size: int | None = None
    body_type = BodyType.SEVEN_BIT
    transfer = ""
    dsn: dict[str, str] = {}
    for key, value in params.items():
        if key == "SIZE":
            if value is None or not value.isascii() or not value.isdigit() or len(value) > 20:
                return S.S501_SYNTAX
            size = int(value)
            if size > max_size:
                return S.S552_TOO_BIG
        elif key == "BODY":
            try:
                body_type = BodyType((value or "").upper())
            except ValueError:
                return S.S501_SYNTAX
        elif key == TRANSFER_PARAMETER and transfers:
            if not valid_transfer_id(value):
                return S.S501_SYNTAX
            transfer = value or ""
        elif key in _DSN_MAIL_PARAMETERS:
            try:
                dsn[key] = _DSN_MAIL_PARAMETERS[key](value)
            except DsnParameterError as exc:
                return S.dsn_syntax(str(exc))
        elif key != "SMTPUTF8" or value is not None:
            return S.S555_UNKNOWN_PARAMETER
    return MailCommand(Address("", ""), size, body_type, "SMTPUTF8" in params, transfer,
                       dsn.get("RET", ""), dsn.get("ENVID", ""))


def _valid_auth_parameter(value: str | None) -> bool:
    """True for AUTH=<> or AUTH=xtext (RFC 4954 5)."""
    if value == "<>":
        return True
    try:
        return bool(value) and bool(xtext_decode(value))
    except DsnParameterError:
        return False


_DSN_MAIL_PARAMETERS = {"RET": parse_ret, "ENVID": parse_envid}
