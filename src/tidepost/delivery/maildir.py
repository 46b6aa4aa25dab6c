"""Local delivery into Maildirs: write tmp/, fsync, link into new/.

Each recipient's file name is derived from the message's queue id and the
recipient's id, not from the time: if tidepost dies after the link but
before the queue records the delivery, the next attempt finds the file and
reports it delivered instead of writing a second copy.  `link()` fails with
EEXIST on a file already in new/; for recipients marked uncertain (their
runner died mid-delivery) cur/ is searched too, in case the reader has
already moved the message.

Prepends Return-Path and Delivered-To (RFC 5321 4.4; loop detection by
convention).  Config key read: local.maildir.
"""

from __future__ import annotations

import asyncio
import errno
import os
from pathlib import Path

from tidepost.config.schema import RouteConfig
from tidepost.model import DeliveryJob, QueuedRecipient
from tidepost.outcomes import Outcome, deferred, delivered


class MaildirAgent:
    """DeliveryAgent for the `local` route."""

    def __init__(self, maildir_template: str, spool: Path, hostname: str):
        self._template = maildir_template
        self._spool = spool
        self._hostname = hostname.replace("/", "_").replace(":", "_")

    def session(self, route: RouteConfig | None, nexthop: str) -> MaildirSession:
        """Local delivery has no connection: every session is the same."""
        return MaildirSession(self)

    def maildir_of(self, user: str) -> Path:
        """The Maildir folder of a local user."""
        safe = user.replace("/", "_").replace("\0", "_")
        if safe.startswith("."):
            safe = "_" + safe[1:]
        return Path(self._template.format(spool=self._spool, user=safe))

    def deliver_one(self, job: DeliveryJob, rcpt: QueuedRecipient) -> Outcome:
        """Write the message into one recipient's Maildir (blocking; run in a thread)."""
        folder = self.maildir_of(rcpt.address.local)
        name = f"{int(job.message.arrival)}.{job.message.queue_id}R{rcpt.recipient_id}." \
               f"{self._hostname}"
        try:
            for sub in ("tmp", "new", "cur"):
                (folder / sub).mkdir(parents=True, exist_ok=True)
            if rcpt.uncertain and _already_in_cur(folder, name):
                return delivered(rcpt.recipient_id, f"already in {folder}/cur")
            prefix = (f"Return-Path: <{job.message.sender}>\r\n"
                      f"Delivered-To: {rcpt.address}\r\n").encode()
            _write_new(folder, name, prefix + job.body)
        except OSError as exc:
            return deferred(rcpt.recipient_id, "4.2.0" if exc.errno != errno.ENOSPC else "4.3.1",
                            f"maildir {folder}: {exc.strerror}")
        return delivered(rcpt.recipient_id, f"delivered to maildir {folder}")


def _already_in_cur(folder: Path, name: str) -> bool:
    """True when a reader already moved our file to cur/ (name:2,flags)."""
    return any(entry.name.split(":", 1)[0] == name for entry in os.scandir(folder / "cur"))


def _write_new(folder: Path, name: str, data: bytes) -> None:
    """tmp/ -> fsync -> link into new/ -> fsync the folder; idempotent by name."""
    tmp = folder / "tmp" / f"{name}.{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
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
    dir_fd = os.open(folder / "new", os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class MaildirSession:
    """Delivers jobs to local Maildirs, off the event loop."""

    destination_failed: tuple[str, str] | None = None

    def __init__(self, agent: MaildirAgent):
        self._agent = agent

    async def deliver(self, job: DeliveryJob) -> list[Outcome]:
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
