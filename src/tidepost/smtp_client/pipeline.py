"""Transactions sharing one connection: whose turn it is to write and to read (RFC 2920).

With PIPELINING a client sends a transaction's MAIL, RCPT... and DATA
without waiting, and RFC 2920 3.1 lets "the actual transfer of message
content" open the next group: the next transaction's commands may follow a
message's content at once, while that message's final reply is still on its
way.  Replies come back in the order the commands went out.  The client must
still wait where the RFC says: for DATA's 354 before the content, and for
the replies of a group before deciding anything that depends on them.

A `Pipeline` belongs to one SmtpSession and gives each transaction a `Turn`,
in the order the transactions start.  A turn writes only after the turn
before it has written all it will write (`wait_write`), and reads only after
that turn has read all its replies (`wait_read`).  A turn may leave its
commands with the pipeline (`offer`) before its turn to write comes: the turn
before it then sends them in the same write as its message content
(`take_next`), one TCP segment instead of two and no gap.

Invariants: every turn ends (`finish`, also on failure), so that the turns
behind it go on (they find the session broken, if it is, and fail at once).  A turn
that sent no message content leaves the server's transaction open, so the
next turn starts with RSET (`clean`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


# Builds a turn's commands; True asks for an RSET in front of them.
Compose = Callable[[bool], bytes]


class Turn:
    """One transaction's place in a connection's pipeline."""

    def __init__(self, previous: Turn | None):
        loop = asyncio.get_running_loop()
        self._previous = previous
        self._wrote: asyncio.Future[None] = loop.create_future()
        self._read: asyncio.Future[None] = loop.create_future()
        self._offer: Compose | None = None
        self.next: Turn | None = None
        self.sent_early = False   # the turn before sent our commands with its content
        self.rset_sent = False    # an RSET went in front of our commands
        # After our writes: True when the server's transaction will be over
        # once our last reply comes (content was sent), False when it stays
        # open (no content: RSET next), None while that is unknown (BDAT).
        self.clean: bool | None = False

    @property
    def first(self) -> bool:
        """True when no turn came before this one on the connection."""
        return self._previous is None

    def previous_clean(self) -> bool | None:
        """Whether the turn before left the server's transaction closed (first: True)."""
        return True if self._previous is None else self._previous.clean

    def offer(self, compose: Compose) -> None:
        """Leave our commands for the turn before, to send with its content."""
        self._offer = compose

    def take_next(self, rset: bool) -> bytes:
        """The next turn's offered commands, now ours to send; b"" when none waits."""
        follower = self.next
        if follower is None or follower._offer is None or follower.sent_early:
            return b""
        follower.sent_early, follower.rset_sent = True, rset
        return follower._offer(rset)

    async def wait_write(self) -> None:
        """Wait until the turn before has written everything it will write."""
        if self._previous is not None:
            await asyncio.shield(self._previous._wrote)

    async def wait_read(self) -> None:
        """Wait until the turn before has read all its replies."""
        if self._previous is not None:
            await asyncio.shield(self._previous._read)

    def wrote(self) -> None:
        """We will write nothing more: the next turn may write."""
        if not self._wrote.done():
            self._wrote.set_result(None)

    def read_all(self) -> None:
        """We have read every reply we expect: the next turn may read."""
        if not self._read.done():
            self._read.set_result(None)

    def finish(self) -> None:
        """End the turn, however it went (always called): the turns behind go on."""
        self.wrote()
        self.read_all()
        self._previous = None  # a long pipeline must not keep every turn alive


class Pipeline:
    """Hands out turns on one connection, in the order transactions start."""

    def __init__(self) -> None:
        self._last: Turn | None = None
        self.turns = 0  # handed out so far

    def turn(self) -> Turn:
        """The next place in line (call without awaiting, so the order is the call order)."""
        turn = Turn(self._last)
        self.turns += 1
        if self._last is not None:
            self._last.next = turn
        self._last = turn
        return turn

    def is_last(self, turn: Turn) -> bool:
        """True when no transaction has lined up behind `turn`."""
        return self._last is turn
