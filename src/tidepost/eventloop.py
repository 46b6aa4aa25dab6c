"""The running event loop, without a system call each time it is asked for.

On Python 3.11 `asyncio.get_running_loop()` (and everything that calls it:
`current_task()`, `asyncio.timeout()`, `Event.wait()`) checks the process
id with getpid(), a system call; the daemon asked it some twenty times a
message, a tenth of the event loop's time on a VM.  `running_loop()`
remembers the loop of the calling thread and asks again only once that
loop has stopped (a new `asyncio.run`, a test's next loop).
"""

from __future__ import annotations

import asyncio
import threading

_remembered = threading.local()


def running_loop() -> asyncio.AbstractEventLoop:
    """The event loop running in this thread; RuntimeError when none is."""
    loop = getattr(_remembered, "loop", None)
    if loop is None or not loop.is_running():
        loop = _remembered.loop = asyncio.get_running_loop()
    return loop


def current_task() -> asyncio.Task | None:
    """The task running now (asyncio.current_task, given the loop: a dict lookup)."""
    return asyncio.current_task(running_loop())


class Flag:
    """asyncio.Event's set/clear/is_set/wait, without a getpid() each wait.

    For a flag waited on after every message (the manager's wake-up): it
    takes its loop from running_loop() instead of asking asyncio each time.
    """

    def __init__(self) -> None:
        self._set = False
        self._waiters: list[asyncio.Future] = []

    def is_set(self) -> bool:
        """True once set, until cleared."""
        return self._set

    def set(self) -> None:
        """Set the flag and wake every waiter."""
        if self._set:
            return
        self._set = True
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(True)

    def clear(self) -> None:
        """Unset the flag."""
        self._set = False

    async def wait(self) -> bool:
        """Return once the flag is set (at once if it is)."""
        if self._set:
            return True
        waiter = running_loop().create_future()
        self._waiters.append(waiter)
        try:
            return await waiter
        finally:
            if waiter in self._waiters:  # cancelled: set() did not take it
                self._waiters.remove(waiter)


def new_event_loop() -> asyncio.AbstractEventLoop:
    """A new event loop for the daemon and the PostgreSQL store: uvloop's, else asyncio's.

    uvloop (a pinned dependency) runs the socket transports in C: taking mail
    in over SMTP costs about a fifth less CPU per message with it
    (bench/accept.py, bench/README.md), and asyncpg's round trips on the
    store's thread less too.  asyncio's loop is the fallback, so a system
    without the wheel still runs.
    """
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()
