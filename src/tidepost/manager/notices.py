"""Short notice mails from the mail system: a route at its data cap, mail that waits for size.

Each notice is a small text/plain message from the null sender (it can
never bounce, so it can never loop), `Auto-Submitted: auto-generated`,
handed to the node's submission (`submit`, wired by node.py) like local
mail, so that `postmaster` resolves through the aliases.  `Notices.send`
does not wait: the submission runs in a task this object owns, and a
failure is logged, never raised into delivery.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
from collections.abc import Awaitable, Callable
from email.utils import formatdate

from tidepost.address import Address
from tidepost.model import ScheduleEntry
from tidepost.queue.backend import QueueBackend
from tidepost.routing.routes import Router
from tidepost.sizes import human_bytes
from tidepost.submission.headers import header_section

log = logging.getLogger("tidepost.manager.notices")

Submit = Callable[[Address, bytes], Awaitable[str]]   # recipient, message -> queue id


def notice_message(hostname: str, to: Address, subject: str, text: str, now: float) -> bytes:
    """The notice as an RFC 5322 message with CRLF line ends."""
    head = (f"From: Mail Delivery System <MAILER-DAEMON@{hostname}>\r\n"
            f"To: <{to}>\r\n"
            f"Subject: {subject}\r\n"
            f"Date: {formatdate(now, localtime=True)}\r\n"
            f"Message-ID: <notice.{secrets.token_hex(8)}@{hostname}>\r\n"
            "Auto-Submitted: auto-generated\r\n"
            "MIME-Version: 1.0\r\n"
            "Content-Type: text/plain; charset=utf-8\r\n"
            "Content-Transfer-Encoding: 8bit\r\n\r\n")
    body = "\r\n".join(text.splitlines()) + "\r\n"
    return (head + body).encode("utf-8")


class Notices:
    """Sends notices in the background; every task is owned here."""

    def __init__(self, hostname: str, now: Callable[[], float]):
        self.hostname = hostname
        self._now = now
        self.submit: Submit | None = None   # wired by node.py; None: notices are only logged
        self._tasks: set[asyncio.Task[None]] = set()

    def send(self, to: Address, subject: str, text: str) -> None:
        """Queue a notice to `to` (fire and forget)."""
        if self.submit is None:
            log.info("notice to <%s> not sent (no submission here): %s", to, subject)
            return
        message = notice_message(self.hostname, to, subject, text, self._now())
        task = asyncio.get_running_loop().create_task(self._submit(to, subject, message))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def later(self, work: Awaitable[None]) -> None:
        """Run `work` (which sends notices) in a task owned here."""
        task = asyncio.get_running_loop().create_task(self._guarded(work))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _guarded(self, work: Awaitable[None]) -> None:
        """Run `work`, logging what it raises."""
        try:
            await work
        except Exception:  # noqa: BLE001 - a notice must never stop the node
            log.exception("preparing a notice failed")

    async def wait_idle(self) -> None:
        """Wait for the notices on their way (tests, shutdown)."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _submit(self, to: Address, subject: str, message: bytes) -> None:
        """Hand one notice to the submission; log either way."""
        assert self.submit is not None
        try:
            queue_id = await self.submit(to, message)
            log.info("notice %s to <%s>: %s", queue_id, to, subject)
        except Exception:  # noqa: BLE001 - a notice must never stop the node
            log.exception("notice to <%s> could not be queued: %s", to, subject)


_SUBJECT = re.compile(rb"(?im)^subject:[ \t]*([^\r\n]*)")


class SizeNotices:
    """Tells a sender, once, that a message waits for a route that takes its size.

    A message larger than the first route serving a recipient allows
    (`max_message_size`) falls through to a later route (routing/routes.py);
    when that route is held now (or runs only on a schedule), the sender
    gets a notice at submission: what waits, for which route, and why.
    Mail from the null sender gets none (never answer a bounce).
    """

    def __init__(self, router: Router, queue: QueueBackend, notices: Notices,
                 waits: Callable[[str], bool]):
        self._router = router
        self._queue = queue
        self._notices = notices
        self._waits = waits  # route -> True when its mail waits now

    def queued(self, entries: list[ScheduleEntry]) -> None:
        """Submission callback: look at the new entries of each message."""
        waiting: dict[int, list[tuple[ScheduleEntry, str, str, int]]] = {}
        for entry in entries:
            skipped = self._router.fell_through(entry.domain, entry.size)
            route = self._router.route_of(entry.domain, entry.size)
            if skipped is not None and route is not None and self._waits(route):
                waiting.setdefault(entry.message_id, []).append((entry, route, *skipped))
        for message_id, reasons in waiting.items():
            self._notices.later(self._tell(message_id, reasons))

    async def _tell(self, message_id: int, reasons: list) -> None:
        """Send the notice for one message."""
        info = await self._queue.message_by_id(message_id)
        if info is None or info.sender.is_null:
            return
        found = _SUBJECT.search(header_section(await self._queue.load_body(message_id)))
        subject = found.group(1).decode("utf-8", "replace").strip() if found else ""
        lines = [f"Your message {info.queue_id} ({human_bytes(info.size)}"
                 + (f", \"{subject[:80]}\"" if subject else "") + ") is queued, and waits:", ""]
        for entry, route, skipped, limit in reasons:
            lines.append(f"- for {entry.domain}: route {skipped} takes messages up to "
                         f"{human_bytes(limit)}, so it waits for route {route}, "
                         "which is not sending now.")
        lines += ["", "It goes out when that route is released; nothing needs to be done.",
                  "To send it sooner, send it again smaller (a link instead of an attachment)."]
        self._notices.send(info.sender, "Your message waits for a route that takes its size",
                           "\n".join(lines))
