"""Timeouts for the reads of one connection, on one lazily re-armed timer.

`asyncio.timeout()` around every read costs a timer armed and cancelled,
and on Python 3.11 three getpid() system calls (each get_running_loop()
checks the process id); an SMTP session reads a dozen times a message, and
those calls were a tenth of the event loop's time.  A connection's reads
rarely time out, so `Deadlines` keeps one timer and moves it lazily: a read
only writes down when it must end (`start`) and rubs it out (`stop`); when
the timer fires it looks at the deadlines still open and either cancels the
waiting task (the earliest one has passed) or sets itself for the earliest.
A deadline never fires late, only the timer sometimes fires early.

Use, in the task that awaits:

    token = deadlines.start(seconds)
    try:
        data = await stream.read(n)
    except asyncio.CancelledError:
        if deadlines.expired(token):
            raise TimeoutError from None
        raise
    finally:
        deadlines.stop(token)

Deadlines nest (a command line's deadline around each read's idle
timeout): `expired(token)` is true only for the one that fired, and only
once; it takes back the cancellation it caused, as asyncio.timeout does.
"""

from __future__ import annotations

import asyncio
import itertools

from tidepost.eventloop import running_loop


class Deadlines:
    """The open deadlines of one task's awaits and the one timer that enforces them."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._open: dict[int, tuple[float, asyncio.Task | None]] = {}  # token -> (end, task)
        self._tokens = itertools.count(1)
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._fired: int | None = None  # the token whose deadline cancelled its task

    def start(self, seconds: float) -> int:
        """Open a deadline `seconds` from now for the current task; its token."""
        if self._loop is None:
            self._loop = running_loop()
        return self.start_at(self._loop.time() + seconds)

    def start_at(self, when: float) -> int:
        """Open a deadline at loop time `when` for the current task; its token."""
        loop = self._loop
        if loop is None:
            loop = self._loop = running_loop()
        token = next(self._tokens)
        # current_task(loop) with the loop given is a dict lookup: no getpid()
        self._open[token] = (when, asyncio.current_task(loop))
        if self._timer is None or self._timer_at > when:
            self._arm(when)
        return token

    def stop(self, token: int) -> None:
        """Close a deadline (the await ended, one way or another)."""
        self._open.pop(token, None)  # the timer stays: re-arming it is what this saves
        if self._fired == token:
            self._fired = None  # its cancellation was taken by someone else

    def expired(self, token: int) -> bool:
        """After a CancelledError: True if this deadline caused it (then uncancelled)."""
        if self._fired != token:
            return False
        self._fired = None
        task = self._open.get(token, (0.0, None))[1]
        if task is not None:
            task.uncancel()
        return True

    def close(self) -> None:
        """Cancel the timer (the connection is over)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._open.clear()

    def _arm(self, when: float) -> None:
        """Set the one timer for `when`."""
        assert self._loop is not None
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_at(when, self._check)
        self._timer_at = when

    def _check(self) -> None:
        """Timer callback: cancel the task of a passed deadline, or re-arm for the next."""
        self._timer = None
        if not self._open or self._fired is not None:
            return  # nothing guarded now (or a cancellation still on its way)
        token, (when, task) = min(self._open.items(), key=lambda item: item[1][0])
        assert self._loop is not None
        if self._loop.time() < when:
            self._arm(when)
            return
        self._fired = token
        if task is not None:
            task.cancel()
