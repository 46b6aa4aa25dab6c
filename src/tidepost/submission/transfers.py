"""Exactly-once receipt between tidepost nodes: transfer ids and the keys made of them.

The XTIDEPOST extension (docs/EXTENSIONS.md) lets a sending tidepost give
each message a transfer id (`XTRANSFER=` on MAIL FROM: its queue id and
arrival time).  The receiving side turns it into one key per recipient and
stores those keys in the same commit as the message (NewMessage.transfer_keys),
so that a repeat of the transfer, after a crash on either side lost the 250,
is recognised and answered 250 without a second copy.  Per-recipient keys
handle a repeat that carries only some of the recipients (the others were
accepted earlier, or refused) and one that carries more.

A key is an HMAC, under this node's secret (SPOOL/transfer-secret), of the
client's namespace, the transfer id and the recipient.  The namespace is
who the client is (`auth:USER`, or `relay` for relay_networks): one client
cannot suppress another's mail by sending its transfer ids first, and the
stored keys say nothing about the mail they stand for.  The secret keeps
keys of this kind apart from the maildrop's (`maildrop:...`) too.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
from pathlib import Path
from typing import Iterable

from tidepost.address import Address
from tidepost.durable import sync_path

EXTENSION = "XTIDEPOST"       # the EHLO keyword; its arguments are feature words
TRANSFER = "TRANSFER"         # the feature word of exactly-once transfers
PARAMETER = "XTRANSFER"       # the MAIL FROM parameter carrying a transfer id
SECRET_FILE = "transfer-secret"
KEY_PREFIX = "xt:"
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9.\-]{0,63}\Z")


def valid_transfer_id(text: str | None) -> bool:
    """True for a syntactically valid transfer id (1-64 of A-Z a-z 0-9 . -)."""
    return text is not None and _ID.match(text) is not None


def transfer_id(queue_id: str, arrival: float) -> str:
    """The id a sending node gives one message: queue id and arrival in milliseconds.

    Queue ids are random, so the arrival makes an accidental repeat across
    the keys' lifetime impossible in practice.
    """
    return f"{queue_id}.{int(arrival * 1000)}"


def namespace(authenticated: str, may_relay: bool) -> str | None:
    """Whose transfers a session's belong to; None when it may not use transfers."""
    if authenticated:
        return f"auth:{authenticated}"
    return "relay" if may_relay else None


class TransferKeys:
    """Makes the stored keys of a transfer under this node's secret."""

    def __init__(self, secret: bytes):
        self._secret = secret

    @classmethod
    def load(cls, spool: Path) -> TransferKeys:
        """The spool's secret, created (0600, fsync'd) on first use."""
        path = spool / SECRET_FILE
        try:
            return cls(path.read_bytes())
        except FileNotFoundError:
            pass
        secret = secrets.token_bytes(32)
        temporary = path.with_name(f".{SECRET_FILE}.{os.getpid()}")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, secret)
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(temporary, path)  # first one wins when two processes race
        except FileExistsError:
            pass
        finally:
            temporary.unlink()
        sync_path(spool)  # a secret lost to a power cut would forget every stored key
        return cls(path.read_bytes())

    def keys(self, space: str, transfer: str,
             recipients: Iterable[Address]) -> dict[Address, str]:
        """{recipient: stored key} for one transfer in `space`."""
        return {rcpt: self._key(space, transfer, rcpt) for rcpt in recipients}

    def _key(self, space: str, transfer: str, rcpt: Address) -> str:
        """One recipient's key: HMAC-SHA256 of namespace, id and recipient, 128 bits."""
        text = "\0".join((space, transfer, str(rcpt))).encode("utf-8")
        return KEY_PREFIX + hmac.new(self._secret, text, hashlib.sha256).hexdigest()[:32]

