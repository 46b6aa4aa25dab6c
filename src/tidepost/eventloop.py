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
