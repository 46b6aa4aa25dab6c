"""Local delivery into Maildirs: write tmp/, fsync, link into new/.

Each recipient's file name is derived from the message's queue id and the
recipient's id, not from the time: if tidepost dies after the link but
before the queue records the delivery, the next attempt finds the file and
reports it delivered instead of writing a second copy.  `link()` fails with
EEXIST on a file already in new/; for recipients marked uncertain (their
runner died mid-delivery) cur/ is searched too, in case the reader has
already moved the message.

Ownership: a recipient with an account in the password database gets a
Maildir of their own (folders 0700, files 0600, their uid and gid), as
Postfix's local(8) does.  A daemon started as root writes those through
the local delivery helper (delivery/local_helper.py), which stays root and
writes each message as its recipient; a daemon started as an ordinary user
writes everything itself, as that user.  Names without an account
(`local.users`, aliases) are written by the daemon, in the daemon's name.

Prepends Return-Path and Delivered-To (RFC 5321 4.4; loop detection by
convention; a message already carrying this recipient's Delivered-To is a
forwarding loop, bounced 5.4.6) and writes LF line ends (Unix text, as every MTA's Maildir
delivery does; the queue keeps SMTP's CRLF).  Config key read: local.maildir ({spool}, {user}, {home}).
"""

from __future__ import annotations

import asyncio
import errno
import os
from pathlib import Path
from typing import Protocol

from tidepost.accounts import Account, lookup
from tidepost.config.schema import RouteConfig
from tidepost.durable import sync_path
from tidepost.delivery.agent import Overlap
from tidepost.model import DeliveryJob, QueuedRecipient
from tidepost.outcomes import Outcome, bounced, deferred, delivered
from tidepost.submission.headers import header_section


class OwnerWriter(Protocol):
    """Writes a message into a Maildir as the account that owns it (the root helper)."""

    def write_as(self, account: Account, name: str, data: bytes, uncertain: bool) -> str:
        """Deliver as `account`; the note for the outcome; OSError on failure."""


def maildir_path(template: str, spool: Path, user: str, home: str = "") -> Path:
    """The Maildir folder of `user` from the local.maildir template."""
    safe = user.replace("/", "_").replace("\0", "_")
    if safe.startswith("."):
        safe = "_" + safe[1:]
    return Path(template.format(spool=spool, user=safe, home=home or f"/nonexistent/{safe}"))


class MaildirAgent:
    """DeliveryAgent for the `local` route."""

    def __init__(self, maildir_template: str, spool: Path, hostname: str,
                 owner_writer: OwnerWriter | None = None, system_users: bool = True):
        self._template = maildir_template
        self._spool = spool
        self._hostname = hostname.replace("/", "_").replace(":", "_")
        self._owner_writer = owner_writer
        self._system_users = system_users  # False: every local name is virtual

    def _account(self, user: str) -> Account | None:
        """The account that owns `user`'s Maildir; None: the daemon writes it."""
        return lookup(user) if self._system_users else None

    def session(self, route: RouteConfig | None, nexthop: str) -> MaildirSession:
        """Local delivery has no connection: every session is the same."""
        return MaildirSession(self)

    def maildir_of(self, user: str) -> Path:
        """The Maildir folder of a local user."""
        account = self._account(user)
        return maildir_path(self._template, self._spool, user, account.home if account else "")

    def deliver_one(self, job: DeliveryJob, rcpt: QueuedRecipient) -> Outcome:
        """Write the message into one recipient's Maildir (blocking; run in a thread)."""
        name = f"{int(job.message.arrival)}.{job.message.queue_id}R{rcpt.recipient_id}." \
               f"{self._hostname}"
        if delivered_to_before(job.body, str(rcpt.address)):
            return bounced(rcpt.recipient_id, "5.4.6",
                           f"mail forwarding loop for {rcpt.address}")
        data = unix_text(f"Return-Path: <{job.message.sender}>\r\n"
                         f"Delivered-To: {rcpt.address}\r\n".encode() + job.body)
        account = self._account(rcpt.address.local)
        try:
            if account is not None and self._owner_writer is not None:
                note = self._owner_writer.write_as(account, name, data, rcpt.uncertain)
            else:
                folder = maildir_path(self._template, self._spool, rcpt.address.local,
                                      account.home if account else "")
                note = write_message(folder, name, data, rcpt.uncertain)
        except OSError as exc:
            return deferred(rcpt.recipient_id, "4.3.1" if exc.errno in (
                errno.ENOSPC, errno.EDQUOT) else "4.2.0",
                f"maildir of {rcpt.address.local}: {exc.strerror or exc}")
        return delivered(rcpt.recipient_id, note)


def delivered_to_before(message: bytes, address: str) -> bool:
    """True when the message's header already says `Delivered-To: address`.

    Then it has been delivered to this mailbox before and came back (a
    forwarding loop through another host): bounced, as Postfix's local(8)
    does, instead of going round until the Received limit stops it.
    """
    wanted = address.lower().encode()
    for line in header_section(message).split(b"\r\n"):
        name, colon, value = line.partition(b":")
        if colon and name.lower() == b"delivered-to" and value.strip().lower() == wanted:
            return True
    return False


def unix_text(message: bytes) -> bytes:
    """A queued message (CRLF lines, no bare CR or LF) with LF line ends.

    Maildir files hold Unix text, as Postfix's local(8), Exim and qmail
    write them: mail readers and IMAP servers reading the files expect LF.
    """
    return message.replace(b"\r\n", b"\n")


def write_message(folder: Path, name: str, data: bytes, uncertain: bool) -> str:
    """Deliver `data` into the Maildir `folder` once; the note for the outcome.

    Idempotent by `name`: a file already in new/ (or, when `uncertain`, in
    cur/) means an earlier attempt delivered it.  Raises OSError.
    """
    for sub in ("", "tmp", "new", "cur"):
        os.makedirs(folder / sub, mode=0o700, exist_ok=True)
    if uncertain and _already_in_cur(folder, name):
        return f"already in {folder}/cur"
    _write_new(folder, name, data)
    return f"delivered to maildir {folder}"


def _already_in_cur(folder: Path, name: str) -> bool:
    """True when a reader already moved our file to cur/ (name:2,flags)."""
    return any(entry.name.split(":", 1)[0] == name for entry in os.scandir(folder / "cur"))


def _write_new(folder: Path, name: str, data: bytes) -> None:
    """tmp/ -> fsync -> link into new/ -> fsync the folder; idempotent by name."""
    tmp = folder / "tmp" / f"{name}.{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, folder / "new" / name)
    except FileExistsError:
        pass  # delivered before a crash; the queue had not recorded it
    finally:
        os.unlink(tmp)
    sync_path(folder / "new")


class MaildirSession:
    """Delivers jobs to local Maildirs, off the event loop."""

    destination_failed: tuple[str, str] | None = None
    depth = 0  # one job after another

    def __init__(self, agent: MaildirAgent):
        self._agent = agent

    async def deliver(self, job: DeliveryJob, overlap: Overlap | None = None) -> list[Outcome]:
        """Deliver every recipient of `job`; never raises."""
        def run() -> list[Outcome]:
            return [self._agent.deliver_one(job, rcpt) for rcpt in job.recipients]
        try:
            return await asyncio.to_thread(run)
        except Exception as exc:  # noqa: BLE001 - an agent must not raise
            return [deferred(r.recipient_id, "4.3.0", f"local delivery failed: {exc}")
                    for r in job.recipients]

    async def close(self) -> None:
        """Nothing to close."""
