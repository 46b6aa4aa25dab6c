"""How many large message bodies the SMTP server holds in memory at once.

A DATA section is read into memory before it is committed, so 200 sessions
each sending a 25 MB message would hold 5 GB or more.  `LargeBodies(slots,
threshold)` bounds that: a section that grows past `threshold` octets waits
for one of `slots` before its reader takes more from the socket (the
client's data waits in TCP's buffers: back-pressure, not a refusal), and
keeps the slot until its message is committed or refused.  Sections below
the threshold never wait, so small mail is never held behind big mail.  A
slot holder waits only for its own client and for the queue's commit, so
slots always come free (the session's idle timeout and minimum data rate
bound a slow holder), and the time a section waited does not count against
its client's data rate (the reader starts its rate windows again).

`for_config(config.smtp)` gives BODY_MEMORY // smtp.max_message_size slots
(at least 1) above LARGE_BODY: about BODY_MEMORY of large bodies at once,
plus LARGE_BODY and a read chunk for every other session.
"""

from __future__ import annotations

import asyncio

from tidepost.config.schema import SmtpServerConfig

BODY_MEMORY = 256 * 1024 * 1024  # octets of large bodies held at once, about
LARGE_BODY = 1024 * 1024         # a section past this needs a slot


class LargeBodies:
    """Slots for DATA sections over the threshold, shared by a server's sessions."""

    def __init__(self, slots: int, threshold: int = LARGE_BODY):
        self.slots = slots
        self.threshold = threshold
        self._free = asyncio.Semaphore(slots)
        self.held = 0
        self.peak = 0   # most slots held at once
        self.waits = 0  # sections that had to wait for a slot

    async def acquire(self) -> None:
        """Wait for a free slot and take it."""
        if self._free.locked():
            self.waits += 1
        await self._free.acquire()
        self.held += 1
        self.peak = max(self.peak, self.held)

    def release(self) -> None:
        """Give a slot back."""
        self.held -= 1
        self._free.release()

    def ticket(self) -> BodyTicket:
        """A claim for one DATA section, to pass to SmtpReader.read_data()."""
        return BodyTicket(self)


class BodyTicket:
    """One DATA section's claim on a slot: taken by wait(), given back by done()."""

    def __init__(self, bodies: LargeBodies):
        self._bodies = bodies
        self.threshold = bodies.threshold
        self._holding = False

    async def wait(self) -> None:
        """Take a slot (the reader calls this once the section passes the threshold)."""
        await self._bodies.acquire()
        self._holding = True

    def done(self) -> None:
        """The body is no longer held: give the slot back if it was taken."""
        if self._holding:
            self._holding = False
            self._bodies.release()


def for_config(smtp: SmtpServerConfig) -> LargeBodies:
    """The slots for a server with these limits (see the module docstring)."""
    return LargeBodies(max(1, BODY_MEMORY // smtp.max_message_size))
